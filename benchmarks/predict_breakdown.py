"""Where a batch-1 prediction's time goes: ours stage by stage beside PyTorch's forward.

  python -m benchmarks.predict_breakdown --workdir=WORKDIR --data_dir=/work/shared/data

WORKDIR is a fine-tuned SST-2 workdir (predict_vs_pipeline's, or any); it is exported
with `train.hf` into a /tmp directory for the PyTorch side. On the first --sentences
of SST-2 dev, one sentence a batch, each stage is timed over all sentences and reported in ms a
sentence: our encoding, batching into buckets, the jitted forward from host arrays
(as `Predictor` calls it) and from arrays already on the device, putting outputs back
in order, and the whole `Predictor` call; HF's tokenizer and `model(**inputs)` under
`torch.no_grad()`. Rounds alternate ours and theirs, and the table gives each stage's
best round, because this shared machine's speed drifts by 2x within minutes.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tempfile
import time

import jax
from absl import app, flags

from benchmarks.shared import DATA_FILES, sst2_sentences
from data import classification, finetune
from train import hf, predict

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A fine-tuned SST-2 workdir.")
flags.DEFINE_string("data_dir", "", "Folder with sst2/dev.tsv.")
flags.DEFINE_integer("sentences", 300, "SST-2 dev sentences timed.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds; each stage's best is reported.")


def per_sentence_ms(fn, count: int) -> float:
  start = time.perf_counter()
  fn()
  return (time.perf_counter() - start) * 1000 / count


def ours_stages(predictor, texts: list[str]) -> dict[str, float]:
  n, config = len(texts), predictor.config
  rows = [(t,) for t in texts]
  examples = [classification.TextExample(t, None, None, f"input {i}") for i, t in enumerate(texts)]
  stages = {}
  encoded = []
  stages["encode (tokenize, ids, masks)"] = per_sentence_ms(
    lambda: encoded.append(
      classification.encode_examples(
        examples, predictor.tokenizer, config.data.max_seq_length, predictor.labels
      )[0]
    ),
    n,
  )
  batches = []
  stages["batch into buckets"] = per_sentence_ms(
    lambda: batches.extend(finetune.eval_batches(encoded[0], 1, predictor.buckets)), n
  )
  forward = predictor._forward
  outputs = []
  stages["forward, host arrays"] = per_sentence_ms(
    lambda: outputs.extend(
      jax.block_until_ready(forward(predictor.params, dict(b))) for b in batches
    ),
    n,
  )
  on_device = [jax.device_put(b) for b in batches]
  stages["forward, arrays on device"] = per_sentence_ms(
    lambda: [jax.block_until_ready(forward(predictor.params, b)) for b in on_device], n
  )
  stages["outputs back in order"] = per_sentence_ms(
    lambda: finetune.gather_outputs(batches, outputs, predictor.objective.token_outputs), n
  )
  stages["whole Predictor call"] = per_sentence_ms(lambda: predictor(rows), n)
  return stages


def torch_stages(model, tokenizer, texts: list[str]) -> dict[str, float]:
  import torch

  n, encoded = len(texts), []
  stages = {
    "tokenize": per_sentence_ms(
      lambda: encoded.extend(
        tokenizer(t, return_tensors="pt", truncation=True, max_length=128) for t in texts
      ),
      n,
    )
  }
  with torch.no_grad():
    stages["forward"] = per_sentence_ms(lambda: [model(**e) for e in encoded], n)
  return stages


def main(argv):
  del argv
  import torch
  import transformers

  if not FLAGS.workdir or not FLAGS.data_dir:
    raise app.UsageError("--workdir (a fine-tuned SST-2 workdir) and --data_dir are required")
  _, dev, _ = (os.path.join(FLAGS.data_dir, p) for p in DATA_FILES["sst2"])
  texts = sst2_sentences(dev, FLAGS.sentences)
  predictor = predict.Predictor(FLAGS.workdir, batch_size=1)
  predictor([(t,) for t in texts])  # every bucket compiled
  hf_dir = os.path.join(tempfile.mkdtemp(prefix="predict_breakdown_"), "hf")
  hf.export_finetuned(FLAGS.workdir, hf_dir)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(hf_dir).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  torch_stages(model, tokenizer, texts[:20])  # warm-up

  ours, theirs = {}, {}
  for _ in range(FLAGS.rounds):
    for best, stages in (
      (ours, ours_stages(predictor, texts)),
      (theirs, torch_stages(model, tokenizer, texts)),
    ):
      for name, ms in stages.items():
        best[name] = min(best.get(name, float("inf")), ms)
  lines = [
    f"{len(texts)} SST-2 dev sentences, batch 1, torch threads {torch.get_num_threads()}, "
    f"our compiled shapes {sorted(predictor.batch_shapes)}",
    "",
    "| side | stage | ms a sentence |",
    "|---|---|---:|",
  ]
  lines += [f"| ours | {name} | {ms:.3f} |" for name, ms in ours.items()]
  lines += [f"| PyTorch | {name} | {ms:.3f} |" for name, ms in theirs.items()]
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)

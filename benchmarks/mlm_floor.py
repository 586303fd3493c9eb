"""Where a pretraining run stands: its held-out MLM against the corpus-frequency floor, and
its weights' scale against their initial one. No model runs.

The floor is what a model that ignores context scores: always predicting the corpus's most
common piece (accuracy) and each piece's corpus frequency (loss, the unigram entropy), over
the run's own vocab. The scale is each weight matrix's standard deviation against the
config's initializer_range: Adam moves every weight by about the learning rate a step, so
a start with larger weights changes relatively less at the same fine-tuning rate. The
geometry is the mean cosine between word embeddings within bands of corpus frequency: a
tied MLM decoder early in training pushes every piece it should not predict the same way,
so rare pieces drift into one direction (Gao et al. 2019, "Representation Degeneration"),
and a fine-tuned head can no longer tell them apart where random vectors (cosine about 0)
were distinct.

  python -m benchmarks.mlm_floor --corpus=/tmp/payoff/corpus.txt --workdir=/tmp/payoff/pretrain
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json

import numpy as np
from absl import app, flags

from data.corpus import read_bert_text_files
from data.tokenizer import load_tokenizer
from train import hf
from train.writers import read_metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("corpus", None, "The run's BERT-format text.")
flags.DEFINE_string("workdir", None, "A pretraining workdir (its vocab/, config and checkpoints).")


def matrices(tree: dict, prefix: str = ""):
  """(name, array) of the weights drawn from normal(initializer_range): kernels and embedding
  tables (biases start at 0 and LayerNorm scales at 1)."""
  for key, value in tree.items():
    name = prefix + key
    if isinstance(value, dict):
      yield from matrices(value, f"{name}.")
    elif key == "kernel" or (name.startswith("embeddings.") and ".norm." not in name):
      yield name, value


FREQUENCY_BANDS = ((0, 100), (100, 1000), (1000, 4000), (4000, None))


def mean_cosine(vectors: np.ndarray) -> float:
  """The mean cosine similarity over distinct pairs of rows."""
  unit = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
  total = unit.sum(0)
  n = len(unit)
  return float((total @ total - n) / (n * (n - 1)))


def embedding_geometry(embeddings: np.ndarray, counts: np.ndarray) -> list[str]:
  """Markdown rows: per band of pieces ranked by corpus frequency (unseen pieces last), how
  many, their mean count and the mean cosine between their embeddings. `counts` has a count
  for every row of `embeddings`."""
  order = np.argsort(-counts, kind="stable")
  seen = int((counts > 0).sum())
  rows = [
    "| pieces by corpus frequency | pieces | mean count | mean cosine |",
    "|---|---:|---:|---:|",
  ]
  bands = [(lo, min(hi or seen, seen)) for lo, hi in FREQUENCY_BANDS if lo < seen]
  bands.append((seen, len(order)))
  for lo, hi in bands:
    band = order[lo:hi]
    if len(band) < 2:
      continue
    name = f"ranks {lo + 1}-{hi}" if lo < seen else "never in the corpus"
    rows.append(
      f"| {name} | {len(band):,} | {counts[band].mean():,.1f} "
      f"| {mean_cosine(embeddings[band]):.3f} |"
    )
  return rows


def main(argv):
  del argv
  tokenizer = load_tokenizer(os.path.join(FLAGS.workdir, "vocab", "vocab.txt"))
  sentences = [s for d in read_bert_text_files([FLAGS.corpus]) for s in d]
  ids = tokenizer(sentences, add_special_tokens=False)["input_ids"]
  pieces = np.concatenate([np.asarray(x, np.int64) for x in ids if x])
  counts = np.bincount(pieces, minlength=len(tokenizer))
  share = counts[counts > 0] / counts.sum()
  evals = [r for r in read_metrics(FLAGS.workdir) if r["split"] == "eval" and "mlm_loss" in r]
  print(f"{FLAGS.corpus}: {counts.sum():,} pieces over {len(tokenizer):,} in the vocab")
  print(
    f"corpus-frequency floor: accuracy {share.max():.3f}, loss {-(share * np.log(share)).sum():.2f}"
  )
  if evals:
    last = evals[-1]
    print(
      f"run, step {last['step']}: accuracy {last['mlm_accuracy']:.3f}, loss {last['mlm_loss']:.2f}"
    )
  with open(os.path.join(FLAGS.workdir, "config.json"), encoding="utf-8") as f:
    init = json.load(f)["model"]["initializer_range"]
  _, params, step = hf.read_workdir_params(FLAGS.workdir)
  print(f"\nweights at step {step} (initializer_range {init}):")
  print("| matrix | std | std / initializer_range |\n|---|---:|---:|")
  for name, value in matrices(params["bert"]):
    print(f"| {name} | {value.std():.4f} | {value.std() / init:.1f} |")
  embeddings = np.asarray(params["bert"]["embeddings"]["word"])
  print(f"\nword embeddings at step {step} (random init: every mean cosine about 0):")
  print("\n".join(embedding_geometry(embeddings, counts)))


if __name__ == "__main__":
  flags.mark_flags_as_required(["corpus", "workdir"])
  app.run(main)

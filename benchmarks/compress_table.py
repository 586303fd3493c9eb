"""Compression: a fine-tuned teacher against the smaller models made from it, in one table.

For each task (SST-2 accuracy, CoNLL-2003 entity F1, dev sets), from all-MiniLM-L6-v2:
  teacher                   the 6-layer model fine-tuned (configs/finetune/<task>.py:minilm);
  student, labels only      3 layers (the teacher's pretrained layers 0, 2, 4), fine-tuned
                            on the labels (configs/compress/distill.py:<task>, no teacher);
  student, distilled        the same, taught by the teacher's logits (distill.teacher);
  ... + hidden states       and by its layers 1, 3, 5's outputs (distill.hidden_weight);
  heads / FFN pruned        the teacher with 25 % or 50 % of every layer's heads, or 50 % of
                            its FFN neurons, removed by importance and not retrained
                            (configs/compress/prune.py:<task>, Michel et al. 2019);
  int8                      the teacher's encoder matmuls in int8, weights only or weights
                            and activations (configs/compress/quantize.py:<task>), not retrained;
  int8, QAT                 the teacher fine-tuned --qat_steps more through int8 rounding
                            (model.quantization=int8_qat), then made int8 the same way.
Every row: the same data, steps, batch, sequence length and seed; the students share a
learning rate. Latency is the forward of a loaded workdir (`train.api.load`), on CPU,
padded to --seq_len, at batch 1 and 32 over the same dev sentences, measured in this one
process after all training, models alternating, best of --rounds rounds.

  python -m benchmarks.compress_table --data_dir=../shared/data --root=/tmp/compress \\
      --tasks=sst2,conll2003 --steps=300

A workdir that already holds final_metrics.json is read, not retrained.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from benchmarks.shared import (
  DATA_FILES,
  finetune_flags,
  minilm_dir,
  run_job,
  sst2_sentences,
  write_table,
)

TASKS = {  # task: (teacher config, dev metric)
  "sst2": ("configs/finetune/sst2.py:minilm", "accuracy"),
  "conll2003": ("configs/finetune/conll2003.py:minilm", "f1"),
}
flags.DEFINE_string("data_dir", "../shared/data", "Folder with sst2/ and conll2003/.")
flags.DEFINE_string("root", "/tmp/compress", "Workdirs go here.")
flags.DEFINE_list("tasks", ["sst2", "conll2003"], "Tasks, each a table.")
flags.DEFINE_integer("steps", 300, "Train steps, every row.")
flags.DEFINE_integer("batch_size", 32, "Examples per step, every row.")
flags.DEFINE_integer("seq_len", 64, "Tokens per example: training and latency.")
flags.DEFINE_float("teacher_lr", 5e-5, "The teacher's peak learning rate.")
flags.DEFINE_float("student_lr", 1e-4, "Both students' peak learning rate.")
flags.DEFINE_integer("seed", 0, "Seed, every row.")
flags.DEFINE_float("hidden_weight", 1.0, "distill.hidden_weight of the hidden-state row.")
flags.DEFINE_integer("qat_steps", 100, "Quantization-aware steps from the teacher (int8, QAT).")
flags.DEFINE_float("qat_lr", 1e-5, "Peak learning rate of those steps.")
flags.DEFINE_integer("latency_sentences", 128, "Dev sentences timed at batch 1 (and 32).")
flags.DEFINE_integer("rounds", 3, "Timing rounds; the best is kept.")
flags.DEFINE_string("out", "", "Markdown file; empty: ROOT/table.md.")
FLAGS = flags.FLAGS


COMPRESSED = {  # row: (config, its flags); the teacher compressed, no training, epochs 0
  "heads25": ("prune", ["--config.compress.prune_heads=0.25"]),
  "heads50": ("prune", ["--config.compress.prune_heads=0.5"]),
  "ffn50": ("prune", ["--config.compress.prune_heads=0", "--config.compress.prune_ffn=0.5"]),
  "int8w": ("quantize", ["--config.model.quantization=int8_weights"]),
  "int8": ("quantize", ["--config.model.quantization=int8"]),
  "qat_int8": ("quantize", ["--config.model.quantization=int8"]),  # source: the QAT workdir
}


def qat_args(task: str, workdir: str, teacher: str) -> list[str]:
  """The teacher, trained on through int8 rounding: what the 'int8, QAT' row quantizes."""
  args = ["-m", "train.main", f"--config=configs/compress/quantize.py:{task}"]
  args += [f"--workdir={workdir}", f"--config.compress.source={teacher}"]
  args += ["--config.model.quantization=int8_qat"]
  args += finetune_flags(
    task, FLAGS.data_dir, "", FLAGS.seq_len, FLAGS.batch_size, FLAGS.qat_steps, FLAGS.qat_lr, 0
  )
  return args


def row_args(task: str, kind: str, workdir: str, teacher: str) -> list[str]:
  if kind in COMPRESSED:  # the teacher's weights and tokenizer; no training step
    config, extra = COMPRESSED[kind]
    args = ["-m", "train.main", f"--config=configs/compress/{config}.py:{task}"]
    args += [f"--workdir={workdir}", f"--config.compress.source={teacher}", *extra]
    shared = finetune_flags(task, FLAGS.data_dir, "", FLAGS.seq_len, FLAGS.batch_size, 0, 1, 0)
    schedule = ("optimizer.total_steps", "eval_every_steps", "optimizer.lr")
    return args + [f for f in shared if not any(key in f for key in schedule)]
  config = TASKS[task][0] if kind == "teacher" else f"configs/compress/distill.py:{task}"
  lr = FLAGS.teacher_lr if kind == "teacher" else FLAGS.student_lr
  args = ["-m", "train.main", f"--config={config}", f"--workdir={workdir}"]
  args += finetune_flags(
    task, FLAGS.data_dir, minilm_dir(), FLAGS.seq_len, FLAGS.batch_size, FLAGS.steps, lr, FLAGS.seed
  )
  if kind in ("distilled", "hidden"):
    args.append(f"--config.distill.teacher={teacher}")
  if kind == "hidden":
    args.append(f"--config.distill.hidden_weight={FLAGS.hidden_weight}")
  return args


def dev_texts(task: str) -> list[str]:
  dev = os.path.join(FLAGS.data_dir, DATA_FILES[task][1])
  if task == "sst2":
    return sst2_sentences(dev, FLAGS.latency_sentences)
  words, texts = [], []
  with open(dev, encoding="utf-8") as f:  # CoNLL: one token a line, blank between sentences
    for line in f:
      if line.strip() and not line.startswith("-DOCSTART-"):
        words.append(line.split()[0])
      elif words:
        texts.append(" ".join(words))
        words = []
  return texts[: FLAGS.latency_sentences]


def latencies(workdirs: dict[str, str], texts: list[str]) -> dict[str, tuple[float, float, int]]:
  """{row: (ms a sentence at batch 1, ms a batch of 32, weight bytes)}, best of the rounds,
  rows alternating. Weight bytes: every parameter as loaded (int8 kernels count 1 a value)."""
  import jax
  from flax import nnx

  from train import api

  loaded = {name: api.load(workdir) for name, workdir in workdirs.items()}
  sizes = {
    name: sum(x.nbytes for x in jax.tree.leaves(nnx.state(model.module, nnx.Param)))
    for name, (model, _) in loaded.items()
  }

  def inputs(tokenizer, batch):
    return tokenizer(
      batch, padding="max_length", truncation=True, max_length=FLAGS.seq_len, return_tensors="np"
    )

  encoded = {
    name: ([inputs(tok, [t]) for t in texts], inputs(tok, (texts * 32)[:32]))
    for name, (_, tok) in loaded.items()
  }
  best = {name: [float("inf"), float("inf")] for name in loaded}
  for _ in range(FLAGS.rounds + 1):  # the first round compiles and is not counted
    for name, (model, _) in loaded.items():
      ones, batch = encoded[name]
      start = time.perf_counter()
      for x in ones:
        model(**x)
      one = (time.perf_counter() - start) / len(ones)
      start = time.perf_counter()
      for _ in range(4):
        model(**batch)
      many = (time.perf_counter() - start) / 4
      best[name] = [min(best[name][0], one), min(best[name][1], many)]
  return {name: (1e3 * a, 1e3 * b, sizes[name]) for name, (a, b) in best.items()}


def main(argv):
  del argv
  lines, commands = [], []
  for task in FLAGS.tasks:
    root = os.path.join(FLAGS.root, task)
    workdirs, results = {}, {}
    teacher = os.path.join(root, "teacher")
    for kind, name in (
      ("teacher", "teacher (6 layers)"),
      ("labels", "student (3 layers), labels only"),
      ("distilled", "student (3 layers), distilled (logits)"),
      ("hidden", "student (3 layers), distilled (logits + hidden states)"),
      ("heads25", "teacher, 25 % of heads pruned"),
      ("heads50", "teacher, 50 % of heads pruned"),
      ("ffn50", "teacher, 50 % of FFN neurons pruned"),
      ("int8w", "teacher, int8 weights"),
      ("int8", "teacher, int8 weights and activations"),
      ("qat_int8", "teacher, int8 weights and activations, QAT"),
    ):
      workdirs[name] = os.path.join(root, kind)
      source = teacher
      if kind == "qat_int8":
        source = os.path.join(root, "qat")
        commands.append(qat_args(task, source, teacher))
        run_job(commands[-1], source)
      args = row_args(task, kind, workdirs[name], source)
      commands.append(args)
      results[name] = run_job(args, workdirs[name])[0]
    times = latencies(workdirs, dev_texts(task))
    metric = TASKS[task][1]
    teacher_score = results["teacher (6 layers)"]["best"]["value"]
    teacher_ms = times["teacher (6 layers)"]
    lines += [
      f"{task}: dev {metric}, {FLAGS.steps} steps of {FLAGS.batch_size} x {FLAGS.seq_len}, seed "
      f"{FLAGS.seed}; lr {FLAGS.teacher_lr:g} (teacher), {FLAGS.student_lr:g} (students); "
      f"latency on {len(dev_texts(task))} dev sentences padded to {FLAGS.seq_len}.",
      "",
      "| model | params | weights (MiB) | latency batch 1 (ms) | latency batch 32 (ms) "
      f"| speed-up (1 / 32) | dev {metric} | vs teacher |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, final in results.items():
      params = final["parameters"]["total"]
      # A pruned row trains no step: its one evaluation is its score.
      score = final["best"]["value"] if "best" in final else final[metric]
      one, many, size = times[name]
      lines.append(
        f"| {name} | {params:,} | {size / 2**20:.1f} | {one:.2f} | {many:.1f} | "
        f"{teacher_ms[0] / one:.2f}x / {teacher_ms[1] / many:.2f}x | {100 * score:.2f} | "
        f"{100 * score / teacher_score:.1f} % |"
      )
    lines.append("")
  write_table(lines, commands, FLAGS.out or os.path.join(FLAGS.root, "table.md"))


if __name__ == "__main__":
  app.run(main)

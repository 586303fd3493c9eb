"""Does pretraining from scratch on your own text pay off? Fine-tune from it, from random init
and from all-MiniLM-L6-v2.

The text is what this machine has in English: SQuAD v1.1's Wikipedia paragraphs
(train subset and dev) plus the unlabelled training sentences of SST-2 and
CoNLL-2003, written to ROOT/corpus.txt (one article, or 200 task sentences, a
document). configs/pretrain/scratch.py pretrains on it within a token budget;
SST-2 and CoNLL-2003 are then fine-tuned from that checkpoint, from random
values of the same shape and vocab, and from MiniLM (a real pretrained model,
the ceiling), with the same steps, batch, learning rate and seeds. Every row is
`python -m train.main` as a subprocess (the commands follow the table).

  python -m benchmarks.scratch_payoff --data_dir=../shared/data --root=/tmp/payoff \\
      --recipe=tiny,10M --steps=300 --lr=2e-4,1e-3 --seeds=0,1,2

A run whose workdir holds final_metrics.json is read, not rerun, so an
interrupted table resumes where it stopped. ROOT/mlm_accuracy.png is the
pretraining run's held-out MLM accuracy against step.
"""

from __future__ import annotations

import json
import os
import statistics

from absl import app, flags

from benchmarks.shared import (
  DATA_FILES,
  finetune_flags,
  heldout_evals,
  mean_std,
  mean_step_time,
  minilm_dir,
  run_job,
  sst2_sentences,
  write_table,
)
from benchmarks.wiki_text import squad_documents
from data.ner import read_conll
from train.writers import plot_loss_curves, read_metrics

flags.DEFINE_string("data_dir", "../shared/data", "SST-2, CoNLL-2003 and SQuAD v1.1 files.")
flags.DEFINE_string("root", "/tmp/payoff", "The corpus and every workdir go here.")
flags.DEFINE_string("recipe", "tiny,10M", "configs/pretrain/scratch.py's argument: SIZE,TOKENS.")
flags.DEFINE_list(
  "pretrain_flags",
  [],
  "More --config.KEY=VALUE flags for the pretraining run, comma-separated "
  "(e.g. --config.batch_size=32,--config.optimizer.lr=2e-3).",
)
flags.DEFINE_integer("steps", 300, "Fine-tuning steps, every row.")
flags.DEFINE_integer("batch_size", 32, "Fine-tuning examples per step, every row.")
flags.DEFINE_integer("seq_len", 128, "Fine-tuning max_seq_length, every row.")
flags.DEFINE_list(
  "lr",
  ["1e-4"],
  "Fine-tuning peak learning rates, comma-separated: each task and init runs at each, a row "
  "of the table per task and rate.",
)
flags.DEFINE_string("seeds", "0,1,2", "Fine-tuning seeds, comma-separated.")
flags.DEFINE_string("tasks", "sst2,conll2003", "Tasks to fine-tune, comma-separated.")
flags.DEFINE_string("inits", "random,scratch,minilm", "Rows: random, scratch and / or minilm.")
flags.DEFINE_string("minilm_dir", "", "all-MiniLM-L6-v2's directory; '': the installed package.")
flags.DEFINE_string("out", "", "Markdown table path; empty: ROOT/table.md.")
FLAGS = flags.FLAGS

TASKS = {  # task -> (fine-tuning config, dev metric)
  "sst2": ("configs/finetune/classification.py", "accuracy"),
  "conll2003": ("configs/finetune/token_classification.py", "f1"),
}
INITS = ("random", "scratch", "minilm")
TASK_SENTENCES_PER_DOCUMENT = 200


def write_corpus(data_dir: str, out: str) -> dict:
  """ROOT/corpus.txt in the BERT text format (a sentence a line, a blank line between
  documents) from the SQuAD paragraphs and the tasks' training sentences; returns counts."""
  documents = []
  for name in ("train-subset-v1.1.json", "dev-v1.1.json"):
    documents += squad_documents(os.path.join(data_dir, "squad_v1", name))
  articles = len(documents)
  sst2 = sst2_sentences(os.path.join(data_dir, DATA_FILES["sst2"][0]))
  conll_file = os.path.join(data_dir, DATA_FILES["conll2003"][0])
  conll = [" ".join(sentence.words) for sentence in read_conll(conll_file)]
  for sentences in (sst2, conll):
    step = TASK_SENTENCES_PER_DOCUMENT
    documents += [sentences[i : i + step] for i in range(0, len(sentences), step)]
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    f.write("\n\n".join("\n".join(document) for document in documents) + "\n")
  words = sum(len(s.split()) for d in documents for s in d)
  return {"articles": articles, "sst2": len(sst2), "conll2003": len(conll), "words": words}


def pretrain_args(workdir: str, corpus: str) -> list[str]:
  return [
    "-m",
    "train.main",
    f"--config=configs/pretrain/scratch.py:{FLAGS.recipe}",
    f"--workdir={workdir}",
    f"--config.data.paths={corpus}",
    *FLAGS.pretrain_flags,
  ]


def finetune_args(
  task: str, workdir: str, init: str, pretrained: str, seed: int, lr: float
) -> list[str]:
  """init: 'minilm', 'random' or 'scratch' (the pretrained workdir; random gets its shape)."""
  config, _ = TASKS[task]
  size = FLAGS.recipe.partition(",")[0] or "mini"
  common = (FLAGS.seq_len, FLAGS.batch_size, FLAGS.steps, lr, seed)
  if init == "minilm":
    hf_dir = FLAGS.minilm_dir or minilm_dir()
    own = [f"--config={config}:minilm", *finetune_flags(task, FLAGS.data_dir, hf_dir, *common)]
  else:
    own = [
      f"--config={config}:{size}",
      *finetune_flags(task, FLAGS.data_dir, "", *common),
      f"--config.init.checkpoint={pretrained if init == 'scratch' else ''}",
      f"--config.data.vocab={os.path.join(pretrained, 'vocab')}",
      "--config.model.vocab_size=8192",
      "--config.model.max_position_embeddings=128",
    ]
  return ["-m", "train.main", own[0], f"--workdir={workdir}", *own[1:]]


def pretraining_summary(workdir: str, wall: float | None) -> list[str]:
  """The budget (steps, tokens, wall time) and the held-out MLM accuracy curve, in lines."""
  records = read_metrics(workdir)
  train = [r for r in records if r["split"] == "train"]
  evals = heldout_evals(workdir)
  steps = train[-1]["step"] if train else 0
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  tokens_per_step = config["batch_size"] * config["data"]["max_seq_length"]
  step_time = mean_step_time(workdir)  # the first interval's compile left out
  seconds = steps * step_time
  real = statistics.fmean(r["real_token_fraction"] for r in train) if train else float("nan")
  curve = ", ".join(f"{r['step']}: {r['mlm_accuracy']:.3f}" for r in evals)
  probes = [r for r in evals if "probe_accuracy" in r]  # with --config.probe.* flags
  probe_curve = ", ".join(f"{r['step']}: {r['probe_accuracy']:.3f}" for r in probes)
  png = plot_loss_curves(workdir, os.path.join(FLAGS.root, "mlm_accuracy.png"), ("mlm_accuracy",))
  return [
    f"Pretraining (configs/pretrain/scratch.py:{FLAGS.recipe}): {steps} steps, "
    f"{steps * tokens_per_step / 1e6:.1f} M batch tokens, "
    f"{seconds / 60:.0f} min of train steps at their mean time"
    + (f" ({wall / 60:.0f} min for the whole job)" if wall else "")
    + f"; {tokens_per_step / step_time:,.0f} batch tokens/s, {100 * real:.1f} % of them real"
    + f". Held-out MLM accuracy by step: {curve} ({png})."
    + (f" Frozen-feature probe accuracy by step: {probe_curve}." if probes else ""),
  ]


def main(argv):
  del argv
  seeds = [int(s) for s in FLAGS.seeds.split(",") if s]
  os.makedirs(FLAGS.root, exist_ok=True)
  corpus = os.path.join(FLAGS.root, "corpus.txt")
  counts = write_corpus(FLAGS.data_dir, corpus)
  pretrained = os.path.join(FLAGS.root, "pretrain")
  commands = [pretrain_args(pretrained, corpus)]
  wall = run_job(commands[0], pretrained)[1]
  lines = [
    f"Corpus: {counts['articles']} SQuAD articles, {counts['sst2']:,} SST-2 and "
    f"{counts['conll2003']:,} CoNLL-2003 training sentences, {counts['words']:,} words.",
    *pretraining_summary(pretrained, wall),
    "",
    f"Fine-tuning: {FLAGS.steps} steps of {FLAGS.batch_size}, seeds {seeds} "
    "(dev set; mean ± std over seeds).",
    "",
    "| task | dev metric | lr | random init | from scratch (ours) | gain | all-MiniLM-L6-v2 |",
    "|---|---|---|---|---|---|---|",
  ]
  tasks = [t for t in FLAGS.tasks.split(",") if t]
  inits = [i for i in FLAGS.inits.split(",") if i]
  lrs = [float(lr) for lr in FLAGS.lr]
  scores = {(task, init, lr): [] for task in tasks for init in inits for lr in lrs}
  for lr in lrs:
    for init in inits:  # every row without MiniLM first: the comparison the table is for
      for task in tasks:
        for seed in seeds:
          name = f"{task}_{init}_s{seed}" + (f"_lr{lr:g}" if len(lrs) > 1 else "")
          workdir = os.path.join(FLAGS.root, name)
          args = finetune_args(task, workdir, init, pretrained, seed, lr)
          commands.append(args)
          scores[task, init, lr].append(run_job(args, workdir)[0]["best"]["value"])
  for task in tasks:
    for lr in lrs:
      row = {i: mean_std(scores[task, i, lr]) if i in inits else "-" for i in INITS}
      gain = ""
      if {"random", "scratch"} <= set(inits):
        random, scratch = (statistics.fmean(scores[task, i, lr]) for i in ("random", "scratch"))
        gain = f"{100 * (scratch - random):+.2f}"
      lines.append(
        f"| {task} | {TASKS[task][1]} | {lr:g} | {row['random']} | {row['scratch']} | {gain} "
        f"| {row['minilm']} |"
      )
  write_table(lines, commands, FLAGS.out or os.path.join(FLAGS.root, "table.md"))


if __name__ == "__main__":
  app.run(main)

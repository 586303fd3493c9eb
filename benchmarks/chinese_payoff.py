"""Does Chinese pretraining pay off? Fine-tune from our pretrained model and from random init.

One Chinese bert-mini is pretrained from scratch on People's Daily
(configs/pretrain/chinese_mini.py: learned character vocab, whole-word masking
over jieba's words), then review sentiment and People's Daily NER are each
fine-tuned from it and from random values, with the same vocab, model shape,
steps, batch, learning rate and seeds. Every row is the job users run, `python
-m train.main`, as a subprocess (the commands follow the table).

  python -m data.prepare_chinese --out=/tmp/zh
  python -m benchmarks.chinese_payoff --data=/tmp/zh --root=/tmp/zhb \\
      --pretrain_steps=800 --steps=300 --seeds=0,1

`--recipe=scratch,tiny,24M` pretrains with English's from-scratch recipe instead
(configs/pretrain/scratch.py: no NSP, no dropout, its own MLM decoder, a token
budget), with whole-word masking over jieba's words added, and fine-tunes
bert-tiny rows.

A run whose workdir already holds final_metrics.json is read, not rerun, so
an interrupted table resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import statistics

from absl import app, flags

from benchmarks.shared import mean_std, run_job, write_table

flags.DEFINE_string(
  "data", "/tmp/zh", "What data.prepare_chinese wrote (corpus.txt, sentiment/, ner/)."
)
flags.DEFINE_string("root", "/tmp/zhb", "Workdirs go here.")
flags.DEFINE_string(
  "recipe",
  "chinese_mini",
  "chinese_mini (configs/pretrain/chinese_mini.py:STEPS, bert-mini) or scratch,SIZE,TOKENS "
  "(configs/pretrain/scratch.py:SIZE,TOKENS with whole-word masking over jieba's words).",
)
flags.DEFINE_integer("pretrain_steps", 800, "chinese_mini: pretraining steps (batch 64 x 128).")
flags.DEFINE_list(
  "pretrain_flags", [], "More --config.KEY=VALUE flags for the pretraining run, comma-separated."
)
flags.DEFINE_integer("steps", 300, "Fine-tuning steps, every row.")
flags.DEFINE_integer("batch_size", 32, "Fine-tuning examples per step, every row.")
flags.DEFINE_float(
  "lr", 1e-4, "Fine-tuning peak learning rate, every row (small BERTs: Turc et al.)."
)
flags.DEFINE_string("seeds", "0,1", "Fine-tuning seeds, comma-separated.")
flags.DEFINE_string("out", "", "Markdown table path; empty: ROOT/table.md.")
FLAGS = flags.FLAGS

# The pretrained model's shape (configs/pretrain/chinese_mini.py); random init gets the same.
MODEL = ["--config.model.vocab_size=8192", "--config.model.max_position_embeddings=128"]


def recipe() -> tuple[str, list[str], str]:
  """The pretraining config argument, its extra flags, and the fine-tuning rows' size."""
  name, _, rest = FLAGS.recipe.partition(",")
  if name == "chinese_mini":
    return f"configs/pretrain/chinese_mini.py:{FLAGS.pretrain_steps}", [], "mini"
  if name == "scratch":
    size = rest.partition(",")[0] or "mini"
    whole_words = ["--config.data.whole_word=True", "--config.data.segmenter=jieba"]
    return f"configs/pretrain/scratch.py:{rest}", whole_words, size
  raise app.UsageError(f"--recipe={FLAGS.recipe}: chinese_mini or scratch,SIZE,TOKENS")


def tasks(data: str, size: str) -> dict[str, tuple[list[str], str]]:
  """task -> (train.main flags, dev metric)."""
  sentiment = [
    f"--config=configs/finetune/classification.py:{size}",
    "--config.data.text_columns=sentence",
    "--config.data.label_column=label",
    f"--config.data.train_path={data}/sentiment/train.tsv",
    f"--config.data.eval_path={data}/sentiment/dev.tsv",
  ]
  ner = [
    f"--config=configs/finetune/token_classification.py:{size}",
    f"--config.data.train_path={data}/ner/train.json",
    f"--config.data.eval_path={data}/ner/dev.json",
  ]
  return {"sentiment": (sentiment, "accuracy"), "ner": (ner, "f1")}


def pretrain_args(workdir: str, config: str, recipe_flags: list[str]) -> list[str]:
  return [
    "-m",
    "train.main",
    f"--config={config}",
    f"--workdir={workdir}",
    f"--config.data.paths={FLAGS.data}/corpus.txt",
    *recipe_flags,
    *FLAGS.pretrain_flags,
  ]


def finetune_args(
  task_flags: list[str], workdir: str, init: str, seed: int, vocab: str
) -> list[str]:
  return [
    "-m",
    "train.main",
    task_flags[0],
    f"--workdir={workdir}",
    "--config.init.hf_dir=",
    f"--config.init.checkpoint={init}",  # '': random init
    f"--config.data.vocab={vocab}",
    *MODEL,
    *task_flags[1:],
    f"--config.batch_size={FLAGS.batch_size}",
    f"--config.optimizer.total_steps={FLAGS.steps}",
    f"--config.eval_every_steps={FLAGS.steps}",
    f"--config.optimizer.lr={FLAGS.lr}",
    f"--config.seed={seed}",
  ]


def main(argv):
  del argv
  if not os.path.exists(os.path.join(FLAGS.data, "corpus.txt")):
    raise app.UsageError(f"--data={FLAGS.data}: no corpus.txt; run python -m data.prepare_chinese")
  seeds = [int(s) for s in FLAGS.seeds.split(",") if s]
  pretrained = os.path.join(FLAGS.root, "pretrain")
  config, recipe_flags, size = recipe()
  commands = [pretrain_args(pretrained, config, recipe_flags)]
  heldout = run_job(commands[0], pretrained)[0]
  vocab = os.path.join(pretrained, "vocab")
  with open(os.path.join(pretrained, "config.json"), encoding="utf-8") as f:
    saved = json.load(f)
  batch, length = saved["batch_size"], saved["data"]["max_seq_length"]
  nsp = f", NSP accuracy {heldout['nsp_accuracy']:.3f}" if "nsp_accuracy" in heldout else ""
  lines = [
    f"Pretraining ({config}): {heldout['step']} steps x {batch} x "
    f"{length} tokens ({heldout['step'] * batch * length / 1e6:.1f} M tokens seen); held-out "
    f"MLM accuracy {heldout['mlm_accuracy']:.3f}{nsp}.",
    "",
    f"Fine-tuning: {FLAGS.steps} steps of {FLAGS.batch_size}, lr {FLAGS.lr:g}, seeds {seeds} "
    "(dev set; mean ± std when several seeds).",
    "",
    "| task | dev metric | random init | pretrained | gain |",
    "|---|---|---|---|---|",
  ]
  for task, (task_flags, metric) in tasks(FLAGS.data, size).items():
    scores = {}
    for init_name, init in (("random", ""), ("pretrained", pretrained)):
      scores[init_name] = []
      for seed in seeds:
        workdir = os.path.join(FLAGS.root, f"{task}_{init_name}_s{seed}")
        args = finetune_args(task_flags, workdir, init, seed, vocab)
        commands.append(args)
        scores[init_name].append(run_job(args, workdir)[0]["best"]["value"])
    gain = statistics.fmean(scores["pretrained"]) - statistics.fmean(scores["random"])
    lines.append(
      f"| {task} | {metric} | {mean_std(scores['random'])} | {mean_std(scores['pretrained'])} "
      f"| {100 * gain:+.2f} |"
    )
  write_table(lines, commands, FLAGS.out or os.path.join(FLAGS.root, "table.md"))


if __name__ == "__main__":
  app.run(main)

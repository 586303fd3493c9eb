"""GLUE tasks with the BERT paper's fine-tuning settings: batch 32, 3 epochs, seq 128.

  python -m train.main --config=configs/finetune/glue.py:mrpc --workdir=/tmp/mrpc \\
      --config.data.train_path=glue_data/MRPC/train.tsv \\
      --config.data.eval_path=glue_data/MRPC/dev.tsv \\
      [--config.optimizer.lr=3e-5]          # the paper picks from 5e-5, 4e-5, 3e-5, 2e-5

`glue.py:<task>,<size>` picks a BERT size (default base). Columns follow the
TSV files of GLUE's download script; with --config.data.source=tfds the
dataset is glue/<task> (TFDS keys and label names). MNLI's dev set is
dev_matched.tsv (TFDS split validation_matched). Dev metrics are the GLUE
leaderboard's; the first is the one early stopping / the best checkpoint use.
"""

from configs.finetune import common

# task: (TSV text columns, TSV label column, TSV has a header, TFDS text keys,
#        labels in id order, metrics)
TASKS = {
  "cola": ("3", "1", False, "sentence", ("0", "1"), ("mcc", "accuracy")),
  "sst2": ("sentence", "label", True, "sentence", ("0", "1"), ("accuracy",)),
  "mrpc": (
    "#1 String,#2 String",
    "Quality",
    True,
    "sentence1,sentence2",
    ("0", "1"),
    ("f1", "accuracy"),
  ),
  "qqp": (
    "question1,question2",
    "is_duplicate",
    True,
    "question1,question2",
    ("0", "1"),
    ("f1", "accuracy"),
  ),
  "stsb": (
    "sentence1,sentence2",
    "score",
    True,
    "sentence1,sentence2",
    (),
    ("pearson", "spearman"),
  ),
  "mnli": (
    "sentence1,sentence2",
    "gold_label",
    True,
    "premise,hypothesis",
    ("entailment", "neutral", "contradiction"),
    ("accuracy",),
  ),
  "qnli": (
    "question,sentence",
    "label",
    True,
    "question,sentence",
    ("entailment", "not_entailment"),
    ("accuracy",),
  ),
  "rte": (
    "sentence1,sentence2",
    "label",
    True,
    "sentence1,sentence2",
    ("entailment", "not_entailment"),
    ("accuracy",),
  ),
  "wnli": ("sentence1,sentence2", "label", True, "sentence1,sentence2", ("0", "1"), ("accuracy",)),
}


# What the TSV files' 0 / 1 labels mean: TFDS's names for them, shown by predictions and exports.
LABEL_NAMES = {
  "cola": ("unacceptable", "acceptable"),
  "sst2": ("negative", "positive"),
  "mrpc": ("not_equivalent", "equivalent"),
  "qqp": ("not_duplicate", "duplicate"),
  "wnli": ("not_entailment", "entailment"),
}


def get_config(arg: str = "sst2"):
  task, _, size = arg.partition(",")
  if task not in TASKS:
    raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(TASKS)}")
  columns, label_column, header, tfds_keys, labels, metrics = TASKS[task]
  c = common.get_config("classification", size or "base")
  c.data.update(
    text_columns=columns,
    label_column=label_column,
    has_header=header,
    labels=labels,
    label_names=LABEL_NAMES.get(task, ()),
    metrics=metrics,
    regression=task == "stsb",
    tfds_name=f"glue/{task}",
    tfds_text_keys=tfds_keys,
    max_seq_length=128,
  )
  if task == "mnli":
    c.data.tfds_eval_split = "validation_matched"
  if task == "qqp":
    c.data.bad_rows = "skip"  # GLUE's QQP train.tsv has a few rows with missing fields
  c.batch_size = 32
  c.epochs = 3
  c.optimizer.lr = 2e-5
  c.early_stopping.update(metric=metrics[0], mode="max")
  return c

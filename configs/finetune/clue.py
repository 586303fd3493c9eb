"""CLUE classification tasks as distributed (JSON lines), with CLUE's BERT baseline settings.

  python -m train.main --config=configs/finetune/clue.py:tnews --workdir=/tmp/tnews \\
      --config.init.hf_dir=bert-base-chinese \\
      --config.data.train_path=tnews_public/train.json \\
      --config.data.eval_path=tnews_public/dev.json
  python -m train.predict --workdir=/tmp/tnews --input_file=tnews_public/test.json \\
      --output_file=tnews_predict.json      # CLUE's submission format: {"id", "label"}

`clue.py:<task>,<size>` picks a BERT size (default base, bert-base-chinese's
shape). The settings are those of CLUE's BERT baselines,
github.com/CLUEbenchmark/CLUE, baselines/models/bert/run_classifier_<task>.sh:
max_seq_length 128 for all four; TNEWS and AFQMC batch 16, lr 3e-5, 2 epochs;
IFLYTEK and CMNLI batch 32, lr 2e-5, 3 epochs. OCNLI (github.com/CLUEbenchmark/OCNLI,
rep_baseline.md: BERT at lr 2e-5, batch 32, 3 epochs, 128 tokens) reads as CMNLI does;
both leave out rows labelled '-' (no annotator majority), as CLUE's CMNLIProcessor
does. Labels are the files' label
strings (TNEWS's codes such as '100', IFLYTEK's '0'..'118', AFQMC's '0' / '1',
CMNLI's entailment / neutral / contradiction), taken from the training file,
so a prediction is the label CLUE's leaderboard expects. Accuracy is CLUE's
metric for all four.
"""

from configs.finetune import common

# task: (text keys, (batch size, lr, epochs))
TASKS = {
  "tnews": ("sentence", (16, 3e-5, 2)),
  "iflytek": ("sentence", (32, 2e-5, 3)),
  "afqmc": ("sentence1,sentence2", (16, 3e-5, 2)),
  "cmnli": ("sentence1,sentence2", (32, 2e-5, 3)),
  "ocnli": ("sentence1,sentence2", (32, 2e-5, 3)),
}
# NLI rows labelled '-' (no annotator majority) are left out, as CLUE's CMNLIProcessor does
# (it reads OCNLI too).
NLI = ("cmnli", "ocnli")


def get_config(arg: str = "tnews"):
  task, _, size = arg.partition(",")
  if task not in TASKS:
    raise ValueError(f"unknown CLUE task {task!r}; known: {sorted(TASKS)}")
  keys, (batch_size, lr, epochs) = TASKS[task]
  c = common.get_config("classification", size or "base")
  c.init.hf_dir = "bert-base-chinese"
  c.data.update(
    text_columns=keys,
    label_column="label",
    file_format="jsonl",
    labels=(),
    metrics=("accuracy",),
    max_seq_length=128,
    skip_labels=("-",) if task in NLI else (),
  )
  c.batch_size = batch_size
  c.epochs = epochs
  c.optimizer.lr = lr
  c.early_stopping.update(metric="accuracy", mode="max")
  return c

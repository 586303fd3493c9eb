"""Any text classification file: TSV, CSV or JSON lines, one text or a pair, labels from it.

  python -m train.main --config=configs/finetune/classification.py:minilm \\
      --workdir=/tmp/mine --config.data.train_path=train.tsv --config.data.eval_path=dev.tsv

Read as given: a headerless `text<TAB>label` file (columns 0 and 1, the
defaults), or one with a header (detected: its first row's label is not like
the labels below it), a CSV (`.csv`, quoted fields) or JSON lines (`.jsonl`,
one object per line: --config.data.text_columns=sentence
--config.data.label_column=label). Other columns: --config.data.text_columns=2
(or a header name; two, comma-separated, make a pair) and
--config.data.label_column=0. The classes are the sorted labels of the
training file unless --config.data.labels lists them in id order;
data.label_names names them. --config.data.max_train_examples=N reads the first
N training rows. Settings are the BERT paper's fine-tuning (batch 32, 3 epochs,
lr 2e-5, seq 128); `:<size>` picks the BERT (default base).
"""

from configs.finetune import common


def get_config(size: str = "base"):
  c = common.get_config("classification", size or "base")
  c.data.update(
    text_columns="0", label_column="1", has_header="auto", metrics=("accuracy", "macro_f1")
  )
  c.early_stopping.update(metric="accuracy", mode="max")
  return c

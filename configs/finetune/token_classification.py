"""Any CoNLL-format NER file: its own entity types, read from the training file.

  python -m train.main --config=configs/finetune/token_classification.py:minilm \\
      --workdir=/tmp/tags --config.data.train_path=train.conll \\
      --config.data.eval_path=dev.conll

One word per line with its tag in the last column (--config.data.tag_column=N
for another), a blank line between sentences, `-DOCSTART-` lines dropped; IOB1
tags are read as BIO. The tag set is 'O', then B- and I- of each entity type in
the training file, unless --config.data.labels lists it. Scored by entity F1
(seqeval) over the B-/I- spans. --config.data.max_train_examples=N reads the
first N training sentences. Settings are the BERT paper's NER fine-tuning
(batch 32, 3 epochs, lr 5e-5, seq 128); `:<size>` picks the BERT (default base).
"""

from configs.finetune import common


def get_config(size: str = "base"):
  c = common.get_config("token_classification", size or "base")
  c.batch_size = 32
  c.epochs = 3
  c.optimizer.lr = 5e-5
  c.early_stopping.update(metric="f1", mode="max")
  return c

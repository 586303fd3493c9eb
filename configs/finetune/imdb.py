"""IMDB movie reviews (TFDS imdb_reviews): positive or negative; accuracy.

Reviews average ~230 words, far past 128 tokens: this uses 512 and batch 16
(the memory of batch 32 at 128 is not enough for 32 at 512), lr 2e-5, 3 epochs.
Longer reviews are truncated from the end, counted in the log. TFDS has no
dev split, so the test split serves as eval set.

  python -m train.main --config=configs/finetune/imdb.py --workdir=/tmp/imdb
"""

from configs.finetune import common


def get_config(size: str = "base"):
  c = common.get_config("classification", size)
  c.data.update(
    source="tfds",
    tfds_name="imdb_reviews",
    tfds_train_split="train",
    tfds_eval_split="test",
    text_columns="text",
    labels=(),
    metrics=("accuracy",),
    max_seq_length=512,
  )
  c.batch_size = 16
  c.epochs = 3
  c.optimizer.lr = 2e-5
  c.early_stopping.update(metric="accuracy", mode="max")
  return c

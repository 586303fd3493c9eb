"""SQuAD v1.1: exact match and F1 (the official normalisation). BERT-base.

The BERT paper's settings: seq 384, doc stride 128, max query 64 tokens,
lr 3e-5, batch 32, 2 epochs; 20-best spans of at most 30 tokens.

  python -m train.main --config=configs/finetune/squad.py --workdir=/tmp/squad \\
      --config.data.train_path=squad/train-v1.1.json \\
      --config.data.eval_path=squad/dev-v1.1.json

or --config.data.source=tfds (TFDS squad/v1.1).
"""

from configs.finetune import common


def get_config(size: str = "base"):
  c = common.get_config("question_answering", size)
  c.data.update(
    tfds_name="squad/v1.1",
    max_seq_length=384,
    doc_stride=128,
    max_query_length=64,
    n_best_size=20,
    max_answer_length=30,
  )
  c.batch_size = 32
  c.epochs = 2
  c.optimizer.lr = 3e-5
  c.early_stopping.update(metric="f1", mode="max")
  return c

"""The README's first command: bert-tiny pretrained on CPU in a few minutes.

Corpus: the Python standard library's docstrings (data/corpus.py), so it runs on
a fresh machine with no download; the WordPiece vocab is learned from it.

  python -m train.main --config=configs/pretrain/bert_tiny.py --workdir=/tmp/bert_tiny
  python -m train.main --config=configs/pretrain/bert_tiny.py:30 ...   # a 30-step smoke run

The optional argument is the number of steps; warmup, logging, evaluation and
checkpoints keep their place in the run (every quarter: four checkpoints).
`STEPS=30 bash launch/local.sh` passes it.
"""

from configs.pretrain import common


def get_config(steps: str = "1000"):
  total = int(steps)
  if total < 4:
    raise ValueError(f"bert_tiny.py:{steps}: give at least 4 steps")
  c = common.get_config("tiny")
  c.model.vocab_size = 8192
  c.model.max_position_embeddings = 128
  c.data.update(
    source="embedded",
    vocab="train",
    train_vocab_size=8192,
    max_seq_length=128,
    dupe_factor=2,
    max_predictions=20,
    heldout_documents=0.05,
  )
  c.batch_size = 32
  c.optimizer.update(lr=1e-3, warmup_steps=max(1, total // 10), total_steps=total)
  c.checkpoint.update(every_steps=total // 4)
  c.log_every_steps = max(1, total // 20)
  c.eval_every_steps = total // 4
  c.eval_batches = 8
  return c

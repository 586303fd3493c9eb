"""The README's first command: bert-tiny pretrained on CPU in a few minutes.

Corpus: the Python standard library's docstrings (data/corpus.py), so it runs on
a fresh machine with no download; the WordPiece vocab is learned from it.

  python -m train.main --config=configs/pretrain/bert_tiny.py --workdir=/tmp/bert_tiny
"""

from configs.pretrain import common


def get_config():
  c = common.get_config("tiny")
  c.model.vocab_size = 8192
  c.model.max_position_embeddings = 128
  c.data.update(source="embedded", vocab="train", train_vocab_size=8192,
                max_seq_length=128, dupe_factor=2, max_predictions=20,
                heldout_documents=0.05)
  c.batch_size = 32
  c.optimizer.update(lr=1e-3, warmup_steps=100, total_steps=1000)
  c.checkpoint.update(every_steps=250)
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.eval_batches = 8
  return c

"""A small corpus, vocab and config that the pretraining tests make for themselves."""

import numpy as np

from configs.pretrain import common
from helpers import set_keys

WORDS = (
  "the cat dog bird fish sat ran flew swam on under over near a big small red blue "
  "green house tree river hill quickly slowly and then saw heard found"
).split()


def write_corpus(path, documents=40, seed=0):
  """google-research/bert text format: a sentence per line, blank line between documents."""
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(documents):
    for _ in range(rng.integers(3, 9)):
      lines.append(" ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + ".")
    lines.append("")
  path.write_text("\n".join(lines), encoding="utf-8")
  return str(path)


def write_vocab(path):
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  path.write_text("\n".join(specials + sorted(set(WORDS)) + ["."]) + "\n", encoding="utf-8")
  return str(path)


def tiny_config(tmp_path, **overrides):
  c = common.get_config("tiny")
  c.model.update(
    vocab_size=64,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
  )
  c.data.update(
    source="text",
    paths=write_corpus(tmp_path / "corpus.txt"),
    vocab=write_vocab(tmp_path / "vocab.txt"),
    max_seq_length=32,
    dupe_factor=2,
    max_predictions=5,
    heldout_documents=4,
    prepare_in_workdir=False,  # the in-memory path; test_prepared_data prepares in a workdir
  )
  c.batch_size = 8
  c.optimizer.update(lr=3e-3, warmup_steps=2, total_steps=8)
  c.checkpoint.update(every_steps=2, async_save=False)
  c.log_every_steps = 2
  c.eval_every_steps = 4
  c.eval_batches = 2
  c.mesh.shape = dict(data=-1, fsdp=1, tensor=1)
  return set_keys(c, overrides)

"""What many tests build: small random BERTs, batches, configs with dotted overrides.

`helpers.pretraining` and `helpers.finetune` make the corpora, vocabs and tiny
configs of the pretraining and fine-tuning tests.
"""

import contextlib
import logging
import os

import numpy as np


def xla_flags(devices: int) -> str:
  """The suite's XLA_FLAGS (conftest.py) with `devices` fake CPU devices: a subprocess that
  must compute bit for bit what this process does needs the same compiler options."""
  kept = [
    flag
    for flag in os.environ.get("XLA_FLAGS", "").split()
    if not flag.startswith("--xla_force_host_platform_device_count")
  ]
  return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def tiny_hf_config(**overrides):
  """A small random BERT for transformers; keys as in transformers.BertConfig."""
  from transformers import BertConfig as HFBertConfig

  values = dict(
    vocab_size=101,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=40,
    type_vocab_size=2,
  )
  values.update(overrides)
  return HFBertConfig(**values)


def flax_from_torch(torch_model, **compute):
  """Our BertForPreTraining carrying the torch model's weights (via model/convert)."""
  from flax import nnx

  from model.config import BertConfig
  from model.convert import hf_to_params, merge_trees
  from model.heads import BertForPreTraining

  config = BertConfig.from_hf_dict(torch_model.config.to_dict(), **compute)
  graphdef, params = nnx.split(BertForPreTraining(config, nnx.Rngs(0)), nnx.Param)
  tensors = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  tree, _ = hf_to_params(tensors, config)
  nnx.replace_by_pure_dict(params, merge_trees(nnx.to_pure_dict(params), tree))
  return nnx.merge(graphdef, params)


def random_batch(seed, batch, length, vocab, pad_tail=True):
  """ids / token types / attention mask with some rows padded at the end."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, (batch, length)).astype(np.int32)
  types = np.zeros((batch, length), np.int32)
  mask = np.ones((batch, length), np.int32)
  for row in range(batch):
    cut = rng.integers(length // 3, length) if (pad_tail and row % 2) else length
    split = rng.integers(1, cut)
    types[row, split:cut] = 1
    mask[row, cut:] = 0
    ids[row, cut:] = 0
  return ids, types, mask


def set_keys(c, overrides):
  """Sets dotted keys ('optimizer.lr') as --config.optimizer.lr would."""
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return c


def saved_state(workdir, step=None):
  """(step, the whole saved state tree as numpy) of a workdir's checkpoint (None: newest)."""
  import os

  from train.checkpoint import read_on_host

  state, _, step = read_on_host(os.path.join(workdir, "checkpoints"), step, parts=None)
  return step, state


def assert_bitwise_equal(a, b):
  """Same tree, same dtypes, same bits; an empty tree is a mistake, not a pass."""
  import jax

  assert jax.tree.structure(a) == jax.tree.structure(b)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert leaves_a
  for x, y in zip(leaves_a, leaves_b):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@contextlib.contextmanager
def absl_records_in(caplog):
  """Routes absl's log records, which do not reach the root logger, into `caplog`."""
  logger = logging.getLogger("absl")
  logger.addHandler(caplog.handler)
  try:
    yield caplog
  finally:
    logger.removeHandler(caplog.handler)

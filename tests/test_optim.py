"""Schedules, weight-decay masks, frozen leaves and clipping in train/optim.py."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from model.bert import Dense, LayerNorm
from train import optim


def optimizer_config(**overrides):
  cfg = dict(
    name="adamw",
    lr=1.0,
    warmup_steps=10,
    total_steps=110,
    decay="linear",
    end_lr=0.0,
    power=1.0,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    weight_decay=0.0,
    clip_norm=0.0,
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def bert_like_params():
  """A plain dict with each kind of BERT leaf: kernel, bias, LayerNorm, embeddings."""
  return {
    "embeddings": {
      "word": jnp.ones((6, 4)),
      "position": jnp.ones((8, 4)),
      "token_type": jnp.ones((2, 4)),
      "norm": {"scale": jnp.ones(4), "bias": jnp.ones(4)},
    },
    "dense": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)},
  }


class Tiny(nnx.Module):
  def __init__(self, rngs):
    self.norm = LayerNorm(4, 1e-12, rngs)
    self.dense = Dense("bd,de->be", (4, 3), ("embed", None), (None,), rngs, 0.02)
    self.head = Dense("bd,de->be", (3, 2), (None, None), (None,), rngs, 0.02)


def schedule_at(cfg, steps):
  schedule = optim.make_schedule(cfg)
  return [float(schedule(s)) for s in steps]


def test_linear_schedule_warms_up_then_decays_to_end_lr():
  values = schedule_at(optimizer_config(), [0, 5, 10, 60, 110, 200])
  np.testing.assert_allclose(values, [0.0, 0.5, 1.0, 0.5, 0.0, 0.0], atol=1e-6)


def test_polynomial_schedule_follows_power_towards_end_lr():
  cfg = optimizer_config(decay="polynomial", power=2.0, end_lr=0.1)
  values = schedule_at(cfg, [0, 10, 60, 110])
  np.testing.assert_allclose(values, [0.0, 1.0, 0.1 + 0.9 * 0.25, 0.1], atol=1e-6)


def test_cosine_and_constant_schedules_at_midpoint():
  cosine = schedule_at(optimizer_config(decay="cosine", end_lr=0.2), [60, 110])
  np.testing.assert_allclose(cosine, [0.6, 0.2], atol=1e-6)
  constant = schedule_at(optimizer_config(decay="constant"), [5, 60, 500])
  np.testing.assert_allclose(constant, [0.5, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(warmup_steps=200), "optimizer.warmup_steps=200 exceeds optimizer.total_steps=110"),
    (dict(decay="step"), "optimizer.decay='step'"),
    (dict(lr=0.0), "optimizer.lr=0.0"),
    (dict(end_lr=2.0), "optimizer.end_lr=2.0"),
    (dict(total_steps=None), "optimizer.total_steps is missing"),
  ],
)
def test_bad_schedule_config_names_the_key(overrides, message):
  with pytest.raises(ValueError, match=message):
    optim.make_schedule(optimizer_config(**overrides))


def test_unknown_optimizer_name_names_the_key():
  with pytest.raises(ValueError, match="optimizer.name='adagrad'"):
    optim.make_optimizer(optimizer_config(name="adagrad"))


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_weight_decay_skips_biases_and_layernorm(name):
  params = bert_like_params()
  cfg = optimizer_config(name=name, warmup_steps=0, weight_decay=0.1)
  tx = optim.make_optimizer(cfg)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  moved = {
    "/".join(optim.path_names(p)): bool(jnp.any(u != 0))
    for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]
  }
  assert moved == {
    "embeddings/word": True,
    "embeddings/position": True,
    "embeddings/token_type": True,
    "dense/kernel": True,
    "embeddings/norm/scale": False,
    "embeddings/norm/bias": False,
    "dense/bias": False,
  }
  if name == "adamw":  # decoupled decay: update = -lr * wd * param
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.1, rtol=1e-6)


def test_decay_mask_reads_nnx_state_paths():
  state = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
  mask = optim.decay_mask(state)
  flat = {
    "/".join(optim.path_names(p)): m for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]
  }
  assert flat == {
    "dense/bias": False,
    "dense/kernel": True,
    "head/bias": False,
    "head/kernel": True,
    "norm/bias": False,
    "norm/scale": False,
  }


def test_count_params_splits_trainable_from_frozen():
  state = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
  trainable, frozen = nnx.split_state(state, lambda path, _: path[0] == "head", ...)
  counts = optim.count_params(trainable, frozen)
  assert counts == {
    "total": 4 * 2 + 4 * 3 + 3 + 3 * 2 + 2,
    "trainable": 8,
    "percent": pytest.approx(100 * 8 / 31),
  }
  assert optim.count_params(state)["percent"] == 100.0
  assert optim.tree_bytes(trainable) == 8 * 4


def test_clipping_caps_the_global_norm():
  params = {"a": jnp.zeros((3, 5)), "b": jnp.zeros(7)}
  cfg = optimizer_config(name="sgd", warmup_steps=0, decay="constant", clip_norm=0.5)
  tx = optim.make_optimizer(cfg)
  huge = jax.tree.map(lambda p: jnp.full_like(p, 1e6), params)
  updates, _ = tx.update(huge, tx.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(0.5, abs=1e-5)

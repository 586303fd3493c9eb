"""The same model on any mesh: same loss and gradients, kernels really split."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import random_batch

from model.config import BertConfig
from model.heads import BertForPreTraining
from train import mesh as mesh_lib
from train.losses import PretrainingObjective
from train.state import create_train_state

CONFIG = BertConfig(
  vocab_size=128,
  hidden_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=128,
  max_position_embeddings=32,
  hidden_dropout_prob=0.0,
  attention_probs_dropout_prob=0.0,
)


def _batch(config, batch=8, length=16, predictions=4):
  ids, types, mask = random_batch(0, batch, length, config.vocab_size)
  rng = np.random.default_rng(1)
  return {
    "input_ids": ids,
    "token_type_ids": types,
    "attention_mask": mask,
    "masked_positions": rng.integers(0, length // 3, (batch, predictions)).astype(np.int32),
    "masked_ids": rng.integers(0, config.vocab_size, (batch, predictions)).astype(np.int32),
    "masked_weights": (rng.random((batch, predictions)) < 0.8).astype(np.float32),
    "next_sentence_label": rng.integers(0, 2, (batch,)).astype(np.int32),
  }


def loss_and_grads(config, mesh, params=None):
  """Loss and gradients of the pretraining objective, computed on `mesh`."""
  factory = lambda rngs: BertForPreTraining(config, rngs)
  graphdef, state, _, shardings = create_train_state(
    factory, optax.sgd(0.1), mesh, mesh_lib.DEFAULT_RULES, seed=0
  )
  if params is not None:
    params = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x), s), params, shardings.params)
  else:
    params = state.params
  objective = PretrainingObjective()
  batch = mesh_lib.shard_batch(_batch(config), mesh, mesh_lib.DEFAULT_RULES)

  @jax.jit
  def fn(params, batch):
    def loss(params):
      return objective(nnx.merge(graphdef, params), batch, None, objective.normalizers(batch))[0]

    return jax.value_and_grad(loss)(params)

  with mesh_lib.activate(mesh, mesh_lib.DEFAULT_RULES):
    loss, grads = fn(params, batch)
  return params, loss, grads


@pytest.fixture(scope="module")
def reference():
  mesh = mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  params, loss, grads = loss_and_grads(CONFIG, mesh)
  return jax.device_get(params), float(loss), jax.device_get(grads)


# (2, 2, 2), every axis split, stays in the fast tier; the other layouts are slow.
@pytest.mark.parametrize(
  "shape",
  [
    pytest.param((8, 1, 1), marks=pytest.mark.slow),
    pytest.param((2, 4, 1), marks=pytest.mark.slow),
    (2, 2, 2),
    pytest.param((1, 2, 4), marks=pytest.mark.slow),
  ],
)
def test_loss_and_gradients_match_one_device(reference, shape):
  ref_params, ref_loss, ref_grads = reference
  mesh = mesh_lib.make_mesh(dict(zip(mesh_lib.MESH_AXES, shape)))
  _, loss, grads = loss_and_grads(CONFIG, mesh, ref_params)
  assert abs(float(loss) - ref_loss) < 1e-5
  diff = jax.tree.map(
    lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), grads, ref_grads
  )
  assert max(jax.tree.leaves(diff)) < 1e-5, diff


@pytest.mark.slow
def test_big_kernels_are_split_over_fsdp_and_tensor():
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  params, _, grads = loss_and_grads(CONFIG, mesh)
  layers = params["bert"]["encoder"]["layers"]
  query = layers["attention"]["query"]["kernel"][...]  # [layers, embed, heads, kv]
  assert query.sharding.shard_shape(query.shape) == (2, 32, 2, 16)
  ffn = layers["ffn"]["intermediate"]["kernel"][...]  # [layers, embed, mlp]
  assert ffn.sharding.shard_shape(ffn.shape) == (2, 32, 64)
  word = params["bert"]["embeddings"]["word"][...]  # [vocab, embed]
  assert word.sharding.shard_shape(word.shape) == (64, 32)
  assert len({d.id for d in ffn.sharding.device_set}) == 8


@pytest.mark.parametrize(
  "shape,message",
  [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "needs 3 devices, but 8 are available"),
    ({"data": -1, "fsdp": 3, "tensor": 1}, "does not divide the 8 devices"),
    ({"data": -1, "fsdp": -1}, "only one axis may be -1"),
    ({"data": 8, "pipeline": 1}, "unknown axes"),
  ],
)
def test_mesh_that_does_not_fit_the_devices_is_refused(shape, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.make_mesh(shape)


def test_minus_one_fills_the_remaining_devices():
  assert mesh_lib.make_mesh({"data": -1, "tensor": 2}).devices.shape == (4, 1, 2)


@pytest.mark.slow
@pytest.mark.parametrize(
  "layout,shape",
  [("dp", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("tp4_dp2", (2, 1, 4)), ("dp_fsdp_tp", (2, 2, 2))],
)
def test_training_steps_on_each_layout_match_one_device(layout, shape):
  """k AdamW steps through the real train step: the same losses on every layout."""
  from train import step as step_lib

  objective = PretrainingObjective()

  def losses_on(mesh):
    factory = lambda rngs: BertForPreTraining(CONFIG, rngs)
    tx = optax.adamw(1e-3)
    graphdef, state, frozen, shardings = create_train_state(
      factory, tx, mesh, mesh_lib.DEFAULT_RULES, 0
    )
    step = jax.jit(
      step_lib.make_train_step(graphdef, tx, objective, param_shardings=shardings.params),
      out_shardings=(shardings, None),
    )
    batch = mesh_lib.shard_batch(_batch(CONFIG), mesh, mesh_lib.DEFAULT_RULES)
    losses = []
    with mesh_lib.activate(mesh, mesh_lib.DEFAULT_RULES):
      for _ in range(3):
        state, metrics = step(state, frozen, batch)
        losses.append(float(metrics["total_loss"]))
    return losses, state

  one, _ = losses_on(mesh_lib.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1]))
  many, state = losses_on(mesh_lib.make_mesh(dict(zip(mesh_lib.MESH_AXES, shape))))
  np.testing.assert_allclose(many, one, atol=1e-5)
  assert one[-1] < one[0]
  kernel = state.params["bert"]["encoder"]["layers"]["ffn"]["intermediate"]["kernel"][...]
  assert len(kernel.sharding.device_set) == 8  # the state stays on the whole mesh

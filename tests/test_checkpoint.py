"""Checkpoints resume exactly, move between meshes and never destroy good ones."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from helpers import assert_bitwise_equal
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from train.checkpoint import Checkpointer, abstract_like, check_compatible

META = {"model": {"hidden_size": 16, "num_layers": 2}, "data_seed": 0}


class Tiny(nnx.Module):
  def __init__(self, rngs):
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (4, 8)))
    self.bias = nnx.Param(jnp.arange(8, dtype=jnp.float32))


def train_state(seed: int, as_nnx: bool = False):
  """What the loop saves: params, optimizer moments, a uint32 PRNG key, the step."""
  key = jax.random.PRNGKey(seed)
  if as_nnx:
    params = nnx.state(Tiny(nnx.Rngs(seed)), nnx.Param)
  else:
    params = {"kernel": jax.random.normal(key, (4, 8)), "bias": jnp.full(8, float(seed))}
  return {
    "params": params,
    "mu": jax.tree.map(lambda p: p * 0.5, params),
    "rng": jax.random.fold_in(key, 7),
    "step": jnp.asarray(seed, jnp.int32),
  }


@pytest.mark.parametrize("as_nnx", [False, True], ids=["dict", "nnx_state"])
def test_resume_is_bitwise_exact(tmp_path, as_nnx):
  state = train_state(3, as_nnx)
  assert state["rng"].dtype == jnp.uint32 and state["step"].dtype == jnp.int32
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    assert ckpt.save(3, state, META)
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 3
    restored, meta = ckpt.restore(None, abstract_like(state))
  assert_bitwise_equal(restored, state)
  assert meta == META
  if as_nnx:
    assert isinstance(restored["params"], nnx.State)


def test_max_to_keep_keeps_the_newest(tmp_path):
  state = train_state(0)
  with Checkpointer(tmp_path, max_to_keep=2, async_save=False) as ckpt:
    assert ckpt.latest_step() is None
    for step in (10, 20, 30, 40):
      ckpt.save(step, state, META)
    assert ckpt.all_steps() == [30, 40]
    assert ckpt.latest_step() == 40


def test_orbax_raises_on_an_existing_step_and_skips_older_ones(tmp_path):
  """Pins Orbax 0.12 behaviour our wrapper relies on (and shields the loop from)."""
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
  args = ocp.args.Composite(
    state=ocp.args.StandardSave(train_state(1)), meta=ocp.args.JsonSave(META)
  )
  with ocp.CheckpointManager(tmp_path / "raw", options=options) as manager:
    assert manager.save(5, args=args)
    assert manager.save(5, args=args) is False  # should_save: not after latest
    assert manager.save(4, args=args) is False
    with pytest.raises(ocp.checkpoint_manager.StepAlreadyExistsError):
      manager.save(5, args=args, force=True)


def test_saving_an_existing_step_keeps_the_old_one(tmp_path, caplog):
  first, second = train_state(1), train_state(2)
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    assert ckpt.save(5, first, META)
    with caplog.at_level(logging.WARNING):
      assert ckpt.save(5, second, {"other": 1}, force=True) is False
      assert ckpt.save(4, second, META, force=True) is False
    assert "step 5 already exists" in caplog.text
    assert "step 4 is behind step 5" in caplog.text
    assert ckpt.all_steps() == [5]
    restored, meta = ckpt.restore(5, abstract_like(first))
  assert_bitwise_equal(restored, first)
  assert meta == META


def test_a_crashing_run_leaves_good_checkpoints_restorable(tmp_path):
  states = {step: train_state(step) for step in (1, 2, 3)}
  with pytest.raises(RuntimeError, match="loss is NaN"):
    with Checkpointer(tmp_path, max_to_keep=3, async_save=True) as ckpt:
      for step in (1, 2, 3):
        ckpt.save(step, states[step], META)
      raise RuntimeError("loss is NaN")  # dies with the step-3 save maybe in flight
  # A rerun with another config stops at the check, before any save.
  with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
    wrong = {**META, "model": {**META["model"], "hidden_size": 32}}
    with pytest.raises(ValueError, match="hidden_size"):
      check_compatible(ckpt.read_meta(), wrong, ["model", "data_seed"])
    assert ckpt.all_steps() == [1, 2, 3]
    for step, state in states.items():
      restored, _ = ckpt.restore(step, abstract_like(state))
      assert_bitwise_equal(restored, state)


def test_restore_onto_another_mesh_gets_the_target_sharding(tmp_path):
  devices = jax.devices()
  assert len(devices) == 8, "tests/conftest.py sets 8 fake CPU devices"
  line = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  grid = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
  value = jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16)
  saved = {
    "w": jax.device_put(value, NamedSharding(line, P("data"))),
    "step": jnp.asarray(7, jnp.int32),
  }
  with Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(7, saved, META)
  target = NamedSharding(grid, P("data", "model"))
  replicated = NamedSharding(grid, P())
  abstract = {
    "w": jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=target),
    "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
  }
  with Checkpointer(tmp_path) as ckpt:
    restored, _ = ckpt.restore(7, abstract)
  assert restored["w"].sharding == target
  assert restored["w"].addressable_shards[0].data.shape == (4, 4)
  assert np.array_equal(np.asarray(restored["w"]), np.asarray(value))
  assert int(restored["step"]) == 7


def test_async_save_then_wait_then_restore(tmp_path):
  state = train_state(4, as_nnx=True)
  ckpt = Checkpointer(tmp_path, async_save=True)
  try:
    assert ckpt.save(4, state, META)
    ckpt.wait()
    assert ckpt.all_steps() == [4]
    restored, meta = ckpt.restore(4, abstract_like(state))
  finally:
    ckpt.close()
  assert_bitwise_equal(restored, state)
  assert meta == META


def test_check_compatible_names_each_differing_key_with_both_values():
  saved = {"model": {"hidden_size": 256, "num_layers": 2, "dims": [1, 2]}, "data_seed": 0}
  current = {"model": {"hidden_size": 128, "num_layers": 2, "dims": (1, 2)}, "data_seed": 1}
  with pytest.raises(ValueError) as error:
    check_compatible(saved, current, ["model", "data_seed"], workdir="/runs/a")
  message = str(error.value)
  assert message.startswith("workdir /runs/a holds a checkpoint from a different config: ")
  assert "model.hidden_size: checkpoint 256, config 128" in message
  assert "data_seed: checkpoint 0, config 1" in message
  assert "num_layers" not in message and "dims" not in message  # tuple == stored list
  check_compatible(saved, {**saved, "lr": 1.0}, ["model", "data_seed"])  # unchecked key


def test_check_compatible_reports_a_missing_key():
  with pytest.raises(ValueError, match="model.vocab_size: checkpoint '<missing>', config 30522"):
    check_compatible({"model": {}}, {"model": {"vocab_size": 30522}}, ["model.vocab_size"])


def test_checkpoints_from_before_a_field_or_saved_at_its_legacy_value_still_resume(tmp_path):
  """data.packing joined pretraining configs after runs saved without it, while fine-tuning
  runs saved it as False: both resume under today's config; True is another config."""
  from configs.pretrain import common
  from train.checkpoint import check_newest_step, fingerprint

  config = common.get_config("tiny")
  today = {"config": fingerprint(config), "total_steps": 8}
  before = {**today, "config": dict(today["config"])}
  before["config"]["data"] = dict(before["config"]["data"], packing=False)  # a saved False
  for saved, name in ((today, "today"), (before, "before")):
    with Checkpointer(tmp_path / name, max_to_keep=1) as ckpt:
      ckpt.save(1, train_state(0), saved)
      check_newest_step(ckpt, today, str(tmp_path / name))
      config.data.packing = True
      with pytest.raises(ValueError, match="packing"):
        check_newest_step(ckpt, {**today, "config": fingerprint(config)}, name)
      config.data.packing = False


def test_runs_from_before_tie_word_embeddings_resume_and_an_own_decoder_is_another_config(
  tmp_path,
):
  from configs.pretrain import common
  from train.checkpoint import check_newest_step, fingerprint

  config = common.get_config("tiny")
  today = {"config": fingerprint(config), "total_steps": 8}
  assert "tie_word_embeddings" not in today["config"]["model"]  # tied: what runs before meant
  with Checkpointer(tmp_path / "run", max_to_keep=1) as ckpt:
    ckpt.save(1, train_state(0), today)
    check_newest_step(ckpt, today, str(tmp_path / "run"))
    config.model.tie_word_embeddings = False
    with pytest.raises(ValueError, match="tie_word_embeddings"):
      check_newest_step(ckpt, {**today, "config": fingerprint(config)}, "run")

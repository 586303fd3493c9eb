"""The train state, created already sharded over the mesh.

Nothing is ever materialised whole on one device: the model is traced with
`nnx.eval_shape`, its logical axis names become NamedShardings through the
mesh rules, and the real initialiser runs under `jax.jit(out_shardings=...)`,
so each device computes only its own shard.

The parameters are split by a `trainable` filter (model/peft.py): the
TrainState holds the trainable ones and their optimizer state, and is what a
checkpoint saves; the frozen ones travel beside it, get no gradients and no
moments, and come back from the base weights (config.init) on every start.
With full training the frozen part is empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from model import convert
from train.mesh import logical_to_sharding

ModelFactory = Callable[[nnx.Rngs], nnx.Module]


@flax.struct.dataclass
class TrainState:
  """Everything a bit-exact resume needs besides the data position (= step)."""

  step: jax.Array  # int32 scalar
  params: nnx.State  # nnx.Param leaves, float32
  opt_state: Any
  rng: jax.Array  # uint32 key data: the run's base key, folded with step


def abstract_model(factory: ModelFactory):
  """(graphdef, abstract params) without allocating a single weight."""
  abstract = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
  return nnx.split(abstract, nnx.Param)


def split_params(params: nnx.State, trainable=nnx.Param) -> tuple[nnx.State, nnx.State]:
  """(trainable, frozen) parameters; `trainable` is an nnx filter."""
  return nnx.split_state(params, trainable, ...)


def param_shardings(abstract_params: nnx.State, mesh: Mesh, rules) -> nnx.State:
  """NamedShardings for each parameter from its logical axis names."""
  return logical_to_sharding(nnx.get_partition_spec(abstract_params), mesh, rules)


def _opt_state_shardings(tx, abstract_params, shardings, mesh):
  """Moments shard like their parameters; counters and scalars are replicated."""
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    abstract_opt,
    shardings,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda x: isinstance(x, NamedSharding),
  )


def _initializer(factory: ModelFactory, tx: optax.GradientTransformation, seed: int, trainable):
  def init():
    init_key, run_key = jax.random.split(jax.random.key(seed))
    params = nnx.state(factory(nnx.Rngs(params=init_key)), nnx.Param)
    train, frozen = split_params(params, trainable)
    state = TrainState(
      step=jnp.zeros((), jnp.int32),
      params=train,
      opt_state=tx.init(train),
      rng=jax.random.key_data(run_key),
    )
    return state, frozen

  return init


def abstract_train_state(
  factory: ModelFactory, tx: optax.GradientTransformation, mesh: Mesh, rules, trainable=nnx.Param
):
  """(graphdef, abstract TrainState, abstract frozen params, the TrainState's shardings).

  Abstract values are ShapeDtypeStructs carrying their shardings. Nothing is
  allocated: this is what ahead-of-time compilation for a TPU topology lowers
  against, and what `create_train_state` fills in.
  """
  graphdef, abstract_params = abstract_model(factory)
  abstract_trainable, abstract_frozen = split_params(abstract_params, trainable)
  p_shardings = param_shardings(abstract_trainable, mesh, rules)
  replicated = NamedSharding(mesh, P())
  shardings = TrainState(
    step=replicated,
    params=p_shardings,
    opt_state=_opt_state_shardings(tx, abstract_trainable, p_shardings, mesh),
    rng=replicated,
  )
  f_shardings = param_shardings(abstract_frozen, mesh, rules)
  shapes = jax.eval_shape(_initializer(factory, tx, 0, trainable))
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    shapes,
    (shardings, f_shardings),
  )
  return graphdef, abstract[0], abstract[1], shardings


def create_train_state(
  factory: ModelFactory,
  tx: optax.GradientTransformation,
  mesh: Mesh,
  rules,
  seed: int,
  trainable=nnx.Param,
):
  """Returns (graphdef, sharded TrainState, sharded frozen params, the TrainState's shardings)."""
  graphdef, _, abstract_frozen, shardings = abstract_train_state(
    factory, tx, mesh, rules, trainable
  )
  f_shardings = jax.tree.map(lambda x: x.sharding, abstract_frozen)
  state, frozen = jax.jit(
    _initializer(factory, tx, seed, trainable), out_shardings=(shardings, f_shardings)
  )()
  return graphdef, state, frozen, shardings


def _take(tree: dict, like: dict) -> dict:
  """The part of `tree` with the keys of `like` (recursively)."""
  return {k: _take(tree[k], v) if isinstance(v, dict) else tree[k] for k, v in like.items()}


def place_tree(part: nnx.State, tree: dict) -> nnx.State:
  """A copy of `part` holding `tree`'s values (numpy; every key of `part`), each on its sharding
  and in its dtype (float32; int8 for a quantized kernel)."""
  pure = nnx.to_pure_dict(part)
  values = jax.tree.map(
    lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding),
    _take(tree, pure),
    pure,
  )
  part = jax.tree.map(lambda x: x, part)  # a copy: replace_by_pure_dict mutates
  nnx.replace_by_pure_dict(part, values)
  return part


def load_params(
  state: TrainState, frozen: nnx.State, tree: dict, tx: optax.GradientTransformation
) -> tuple[TrainState, nnx.State]:
  """Puts a converted parameter tree (numpy, any subset of the model) into the parameters.

  Returns (state, frozen) with the tree's leaves in whichever part holds them.
  Shapes are checked against the model first; each leaf is placed straight
  onto its parameter's sharding. The optimizer state is re-initialised for
  the new values.
  """
  pure_train, pure_frozen = nnx.to_pure_dict(state.params), nnx.to_pure_dict(frozen)
  merged = convert.merge_trees(convert.union_trees(pure_train, pure_frozen), tree)
  params, frozen = place_tree(state.params, merged), place_tree(frozen, merged)
  opt_shardings = jax.tree.map(lambda x: x.sharding, state.opt_state)
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  return state.replace(params=params, opt_state=opt_state), frozen

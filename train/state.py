"""The train state, created already sharded over the mesh.

Nothing is ever materialised whole on one device: the model is traced with
`nnx.eval_shape`, its logical axis names become NamedShardings through the
mesh rules, and the real initialiser runs under `jax.jit(out_shardings=...)`,
so each device computes only its own shard.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from model import convert
from train.mesh import logical_to_sharding

ModelFactory = Callable[[nnx.Rngs], nnx.Module]


@flax.struct.dataclass
class TrainState:
  """Everything a bit-exact resume needs besides the data position (= step)."""
  step: jax.Array          # int32 scalar
  params: nnx.State        # nnx.Param leaves, float32
  opt_state: Any
  rng: jax.Array           # uint32 key data: the run's base key, folded with step


def abstract_model(factory: ModelFactory):
  """(graphdef, abstract params) without allocating a single weight."""
  abstract = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
  return nnx.split(abstract, nnx.Param)


def param_shardings(abstract_params: nnx.State, mesh: Mesh, rules) -> nnx.State:
  """NamedShardings for each parameter from its logical axis names."""
  return logical_to_sharding(nnx.get_partition_spec(abstract_params), mesh, rules)


def _opt_state_shardings(tx, abstract_params, shardings, mesh):
  """Moments shard like their parameters; counters and scalars are replicated."""
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  return optax.tree_map_params(
      tx, lambda _, sharding: sharding, abstract_opt, shardings,
      transform_non_params=lambda _: replicated,
      is_leaf=lambda x: isinstance(x, NamedSharding))


def _initializer(factory: ModelFactory, tx: optax.GradientTransformation, seed: int):
  def init():
    init_key, run_key = jax.random.split(jax.random.key(seed))
    params = nnx.state(factory(nnx.Rngs(params=init_key)), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=jax.random.key_data(run_key))
  return init


def abstract_train_state(factory: ModelFactory, tx: optax.GradientTransformation,
                         mesh: Mesh, rules):
  """(graphdef, TrainState of ShapeDtypeStructs carrying shardings, the shardings).

  Nothing is allocated: this is what ahead-of-time compilation for a TPU
  topology lowers against, and what `create_train_state` fills in.
  """
  graphdef, abstract_params = abstract_model(factory)
  p_shardings = param_shardings(abstract_params, mesh, rules)
  replicated = NamedSharding(mesh, P())
  shardings = TrainState(
      step=replicated, params=p_shardings,
      opt_state=_opt_state_shardings(tx, abstract_params, p_shardings, mesh),
      rng=replicated)
  shapes = jax.eval_shape(_initializer(factory, tx, 0))
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  return graphdef, abstract, shardings


def create_train_state(factory: ModelFactory, tx: optax.GradientTransformation,
                       mesh: Mesh, rules, seed: int):
  """Returns (graphdef, sharded TrainState, its shardings)."""
  graphdef, _, shardings = abstract_train_state(factory, tx, mesh, rules)
  state = jax.jit(_initializer(factory, tx, seed), out_shardings=shardings)()
  return graphdef, state, shardings


def load_params(state: TrainState, tree: dict, tx: optax.GradientTransformation) -> TrainState:
  """Puts a converted parameter tree (numpy, any subset of the model) into `state`.

  Shapes are checked against the model first; each leaf is placed straight
  onto its parameter's sharding. The optimizer state is re-initialised for
  the new values.
  """
  pure = nnx.to_pure_dict(state.params)
  merged = convert.merge_trees(pure, tree)
  placed = jax.tree.map(lambda new, old: jax.device_put(np.asarray(new, np.float32), old.sharding),
                        merged, pure)
  params = jax.tree.map(lambda x: x, state.params)  # a copy: replace_by_pure_dict mutates
  nnx.replace_by_pure_dict(params, placed)
  opt_shardings = jax.tree.map(lambda x: x.sharding, state.opt_state)
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  return state.replace(params=params, opt_state=opt_state)


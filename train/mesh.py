"""The device mesh and the one table that maps logical axis names onto it.

The model names axes ('embed', 'heads', 'batch', ...); the config's
`mesh.shape` says how many devices each mesh axis ('data', 'fsdp', 'tensor')
gets; `mesh.rules` says which logical name lands on which mesh axis. Changing
data / FSDP / tensor parallelism is a config edit, never a code edit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters: big matrices split their wide side over 'tensor' and their
# 'embed' side over 'fsdp' (ZeRO-3 style). Activations: the batch is split over
# every data-like axis; head / mlp / vocab activations follow their kernels.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("kv", None),
  ("mlp", "tensor"),
  ("layers", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
)


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Fills the one -1 entry with the devices left; errors name the config key."""
  unknown = sorted(set(shape) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh.shape has unknown axes {unknown}; expected {MESH_AXES}")
  sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
  fill = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh.shape: only one axis may be -1, got {fill}")
  for axis, size in zip(MESH_AXES, sizes):
    if size == 0 or size < -1:
      raise ValueError(f"mesh.shape.{axis}={size}: must be a positive size or -1")
  fixed = math.prod(s for s in sizes if s != -1)
  if fill:
    if num_devices % fixed:
      raise ValueError(
        f"mesh.shape {dict(zip(MESH_AXES, sizes))}: the fixed axes use {fixed} devices, "
        f"which does not divide the {num_devices} devices available"
      )
    sizes[MESH_AXES.index(fill[0])] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f"mesh.shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
      f"but {num_devices} are available; set one axis to -1 to fill"
    )
  return tuple(sizes)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'fsdp', 'tensor') mesh with Auto axes (logical constraints need them)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_mesh_shape(shape, len(devices))
  return jax.make_mesh(
    sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def rules_from_config(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """Config rules (lists from a ConfigDict) as the tuples Flax expects."""
  out = []
  for name, target in rules:
    if isinstance(target, (list, tuple)):
      target = tuple(target)
    out.append((name, target))
  return tuple(out)


def check_batch_divides(config, num_devices: int) -> None:
  """Refuses, before anything is written, a batch the mesh cannot split evenly.

  The batch (each micro-batch, with gradient accumulation) is split over the
  mesh axes the 'batch' rule names; JAX would otherwise fail at the first step.
  """
  sizes = dict(zip(MESH_AXES, resolve_mesh_shape(config.mesh.shape, num_devices)))
  target = dict(rules_from_config(config.mesh.rules)).get("batch")
  axes = () if target is None else (target,) if isinstance(target, str) else target
  shards = math.prod(sizes[a] for a in axes)
  accum = config.optimizer.get("grad_accum_steps", 1) or 1
  micro, rest = divmod(config.batch_size, accum)
  if rest or micro % shards:
    per = f"batch_size={config.batch_size}" + (f" / grad_accum_steps={accum}" if accum > 1 else "")
    raise ValueError(
      f"{per} does not split over the {shards} batch shards of the mesh "
      f"({' × '.join(f'{a}={sizes[a]}' for a in axes)} of {num_devices} devices): use a "
      f"batch_size that is a multiple of {shards * accum}, or another mesh.shape"
    )


def logical_to_sharding(logical_specs, mesh: Mesh, rules):
  """A pytree of logical PartitionSpecs -> NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules))


@contextlib.contextmanager
def activate(mesh: Mesh, rules):
  """Makes `mesh` and `rules` current, so the model's activation constraints apply."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
    yield


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Leading (batch) axis split as the 'batch' rule says, other axes replicated."""
  spec = nn.logical_to_mesh_axes(("batch",), list(rules))
  return NamedSharding(mesh, P(*spec))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, rules) -> dict[str, jax.Array]:
  """This host's rows -> one global jax.Array per key, split over the batch axes.

  Each process passes only its own slice of the global batch; on one host that
  slice is the whole batch.
  """
  sharding = batch_sharding(mesh, rules)
  return {
    key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
    for key, value in batch.items()
  }


def host_value(x) -> np.ndarray:
  """A replicated result as numpy; in a multi-process job only local shards are readable."""
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))

"""Optax optimizers for BERT: learning-rate schedules, weight-decay masks, frozen leaves.

Everything reads one `optimizer` config section:

  name          'adamw' | 'lamb' | 'adam' | 'sgd'
  lr            peak learning rate, reached at the end of warmup
  warmup_steps  linear warmup from 0 to lr
  total_steps   the step at which the decay reaches end_lr
  decay         'linear' | 'polynomial' | 'cosine' | 'constant'
  end_lr        (0.0) learning rate at total_steps
  power         (1.0) exponent of the polynomial decay
  b1, b2, eps   Adam / LAMB moments
  weight_decay  decoupled weight decay (adamw, lamb, sgd)
  clip_norm     global-norm gradient clipping; 0 or None turns it off
  momentum      (None) for sgd

Parameters may come as an `nnx.State` of `nnx.Param` or as a plain nested dict of
arrays; both are pytrees, and every mask below is built from their paths.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

DECAYS = ("linear", "polynomial", "cosine", "constant")
OPTIMIZERS = ("adamw", "lamb", "adam", "sgd")

# The BERT convention (Devlin et al.'s optimization.py, transformers' run_glue):
# weight decay on every matrix, none on biases and LayerNorm parameters. Our
# LayerNorm names its parameters 'scale' and 'bias' (model/bert.py), so a leaf
# is left undecayed when its own name is one of these. Kernels, the 'word' /
# 'position' / 'token_type' embeddings and any other leaf (LoRA matrices,
# prompt embeddings) are decayed.
NO_DECAY_NAMES = frozenset({"bias", "scale"})


def _get(cfg, key: str, default: Any = None, *, section: str = "optimizer"):
  """A config value, or a ValueError naming the missing key when there is no default."""
  if key in cfg and cfg[key] is not None:
    return cfg[key]
  if default is None:
    raise ValueError(f"{section}.{key} is missing")
  return default


def make_schedule(cfg, section: str = "optimizer") -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then `decay` down to `end_lr` at `total_steps`.

  Written as one jnp expression rather than joined optax pieces, so the value at
  every step can be read off the code (and matches the BERT paper's schedule).
  """
  lr = float(_get(cfg, "lr", section=section))
  warmup = int(_get(cfg, "warmup_steps", 0, section=section))
  total = int(_get(cfg, "total_steps", section=section))
  decay = _get(cfg, "decay", "linear", section=section)
  end_lr = float(_get(cfg, "end_lr", 0.0, section=section))
  power = float(_get(cfg, "power", 1.0, section=section))

  def bad(key, value, why):
    return ValueError(f"{section}.{key}={value!r} {why}")

  if not lr > 0:
    raise bad("lr", lr, "must be positive")
  if warmup < 0:
    raise bad("warmup_steps", warmup, "must be >= 0")
  if total <= 0:
    raise bad("total_steps", total, "must be positive")
  if warmup > total:
    raise bad("warmup_steps", warmup, f"exceeds {section}.total_steps={total}")
  if decay not in DECAYS:
    raise bad("decay", decay, f"is not one of {DECAYS}")
  if end_lr < 0 or end_lr > lr:
    raise bad("end_lr", end_lr, f"must lie in [0, {section}.lr={lr}]")
  if not power > 0:
    raise bad("power", power, "must be positive")

  decay_steps = max(total - warmup, 1)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = lr * step / max(warmup, 1)
    t = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)  # decay progress in [0, 1]
    if decay == "linear":
      frac = 1.0 - t
    elif decay == "polynomial":
      frac = (1.0 - t) ** power
    elif decay == "cosine":
      frac = 0.5 * (1.0 + jnp.cos(math.pi * t))
    else:  # constant: stays at lr after warmup
      frac = jnp.ones_like(t)
    return jnp.where(step < warmup, warm, end_lr + (lr - end_lr) * frac)

  return schedule


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_names(path) -> tuple[str, ...]:
  """A leaf's path as strings, without the trailing `.value` an nnx.Variable adds.

  `tree_map_with_path` yields DictKey entries for dicts and nnx.State, then a
  GetAttrKey('value') inside each nnx.Param; dropping the latter makes the path of
  a leaf the same whether params come as an nnx.State or a plain dict.
  """
  keys = list(path)
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
    keys = keys[:-1]
  return tuple(_key_name(k) for k in keys)


def decay_mask(params):
  """True on leaves that get weight decay (everything but biases and LayerNorm)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: path_names(path)[-1] not in NO_DECAY_NAMES, params
  )


def _base_optimizer(cfg, schedule) -> optax.GradientTransformation:
  name = _get(cfg, "name", "adamw")
  wd = float(_get(cfg, "weight_decay", 0.0))
  b1, b2 = float(_get(cfg, "b1", 0.9)), float(_get(cfg, "b2", 0.999))
  eps = float(_get(cfg, "eps", 1e-6))
  if name == "adamw":
    return optax.adamw(schedule, b1, b2, eps, weight_decay=wd, mask=decay_mask)
  if name == "lamb":
    return optax.lamb(schedule, b1, b2, eps, weight_decay=wd, mask=decay_mask)
  if name == "adam":
    if wd:
      raise ValueError(
        f"optimizer.weight_decay={wd} has no effect with "
        "optimizer.name='adam'; use 'adamw' or set it to 0"
      )
    return optax.adam(schedule, b1, b2, eps)
  if name == "sgd":
    momentum = cfg.get("momentum") if hasattr(cfg, "get") else None
    sgd = optax.sgd(schedule, momentum=momentum)
    if not wd:
      return sgd
    # Decoupled as in adamw: the decay is scaled by the learning rate, once.
    return optax.chain(optax.add_decayed_weights(wd, decay_mask), sgd)
  raise ValueError(f"optimizer.name={name!r} is not one of {OPTIMIZERS}")


def make_optimizer(cfg) -> optax.GradientTransformation:
  """The optax chain for `cfg`: clip, then adamw / lamb / adam / sgd on a schedule.

  It is initialised on the trainable parameters only (train/state.py keeps
  frozen ones apart), so moments exist for them alone and clipping sees their
  norm alone.
  """
  optimizer = _base_optimizer(cfg, make_schedule(cfg))
  clip_norm = cfg.get("clip_norm") if hasattr(cfg, "get") else None
  if clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(float(clip_norm)), optimizer)
  return optimizer


def _size(x) -> int:
  return int(np.prod(np.shape(x), dtype=np.int64))


def count_params(trainable, frozen=None) -> dict:
  """{'total', 'trainable', 'percent'}: the numbers a PEFT paper reports."""
  n_trainable = sum(_size(x) for x in jax.tree.leaves(trainable))
  total = n_trainable + sum(_size(x) for x in jax.tree.leaves(frozen or {}))
  percent = 100.0 * n_trainable / total if total else 0.0
  return {"total": total, "trainable": n_trainable, "percent": percent}


def tree_bytes(tree) -> int:
  """Bytes held by the array leaves of a pytree (arrays or ShapeDtypeStructs)."""
  total = 0
  for x in jax.tree.leaves(tree):
    if hasattr(x, "shape") and hasattr(x, "dtype"):
      total += _size(x) * np.dtype(x.dtype).itemsize
  return total

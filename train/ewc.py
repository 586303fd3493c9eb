"""Elastic weight consolidation (Kirkpatrick et al. 2017) for the encoder, in the optimizer.

After a task, the diagonal empirical Fisher F of its log-likelihood says how
much each encoder weight mattered to it. Later tasks train on

  loss + (weight / 2) * sum_i F_i (theta_i - theta*_i)^2

where theta* is the encoder after the earlier tasks. Online EWC (Schwarz et
al. 2018): one anchor (the latest encoder) and the Fishers of all earlier tasks
summed. Each task's Fisher is scaled to mean 1 over the encoder before it is
added, so `weight` means the same whatever the loss scale.

The penalty's gradient, weight * F * (theta - theta*), is added to the loss
gradient by an optax transform (like weight decay), so the train step is the
one every job runs; anchor and Fisher sit in the optimizer state, sharded like
the parameters, and a resumed run has them bit for bit. The loss the loop
logs is the task's alone.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import nnx

from model import convert
from train import mesh as mesh_lib
from train.state import place_tree

ENCODER = "bert"


class EwcState(NamedTuple):
  anchor: Any  # theta*, shaped like the parameters (outside the encoder: unused)
  fisher: Any  # F, zero outside the encoder


def penalty(weight: float) -> optax.GradientTransformation:
  """Adds weight * F * (params - anchor) to the gradients; F starts at zero (no penalty)."""

  def init(params):
    return EwcState(
      anchor=jax.tree.map(jnp.array, params), fisher=jax.tree.map(jnp.zeros_like, params)
    )

  def update(grads, state, params):
    grads = jax.tree.map(
      lambda g, f, p, a: g + weight * f * (p - a), grads, state.fisher, params, state.anchor
    )
    return grads, state

  return optax.GradientTransformation(init, update)


def with_penalty(tx: optax.GradientTransformation, weight: float) -> optax.GradientTransformation:
  """The run's optimizer on the penalised gradient (clipped together, as a loss term would be)."""
  return optax.chain(penalty(weight), tx)


def fisher_diagonal(
  graphdef, params, frozen, objective, batches, mesh, rules, chunk: int = 8
) -> dict:
  """The encoder's tree (nested numpy dicts) of F = mean_examples (d log p(y | x) / d theta)^2.

  Per-example gradients (vmap over `chunk` examples at a time, dropout off)
  of the task's own loss on its labels, i.e. the empirical Fisher; rows with
  weight 0 (padding) count for nothing.
  """

  def example_loss(p, example):
    model = nnx.merge(graphdef, p, frozen)
    one = jax.tree.map(lambda x: x[None], example)
    return objective(model, one, None, objective.normalizers(one))[0]

  @jax.jit
  def squared_sum(p, batch):
    grads = jax.vmap(jax.grad(example_loss), in_axes=(None, 0))(p, batch)
    weights = batch["weight"].astype(jnp.float32)
    return jax.tree.map(lambda g: jnp.einsum("b...,b->...", g * g, weights), grads)

  total, count = None, 0.0
  with mesh_lib.activate(mesh, rules):
    for batch in batches:
      rows = len(batch["weight"])
      for start in range(0, rows, chunk):
        part = {k: np.asarray(v)[start : start + chunk] for k, v in batch.items()}
        sums = squared_sum(params, part)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        count += float(np.sum(part["weight"]))
  if total is None or count == 0:
    raise ValueError("fisher_diagonal: no examples to estimate the Fisher from")
  return jax.tree.map(lambda x: np.asarray(x, np.float32) / count, nnx.to_pure_dict(total)[ENCODER])


def normalised(fisher: dict) -> dict:
  """F scaled to mean 1 over every encoder entry."""
  leaves = jax.tree.leaves(fisher)
  mean = sum(float(np.sum(v, dtype=np.float64)) for v in leaves) / sum(v.size for v in leaves)
  if not mean > 0:
    raise ValueError("the Fisher is zero everywhere: the task's loss has no gradient")
  return jax.tree.map(lambda v: v / mean, fisher)


def save(path: str, anchor: dict, fisher: dict) -> None:
  """anchor / fisher: encoder trees (nested numpy dicts); one .npz, written whole or not at all."""
  path = epath.Path(path)
  partial = path.parent / (path.name + ".partial")
  arrays = {}
  for name, tree in (("anchor", anchor), ("fisher", fisher)):
    arrays.update(
      {"/".join((name,) + key): convert.get_path(tree, key) for key in convert.leaf_paths(tree)}
    )
  with partial.open("wb") as f:
    np.savez(f, **arrays)
  partial.rename(path)


def load(path: str) -> tuple[dict, dict]:
  """(anchor, fisher) encoder trees, as `save` wrote them."""
  trees: dict = {"anchor": {}, "fisher": {}}
  with epath.Path(path).open("rb") as f:
    data = np.load(f)
    for key in data.files:
      convert.set_path(trees, key.split("/"), data[key])
  return trees["anchor"], trees["fisher"]


def load_into(opt_state, path: str):
  """The optimizer state of `with_penalty` with anchor and Fisher from `path` (the encoder's)."""
  anchor, fisher = load(path)
  ewc_state = opt_state[0]
  if not isinstance(ewc_state, EwcState):
    raise TypeError("load_into expects the state of ewc.with_penalty(tx, weight)")

  def fill(part, encoder, what):
    model = nnx.to_pure_dict(part)
    missing = sorted(set(convert.leaf_paths(model[ENCODER])) - set(convert.leaf_paths(encoder)))
    if missing:
      raise ValueError(
        f"{path}: no {what} for encoder parameters {['/'.join(m) for m in missing[:3]]}"
      )
    try:
      return place_tree(part, convert.merge_trees(model, {ENCODER: encoder}))
    except ValueError as e:
      raise ValueError(f"{path} ({what}): {e}") from None

  ewc_state = EwcState(
    anchor=fill(ewc_state.anchor, anchor, "anchor"), fisher=fill(ewc_state.fisher, fisher, "fisher")
  )
  return (ewc_state,) + tuple(opt_state[1:])


class AnchorHook:
  """The run hook of EWC (train/run.py): a fresh run loads the anchor and Fisher it is pulled to.

  A resumed run has them in its checkpointed optimizer state already.
  """

  def __init__(self, weight: float, path: str):
    self.weight, self.path = weight, path

  def on_start(self, state, resuming: bool):
    if resuming:
      return state
    logging.info("EWC: weight %g, anchor and Fisher from %s", self.weight, self.path)
    return state.replace(opt_state=load_into(state.opt_state, self.path))

  def on_end(self, state, mesh) -> dict:
    return {}

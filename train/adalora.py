"""AdaLoRA's rank allocation (Zhang et al. 2023) as an optax wrapper.

The branches are P diag(e) Q (model/peft.LowRank). Training moves a budget of
non-zero singular values e from `rank` per adapted matrix at the start to
`target_rank` per matrix at the end, giving the ranks to the matrices whose
triplets (e_k, P[:, k], Q[k, :]) matter most:

  importance  s(w) = Ibar(w) * Ubar(w), with I = |w * grad w| smoothed by an EMA
              (beta1) and Ubar its EMA (beta2) absolute deviation from Ibar;
              a triplet scores s(e_k) + mean s(P[:, k]) + mean s(Q[k, :])
  budget      b(t) = the full budget for t <= t_i; then
              b_T + (b_0 - b_T) (1 - (t - t_i) / (T - t_f - t_i))^3 until T - t_f,
              masking every `mask_interval` steps; b_T for the last t_f steps,
              where the importance stops changing and the pattern is fixed
  masking     the triplets below the budget's score get e_k = 0 (P and Q keep
              training, so a masked triplet may come back at a later mask step)
  orthogonality  the gradient of orth_reg_weight * mean(||P^T P - I||_F, ||Q Q^T - I||_F)
              is added to the loss gradient, so P and Q stay near-orthogonal and
              e acts as singular values

It all lives in the optimizer, so the train step and checkpoints are the same
as for every other method: the EMAs sit in the optimizer state and a resumed
run masks exactly as the uninterrupted one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from absl import logging

from model.peft import PeftConfig
from train.mesh import host_value
from train.optim import path_names


class AdaLoraState(NamedTuple):
  inner: Any  # the wrapped optimizer's state
  count: jax.Array  # updates applied so far
  sensitivity: Any  # Ibar, shaped like the parameters (zero outside the branches)
  uncertainty: Any  # Ubar


def phase_steps(peft: PeftConfig, total_steps: int) -> tuple[int, int]:
  """(t_i, t_f) in steps; a clear error when the schedule leaves no step to allocate in."""
  schedule = peft.adalora
  start = round(schedule.warmup_ratio * total_steps)
  final = round(schedule.final_ratio * total_steps)
  if total_steps - final - start < 1:
    raise ValueError(
      f"peft.adalora: warmup_ratio={schedule.warmup_ratio} and final_ratio={schedule.final_ratio} "
      f"of {total_steps} steps leave no step to reallocate ranks in; lower them"
    )
  return start, final


def budget(step, total_steps: int, start: int, final: int, initial: int, target: int):
  """b(t): non-zero singular values allowed after update `step` (1-based), cubic decay."""
  step = jnp.asarray(step, jnp.float32)
  progress = jnp.clip((step - start) / (total_steps - final - start), 0.0, 1.0)
  cubic = target + (initial - target) * (1.0 - progress) ** 3
  return jnp.where(step <= start, initial, jnp.floor(cubic)).astype(jnp.int32)


def _branches(tree) -> dict[tuple[str, ...], dict[str, int]]:
  """{branch path: {'a' | 'b' | 'e': leaf index}} for every low-rank branch of `tree`."""
  found: dict[tuple[str, ...], dict[str, int]] = {}
  for index, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
    names = path_names(path)
    if len(names) >= 2 and names[-2] == "low_rank" and names[-1] in ("a", "b", "e"):
      found.setdefault(names[:-1], {})[names[-1]] = index
  return {k: v for k, v in found.items() if "e" in v}


def orthogonality_penalty(params) -> jax.Array:
  """mean over P and Q matrices (every stacked layer its own) of ||M^T M - I||_F."""
  leaves = jax.tree.leaves(params)
  norms = []
  for branch in _branches(params).values():
    e, a, b = leaves[branch["e"]], leaves[branch["a"]], leaves[branch["b"]]
    lead, r = e.shape[:-1], e.shape[-1]
    p = a.reshape(lead + (-1, r))  # [.., fan_in, r]
    q = b.reshape(lead + (r, -1))  # [.., r, fan_out]
    eye = jnp.eye(r, dtype=jnp.float32)
    for gram in (jnp.swapaxes(p, -1, -2) @ p, q @ jnp.swapaxes(q, -1, -2)):
      squares = jnp.sum((gram.astype(jnp.float32) - eye) ** 2, axis=(-2, -1))
      norms.append(jnp.sqrt(squares + 1e-12).reshape(-1))
  return jnp.mean(jnp.concatenate(norms)) if norms else jnp.zeros((), jnp.float32)


def triplet_scores(sensitivity, uncertainty, params) -> list[jax.Array]:
  """Per branch, [stacked layers..., r]: s(e_k) + mean s(P[:, k]) + mean s(Q[k, :])."""
  s = jax.tree.leaves(jax.tree.map(jnp.multiply, sensitivity, uncertainty))
  scores = []
  for branch in _branches(params).values():
    s_e, s_a, s_b = s[branch["e"]], s[branch["a"]], s[branch["b"]]
    lead = s_e.ndim - 1
    s_a = jnp.mean(s_a, axis=tuple(range(lead, s_a.ndim - 1)))
    s_b = jnp.mean(s_b, axis=tuple(range(lead + 1, s_b.ndim)))
    scores.append(s_e + s_a + s_b)
  return scores


def rank_allocation(
  inner: optax.GradientTransformation, peft: PeftConfig, total_steps: int
) -> optax.GradientTransformation:
  """`inner` (the run's optimizer) plus AdaLoRA's regulariser, importance and budget masking."""
  schedule = peft.adalora
  start, final = phase_steps(peft, total_steps)

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return AdaLoraState(
      inner=inner.init(params), count=jnp.zeros((), jnp.int32), sensitivity=zeros, uncertainty=zeros
    )

  def update(grads, state, params):
    if schedule.orth_reg_weight:
      penalty_grads = jax.grad(orthogonality_penalty)(params)
      grads = jax.tree.map(lambda g, p: g + schedule.orth_reg_weight * p, grads, penalty_grads)
    updates, inner_state = inner.update(grads, state.inner, params)
    step = state.count + 1
    new_params = optax.apply_updates(params, updates)

    # Importance of every entry, frozen for the last t_f steps.
    tracking = step <= total_steps - final
    b1, b2 = schedule.beta1, schedule.beta2

    ibar, ubar = jax.tree.leaves(state.sensitivity), jax.tree.leaves(state.uncertainty)
    current = [jnp.abs(w * g) for w, g in zip(jax.tree.leaves(new_params), jax.tree.leaves(grads))]
    new_ibar = [b1 * i + (1 - b1) * c for i, c in zip(ibar, current)]
    new_ubar = [b2 * u + (1 - b2) * jnp.abs(c - i) for u, c, i in zip(ubar, current, new_ibar)]
    treedef = jax.tree.structure(state.sensitivity)
    sensitivity = jax.tree.unflatten(
      treedef, [jnp.where(tracking, n, o) for n, o in zip(new_ibar, ibar)]
    )
    uncertainty = jax.tree.unflatten(
      treedef, [jnp.where(tracking, n, o) for n, o in zip(new_ubar, ubar)]
    )

    # Keep the budget's best triplets; the rest get e = 0.
    scores = triplet_scores(sensitivity, uncertainty, params)
    if scores:
      flat = jnp.concatenate([s.reshape(-1) for s in scores])
      allowed = budget(
        step, total_steps, start, final, flat.size, schedule.target_rank * flat.size // peft.rank
      )
      pruned = flat.size - allowed
      threshold = jnp.sort(flat)[jnp.clip(pruned - 1, 0, flat.size - 1)]
      masking = (step > start) & (
        (step % schedule.mask_interval == 0) | (step > total_steps - final)
      )
      leaves, treedef = jax.tree.flatten(updates)
      p_leaves = jax.tree.leaves(params)
      for branch, score in zip(_branches(params).values(), scores):
        i = branch["e"]
        drop = masking & (pruned > 0) & (score <= threshold)
        leaves[i] = jnp.where(drop, -p_leaves[i], leaves[i])  # e + update = 0
      updates = jax.tree.unflatten(treedef, leaves)
    return updates, AdaLoraState(inner_state, step, sensitivity, uncertainty)

  return optax.GradientTransformation(init, update)


def ranks(params) -> dict[str, Any]:
  """{branch path: non-zero singular values (per stacked layer)}: the allocation reached."""
  leaves = jax.tree.leaves(params)
  return {
    "/".join(path): jnp.sum(leaves[b["e"]] != 0, axis=-1) for path, b in _branches(params).items()
  }


class RankReport:
  """The run hook of AdaLoRA (train/run.py): the ranks each module kept, in final_metrics.json."""

  def on_start(self, state, resuming: bool):
    return state

  def on_end(self, state, mesh) -> dict:
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    reached = jax.jit(ranks, out_shardings=replicated)(state.params)
    allocated = {k: host_value(v).tolist() for k, v in reached.items()}
    logging.info("AdaLoRA ranks reached: %s", allocated)
    return {"adalora_ranks": allocated}

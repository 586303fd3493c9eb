"""The pure train and eval steps every task shares.

`train_step(state, frozen, batch) -> (state, metrics)` closes over the model's
graphdef, the optimizer and the objective, so jit sees only arrays with
shardings. Gradients are taken with respect to `state.params` alone; the
frozen parameters (PEFT) enter the model as constants. The
step's dropout key is the run key folded with the step number: a resumed run
draws exactly the keys the uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from train.state import TrainState


def _split_micro_batches(batch, num_micro: int):
  """[B, ...] -> [m, B/m, ...] taking rows i, i+m, ... as micro-batch i.

  Strided rather than contiguous, so each device's rows stay on that device
  when the batch axis is sharded.
  """

  def split(x):
    if x.shape[0] % num_micro:
      raise ValueError(
        f"batch size {x.shape[0]} is not divisible by optimizer.grad_accum_steps={num_micro}"
      )
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def step_key(run_key_data: jax.Array, step) -> jax.Array:
  """The dropout key of train step `step`: the run key folded with the step number."""
  return jax.random.fold_in(jax.random.wrap_key_data(run_key_data), step)


def make_train_step(
  graphdef,
  tx: optax.GradientTransformation,
  objective,
  schedule: Callable | None = None,
  grad_accum_steps: int = 1,
  param_shardings=None,
):
  """`param_shardings` pins gradients to their parameters' layout (a reduce-scatter
  under FSDP instead of a full all-reduce)."""

  def loss_fn(params, frozen, batch, rng, norm):
    model = nnx.merge(graphdef, params, frozen)
    return objective(model, batch, rng, norm)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, frozen, batch, teacher=None):
    """frozen: the parameters that do not train (train/state.py); empty when all do.
    teacher: a distillation teacher's parameters (train/distill.py), or None."""
    if teacher is not None:
      batch = objective.with_teacher_outputs(teacher, batch)
    rng = step_key(state.rng, state.step)
    norm = objective.normalizers(batch)
    if grad_accum_steps == 1:
      (loss, sums), grads = grad_fn(state.params, frozen, batch, rng, norm)
    else:
      micro = _split_micro_batches(batch, grad_accum_steps)

      def accumulate(carry, xs):
        index, micro_batch = xs
        (loss, sums), grads = grad_fn(
          state.params, frozen, micro_batch, jax.random.fold_in(rng, index), norm
        )
        return jax.tree.map(jnp.add, carry, (loss, sums, grads)), None

      zeros = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(
          grad_fn, state.params, frozen, jax.tree.map(lambda x: x[0], micro), rng, norm
        ),
      )
      (loss, sums), grads = zeros
      (loss, sums, grads), _ = jax.lax.scan(
        accumulate, (loss, sums, grads), (jnp.arange(grad_accum_steps), micro)
      )
    if param_shardings is not None:
      grads = jax.lax.with_sharding_constraint(grads, param_shardings)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums, total_loss=loss, grad_norm=optax.tree.norm(grads))
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def jit_train_step(
  graphdef, tx: optax.GradientTransformation, objective, opt_config, shardings: TrainState
):
  """The train step as every job runs it: jitted, the state donated and kept on its shardings.

  `opt_config` is the optimizer section with total_steps / warmup_steps filled
  in: its schedule is logged as the learning rate, its grad_accum_steps split
  the batch.
  """
  from train import optim

  step = make_train_step(
    graphdef,
    tx,
    objective,
    optim.make_schedule(opt_config),
    opt_config.get("grad_accum_steps", 1),
    shardings.params,
  )
  return jax.jit(step, donate_argnums=0, out_shardings=(shardings, None))


def make_eval_step(graphdef, objective, with_outputs: bool = False):
  """Metric sums for one batch, dropout off; with_outputs: (sums, model outputs).

  The outputs (logits) are what task metrics such as F1 or SQuAD EM are
  computed from on the host; objectives that offer them split their call
  into `outputs` and `loss_and_sums`, so one forward pass gives both.
  """

  def eval_step(params, frozen, batch):
    model = nnx.merge(graphdef, params, frozen)
    norm = objective.normalizers(batch)
    if not with_outputs:
      return objective(model, batch, None, norm)[1]
    outputs = objective.outputs(model, batch, None)
    return objective.loss_and_sums(outputs, batch, norm)[1], outputs

  return eval_step

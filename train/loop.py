"""The one training loop: every task, every mesh, resumable and observable.

Top to bottom: build the task, the mesh and the sharded state; restore the
newest checkpoint of the workdir if there is one (refusing one from another
config); then step, logging every `log_every_steps`, evaluating every
`eval_every_steps`, checkpointing every `checkpoint.every_steps`, at the end
and on SIGTERM (preemption). The host syncs with the devices only at those
moments.
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np
from absl import logging

from train import hf, mesh as mesh_lib, optim, step as step_lib, tasks, writers
from train.checkpoint import Checkpointer, abstract_like, check_compatible
from train.state import abstract_model, create_train_state, load_params

# Keys of the config a checkpoint must agree with before a run may resume it.
RESUME_KEYS = ("task", "model", "data", "batch_size", "seed")


def _fingerprint(config) -> dict:
  """The part of the config a checkpoint is bound to (compute options excluded)."""
  compute = ("dtype", "scan_layers", "remat_policy", "attention_impl")
  model = {k: v for k, v in config.model.to_dict().items() if k not in compute}
  return {"task": config.task, "model": model, "data": config.data.to_dict(),
          "batch_size": config.batch_size, "seed": config.seed}


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
      pass

  def _handle(self, *_):
    self.requested = True


def _sum_metrics(history: list[dict]) -> dict:
  fetched = jax.device_get(history)
  return {k: float(np.sum([m[k] for m in fetched])) for k in fetched[0]}


def evaluate(eval_step, params, batches, mesh, rules, objective) -> dict:
  sums = [eval_step(params, mesh_lib.shard_batch(b, mesh, rules)) for b in batches]
  return objective.finalize(_sum_metrics(sums))


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the job described by `config` in `workdir`; returns final eval metrics."""
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  task = tasks.build_task(config, workdir)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  total_steps = config.optimizer.total_steps
  # stop_at_step ends this invocation early (a time-boxed job); the schedule still
  # runs to total_steps and the next invocation picks up from the checkpoint.
  end_step = min(config.stop_at_step or total_steps, total_steps)
  _, abstract_params = abstract_model(task.model_factory)
  tx = optim.make_optimizer(config.optimizer, abstract_params)
  graphdef, state, shardings = create_train_state(task.model_factory, tx, mesh, rules, config.seed)

  counts = optim.count_params(state.params)
  logging.info("model: %s parameters; mesh %s; data %s", f"{counts['total']:,}",
               dict(mesh.shape), json.dumps(task.summary))

  meta = {"config": _fingerprint(config), "total_steps": total_steps}
  ckpt = Checkpointer(workdir, config.checkpoint.max_to_keep, config.checkpoint.async_save)
  if ckpt.latest_step() is not None:
    check_compatible(ckpt.read_meta(), meta, [f"config.{k}" for k in RESUME_KEYS], workdir)
    state, _ = ckpt.restore(None, abstract_like(state))
    logging.info("resumed from step %d", int(state.step))
  elif config.init.hf_dir:
    _, tree, missing = hf.load_hf_checkpoint(hf.resolve_hf_source(config.init.hf_dir),
                                             task.model_config)
    state = load_params(state, tree, tx)
    logging.info("initialised from %s (fresh: %s)", config.init.hf_dir, missing or "none")

  schedule = optim.make_schedule(config.optimizer)
  train_step = jax.jit(
      step_lib.make_train_step(graphdef, tx, task.objective, schedule,
                               config.optimizer.grad_accum_steps, shardings.params),
      donate_argnums=0, out_shardings=(shardings, None))
  eval_step = jax.jit(step_lib.make_eval_step(graphdef, task.objective))

  writer = writers.MetricWriter(workdir, enabled=is_main)
  start = int(state.step)
  bar = writers.progress(total_steps, initial=start, enabled=is_main)
  preemption = _Preemption()
  history, last_eval = [], {}
  tokens_per_step = config.batch_size * config.data.max_seq_length
  timer = time.perf_counter()
  steps_since_log = 0

  with mesh_lib.activate(mesh, rules):
    for step in range(start, end_step):
      local = task.train_data.batch(step, jax.process_index(), jax.process_count())
      state, metrics = train_step(state, mesh_lib.shard_batch(local, mesh, rules))
      history.append(metrics)
      steps_since_log += 1
      done = step + 1
      bar.update(1)

      if done % config.log_every_steps == 0 or done == end_step:
        sums = _sum_metrics(history)  # the host waits for the devices here only
        elapsed = time.perf_counter() - timer
        scalars = task.objective.finalize(sums)
        scalars.update(learning_rate=float(jax.device_get(history[-1]["learning_rate"])),
                       grad_norm=sums["grad_norm"] / len(history),
                       step_time=elapsed / steps_since_log,
                       tokens_per_second=tokens_per_step * steps_since_log / elapsed)
        writer.write(done, scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.3f}",
                        mlm_acc=f"{scalars.get('mlm_accuracy', float('nan')):.3f}")
        history, steps_since_log, timer = [], 0, time.perf_counter()

      if done % config.eval_every_steps == 0 or done == end_step:
        last_eval = evaluate(eval_step, state.params, task.eval_batches, mesh, rules, task.objective)
        writer.write(done, last_eval, split="eval")
        logging.info("step %d eval %s", done, {k: round(v, 4) for k, v in last_eval.items()})
        timer = time.perf_counter()  # eval time is not step time

      if (done % config.checkpoint.every_steps == 0 or done == end_step
          or preemption.requested):
        ckpt.save(done, state, meta)
      if preemption.requested:
        logging.warning("SIGTERM: saved step %d, stopping", done)
        break

  bar.close()
  ckpt.close()
  writer.close()
  if is_main:
    writers.plot_loss_curves(workdir, keys=[k for k in ("loss", "mlm_accuracy")
                                            if k in task.objective.metric_names])
    if last_eval:
      with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
        json.dump({"step": int(state.step), **last_eval}, f, indent=2)
  return last_eval

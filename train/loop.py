"""The one training loop: every task, every mesh, resumable and observable.

Top to bottom: build the run (train/run.build_run: task, mesh, sharded state,
optimizer, steps); restore the newest checkpoint of the workdir if there is
one (refusing one from another config: train/checkpoint.restore_resumable),
or else load init weights (train/warm_start.py); the optimizer's methods'
hooks run (EWC loads its anchor); then step, logging
every `log_every_steps`, evaluating every `eval_every_steps` (0: every
epoch), checkpointing every `checkpoint.every_steps` (0: at each
evaluation), at the end and on SIGTERM (preemption). The host syncs with the
devices only at those moments.

Fine-tuning adds, when the config has an `early_stopping` section: the best
evaluation by `early_stopping.metric` is kept as its own checkpoint under
<workdir>/best; training stops after `patience` evaluations without
improvement (0: never); after training, the best parameters are evaluated
on the test batches (`finish_run`). <workdir>/final_metrics.json holds the
last evaluation, the best one and the test metrics; <workdir>/config.json the
config.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from data.finetune import gather_outputs
from data.sampling import Prefetcher, host_share
from train import mesh as mesh_lib
from train import optim, profiling, tasks, warm_start, writers
from train import probe as probe_lib
from train.checkpoint import (
  Checkpointer,
  abstract_like,
  base_fingerprint,
  check_newest_step,
  fingerprint,
  restore_resumable,
)
from train.checkpoint import (
  check_options as check_checkpoint_options,
)
from train.early_stopping import EarlyStopping, numeric
from train.errors import NonFiniteError
from train.finetuned import BEST_DIR
from train.run import build_run
from train.workdir import WorkdirLock
from train.workdir import resolve as resolve_workdir

RUN_FILES = ("config.json", "labels.json", "tokenizer")


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
  fetched = jax.tree.map(mesh_lib.host_value, history)
  return {k: float(np.sum([m[k] for m in fetched])) for k in fetched[0]}


def evaluate(
  eval_step, params, frozen, batches, mesh, rules, objective, score=None, split: str = "eval"
) -> dict:
  """Objective means over `batches`; with `score`, the task's metrics too.

  With `score`, `eval_step` returns (sums, outputs) (step.make_eval_step's
  with_outputs): the outputs of every row are gathered to the host in batch
  order and handed to `score(split, outputs)`.
  """
  bar = writers.progress(len(batches), desc=split, enabled=jax.process_index() == 0)
  results = []
  for batch in batches:
    local = host_share(batch, jax.process_index(), jax.process_count())
    results.append(eval_step(params, frozen, mesh_lib.shard_batch(local, mesh, rules)))
    bar.update(1)
  bar.close()
  if score is None:
    return objective.finalize(_sum_metrics(results))
  metrics = objective.finalize(_sum_metrics([sums for sums, _ in results]))
  outputs = [multihost_utils.process_allgather(out, tiled=True) for _, out in results]
  outputs = gather_outputs(batches, outputs, objective.token_outputs)
  metrics.update(score(split, outputs))
  return metrics


def _write_json(path: str, value) -> None:
  writers.write_text(path, json.dumps(value, indent=2, default=str))


def save_run_files(config, task, workdir: str) -> None:
  """What `train/predict.py` needs beside the checkpoint: config, labels, tokenizer."""
  _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
  if task.labels is not None:
    _write_json(os.path.join(workdir, "labels.json"), task.labels)
  if task.tokenizer is not None and not (epath.Path(workdir) / "tokenizer").exists():
    with tempfile.TemporaryDirectory() as local:  # transformers writes local files only
      task.tokenizer.save_pretrained(local)
      writers.copy_dir(local, epath.Path(workdir) / "tokenizer")


def _log_eval(step: int, split: str, results: dict) -> None:
  logging.info("step %d %s %s", step, split, {k: round(v, 4) for k, v in numeric(results).items()})
  for key, value in results.items():
    if key.endswith("_text"):
      logging.info("%s %s:\n%s", split, key, value)


@jax.jit
def _all_finite(tree) -> jax.Array:
  """One bool: every floating-point leaf of `tree` is finite."""
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _stop_if_nonfinite(step: int, scalars: dict, ckpt: Checkpointer) -> None:
  """Raises NonFiniteError when a checked value is NaN / inf; nothing is saved."""
  checked = {k: scalars[k] for k in ("loss", "grad_norm", "state") if k in scalars}
  bad = {k: v for k, v in checked.items() if not math.isfinite(v)}
  if not bad:
    return
  ckpt.wait()  # the newest finite save, if one is in flight, commits first
  latest = ckpt.latest_step()
  what = (
    ", ".join(f"{k} {v}" for k, v in bad.items())
    if "state" not in bad
    else ("the parameters or optimizer state hold NaN / inf")
  )
  kept = (
    f"the newest checkpoint, step {latest} in {ckpt.directory}, is finite and kept; "
    "a rerun resumes there"
    if latest is not None
    else "no checkpoint was written yet"
  )
  raise NonFiniteError(
    f"training diverged at step {step}: {what}. Stopped without saving; {kept}. "
    "Lower optimizer.lr, raise optimizer.warmup_steps or set optimizer.clip_norm, "
    "or use a fresh --workdir."
  )


def resume_or_start(run, ckpt, meta, workdir: str):
  """(state, frozen, resuming, saved early-stopping progress): the workdir's newest
  checkpoint when it has one (refused if another config wrote it), else the run's state with
  the init weights; `meta` gains the frozen base's fingerprint."""
  config, state, frozen, saved_progress = run.config, run.state, run.frozen, None
  resuming = ckpt.latest_step() is not None
  if resuming:  # before warm starting, which a foreign config could break
    check_newest_step(ckpt, meta, workdir)
  if not resuming or jax.tree.leaves(frozen):
    # Frozen parameters are not in checkpoints: they come from the base every time.
    state, frozen = warm_start.initialise(state, frozen, config.init, run.task.model_config, run.tx)
  for hook in run.hooks:
    state = hook.on_start(state, resuming)
  if jax.tree.leaves(frozen):
    meta["base"] = {
      "init": config.init.get("checkpoint") or config.init.get("hf_dir", ""),
      "fingerprint": base_fingerprint(frozen),
    }
  if resuming:
    state, saved_meta = restore_resumable(ckpt, state, meta, workdir)
    saved_progress = saved_meta.get("early_stopping")
    logging.info("resumed from step %d", int(state.step))
  return state, frozen, resuming, saved_progress


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the job described by `config` in `workdir`; returns final metrics.

  The workdir is locked while the job runs (train/workdir.WorkdirLock).
  """
  workdir = resolve_workdir(workdir)
  mesh_lib.check_batch_divides(config, jax.device_count())
  check_checkpoint_options(config.checkpoint.max_to_keep)
  # Whatever ends the run (a refused checkpoint, a diverged step, a data error, Ctrl-C),
  # `cleanup` waits for pending saves and closes the checkpoint managers, the metric files
  # and the W&B run, so no orbax thread outlives the error and nothing saved is lost.
  with (
    WorkdirLock(workdir, enabled=jax.process_index() == 0) as lock,
    contextlib.ExitStack() as cleanup,
  ):
    return _train_and_evaluate(config, workdir, lock, cleanup)


def _train_and_evaluate(
  config, workdir: str, lock: WorkdirLock, cleanup: contextlib.ExitStack
) -> dict:
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  run = build_run(config, workdir)
  task, mesh, rules = run.task, run.mesh, run.rules
  state, frozen = run.state, run.frozen
  total_steps, warmup_steps = run.total_steps, run.warmup_steps
  # stop_at_step ends this invocation early (a time-boxed job); the schedule still
  # runs to total_steps and the next invocation picks up from the checkpoint.
  end_step = run.end_step

  counts = optim.count_params(state.params, frozen)
  counts["optimizer_state_bytes"] = optim.tree_bytes(state.opt_state)
  logging.info(
    "model: %s parameters, %s trainable (%.3f%%, peft %s), optimizer state %.1f MiB; "
    "mesh %s; %d steps (%d warmup); data %s",
    f"{counts['total']:,}",
    f"{counts['trainable']:,}",
    counts["percent"],
    task.peft.method,
    counts["optimizer_state_bytes"] / 2**20,
    dict(mesh.shape),
    total_steps,
    warmup_steps,
    json.dumps(task.summary, default=str),
  )

  meta = {"config": fingerprint(config), "total_steps": total_steps}
  # What the steps use (the step checkpoints, the prefetcher, profiler and bar) is closed
  # before the final evaluation, the last save committed; `cleanup` closes it on an error.
  training = cleanup.enter_context(contextlib.ExitStack())
  ckpt = training.enter_context(
    Checkpointer(workdir, config.checkpoint.max_to_keep, config.checkpoint.async_save, is_main)
  )
  state, frozen, resuming, saved_progress = resume_or_start(run, ckpt, meta, workdir)
  if is_main:
    save_run_files(config, task, workdir)

  stopping = None
  if config.get("early_stopping") and config.early_stopping.metric:
    es = config.early_stopping
    stopping = EarlyStopping(es.metric, es.mode, es.patience, saved_progress)
  best_ckpt = (
    cleanup.enter_context(
      Checkpointer(os.path.join(workdir, BEST_DIR), 1, config.checkpoint.async_save, is_main)
    )
    if stopping
    else None
  )

  train_step, eval_step = run.train_step, run.eval_step
  eval_every = config.eval_every_steps or task.steps_per_epoch
  checkpoint_every = config.checkpoint.every_steps or eval_every

  tracking = config.get("wandb")
  writer = writers.MetricWriter(
    workdir,
    enabled=is_main,
    resume_step=int(state.step) if resuming else None,
    wandb=(
      writers.WandbRun(tracking, workdir, json.loads(config.to_json_best_effort()))
      if is_main and tracking and tracking.enabled
      else None
    ),
  )
  cleanup.callback(writer.finish)  # a no-op after finish_run's; on an error, ends W&B too
  start = int(state.step)
  if not resuming:
    writer.write(start, {k: float(v) for k, v in counts.items()}, split="model")
  if resuming and start >= end_step:
    logging.info(
      "%s is already at step %d of %d: nothing to train. To go on, raise "
      "optimizer.total_steps (or stop_at_step); to start over, use a fresh --workdir.",
      workdir,
      start,
      end_step,
    )
  if stopping and stopping.should_stop:
    logging.info("early stopping had already ended this run at step %d", start)
    end_step = start
  bar = writers.progress(end_step, initial=min(start, end_step), enabled=is_main)
  preemption = _Preemption()
  history, last_eval = [], {}
  accuracy_key = next((k for k in task.objective.metric_names if "accuracy" in k), None)
  timer = time.perf_counter()
  steps_since_log, data_seconds = 0, 0.0
  interval = {"tokens": 0, "real_tokens": 0, "flops": 0.0}  # since the last log, this host's
  flops_by_shape: dict[tuple, float] = {}  # per batch shape; one train-step compile each
  peak = profiling.peak_flops(list(mesh.devices.flat))
  profiler = profiling.StepProfiler(workdir, start, config.get("profile_steps", 0))
  training.callback(bar.close)
  training.callback(profiler.close)

  probe = task.probe and probe_lib.make_probe(task.probe, run.graphdef, mesh, rules)

  def run_eval(params, batches, step: int, split: str = "eval") -> dict:
    """Evaluates, logs and writes one row (with the seconds it took, for benchmarks)."""
    started = time.perf_counter()
    results = evaluate(
      eval_step, params, frozen, batches, mesh, rules, task.objective, task.score, split
    )
    if probe and split == "eval":
      results.update(probe(params, frozen))
    writer.write(step, dict(numeric(results), eval_time=time.perf_counter() - started), split)
    _log_eval(step, split, results)
    return results

  prefetcher = Prefetcher(
    lambda step: task.train_data.batch(step, jax.process_index(), jax.process_count()),
    range(start, end_step),
  )
  training.callback(prefetcher.close)
  with mesh_lib.activate(mesh, rules):
    if total_steps == 0:  # zero-shot: no step to run, so score the initial weights once
      last_eval = run_eval(state.params, task.eval_batches, 0)
      if not resuming and tasks.get(config.task).head:
        # The weights it scored are the run's model (a pruned one, say): checkpoint 0,
        # so that predict and export read this workdir like any other.
        ckpt.save(0, state, meta)
        if best_ckpt is not None:
          best_ckpt.save(0, {"params": state.params}, meta)
    elif resuming and start >= end_step and not _has_final_metrics(workdir, start):
      # Stopped between its last checkpoint and its final metrics (killed while it
      # evaluated): evaluate now, so the run ends as the uninterrupted one would have.
      last_eval = run_eval(state.params, task.eval_batches, start)
    for step in range(start, end_step):
      profiler.before(step)
      fetched = time.perf_counter()
      local = prefetcher.get(step)
      batch = mesh_lib.shard_batch(local, mesh, rules)
      data_seconds += time.perf_counter() - fetched
      ids = local["input_ids"]
      if ids.shape not in flops_by_shape:
        flops_by_shape[ids.shape] = profiling.train_flops_per_step(
          task.model_config, ids.size // ids.shape[-1], ids.shape[-1], run.mlm_predictions
        )
        logging.info(
          "train step compiles for batch length %d (%d so far)",
          ids.shape[-1],
          len(flops_by_shape),
        )
      interval["tokens"] += ids.size
      interval["real_tokens"] += int(local["attention_mask"].sum())
      interval["flops"] += flops_by_shape[ids.shape]
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = train_step(state, frozen, batch, run.teacher)
      profiler.after(step, metrics)
      history.append(metrics)
      steps_since_log += 1
      done = step + 1

      if done % config.log_every_steps == 0 or done == end_step:
        sums = _sum_metrics(history)  # the host waits for the devices here only
        elapsed = time.perf_counter() - timer
        scalars = task.objective.finalize(sums)
        scalars.update(
          learning_rate=float(mesh_lib.host_value(history[-1]["learning_rate"])),
          grad_norm=sums["grad_norm"] / len(history),
          step_time=elapsed / steps_since_log,
          # waiting for the prefetched host batch and sharding it, part of step_time
          data_wait_time=data_seconds / steps_since_log,
          # padded positions computed, all hosts; the share of them that are real tokens
          tokens_per_second=interval["tokens"] * jax.process_count() / elapsed,
          real_token_fraction=interval["real_tokens"] / max(interval["tokens"], 1),
          model_tflops_per_second=interval["flops"] * jax.process_count() / elapsed / 1e12,
          compiled_lengths=len(flops_by_shape),
        )
        if peak:
          scalars["mfu"] = interval["flops"] * jax.process_count() / elapsed / peak
        writer.write(done, scalars)
        _stop_if_nonfinite(done, scalars, ckpt)
        lock.refresh()
        postfix = {"loss": f"{scalars['loss']:.3f}"}
        if accuracy_key:
          postfix[accuracy_key] = f"{scalars[accuracy_key]:.3f}"
        # Moved here, after the host waited for the devices: the bar counts finished
        # steps, not dispatched ones, and needs no sync of its own.
        bar.update(done - bar.n)
        bar.set_postfix(**postfix)
        history, steps_since_log, timer = [], 0, time.perf_counter()
        data_seconds = 0.0
        interval = {"tokens": 0, "real_tokens": 0, "flops": 0.0}

      # Not at a stop_at_step pause: an extra evaluation there would count
      # against early-stopping patience and the resumed run would diverge.
      if done % eval_every == 0 or done == total_steps:
        last_eval = run_eval(state.params, task.eval_batches, done)
        if stopping and stopping.update(done, last_eval):
          best_ckpt.save(done, {"params": state.params}, meta)
          logging.info("new best %s=%.4f at step %d", stopping.metric, stopping.best_value, done)
        timer = time.perf_counter()  # eval time is not step time

      stop_early = stopping is not None and stopping.should_stop
      if done % checkpoint_every == 0 or done == end_step or preemption.requested or stop_early:
        progress = {"early_stopping": stopping.to_meta()} if stopping else {}
        if not bool(_all_finite(state)):  # never a NaN checkpoint: rotation would drop good ones
          _stop_if_nonfinite(done, {"state": math.nan}, ckpt)
        ckpt.save(done, state, dict(meta, **progress))
        lock.refresh()
        writer.flush()  # a bucket workdir gets its logs with each checkpoint
      if preemption.requested:
        logging.warning("SIGTERM: saved step %d, stopping", done)
        break
      if stop_early:
        logging.info(
          "early stopping at step %d: %s has not improved on %.4f (step %d) for %d evaluations",
          done,
          stopping.metric,
          stopping.best_value,
          stopping.best_step,
          stopping.evals_since_best,
        )
        break

  training.close()
  return finish_run(
    run,
    state,
    workdir,
    last_eval=last_eval,
    counts=counts,
    stopping=stopping,
    best_ckpt=best_ckpt,
    run_eval=run_eval,
    test=not preemption.requested,
    writer=writer,
    curve_keys=["loss"] + ([accuracy_key] if accuracy_key else []),
  )


def _has_final_metrics(workdir: str, step: int) -> bool:
  saved = epath.Path(workdir) / "final_metrics.json"
  return saved.exists() and json.loads(saved.read_text()).get("step") == step


def finish_run(
  run, state, workdir, *, last_eval, counts, stopping, best_ckpt, run_eval, test, writer, curve_keys
) -> dict:
  """The end of a run: final metrics (the methods' hooks, the best evaluation, the test split
  scored with the best parameters), loss and confusion plots, final_metrics.json."""
  task, mesh, rules = run.task, run.mesh, run.rules
  final = {"step": int(state.step), **numeric(last_eval), "parameters": counts}
  for hook in run.hooks:
    final.update(hook.on_end(state, mesh))
  for key in ("report", "confusion"):
    if last_eval.get(key) is not None:
      final[key] = last_eval[key]
  if stopping and stopping.best_step is not None:
    best_ckpt.wait()
    final["best"] = {
      "step": stopping.best_step,
      "metric": stopping.metric,
      "value": stopping.best_value,
      "eval": stopping.best_metrics,
    }
    if task.test_batches and test:
      best_params, _ = best_ckpt.restore(
        stopping.best_step, {"params": abstract_like(state.params)}
      )
      with mesh_lib.activate(mesh, rules):
        test = run_eval(best_params["params"], task.test_batches, stopping.best_step, "test")
      final["test"] = {k: v for k, v in test.items() if not k.endswith("_text")}
  writer.close()
  images = {}
  if jax.process_index() == 0:
    images["loss_curves"] = writers.plot_loss_curves(workdir, keys=curve_keys)
    # Labels against predictions, where a person would rather look than read counts.
    plots = [
      ("eval", final, final["step"]),
      ("test", final.get("test", {}), final.get("best", {}).get("step")),
    ]
    for split, results, step in plots:
      if results.get("confusion") and task.labels:
        images[f"confusion_{split}"] = writers.plot_confusion(
          results["confusion"],
          task.labels,
          os.path.join(workdir, f"confusion_{split}.png"),
          f"{split} at step {step}",
        )
    if last_eval:
      _write_json(os.path.join(workdir, "final_metrics.json"), final)
  saved = epath.Path(workdir) / "final_metrics.json"
  if not last_eval and saved.exists():  # nothing evaluated this time: the run's own end result
    previous = json.loads(saved.read_text())
    if previous.get("step") == final["step"]:
      logging.info("%s had already finished; its final metrics are in %s", workdir, saved)
      final = previous
  writer.finish(summary=final, images=images)
  return final

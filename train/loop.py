"""The one training loop: every task, every mesh, resumable and observable.

Top to bottom: build the task, the mesh and the sharded state; restore the
newest checkpoint of the workdir if there is one (refusing one from another
config), or else load init weights (train/warm_start.py); then step, logging
every `log_every_steps`, evaluating every `eval_every_steps` (0: every
epoch), checkpointing every `checkpoint.every_steps` (0: at each
evaluation), at the end and on SIGTERM (preemption). The host syncs with the
devices only at those moments.

Fine-tuning adds, when the config has an `early_stopping` section: the best
evaluation by `early_stopping.metric` is kept as its own checkpoint under
<workdir>/best; training stops after `patience` evaluations without
improvement (0: never); after training, the best parameters are evaluated
on the test batches. <workdir>/final_metrics.json holds the last evaluation,
the best one and the test metrics; <workdir>/config.json the config.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from data.sampling import host_share
from model import peft as peft_lib
from train import adalora, ewc, optim, profiling, tasks, warm_start, writers
from train import mesh as mesh_lib
from train import step as step_lib
from train.checkpoint import Checkpointer, abstract_like, check_compatible
from train.errors import NonFiniteError
from train.finetuned import BEST_DIR
from train.state import create_train_state
from train.workdir import WorkdirLock
from train.workdir import resolve as resolve_workdir

# Keys of the config a checkpoint must agree with before a run may resume it.
RESUME_KEYS = ("task", "model", "data", "batch_size", "seed", "peft", "ewc")
RUN_FILES = ("config.json", "labels.json", "tokenizer")


def _fingerprint(config) -> dict:
  """The part of the config a checkpoint is bound to (compute options excluded)."""
  compute = ("dtype", "scan_layers", "remat_policy", "attention_impl")
  model = {k: v for k, v in config.model.to_dict().items() if k not in compute}
  fingerprint = {
    "task": config.task,
    "model": model,
    "data": config.data.to_dict(),
    "batch_size": config.batch_size,
    "seed": config.seed,
  }
  if config.get("peft") and config.peft.method != "none":
    # Only then: full fine-tuning and pretraining checkpoints stay as they were.
    peft = config.peft.to_dict()
    if peft["method"] != "adalora":
      peft.pop("adalora", None)  # the schedule binds AdaLoRA runs only
    fingerprint["peft"] = peft
  if config.get("ewc") and config.ewc.weight:
    fingerprint["ewc"] = config.ewc.to_dict()  # a resumed stage keeps its penalty
  return fingerprint


def _base_fingerprint(frozen) -> str:
  """A checksum of the frozen parameters: a PEFT checkpoint is only valid on its base."""
  if not jax.tree.leaves(frozen):
    return ""
  moments = jax.jit(
    lambda f: jax.tree.map(
      lambda x: jnp.stack([jnp.sum(x), jnp.sum(jnp.abs(x)), jnp.sum(x * x)]), f
    )
  )(frozen)
  text = json.dumps([[f"{v:.6e}" for v in _host_value(m)] for m in jax.tree.leaves(moments)])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_same_base(saved_meta: dict, meta: dict, workdir: str) -> None:
  saved, now = saved_meta.get("base", {}), meta.get("base", {})
  if saved.get("fingerprint", "") != now.get("fingerprint", ""):
    raise ValueError(
      f"{workdir} holds a run trained on other frozen base weights ({saved.get('init') or 'none'},"
      f" checksum {saved.get('fingerprint') or '-'}) than config.init gives now "
      f"({now.get('init') or 'none'}, checksum {now.get('fingerprint') or '-'}): its trainable "
      "parameters only make sense on their own base; use that base or a fresh workdir"
    )


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


class EarlyStopping:
  """Tracks the best evaluation by one metric; says when patience has run out.

  Its state goes into every checkpoint's meta (`to_meta`), so a resumed run
  knows the best so far and how many evaluations have passed without it.
  """

  def __init__(self, metric: str, mode: str = "max", patience: int = 0, saved: dict | None = None):
    if mode not in ("max", "min"):
      raise ValueError(f"early_stopping.mode={mode!r}: expected 'max' or 'min'")
    if patience < 0:
      raise ValueError(f"early_stopping.patience={patience}: must be >= 0 (0: never stop)")
    self.metric, self.mode, self.patience = metric, mode, patience
    saved = saved or {}
    self.best_step: int | None = saved.get("best_step")
    self.best_value: float | None = saved.get("best_value")
    self.best_metrics: dict = saved.get("best_metrics", {})
    self.evals_since_best: int = saved.get("evals_since_best", 0)

  def update(self, step: int, results: dict) -> bool:
    """Records an evaluation; True when it is the best so far."""
    if self.metric not in results:
      raise ValueError(
        f"early_stopping.metric={self.metric!r} is not among the evaluation "
        f"metrics {sorted(k for k, v in results.items() if _is_number(v))}"
      )
    value = float(results[self.metric])
    better = self.best_value is None or (
      value > self.best_value if self.mode == "max" else value < self.best_value
    )
    if better and math.isfinite(value):
      self.best_step, self.best_value, self.evals_since_best = step, value, 0
      self.best_metrics = _scalars(results)
      return True
    self.evals_since_best += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.evals_since_best >= self.patience

  def to_meta(self) -> dict:
    return {
      "best_step": self.best_step,
      "best_value": self.best_value,
      "best_metrics": self.best_metrics,
      "evals_since_best": self.evals_since_best,
    }


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _scalars(results: dict) -> dict:
  return {k: float(v) for k, v in results.items() if _is_number(v)}


def _host_value(x) -> np.ndarray:
  """A replicated result as numpy; in a multi-process job only local shards are readable."""
  return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _sum_metrics(history: list[dict]) -> dict:
  fetched = jax.tree.map(_host_value, history)
  return {k: float(np.sum([m[k] for m in fetched])) for k in fetched[0]}


def evaluate(
  eval_step, params, frozen, batches, mesh, rules, objective, score=None, split: str = "eval"
) -> dict:
  """Objective means over `batches`; with `score`, the task's metrics too.

  With `score`, `eval_step` returns (sums, outputs) (step.make_eval_step's
  with_outputs): the outputs of every row are gathered to the host in batch
  order and handed to `score(split, outputs)`.
  """
  bar = writers.progress(len(batches), desc=f"eval {split}", enabled=jax.process_index() == 0)
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
  outputs = {key: np.concatenate([np.asarray(o[key]) for o in outputs]) for key in outputs[0]}
  metrics.update(score(split, outputs))
  return metrics


def _schedule_steps(config, task) -> tuple[int, int]:
  """(total_steps, warmup_steps): given, or from epochs and warmup_ratio (fine-tuning).

  epochs=0 without total_steps: (0, 0), no training; the loop evaluates once (zero-shot).
  """
  total = config.optimizer.total_steps or config.get("epochs", 0) * (task.steps_per_epoch or 0)
  if not total and config.get("epochs") != 0:
    raise ValueError("optimizer.total_steps is 0 and no epochs are set: give one of them")
  warmup = config.optimizer.warmup_steps or round(config.optimizer.get("warmup_ratio", 0.0) * total)
  return int(total), int(warmup)


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


def _optimizer(opt_config, peft, ewc_config) -> optax.GradientTransformation:
  """The run's optimizer, wrapped by what acts on parameters besides the loss gradient.

  AdaLoRA's rank budget (train/adalora.py) and EWC's penalty (train/ewc.py)
  live here rather than in the train step, so every job runs the same step.
  """
  tx = optim.make_optimizer(opt_config)
  if peft.method == "adalora":
    tx = adalora.rank_allocation(tx, peft, opt_config.total_steps)
  if ewc_config and ewc_config.weight:
    tx = ewc.with_penalty(tx, ewc_config.weight)
  return tx


def _log_eval(step: int, split: str, results: dict) -> None:
  logging.info("step %d %s %s", step, split, {k: round(v, 4) for k, v in _scalars(results).items()})
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the job described by `config` in `workdir`; returns final metrics.

  The workdir is locked while the job runs (train/workdir.WorkdirLock).
  """
  workdir = resolve_workdir(workdir)
  mesh_lib.check_batch_divides(config, jax.device_count())
  with WorkdirLock(workdir, enabled=jax.process_index() == 0) as lock:
    return _train_and_evaluate(config, workdir, lock)


def _train_and_evaluate(config, workdir: str, lock: WorkdirLock) -> dict:
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  task = tasks.build_task(config, workdir)
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  total_steps, warmup_steps = _schedule_steps(config, task)
  opt_config = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt_config.update(total_steps=max(total_steps, 1), warmup_steps=warmup_steps)
  # stop_at_step ends this invocation early (a time-boxed job); the schedule still
  # runs to total_steps and the next invocation picks up from the checkpoint.
  end_step = min(config.stop_at_step or total_steps, total_steps)
  trainable = peft_lib.trainable(task.peft)
  ewc_config = config.get("ewc")
  tx = _optimizer(opt_config, task.peft, ewc_config)
  graphdef, state, frozen, shardings = create_train_state(
    task.model_factory, tx, mesh, rules, config.seed, trainable
  )

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

  meta = {"config": _fingerprint(config), "total_steps": total_steps}
  ckpt = Checkpointer(
    workdir, config.checkpoint.max_to_keep, config.checkpoint.async_save, owner=is_main
  )
  saved_progress = None
  resuming = ckpt.latest_step() is not None
  resume_keys = [f"config.{k}" for k in RESUME_KEYS]
  if resuming:
    try:
      newest_meta = ckpt.read_meta()
    except Exception:  # a damaged newest step: restore_latest below names it and falls back
      newest_meta = None
    if newest_meta is not None:  # before warm starting, which a foreign config could break
      check_compatible(newest_meta, meta, resume_keys, workdir)
  if not resuming or jax.tree.leaves(frozen):
    # Frozen parameters are not in checkpoints: they come from the base every time.
    state, frozen = warm_start.initialise(state, frozen, config.init, task.model_config, tx)
  if not resuming and ewc_config and ewc_config.weight:
    state = state.replace(opt_state=ewc.load_into(state.opt_state, ewc_config.path))
    logging.info("EWC: weight %g, anchor and Fisher from %s", ewc_config.weight, ewc_config.path)
  if jax.tree.leaves(frozen):
    meta["base"] = {
      "init": config.init.get("checkpoint") or config.init.get("hf_dir", ""),
      "fingerprint": _base_fingerprint(frozen),
    }
  if resuming:

    def check_meta(saved):
      check_compatible(saved, meta, resume_keys, workdir)
      _check_same_base(saved, meta, workdir)

    state, saved_meta, _ = ckpt.restore_latest(abstract_like(state), check_meta)
    saved_progress = saved_meta.get("early_stopping")
    logging.info("resumed from step %d", int(state.step))
  if is_main:
    save_run_files(config, task, workdir)

  stopping = None
  if config.get("early_stopping") and config.early_stopping.metric:
    es = config.early_stopping
    stopping = EarlyStopping(es.metric, es.mode, es.patience, saved_progress)
  best_ckpt = (
    Checkpointer(os.path.join(workdir, BEST_DIR), 1, config.checkpoint.async_save, is_main)
    if stopping
    else None
  )

  train_step = step_lib.jit_train_step(graphdef, tx, task.objective, opt_config, shardings)
  eval_step = jax.jit(
    step_lib.make_eval_step(graphdef, task.objective, with_outputs=task.score is not None)
  )
  eval_every = config.eval_every_steps or task.steps_per_epoch
  checkpoint_every = config.checkpoint.every_steps or eval_every

  writer = writers.MetricWriter(
    workdir, enabled=is_main, resume_step=int(state.step) if resuming else None
  )
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
  tokens_per_step = config.batch_size * config.data.max_seq_length
  accuracy_key = next((k for k in task.objective.metric_names if "accuracy" in k), None)
  timer = time.perf_counter()
  steps_since_log, data_seconds = 0, 0.0
  flops_per_step = profiling.train_flops_per_step(
    task.model_config,
    config.batch_size,
    config.data.max_seq_length,
    config.data.get("max_predictions", 0) if config.task == "pretraining" else 0,
  )
  peak = profiling.peak_flops(list(mesh.devices.flat))
  profiler = profiling.StepProfiler(workdir, start, config.get("profile_steps", 0))

  def run_eval(params, batches, split: str = "eval") -> dict:
    return evaluate(
      eval_step, params, frozen, batches, mesh, rules, task.objective, task.score, split
    )

  try:
    with mesh_lib.activate(mesh, rules):
      if total_steps == 0:  # zero-shot: no step to run, so score the initial weights once
        last_eval = run_eval(state.params, task.eval_batches)
        writer.write(0, _scalars(last_eval), split="eval")
        _log_eval(0, "eval", last_eval)
      for step in range(start, end_step):
        profiler.before(step)
        fetched = time.perf_counter()
        local = task.train_data.batch(step, jax.process_index(), jax.process_count())
        batch = mesh_lib.shard_batch(local, mesh, rules)
        data_seconds += time.perf_counter() - fetched
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          state, metrics = train_step(state, frozen, batch)
        profiler.after(step, metrics)
        history.append(metrics)
        steps_since_log += 1
        done = step + 1
        bar.update(1)

        if done % config.log_every_steps == 0 or done == end_step:
          sums = _sum_metrics(history)  # the host waits for the devices here only
          elapsed = time.perf_counter() - timer
          scalars = task.objective.finalize(sums)
          scalars.update(
            learning_rate=float(_host_value(history[-1]["learning_rate"])),
            grad_norm=sums["grad_norm"] / len(history),
            step_time=elapsed / steps_since_log,
            data_wait_time=data_seconds / steps_since_log,  # host batch building, in step_time
            tokens_per_second=tokens_per_step * steps_since_log / elapsed,
            model_tflops_per_second=flops_per_step * steps_since_log / elapsed / 1e12,
          )
          if peak:
            scalars["mfu"] = flops_per_step * steps_since_log / elapsed / peak
          writer.write(done, scalars)
          _stop_if_nonfinite(done, scalars, ckpt)
          lock.refresh()
          postfix = {"loss": f"{scalars['loss']:.3f}"}
          if accuracy_key:
            postfix[accuracy_key] = f"{scalars[accuracy_key]:.3f}"
          bar.set_postfix(**postfix)
          history, steps_since_log, timer = [], 0, time.perf_counter()
          data_seconds = 0.0

        # Not at a stop_at_step pause: an extra evaluation there would count
        # against early-stopping patience and the resumed run would diverge.
        if done % eval_every == 0 or done == total_steps:
          last_eval = run_eval(state.params, task.eval_batches)
          writer.write(done, _scalars(last_eval), split="eval")
          _log_eval(done, "eval", last_eval)
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
  except NonFiniteError:
    profiler.close()
    bar.close()
    writer.close()  # the NaN row is in metrics.jsonl and TensorBoard
    ckpt.close()
    raise

  profiler.close()
  bar.close()
  ckpt.close()
  final = {"step": int(state.step), **_scalars(last_eval), "parameters": counts}
  if task.peft.method == "adalora":
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    ranks = jax.jit(adalora.ranks, out_shardings=replicated)(state.params)
    allocated = {k: _host_value(v).tolist() for k, v in ranks.items()}
    logging.info("AdaLoRA ranks reached: %s", allocated)
    final["adalora_ranks"] = allocated
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
    if task.test_batches and not preemption.requested:
      best_params, _ = best_ckpt.restore(
        stopping.best_step, {"params": abstract_like(state.params)}
      )
      with mesh_lib.activate(mesh, rules):
        test = run_eval(best_params["params"], task.test_batches, "test")
      writer.write(stopping.best_step, _scalars(test), split="test")
      _log_eval(stopping.best_step, "test", test)
      final["test"] = {k: v for k, v in test.items() if not k.endswith("_text")}
  if best_ckpt:
    best_ckpt.close()
  writer.close()
  if is_main:
    curve_keys = ["loss"] + ([accuracy_key] if accuracy_key else [])
    writers.plot_loss_curves(workdir, keys=curve_keys)
    # Labels against predictions, where a person would rather look than read counts.
    plots = [
      ("eval", final, final["step"]),
      ("test", final.get("test", {}), final.get("best", {}).get("step")),
    ]
    for split, results, step in plots:
      if results.get("confusion") and task.labels:
        writers.plot_confusion(
          results["confusion"],
          task.labels,
          os.path.join(workdir, f"confusion_{split}.png"),
          f"{split} at step {step}",
        )
    if last_eval:
      _write_json(os.path.join(workdir, "final_metrics.json"), final)
  return final

"""Orbax checkpoints that resume a run exactly and never destroy good ones.

A checkpoint is one Orbax step directory, <workdir>/checkpoints/<step>/, holding
two items: `state`, the whole train state as a pytree (params, optimizer state,
step, PRNG key, data position), and `meta`, a JSON dict the caller fills with a
config fingerprint. The caller reads `meta` first and runs `check_compatible`,
so a run with the wrong config stops before it can write anything.

Rules that keep good checkpoints safe:
  - a step that already exists, or lies behind the newest one, is never written
    (Orbax itself raises for an existing step under force=True and silently
    skips otherwise; we skip with a warning in both cases). To roll back and
    retrain from an older step, use a fresh workdir.
  - Orbax writes into a temporary directory and renames it on commit, so a run
    that dies mid-save leaves the committed steps as they were.
  - `with Checkpointer(...)` waits for an in-flight async save on the way out,
    exceptions included, so the last save started is the last one committed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

# Orbax's default ArrayHandler is built with this metadata store, and the registry takes an
# override without a warning line in every run's log; neither has a public path.
from orbax.checkpoint._src.metadata import array_metadata_store as array_metadata_store_lib
from orbax.checkpoint._src.serialization import type_handler_registry

from train.errors import UserError
from train.workdir import resolve


def check_options(max_to_keep) -> None:
  """Checked before any data is read, so a bad value costs a second, not a task build."""
  if max_to_keep is not None and max_to_keep < 1:
    raise UserError(f"checkpoint.max_to_keep={max_to_keep} must be >= 1 (or None for all)")


@functools.cache
def _whole_shards_on_cpu() -> None:
  """On the CPU backend (a laptop, or the tests' fake devices) the replicas of an array
  share one host's memory and disk, so Orbax's replica-parallel save (each replica writes
  a slice, so that TPU hosts share the writing) only adds work there: an eager slice, and a
  compile per shape, for every array and replica at every save (about a quarter of a short
  run's time on 8 CPU devices). There each array is written from one replica; other
  backends keep Orbax's default. Once per process: the registry is Orbax's global one."""
  if jax.default_backend() == "cpu":
    handler = ocp.type_handlers.ArrayHandler(
      use_replica_parallel=False, array_metadata_store=array_metadata_store_lib.Store()
    )
    registry = type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY
    registry.add(jax.Array, handler, override=True, ignore_warnings=True)


class Checkpointer:
  """A `CheckpointManager` over <workdir>/checkpoints with (state, meta) items."""

  def __init__(self, workdir, max_to_keep: int = 3, async_save: bool = True, owner: bool = False):
    """`owner`: the job that writes this workdir (it holds the workdir lock). Only
    an owner removes the unfinished saves a killed run left; a reader never
    touches them, since they may be a live job's save in flight."""
    check_options(max_to_keep)
    _whole_shards_on_cpu()
    self.workdir = resolve(workdir)  # Orbax takes absolute paths only
    self.directory = epath.Path(self.workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=1,  # the loop decides the cadence; every call saves
      enable_async_checkpointing=async_save,
      create=True,
      cleanup_tmp_directories=owner,
    )
    if owner:
      self._note_unfinished_saves()
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def _note_unfinished_saves(self) -> None:
    if not self.directory.exists():
      return
    stray = sorted(p.name for p in self.directory.iterdir() if "orbax-checkpoint-tmp" in p.name)
    if stray:
      logging.warning(
        "Removing %d unfinished save(s) a killed run left in %s: %s (never committed, so "
        "no step is lost)",
        len(stray),
        self.directory,
        ", ".join(stray),
      )

  def save(self, step: int, state, meta: dict, force: bool = False) -> bool:
    """Starts writing `state` and `meta` as `step`; False when it was not written.

    With async_save the arrays are copied off the devices before this returns,
    so the caller may donate or overwrite `state` right away.
    """
    step = int(step)
    latest = self.latest_step()
    if latest is not None and step <= latest:
      why = "already exists" if step in self.all_steps() else f"is behind step {latest}"
      logging.warning(
        "Not saving checkpoint %d in %s: step %d %s, and checkpoints are never overwritten.",
        step,
        self.directory,
        step,
        why,
      )
      return False
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    saved = self._manager.save(step, args=args, force=force)
    if saved:
      logging.info("Saving checkpoint %d in %s", step, self.directory)
    return saved

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def read_meta(self, step: int | None = None) -> dict:
    """The JSON `meta` of a checkpoint alone: cheap, for `check_compatible`."""
    step = self._existing_step(step)
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return restored.meta

  def restore(self, step: int | None, abstract_state) -> tuple[Any, dict]:
    """(state, meta) of `step` (None: the latest), laid out like `abstract_state`.

    `abstract_state` is a pytree of jax.ShapeDtypeStruct with `.sharding` (from
    `jax.eval_shape` + the state's shardings, or `abstract_like`); each array
    comes back with that sharding, whatever mesh it was saved from.
    """
    step = self._existing_step(step)
    args = ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
    )
    restored = self._manager.restore(step, args=args)
    logging.info("Restored checkpoint %d from %s", step, self.directory)
    return restored.state, restored.meta

  def restore_latest(self, abstract_state, check_meta=None) -> tuple[Any, dict, int]:
    """(state, meta, step) of the newest checkpoint that reads whole.

    A step whose meta or arrays cannot be read (a truncated array file, a lost
    _METADATA) is damaged: it is renamed to <step>.damaged beside the others
    (kept for inspection, never deleted; later saves can then reuse its step
    number), named in a warning, and the next older step is tried.
    `check_meta(meta)` runs on each readable meta before its arrays are read;
    what it raises (a checkpoint from another config) ends the search.
    """
    damaged = []
    for step in reversed(self.all_steps()):
      try:
        meta = self.read_meta(step)
      except Exception as e:  # any failure to read is damage
        damaged.append(self._set_aside(step, "its meta", e))
        continue
      if check_meta is not None:
        check_meta(meta)
      try:
        restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
      except Exception as e:
        mismatch = self._structure_mismatch(step, abstract_state)
        if mismatch:
          raise UserError(
            f"checkpoint {step} in {self.directory} holds a state of another layout than this "
            f"config builds ({mismatch}): the optimizer (optimizer.name, its settings) and "
            "peft must be those the run started with; use them, or a fresh --workdir"
          ) from e
        damaged.append(self._set_aside(step, "its arrays", e))
        continue
      if damaged:
        logging.warning(
          "Resuming from checkpoint %d in %s; skipped damaged: %s",
          step,
          self.directory,
          "; ".join(damaged),
        )
      logging.info("Restored checkpoint %d from %s", step, self.directory)
      return restored.state, meta, step
    raise UserError(
      f"no checkpoint in {self.directory} can be read: "
      + "; ".join(damaged)
      + ". Each was set aside as <step>.damaged and kept; run again to start from step 0, "
      "or move one back to retry it"
    )

  def _set_aside(self, step: int, part: str, error: Exception) -> str:
    """Renames a damaged step directory to <step>.damaged; returns what was done."""
    source = self.directory / str(step)
    target = self.directory / f"{step}.damaged"
    suffix = 1
    while target.exists():
      target = self.directory / f"{step}.damaged{suffix}"
      suffix += 1
    if jax.process_index() == 0:
      source.rename(target)
    self._manager.reload()
    reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
    logging.warning(
      "Checkpoint %d in %s is damaged (%s cannot be read: %s); moved to %s",
      step,
      self.directory,
      part,
      reason,
      target,
    )
    return f"step {step} ({part}: {reason}; now {target.name})"

  def _structure_mismatch(self, step: int, abstract_state) -> str:
    """'' when the saved state has the leaves `abstract_state` has, else how they differ."""
    handler = ocp.PyTreeCheckpointHandler()
    try:
      saved = jax.tree.leaves(handler.metadata(self.directory / str(step) / "state").tree)
    except Exception:  # unreadable metadata is damage, not another layout
      return ""
    finally:
      handler.close()
    wanted = jax.tree.leaves(abstract_state)
    saved_shapes = sorted(tuple(getattr(m, "shape", ()) or ()) for m in saved)
    wanted_shapes = sorted(tuple(x.shape) for x in wanted)
    if len(saved) != len(wanted):
      return f"{len(saved)} arrays saved, {len(wanted)} expected"
    if saved_shapes != wanted_shapes:
      return "the saved array shapes differ"
    return ""

  def wait(self) -> None:
    """Blocks until an async save has committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves, then releases the manager's threads."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _existing_step(self, step: int | None) -> int:
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no checkpoints in {self.directory}")
      return steps[-1]
    if int(step) not in steps:
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {self.directory}; steps there: {steps}"
      )
    return int(step)


def abstract_like(state):
  """ShapeDtypeStructs with the shapes, dtypes and shardings of a live state."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


_MISSING = "<missing>"


def _lookup(tree: dict, dotted: str):
  node = tree
  for part in dotted.split("."):
    if not isinstance(node, dict) or part not in node:
      return _MISSING
    node = node[part]
  return node


def _differences(key: str, saved, current) -> list[str]:
  if isinstance(saved, dict) and isinstance(current, dict):
    out = []
    for k in sorted(set(saved) | set(current), key=str):
      out += _differences(f"{key}.{k}", saved.get(k, _MISSING), current.get(k, _MISSING))
    return out
  if saved == current:
    return []
  return [f"{key}: checkpoint {saved!r}, config {current!r}"]


def check_compatible(
  saved_meta: dict, current_meta: dict, keys: Iterable[str], workdir: str = ""
) -> None:
  """Raises ValueError naming every key (dotted, to the leaf) whose values differ.

  `current_meta` goes through a JSON round trip first, as `saved_meta` did on
  save, so a tuple in the config equals the list it was stored as.
  """
  current_meta = json.loads(json.dumps(current_meta))
  problems = []
  for key in keys:
    problems += _differences(key, _lookup(saved_meta, key), _lookup(current_meta, key))
  if problems:
    where = f"workdir {workdir}" if workdir else "the workdir"
    raise ValueError(
      f"{where} holds a checkpoint from a different config: "
      + "; ".join(problems)
      + ". Use a fresh --workdir, or the config the checkpoint was made with."
    )


def _strip_values(tree):
  """Orbax keeps nnx.Param's {'value': array} wrapper; pure trees have bare arrays."""
  if isinstance(tree, dict):
    if set(tree) == {"value"}:
      return np.asarray(tree["value"])
    return {key: _strip_values(value) for key, value in tree.items()}
  if isinstance(tree, (list, tuple)):  # optimizer states are tuples
    return type(tree)(_strip_values(value) for value in tree)
  return np.asarray(tree)


def read_on_host(
  checkpoints_dir: str, step: int | None = None, parts: tuple[str, ...] | None = ("params",)
) -> tuple[dict, dict, int]:
  """({part: pure numpy tree}, meta, step) of a checkpoint, whatever mesh wrote it.

  For reading a checkpoint outside its run (warm start, predict, export,
  tests): only `parts` of the state are read (None: all of it), each array
  whole on this host, from the checkpoint's own shape metadata.
  """
  checkpoints_dir = resolve(checkpoints_dir)
  manager = Checkpointer(os.path.dirname(checkpoints_dir), async_save=False)
  try:
    if manager.latest_step() is None:
      raise FileNotFoundError(f"no checkpoints in {checkpoints_dir}")
    step = manager.latest_step() if step is None else int(step)
    meta = manager.read_meta(step)
  finally:
    manager.close()
  item = os.path.join(str(checkpoints_dir), str(step), "state")
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(epath.Path(item)).tree
  finally:
    handler.close()
  host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  wanted = {k: v for k, v in metadata.items() if parts is None or k in parts}
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host), wanted)
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=host), target)
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(
      item,
      args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True),
    )
  return _strip_values(restored), meta, step


# --------------------------------------------------------------------------
# What a checkpoint is bound to: checked before a run resumes it

# Keys of the config a checkpoint must agree with before a run may resume it.
RESUME_KEYS = ("task", "model", "data", "batch_size", "seed", "peft", "ewc", "distill", "compress")


# Config fields a checkpoint is not bound to: how the step computes, not what it computes,
# or how its outputs are scored.
UNBOUND = {
  "model": ("dtype", "scan_layers", "remat_policy", "attention_impl"),
  "data": (
    "prepare_workers",  # the prepared shards are the same with any count
    "calibration_texts",  # cloze: moves evaluated predictions, never a trained weight
  ),
}
# Fields newer than some checkpoints: at the value that means what runs before them did,
# they are left out of the fingerprint, so those runs still resume.
LEGACY_VALUES = {
  "model": {"attention_head_size": 0, "quantization": "none", "tie_word_embeddings": True},
  "data": {
    "prepare_in_workdir": False,  # the corpus read in memory
    "packing": False,  # pretraining configs: one example a row
    "skip_labels": (),  # classification: every row kept
  },
}


def _bound(section: str, fields: dict) -> dict:
  legacy = LEGACY_VALUES.get(section, {})
  return {
    key: value
    for key, value in fields.items()
    if key not in UNBOUND.get(section, ()) and not (key in legacy and value == legacy[key])
  }


def _saved_bound(meta: dict) -> dict:
  """A saved meta with its fingerprint read through today's tables: a field saved at its
  legacy value (by a run from before the field was dropped there) counts as absent."""
  config = meta.get("config")
  if not isinstance(config, dict):
    return meta
  bound = {s: _bound(s, config[s]) for s in ("model", "data") if isinstance(config.get(s), dict)}
  return {**meta, "config": {**config, **bound}}


def fingerprint(config) -> dict:
  """The part of the config a checkpoint is bound to (compute options excluded)."""
  model = _bound("model", config.model.to_dict())
  data = _bound("data", config.data.to_dict())
  fingerprint = {
    "task": config.task,
    "model": model,
    "data": data,
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
  if config.get("distill") and config.distill.teacher:
    fingerprint["distill"] = config.distill.to_dict()  # and a student its teacher
  if config.get("compress") and config.compress.source:
    fingerprint["compress"] = config.compress.to_dict()  # and a compressed model its source
  return fingerprint


def base_fingerprint(frozen) -> str:
  """A checksum of the frozen parameters: a PEFT checkpoint is only valid on its base."""
  if not jax.tree.leaves(frozen):
    return ""
  moments = jax.jit(
    lambda f: jax.tree.map(
      lambda x: jnp.stack([jnp.sum(x), jnp.sum(jnp.abs(x)), jnp.sum(x * x)]), f
    )
  )(frozen)
  text = json.dumps(
    [
      [f"{v:.6e}" for v in np.asarray(m if m.is_fully_addressable else m.addressable_data(0))]
      for m in jax.tree.leaves(moments)
    ]
  )
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_same_base(saved_meta: dict, meta: dict, workdir: str) -> None:
  saved, now = saved_meta.get("base", {}), meta.get("base", {})
  if saved.get("fingerprint", "") != now.get("fingerprint", ""):
    raise ValueError(
      f"{workdir} holds a run trained on other frozen base weights ({saved.get('init') or 'none'},"
      f" checksum {saved.get('fingerprint') or '-'}) than config.init gives now "
      f"({now.get('init') or 'none'}, checksum {now.get('fingerprint') or '-'}): its trainable "
      "parameters only make sense on their own base; use that base or a fresh workdir"
    )


def check_newest_step(ckpt: Checkpointer, meta: dict, workdir: str) -> None:
  """Refuses a workdir whose newest checkpoint is another config's (a damaged newest step
  is left to restore_resumable, which names it and falls back)."""
  try:
    newest = ckpt.read_meta()
  except Exception:
    return
  check_compatible(_saved_bound(newest), meta, [f"config.{k}" for k in RESUME_KEYS], workdir)


def restore_resumable(ckpt: Checkpointer, state, meta: dict, workdir: str):
  """(state, saved meta) of the newest checkpoint this run may resume: same config, same base."""

  def check(saved):
    check_compatible(_saved_bound(saved), meta, [f"config.{k}" for k in RESUME_KEYS], workdir)
    check_same_base(saved, meta, workdir)

  state, saved_meta, _ = ckpt.restore_latest(abstract_like(state), check)
  return state, saved_meta

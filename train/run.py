"""One run's parts, built one way for every tool: the loop, train.aot, train.continual, benchmarks.

`build_run(config, workdir)` reads the task's data, lays out the mesh and
initialises the sharded state; `build_run(config, abstract=True)` reads no
data and allocates nothing: the state and the train batch are
ShapeDtypeStructs with their shardings, which is what ahead-of-time
compilation for a TPU topology lowers against. Both wrap the optimizer the
same way (AdaLoRA's rank budget, EWC's penalty) and jit the same steps.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax.sharding import Mesh

from model import peft as peft_lib
from model.config import BertConfig
from model.peft import PeftConfig
from train import adalora, compress, distill, ewc, optim, tasks
from train import mesh as mesh_lib
from train import step as step_lib
from train.errors import UserError
from train.state import TrainState, abstract_train_state, create_train_state
from train.tasks.common import peft_config


@dataclasses.dataclass
class Run:
  config: Any
  task: tasks.Task | None  # None for an abstract run: no data was read
  model_config: BertConfig
  labels: list[str] | None
  objective: Any
  peft: PeftConfig
  mesh: Mesh
  rules: tuple
  total_steps: int  # of the schedule; 0: nothing to train (zero-shot evaluation)
  warmup_steps: int
  opt_config: ml_collections.ConfigDict  # config.optimizer with both step counts filled in
  tx: optax.GradientTransformation
  graphdef: Any
  state: TrainState  # sharded arrays, or ShapeDtypeStructs when abstract
  frozen: Any  # parameters that do not train (PEFT), same
  teacher: Any  # a distillation teacher's parameters (train/distill.py), same; None if none
  shardings: TrainState
  train_step: Any  # jitted (state, frozen, batch, teacher) -> (state, metrics)
  eval_step: Any  # jitted (params, frozen, batch) -> sums, or (sums, outputs)
  batch_shapes: dict  # the global train batch as ShapeDtypeStructs with the batch sharding
  mlm_predictions: int  # MLM-head rows per sequence, for the FLOP count
  hooks: list  # what the optimizer's methods do at the start and end of a run

  @property
  def end_step(self) -> int:
    """Where this invocation stops: stop_at_step when set (a time-boxed job), else the end."""
    return min(self.config.get("stop_at_step", 0) or self.total_steps, self.total_steps)

  @property
  def tokens_per_step(self) -> int:
    """Token positions of one global batch (every choice of a multiple-choice example)."""
    return int(self.batch_shapes["input_ids"].size)


def schedule_steps(config, steps_per_epoch: int | None) -> tuple[int, int]:
  """(total_steps, warmup_steps): given, from a token budget, or from epochs (fine-tuning);
  warmup given, or warmup_ratio of the total.

  optimizer.total_tokens is a budget in batch tokens (batch_size x max_seq_length a
  step, padding included), so one recipe sets its length the same way on a laptop and
  on a slice with a larger batch. epochs=0 without total_steps: (0, 0), no training;
  the loop evaluates once (zero-shot).
  """
  opt = config.optimizer
  total = opt.total_steps
  tokens = opt.get("total_tokens", 0)
  if tokens and total:
    raise UserError(
      f"optimizer.total_steps={total} and optimizer.total_tokens={tokens}: set one of them "
      "(--config.optimizer.total_steps=0 clears a config's step count)"
    )
  if tokens:
    per_step = config.batch_size * config.data.max_seq_length
    total = -(-int(tokens) // per_step)
    logging.info("optimizer.total_tokens=%d: %d steps of %d tokens", tokens, total, per_step)
  total = total or config.get("epochs", 0) * (steps_per_epoch or 0)
  if not total and config.get("epochs") != 0:
    raise ValueError("optimizer.total_steps is 0 and no epochs are set: give one of them")
  warmup = opt.warmup_steps or round(opt.get("warmup_ratio", 0.0) * total)
  return int(total), int(warmup)


def make_optimizer(opt_config, peft: PeftConfig, ewc_config) -> tuple[Any, list]:
  """The run's optimizer, wrapped by what acts on parameters besides the loss gradient,
  and the hooks those methods give the loop.

  AdaLoRA's rank budget (train/adalora.py) and EWC's penalty (train/ewc.py)
  live here rather than in the train step, so every job runs the same step. A
  hook has `on_start(state, resuming) -> state` (after init or restore) and
  `on_end(state, mesh) -> dict` (entries for final_metrics.json).
  """
  tx, hooks = optim.make_optimizer(opt_config), []
  if peft.method == "adalora":
    tx = adalora.rank_allocation(tx, peft, opt_config.total_steps)
    hooks.append(adalora.RankReport())
  if ewc_config and ewc_config.weight:
    tx = ewc.with_penalty(tx, ewc_config.weight)
    hooks.append(ewc.AnchorHook(ewc_config.weight, ewc_config.path))
  return tx, hooks


def abstract_batch(spec, config, mesh: Mesh, rules) -> tuple[list[str] | None, dict]:
  """(labels, the global train batch as ShapeDtypeStructs) from the config alone."""
  labels, shapes = spec.example_shapes(config)
  sharding = mesh_lib.batch_sharding(mesh, rules)
  batch = {
    key: jax.ShapeDtypeStruct((config.batch_size, *shape), jnp.dtype(dtype), sharding=sharding)
    for key, (shape, dtype) in shapes.items()
  }
  return labels, batch


def build_run(
  config, workdir: str | None = None, devices=None, abstract: bool = False, with_data: bool = True
) -> Run:
  """Everything a job needs to step `config`: task, mesh, state, optimizer, jitted steps.

  `workdir` holds what the task keeps (a learned vocab); None: a temporary folder.
  `devices`: the mesh's devices (default: all; a TPU topology's for `train.aot`).
  `with_data=False` reads no data (`task` None; the model and objective come from
  the config, as for `abstract`) but initialises the state: for benchmarks that
  feed batches of their own.
  """
  spec = tasks.get(config.task)
  mesh = mesh_lib.make_mesh(config.mesh.shape, devices)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  peft = peft_config(config)
  if abstract or not with_data:
    if spec.objective is None:
      raise ValueError(
        f"task={config.task!r} builds its objective from its data; it needs with_data=True"
      )
    task = None
    if config.get("data", {}).get("packing") and spec.packs:
      # Packed rows number at most batch_size (one example a row), so the unpacked batch
      # bounds their memory; their exact shape comes from the data.
      logging.info("data.packing: compiling the unpacked batch, an upper bound on packed rows")
    model_config = BertConfig.from_dict(config.model)
    labels, batch_shapes = abstract_batch(spec, config, mesh, rules)
    factory = spec.model_factory(config, model_config, labels, peft)
    objective = spec.objective(config, labels)
    masked = batch_shapes.get("masked_positions")
    mlm_predictions = masked.shape[-1] if masked is not None else 0
  else:
    task = tasks.build_task(config, workdir or tempfile.mkdtemp(prefix="run_"))
    model_config, labels, objective = task.model_config, task.labels, task.objective
    factory, peft = task.model_factory, task.peft
    _, batch_shapes = abstract_batch(spec, config, mesh, rules)
    mlm_predictions = task.mlm_predictions
  teacher = distill.load_teacher(config, labels, model_config, mesh, rules, abstract)
  if teacher is not None:
    d = config.distill
    if d.hidden_weight and teacher.hidden_size != model_config.hidden_size:
      logging.info(
        "distilling hidden states through a learned %d -> %d projection",
        model_config.hidden_size,
        teacher.hidden_size,
      )
      factory = distill.with_projection(
        factory, model_config.hidden_size, teacher.hidden_size, model_config.initializer_range
      )
    objective = distill.DistillationObjective(
      objective,
      teacher.graphdef,
      d.temperature,
      d.soft_weight,
      d.hard_weight,
      d.hidden_weight,
      teacher.layer_map,
      d.attention_weight,
      teacher.num_heads,
    )
    if task is not None:  # the loop scores and logs through the task's objective
      task = dataclasses.replace(task, objective=objective)
  if task is None and not config.optimizer.total_steps:
    total_steps, warmup_steps = 1, 0  # epochs without data: the schedule's length changes no shape
  else:
    total_steps, warmup_steps = schedule_steps(config, task.steps_per_epoch if task else None)
  compress.check_trainable(config, total_steps)
  opt_config = ml_collections.ConfigDict(config.optimizer.to_dict())
  opt_config.update(total_steps=max(total_steps, 1), warmup_steps=warmup_steps)
  tx, hooks = make_optimizer(opt_config, peft, config.get("ewc"))
  trainable = peft_lib.trainable(peft)
  if abstract:
    graphdef, state, frozen, shardings = abstract_train_state(factory, tx, mesh, rules, trainable)
  else:
    graphdef, state, frozen, shardings = create_train_state(
      factory, tx, mesh, rules, config.seed, trainable
    )
  if task is not None and compress.enabled(config):
    if peft.method != "none":
      raise UserError(f"compress.source with peft.method={peft.method!r}: not supported")
    hooks.append(compress.CompressHook(config, task, mesh, rules, frozen, tx, workdir))
  train_step = step_lib.jit_train_step(graphdef, tx, objective, opt_config, shardings)
  with_outputs = task is not None and task.score is not None
  eval_step = jax.jit(step_lib.make_eval_step(graphdef, objective, with_outputs=with_outputs))
  return Run(
    config=config,
    task=task,
    model_config=model_config,
    labels=labels,
    objective=objective,
    peft=peft,
    mesh=mesh,
    rules=rules,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    opt_config=opt_config,
    tx=tx,
    graphdef=graphdef,
    state=state,
    frozen=frozen,
    teacher=None if teacher is None else teacher.params,
    shardings=shardings,
    train_step=train_step,
    eval_step=eval_step,
    batch_shapes=batch_shapes,
    mlm_predictions=mlm_predictions,
    hooks=hooks,
  )

"""A fine-tuning workdir read back: its config, labels, one checkpoint and every parameter.

What `train/predict.py` labels text with and `train/hf.py` exports. The loop
writes config.json, labels.json and tokenizer/ beside the checkpoints; the
best evaluation is under <workdir>/best. A PEFT checkpoint holds only the
trainable parameters: the rest is the base the run started from (config.init),
loaded again here as the loop loads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

from model.config import BertConfig
from model.convert import check_shapes, leaf_paths, union_trees
from model.peft import PeftConfig

BEST_DIR = "best"  # <workdir>/best: the loop's best checkpoint by early_stopping.metric


@dataclasses.dataclass
class FinetunedRun:
  config: Any  # the run's ml_collections config (config.json)
  model_config: BertConfig
  peft: PeftConfig
  labels: list[str] | None
  params: dict  # the checkpoint's tree: trainable parameters only for PEFT runs
  step: int

  @property
  def task(self) -> str:
    return self.config.task

  @property
  def spec(self):
    """The task's record in the registry (train/tasks)."""
    from train import tasks

    return tasks.get(self.config.task)


def finetuned_task(workdir: str) -> str | None:
  """The fine-tuning task of a workdir's config.json; None for pretraining / cloze / none."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return None
  from train import tasks

  with open(path) as f:
    task = json.load(f).get("task")
  return task if task in tasks.finetuned_names() else None


def read_run(workdir: str, checkpoint: str = "best", step: int | None = None) -> FinetunedRun:
  """The run's config, labels and a checkpoint: `step` of checkpoints/, else 'best' (falling
  back to the newest when there is none) or 'latest'."""
  from train import tasks
  from train.checkpoint import read_on_host
  from train.tasks.common import peft_config

  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(
      f"{config_path} does not exist: --workdir must be a directory a fine-tuning run wrote"
    )
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if config.task not in tasks.finetuned_names():
    raise ValueError(
      f"{workdir} holds a {config.task!r} run; this needs a fine-tuned one "
      f"{tasks.finetuned_names()}"
    )
  if checkpoint not in ("best", "latest"):
    raise ValueError(f"--checkpoint={checkpoint!r}: expected 'best' or 'latest'")
  labels = None
  if os.path.isfile(os.path.join(workdir, "labels.json")):
    with open(os.path.join(workdir, "labels.json")) as f:
      labels = json.load(f)
  best = os.path.join(workdir, BEST_DIR, "checkpoints")
  explicit_step = step is not None
  use_best = (
    step is None and checkpoint == "best" and os.path.isdir(best) and bool(os.listdir(best))
  )
  parts, _, step = read_on_host(best if use_best else os.path.join(workdir, "checkpoints"), step)
  if checkpoint == "best" and not use_best and not explicit_step:
    from absl import logging

    logging.warning(
      "%s has no best checkpoint (%s/ is empty: the run has not evaluated yet, or it ended "
      "early); using its newest, step %d, of %d training steps. --step=N picks another.",
      workdir,
      best.rsplit("/", 1)[0],
      step,
      config.optimizer.get("total_steps") or 0,
    )
  from train.distill import PROJECTION

  params = {key: value for key, value in parts["params"].items() if key != PROJECTION}
  return FinetunedRun(
    config, BertConfig.from_dict(config.model), peft_config(config), labels, params, step
  )


def full_params(run: FinetunedRun) -> dict:
  """Every parameter of the run's model: a PEFT checkpoint's on top of its frozen base."""
  from flax import nnx

  from train import tasks, warm_start
  from train.state import abstract_model

  factory = tasks.model_factory(run.config, run.model_config, run.labels)
  reference = nnx.to_pure_dict(abstract_model(factory)[1])
  tree = run.params
  if run.peft.method != "none":
    base, _ = warm_start.base_tree(run.config.init, run.model_config)
    tree = union_trees({k: v for k, v in (base or {}).items() if k in reference}, tree)
  check_shapes(reference, tree)
  absent = sorted(set(leaf_paths(reference)) - set(leaf_paths(tree)))
  if absent:
    raise ValueError(
      f"cannot rebuild the model of this {run.peft.method} run: "
      f"{['/'.join(p) for p in absent[:3]]} are in neither the checkpoint nor "
      "the run's init (a PEFT run on a random base has nothing to rebuild from)"
    )
  return tree

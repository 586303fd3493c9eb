"""What a task is: the record the registry holds (`TaskSpec`) and what it builds (`Task`).

A task module (`train/tasks/<name>.py`) defines one `SPEC`. Everything that
differs between tasks is a field of it: the config defaults, how a run's data
and model are built, the objective, what `train.predict` prints and how the
model is named in transformers and HF PEFT. Other modules ask the registry
(`train/tasks/__init__.py`) and hold no table of task names of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

from model.config import BertConfig
from model.peft import PeftConfig


@dataclasses.dataclass
class Task:
  """One run's model factory, objective and data: everything the loop needs from a task."""

  model_config: BertConfig
  model_factory: Callable[[nnx.Rngs], nnx.Module]
  objective: Any
  train_data: Any  # .batch(step, process_index, process_count) -> numpy dict
  eval_batches: list[dict]  # fixed global batches, numpy
  vocab_file: str | None = None
  summary: dict = dataclasses.field(default_factory=dict)
  steps_per_epoch: int | None = None
  test_batches: list[dict] = dataclasses.field(default_factory=list)
  # (split 'eval' | 'test', model outputs of every row of that split's batches) -> metrics
  score: Callable[[str, dict], dict] | None = None
  labels: list[str] | None = None
  tokenizer: Any = None
  peft: PeftConfig = PeftConfig()  # what trains; the loop freezes the rest
  mlm_predictions: int = 0  # MLM-head rows per sequence, for the FLOP count
  probe: Any = None  # train/probe.py's ProbeSet: a linear probe at every evaluation


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A task's record in the registry.

  `predict` and the fields after it are for fine-tuned workdirs, read back by
  `train.predict` and exported by `train.hf`; a task without `head`
  (pretraining, cloze) has neither.
  """

  name: str
  build: Callable[[Any, str], Task]  # (config, workdir) -> Task
  # (config) -> (labels, {array: (shape, dtype)} of one example): what a batch holds, known
  # from the config alone; `train.run.build_run(abstract=True)` compiles against it
  example_shapes: Callable
  data_defaults: dict = dataclasses.field(default_factory=dict)  # this task's config.data fields
  # (config, model_config, labels, peft) -> a factory rngs -> model; predict rebuilds with it
  model_factory: Callable | None = None
  objective: Callable | None = None  # (config, labels) -> objective
  predict: Callable | None = None  # (predictor, inputs: list of str / tuples) -> list[dict]
  head: str | None = None  # top-level parameter name of the head; `<head>.` in HF names
  hf_architecture: str | None = None  # transformers' class of a merged export
  peft_task_type: str | None = None  # HF PEFT's task_type of a LoRA adapter export
  hf_labels: Callable | None = None  # (config, labels) -> config.json label fields
  hf_pooler: bool = False  # whether transformers' model of the task keeps bert.pooler
  # (model_config, num_labels or None, rngs) -> the head model of an HF checkpoint of this
  # architecture (train.api.load); num_labels is read from the checkpoint when
  # hf_num_labels, the head then having one output per label
  hf_model: Callable | None = None
  hf_num_labels: bool = False
  outputs: tuple[str, ...] = ()  # what the head model returns, named as transformers names it
  distills: bool = False  # train/distill.py can teach it (its outputs are class logits)
  # CLUE test files (JSON lines) in train.predict: (config) -> the keys of a line's texts,
  # and (predict result) -> the "label" of CLUE's submission line; None: not read
  clue_keys: Callable | None = None
  clue_label: Callable | None = None
  packs: bool = False  # whether its training batches can be packed rows (data.packing)

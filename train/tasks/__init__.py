"""The task registry: a task's name -> its module's `SPEC` (train/tasks/base.TaskSpec).

  pretraining            MLM + NSP on a text corpus (BertForPreTraining)
  classification         sentences / pairs / relations / regression (BertForSequenceClassification)
  token_classification   NER on CoNLL files (BertForTokenClassification)
  question_answering     SQuAD v1.1 spans (BertForQuestionAnswering)
  multiple_choice        SWAG-style endings scored per choice (BertForMultipleChoice)
  cloze                  PET-style prompts scored by the MLM head (BertForPreTraining)

A new task is a module here with a SPEC, one line below, its config and its
test. Modules are imported when first asked for, so configs can read the
registry without building anything.
"""

from __future__ import annotations

import importlib

from train.tasks.base import Task, TaskSpec

MODULES = {
  "pretraining": "train.tasks.pretraining",
  "classification": "train.tasks.classification",
  "token_classification": "train.tasks.token_classification",
  "question_answering": "train.tasks.question_answering",
  "multiple_choice": "train.tasks.multiple_choice",
  "cloze": "train.tasks.cloze",
}

__all__ = ["MODULES", "Task", "TaskSpec", "build_task", "finetuned_names", "get", "model_factory"]


def get(name: str) -> TaskSpec:
  """The spec of task `name`; an unknown name is refused with the known ones."""
  if name not in MODULES:
    raise ValueError(f"task={name!r}: known tasks are {sorted(MODULES)}")
  return importlib.import_module(MODULES[name]).SPEC


def finetuned_names() -> tuple[str, ...]:
  """Tasks whose workdirs `train.predict` labels with and `train.hf` exports: those with a head."""
  return tuple(name for name in MODULES if get(name).head)


def build_task(config, workdir: str) -> Task:
  """The Task of config.task, after checking that config.init names a source that exists."""
  spec = get(config.task)
  if config.get("init"):  # before anything reads from it: name a missing source as such
    from train import warm_start

    warm_start.check_init_source(config.init)
    warm_start.adopt_init_architecture(config)
  from train import compress

  if compress.enabled(config):
    compress.adopt_source(config)
  return spec.build(config, workdir)


def model_factory(config, model_config, labels):
  """The model of a fine-tuned run's config, as its task builds it (predict, export)."""
  from train.tasks.common import peft_config

  spec = get(config.task)
  if spec.model_factory is None:
    raise ValueError(f"task={config.task!r} is not a fine-tuning task with a head")
  return spec.model_factory(config, model_config, labels, peft_config(config))

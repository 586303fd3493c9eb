"""The notebook API: a model and its tokenizer in one call, and a predictor for a fine-tuned run.

  from train import api

  model, tokenizer = api.load("path/to/hf_dir")  # an HF directory, a hub name or our workdir
  batch = tokenizer(["a sentence", "another one"], padding=True, return_tensors="np")
  outputs = model(**batch)  # a dict of arrays: sequence_output, pooled_output, ...

  predictor = api.predictor("workdirs/sst2")  # a fine-tuning workdir
  predictor(["a gripping film"])  # [{'text': ..., 'label': 'positive', 'probability': 0.97}]

`load` gives the model the source holds: the encoder of a `BertModel`, the
pretraining heads of a `BertForPreTraining` checkpoint or of our pretraining
workdirs, the task head of a `BertFor<Task>` directory or of our fine-tuning
workdirs. `head=` asks for another; whatever the source lacks starts random
and is named in a warning, never quietly.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from data.tokenizer import load_tokenizer
from model import heads
from model.bert import BertModel, unstack_layers
from model.config import BertConfig
from model.convert import leaf_paths, merge_trees, new_mlm_head
from train import tasks

# Heads that are no fine-tuning task; the task heads come from the registry (train/tasks).
ENCODER_OUTPUTS = ("sequence_output", "pooled_output")
PRETRAINING_ARCHITECTURES = ("BertForPreTraining", "BertForMaskedLM")


def head_names() -> tuple[str, ...]:
  """What `load(..., head=)` accepts besides 'auto'."""
  return ("none", "pretraining", *tasks.finetuned_names())


def architecture_head(architecture: str) -> str:
  """The head of an HF config's `architectures[0]`: a task's, 'pretraining' or 'none'."""
  if architecture in PRETRAINING_ARCHITECTURES:
    return "pretraining"
  for name in tasks.finetuned_names():
    if tasks.get(name).hf_architecture == architecture:
      return name
  return "none"


def _output_names(head: str) -> tuple[str, ...] | None:
  """What the head model's call returns, named as transformers names it; None: a dict."""
  if head == "pretraining":
    return None
  return ENCODER_OUTPUTS if head == "none" else tasks.get(head).outputs


@dataclasses.dataclass
class Model:
  """A loaded model: `model(**tokenizer_output)` -> dict of numpy arrays (one compile per
  batch shape). `module` is the Flax NNX model itself, `config` its BertConfig."""

  module: nnx.Module
  config: BertConfig
  head: str
  source: str

  def __post_init__(self):
    graphdef, state = nnx.split(self.module)
    names = _output_names(self.head)

    def forward(state, input_ids, token_type_ids, attention_mask):
      out = nnx.merge(graphdef, state)(input_ids, token_type_ids, attention_mask)
      if names is None:  # the pretraining model's dict
        return out
      return dict(zip(names, out if isinstance(out, tuple) else (out,), strict=True))

    # On the device once (numpy leaves would be copied in at every call), split by layer
    # (unstack_layers: no copy of the stacked weights at each call).
    if not self.config.scan_layers:
      state = unstack_layers(state)
    self._state, self._forward = jax.device_put(state), jax.jit(forward)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None) -> dict:
    input_ids = np.asarray(input_ids, np.int32)
    if input_ids.ndim == 1:
      raise ValueError(
        f"input_ids of shape {input_ids.shape}: expected [batch, length] (a batch of one is "
        "tokenizer([text], return_tensors='np'))"
      )
    ones = np.ones_like(input_ids)
    token_type_ids = np.zeros_like(ones) if token_type_ids is None else token_type_ids
    attention_mask = ones if attention_mask is None else attention_mask
    out = self._forward(
      self._state,
      input_ids,
      np.asarray(token_type_ids, np.int32),
      np.asarray(attention_mask, np.int32),
    )
    return {key: np.asarray(value) for key, value in out.items()}


class Encoder(nnx.Module):
  """The encoder alone, its parameters under `bert` as in every head model."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs):
    self.bert = BertModel(config, rngs)

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None):
    return self.bert(input_ids, token_type_ids, attention_mask)


def load(source: str, head: str = "auto", num_labels: int | None = None):
  """(model, tokenizer) from an HF directory or hub name, or a workdir of this codebase.

  `model(**tokenizer(texts, padding=True, return_tensors="np"))` returns a dict of
  arrays. head: 'auto' (what the source holds), 'none' (the encoder), 'pretraining' or a
  fine-tuning task with a head ('classification', 'token_classification',
  'question_answering', 'multiple_choice').
  """
  if head not in ("auto", *head_names()):
    raise ValueError(f"head={head!r}: expected 'auto' or one of {sorted(head_names())}")
  if os.path.isdir(os.path.join(source, "checkpoints")):
    return _load_workdir(source, head, num_labels)
  return _load_hf(source, head, num_labels)


def predictor(workdir: str, checkpoint: str = "best", batch_size: int = 32):
  """The fine-tuned run of `workdir` as a callable: `predictor(texts)` -> one dict per input
  (label and score, entities, or an answer span, by the run's task)."""
  from train.predict import Predictor

  return Predictor(workdir, checkpoint=checkpoint, batch_size=batch_size)


def _build(head: str, config: BertConfig, num_labels: int | None) -> nnx.Module:
  rngs = nnx.Rngs(0)
  if head == "none":
    return Encoder(config, rngs)
  if head == "pretraining":
    return heads.BertForPreTraining(config, rngs)
  return tasks.get(head).hf_model(config, num_labels, rngs)


def _takes_num_labels(head: str) -> bool:
  return head not in ("none", "pretraining") and tasks.get(head).hf_num_labels


def _keeps_pooler(head: str) -> bool:
  return head in ("none", "pretraining") or tasks.get(head).hf_pooler


def _fill(module: nnx.Module, tree: dict, where: str, missing_encoder=()) -> None:
  """Loads `tree` into `module`; what the module has and the tree lacks stays as initialised
  (a new MLM head: convert.new_mlm_head), loudly."""
  state = nnx.state(module, nnx.Param)
  current = nnx.to_pure_dict(state)
  absent = sorted(set(leaf_paths(current)) - set(leaf_paths(tree)))
  absent_heads = sorted({path[0] for path in absent if path[0] != "bert"})
  absent_encoder = [".".join(path) for path in absent if path[0] == "bert"]
  tree = new_mlm_head(current, {k: v for k, v in tree.items() if k in current})
  nnx.replace_by_pure_dict(state, merge_trees(current, tree))
  nnx.update(module, state)
  if absent_heads:
    logging.warning(
      "%s has no %s weights: %s new%s (train before trusting its outputs)",
      where,
      " / ".join(absent_heads),
      "that head starts" if len(absent_heads) == 1 else "those heads start",
      ", the MLM transform as the identity" if "mlm" in absent_heads else "",
    )
  if absent_encoder or missing_encoder:
    shown = list(missing_encoder)[:3] or absent_encoder[:3]
    logging.warning(
      "%s lacks %d encoder tensors (%s, ...): they start random",
      where,
      max(len(absent_encoder), len(missing_encoder)),
      ", ".join(shown),
    )


def _load_hf(source: str, head: str, num_labels: int | None):
  from train import hf

  path = hf.resolve_hf_source(source)
  hf_config = hf.read_hf_config(path)
  config, tree, missing = hf.load_hf_checkpoint(path)
  if head == "auto":
    architecture = (hf_config.get("architectures") or ["BertModel"])[0]
    head = architecture_head(architecture)
  if _takes_num_labels(head) and num_labels is None:
    saved = tree.get("classifier", {}).get("bias")
    num_labels = len(saved) if saved is not None else len(hf_config.get("id2label") or {})
    if not num_labels:
      raise ValueError(f"{source} has no classifier and no id2label: give load(..., num_labels=N)")
  module = _build(head, config, num_labels)
  pooled = _keeps_pooler(head)
  encoder_missing = [
    n for n in missing if n.startswith("bert.") and (pooled or ".pooler." not in n)
  ]
  _fill(module, tree, source, encoder_missing)
  return Model(module, config, head, source), load_tokenizer(path, lowercase=_hf_lowercase(path))


def _hf_lowercase(path: str) -> bool:
  """do_lower_case of the directory's tokenizer_config.json (BERT's default: True)."""
  tokenizer_config = os.path.join(path, "tokenizer_config.json")
  if not os.path.isfile(tokenizer_config):
    return True
  with open(tokenizer_config) as f:
    return bool(json.load(f).get("do_lower_case", True))


def _load_workdir(workdir: str, head: str, num_labels: int | None):
  """A fine-tuning workdir's best checkpoint with its head; a pretraining workdir's newest."""
  from train import finetuned

  if finetuned.finetuned_task(workdir):
    run = finetuned.read_run(workdir)
    if head not in ("auto", run.task):
      raise ValueError(f"{workdir} is a {run.task!r} run; load it with head='auto'")
    module = tasks.model_factory(run.config, run.model_config, run.labels)(nnx.Rngs(0))
    _fill(module, finetuned.full_params(run), f"{workdir} (step {run.step})")
    tokenizer = load_tokenizer(
      os.path.join(workdir, "tokenizer"), lowercase=run.config.data.lowercase
    )
    return Model(module, run.model_config, run.task, workdir), tokenizer
  from train.checkpoint import read_on_host

  parts, meta, step = read_on_host(os.path.join(workdir, "checkpoints"))
  saved = meta["config"]
  config = BertConfig.from_dict(saved["model"])
  head = "pretraining" if head == "auto" else head
  module = _build(head, config, num_labels)
  _fill(module, parts["params"], f"{workdir} (step {step})")
  learned = os.path.join(workdir, "vocab", "vocab.txt")  # data.vocab='train' keeps it here
  vocab = learned if os.path.isfile(learned) else saved["data"]["vocab"]
  tokenizer = load_tokenizer(vocab, lowercase=saved["data"].get("lowercase", True))
  return Model(module, config, head, workdir), tokenizer

"""PET-style cloze classification: the MLM head fills a template's [MASK] with a label word.

No parameter starts fresh, so the model scores classes before any training
(zero-shot, epochs=0); k-shot training keeps the first k examples of each class.

A weak MLM head tends to prefer one label word whatever the text. Contextual
calibration (Zhao et al. 2021, "Calibrate Before Use") divides each example's
label-word probabilities by those the model gives content-free inputs ("N/A")
in the same template: `data.calibration_texts`. Those rows ride at the end of
each evaluated split at weight 0, so the loss is unchanged and only the
predictions move.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from data import classification, cloze, finetune
from data.classification import TextExample
from model.heads import BertForPreTraining
from train import metrics
from train.losses import ClozeObjective
from train.tasks import common
from train.tasks.base import Task, TaskSpec
from train.tasks.classification import DATA_DEFAULTS as CLASSIFICATION_DEFAULTS
from train.tasks.classification import read_text_examples, softmax

DATA_DEFAULTS = dict(
  CLASSIFICATION_DEFAULTS,
  template="",  # e.g. '{sentence} It was [MASK].': text columns, one [MASK]
  verbalizer=None,  # a word per label, label order; or a dict label -> word
  # content-free texts, e.g. ('N/A', '[MASK]'): predictions are calibrated by the label-word
  # probabilities the model gives them (Zhao et al. 2021); () scores the raw logits
  calibration_texts=(),
)


def calibrated_predictions(logits: np.ndarray, content_free_logits: np.ndarray) -> np.ndarray:
  """argmax of p(label | text) / mean p(label | content-free text): Zhao et al.'s W = diag(p_cf)^-1.

  `logits` [examples, labels]; `content_free_logits` [texts, labels], the same
  template filled with each content-free text. Without content-free rows the
  raw argmax.
  """
  logits = np.asarray(logits, np.float64)
  if len(content_free_logits) == 0:
    return logits.argmax(-1)
  p_cf = softmax(np.asarray(content_free_logits, np.float64)).mean(0)
  return (softmax(logits) / p_cf).argmax(-1)


def with_content_free_rows(arrays: dict, content_free: dict) -> dict:
  """`arrays` followed by the content-free rows at weight 0 (unlabelled: label 0, never scored)."""
  if not content_free:
    return arrays
  extra = dict(content_free, weight=np.zeros_like(content_free["weight"]))
  return {key: np.concatenate([arrays[key], extra[key]]) for key in arrays}


def build(config, workdir: str) -> Task:
  """PET-style prompts: the MLM head scores each label's word at the template's [MASK].

  Reads data like the classification task, plus data.template, data.verbalizer and
  data.train_examples_per_class (k-shot: the first k of each class after a shuffle
  by config.seed; 0: all). With epochs=0 no training data is needed: the loop
  evaluates the initial weights (zero-shot).
  """
  data = config.data
  if config.get("peft") and config.peft.get("method", "none") != "none":
    raise ValueError(
      f"peft.method={config.peft.method!r}: task='cloze' trains every parameter "
      "(PEFT with the MLM head is not wired up); set peft.method='none'"
    )
  model_config = common.model_config_of(config)
  tokenizer = common.finetune_tokenizer(config, model_config)
  columns = classification.parse_columns(
    (data.tfds_text_keys or data.text_columns) if data.source == "tfds" else data.text_columns
  )
  examples, tfds_labels = read_text_examples(data)
  common.check_unknown(tokenizer, (e.text_a for e in examples.get("train", [])), data)
  verbalizer_labels = list(data.verbalizer.keys()) if hasattr(data.verbalizer, "keys") else []
  labels = tfds_labels or classification.resolve_labels(
    data.labels or verbalizer_labels, examples.get("train", [])
  )
  if not labels:
    raise ValueError("no labels: set data.labels (or give data.verbalizer as label -> word)")
  verbalizer_ids = cloze.verbalizer_token_ids(data.verbalizer, labels, tokenizer)
  k = data.train_examples_per_class
  if k and "train" in examples:
    examples["train"] = classification.first_k_per_class(examples["train"], labels, k, config.seed)
  arrays, stats, gold = {}, {}, {}
  for split, split_examples in examples.items():
    arrays[split], stats[split] = cloze.encode_cloze(
      split_examples, columns, data.template, tokenizer, data.max_seq_length, labels
    )
    gold[split] = arrays[split]["label"]
  content_free = content_free_arrays(data, columns, tokenizer, labels)
  for split in ("eval", "test"):
    if split in arrays:
      arrays[split] = with_content_free_rows(arrays[split], content_free)
  if "eval" not in arrays:
    raise ValueError("no eval data: set data.eval_path (or the TFDS split)")
  trains = config.optimizer.total_steps or config.epochs
  if trains and "train" not in arrays:
    raise ValueError(
      "no train data: set data.train_path (or the TFDS split), or epochs=0 and "
      "optimizer.total_steps=0 to evaluate without training (zero-shot)"
    )
  num_content_free = len(content_free.get("label", ()))

  def score(split: str, outputs: dict) -> dict:
    n = len(gold[split])
    logits = np.asarray(outputs["logits"])
    predictions = calibrated_predictions(logits[:n], logits[n : n + num_content_free])
    return metrics.classification_scores(list(data.metrics), predictions, gold[split])

  buckets = common.buckets_of(SPEC, config)
  train_data = (
    finetune.FinetuneData(arrays["train"], config.batch_size, config.seed, buckets)
    if "train" in arrays
    else None
  )
  test_batches = (
    finetune.eval_batches(arrays["test"], config.batch_size, buckets) if "test" in arrays else []
  )
  words = [tokenizer.convert_ids_to_tokens(i) for i in verbalizer_ids]
  summary = {
    "splits": stats,
    "labels": labels,
    "verbalizer": dict(zip(labels, words)),
    "template": data.template,
    "calibration_texts": list(data.get("calibration_texts", ())),
  }
  logging.info("cloze data: %s", summary)
  return Task(
    model_config=model_config,
    model_factory=lambda rngs: BertForPreTraining(model_config, rngs),
    objective=ClozeObjective(verbalizer_ids),
    train_data=train_data,
    eval_batches=finetune.eval_batches(arrays["eval"], config.batch_size, buckets),
    test_batches=test_batches,
    score=score,
    labels=labels,
    tokenizer=tokenizer,
    vocab_file=getattr(tokenizer, "vocab_file", None),
    summary=summary,
    steps_per_epoch=train_data.steps_per_epoch if train_data else None,
    mlm_predictions=1,
  )


def content_free_arrays(data, columns, tokenizer, labels) -> dict:
  """data.calibration_texts in the template, every text column filled with the same text
  (one without tokens is named by its index, as encode_cloze names any empty text)."""
  texts = [str(t) for t in data.get("calibration_texts", ())]
  examples = [
    TextExample(text, text if len(columns) > 1 else None, None, f"data.calibration_texts[{i}]")
    for i, text in enumerate(texts)
  ]
  return cloze.encode_cloze(
    examples, columns, data.template, tokenizer, data.max_seq_length, labels
  )[0]


def example_shapes(config):
  verbalizer = config.data.verbalizer
  labels = list(verbalizer.keys()) if hasattr(verbalizer, "keys") else None
  shapes = dict(
    common.token_shapes(config.data.max_seq_length),
    mask_position=((), np.int32),
    label=((), np.int32),
    weight=((), np.float32),
  )
  return labels or common.configured_labels(config), shapes


SPEC = TaskSpec(
  name="cloze", build=build, example_shapes=example_shapes, data_defaults=DATA_DEFAULTS
)

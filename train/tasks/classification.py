"""Sequence classification: single sentences, pairs, relations and regression.

TSV files or TFDS by name; the pooled [CLS] vector feeds a Dense head
(transformers' BertForSequenceClassification). Two text columns make a pair
(MRPC, MNLI); data.entity_markers puts relation markers around two entities;
data.regression gives one float output trained with squared error (STS-B).
"""

from __future__ import annotations

import ml_collections
import numpy as np
from absl import logging

from data import classification
from model.heads import BertForSequenceClassification
from train import metrics
from train.losses import ClassificationObjective
from train.tasks import common
from train.tasks.base import TaskSpec

DATA_DEFAULTS = dict(
  text_columns="sentence",  # one or two (a pair) header names, or 0-based numbers
  label_column="label",
  # True | False | 'auto': a header when a column is named, else when row 1 looks like one
  has_header=ml_collections.FieldReference(True, field_type=object),
  file_format="auto",  # tsv | csv | jsonl; auto: by extension (.csv, .jsonl / .json; else TSV)
  bad_rows="error",  # 'skip': drop TSV rows with the wrong field count, logged
  regression=False,  # one float output, squared error (STS-B)
  entity_markers=(),  # relations: (e1 open, e1 close, e2 open, e2 close)
  metrics=("accuracy",),  # accuracy, f1 (binary), macro_f1, mcc, pearson, spearman
  # Names for data.labels, in their order ('negative', 'positive' for '0', '1'): what
  # predictions, labels.json, the confusion plots and the HF export's id2label show.
  label_names=(),
  train_examples_per_class=0,  # k-shot: k per class, picked by seed; 0 = all
  # Rows with these labels are left out of every split, counted in the log: CLUE's NLI
  # files mark examples without an annotator majority '-' (CMNLI, OCNLI).
  skip_labels=(),
)


def read_text_examples(data) -> tuple[dict, list[str] | None]:
  """({split: labelled text examples}, the TFDS label names or None) for the splits present.

  TSV files or TFDS by name; relation markers put in when data.entity_markers is set.
  """
  examples, tfds_labels = {}, None
  for split in common.SPLITS:
    source = common.split_source(data, split)
    if source is None:
      continue
    if data.source == "files":
      examples[split] = classification.read_examples(
        source,
        data.text_columns,
        data.label_column,
        data.has_header,
        data.bad_rows,
        data.get("file_format", "auto"),
      )
    else:
      examples[split], tfds_labels = classification.tfds_examples(
        data.tfds_name,
        source,
        data.tfds_text_keys or data.text_columns,
        data.tfds_label_key,
        data.tfds_data_dir or None,
      )
    if data.get("entity_markers"):
      examples[split] = classification.mark_relation_examples(examples[split], data.entity_markers)
    if data.get("skip_labels"):
      examples[split] = skip_labelled(examples[split], data.skip_labels, split)
  examples = common.first_train_rows(data, examples)
  return examples, tfds_labels


def skip_labelled(examples: list, skip, split: str) -> list:
  """The examples whose label is not one of `skip` (data.skip_labels); the count is logged."""
  skip = {str(label) for label in skip}
  kept = [example for example in examples if example.label is None or example.label not in skip]
  if len(kept) < len(examples):
    logging.info(
      "data.skip_labels=%s: %d of %d %s rows left out",
      sorted(skip),
      len(examples) - len(kept),
      len(examples),
      split,
    )
  return kept


def num_outputs(config, labels) -> int:
  return 1 if config.data.regression else len(labels)


def build(config, workdir: str):
  data = config.data
  model_config = common.model_config_of(config)
  tokenizer = common.finetune_tokenizer(config, model_config)
  examples, tfds_labels = read_text_examples(data)
  common.check_unknown(tokenizer, (e.text_a for e in examples.get("train", [])), data)
  # A TFDS ClassLabel names the classes itself; data.labels is for files.
  labels = (
    None
    if data.regression
    else (tfds_labels or classification.resolve_labels(data.labels, examples.get("train", [])))
  )
  k = data.get("train_examples_per_class", 0)
  if k and "train" in examples and labels is not None:
    examples["train"] = classification.first_k_per_class(examples["train"], labels, k, config.seed)
  if data.get("label_names") and labels is not None and not tfds_labels:
    examples = classification.name_labels(examples, labels, data.label_names)
    labels = [str(name) for name in data.label_names]
  arrays, stats, gold = {}, {}, {}
  for split, split_examples in examples.items():
    arrays[split], stats[split] = classification.encode_examples(
      split_examples, tokenizer, data.max_seq_length, labels
    )
    gold[split] = arrays[split]["label"]

  def score(split: str, outputs: dict) -> dict:
    logits = outputs["logits"][: len(gold[split])]
    predictions = logits[:, 0] if data.regression else logits.argmax(-1)
    scores = metrics.classification_scores(list(data.metrics), predictions, gold[split])
    if not data.regression:
      scores["confusion"] = metrics.confusion_matrix(predictions, gold[split], range(len(labels)))
    return scores

  summary = {"splits": stats, "labels": labels}
  return common.finetune_task(SPEC, config, model_config, arrays, score, tokenizer, labels, summary)


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  return shifted / shifted.sum(-1, keepdims=True)


def predict(predictor, inputs: list[tuple[str, ...]]) -> list[dict]:
  """{'label', 'probability'} per text or pair (or {'score'} for a regression task)."""
  data = predictor.config.data
  if any(len(row) > 2 for row in inputs):
    raise ValueError("a classification input is a text or a pair of texts")
  if len({len(row) for row in inputs}) > 1:
    raise ValueError("some inputs are pairs and some are not")
  examples = [
    classification.TextExample(row[0], row[1] if len(row) == 2 else None, None, f"input {i + 1}")
    for i, row in enumerate(inputs)
  ]
  for example in examples:
    if not example.text_a.strip() or (example.text_b is not None and not example.text_b.strip()):
      raise ValueError(f"{example.origin}: empty text")
  if data.entity_markers:
    examples = classification.mark_relation_examples(examples, data.entity_markers)
  labels = None if data.regression else predictor.labels
  arrays, _ = classification.encode_examples(
    examples, predictor.tokenizer, data.max_seq_length, labels
  )
  logits = predictor.outputs(arrays)["logits"]
  texts = [row[0] for row in inputs]
  if data.regression:
    return [{"text": t, "score": float(row[0])} for t, row in zip(texts, logits)]
  return [
    {"text": t, "label": labels[int(p.argmax())], "probability": float(p.max())}
    for t, p in zip(texts, softmax(logits))
  ]


def hf_labels(config, labels) -> dict:
  if config.data.get("regression"):
    return {"num_labels": 1, "problem_type": "regression"}
  return common.label_fields(labels)


def example_shapes(config):
  labels = None if config.data.regression else common.configured_labels(config)
  label_dtype = np.float32 if config.data.regression else np.int32
  shapes = dict(
    common.token_shapes(config.data.max_seq_length),
    label=((), label_dtype),
    weight=((), np.float32),
  )
  return labels, shapes


SPEC = TaskSpec(
  name="classification",
  packs=True,
  build=build,
  example_shapes=example_shapes,
  data_defaults=DATA_DEFAULTS,
  model_factory=lambda config, model_config, labels, peft: (
    lambda rngs: BertForSequenceClassification(
      model_config, num_outputs(config, labels), rngs, peft
    )
  ),
  objective=lambda config, labels: ClassificationObjective(num_outputs(config, labels)),
  predict=predict,
  head="classifier",
  hf_architecture="BertForSequenceClassification",
  peft_task_type="SEQ_CLS",
  hf_labels=hf_labels,
  hf_pooler=True,
  hf_model=lambda model_config, num_labels, rngs: BertForSequenceClassification(
    model_config, num_labels, rngs
  ),
  hf_num_labels=True,
  outputs=("logits",),
  distills=True,
  clue_keys=lambda config: classification.parse_columns(config.data.text_columns),
  clue_label=lambda result: result["label"],
)

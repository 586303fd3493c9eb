"""Token classification: NER on CoNLL or CLUENER files or TFDS conll2003, scored by entity F1.

Each word's first sub-token carries its tag (transformers'
BertForTokenClassification); predict maps tags back to character spans.
"""

from __future__ import annotations

import numpy as np

from data import clue, ner
from model.heads import BertForTokenClassification
from train import metrics
from train.losses import TokenClassificationObjective
from train.tasks import common
from train.tasks.base import TaskSpec

DATA_DEFAULTS = dict(
  tag_column=-1,  # CoNLL column holding the tag (the word is column 0)
  # conll | cluener (CLUENER2020 JSON lines: each character a word); auto: .json / .jsonl
  # files are CLUENER, others CoNLL
  file_format="auto",
)
FILE_FORMATS = ("auto", "conll", "cluener")


def read_sentences(path: str, data) -> list[ner.TaggedSentence]:
  """A split's sentences from a CoNLL or CLUENER file (data.file_format)."""
  fmt = data.get("file_format", "auto")
  if fmt not in FILE_FORMATS:
    raise ValueError(f"data.file_format={fmt!r}: expected one of {FILE_FORMATS}")
  if fmt == "auto":
    fmt = "cluener" if path.endswith((".json", ".jsonl")) else "conll"
  if fmt == "conll":
    return ner.read_conll(path, data.tag_column)
  sentences = clue.read_cluener(path)
  unlabelled = next((s for s in sentences if s.tags is None), None)
  if unlabelled is not None:
    raise ValueError(
      f"{unlabelled.origin}: no 'label' (a CLUE test file?): training and evaluation need "
      "labels; tag such a file with train.predict --input_file"
    )
  return sentences


def build(config, workdir: str):
  data = config.data
  model_config = common.model_config_of(config)
  tokenizer = common.finetune_tokenizer(config, model_config)
  sentences = {}
  for split in common.SPLITS:
    source = common.split_source(data, split)
    if source is None:
      continue
    sentences[split] = (
      read_sentences(source, data)
      if data.source == "files"
      else ner.tfds_sentences(data.tfds_name, source, data.tfds_data_dir or None)
    )
  sentences = common.first_train_rows(data, sentences)
  common.check_unknown(tokenizer, (" ".join(s.words) for s in sentences.get("train", [])), data)
  labels = ner.resolve_labels(data.labels, sentences.get("train", []))
  arrays, stats, positions = {}, {}, {}
  for split, split_sentences in sentences.items():
    arrays[split], positions[split], stats[split] = ner.encode_sentences(
      split_sentences, tokenizer, data.max_seq_length, labels
    )

  def score(split: str, outputs: dict) -> dict:
    predicted = outputs["logits"].argmax(-1)
    gold = [list(s.tags) for s in sentences[split]]
    tags = [ner.word_tags(predicted[i], positions[split][i], labels) for i in range(len(gold))]
    result = metrics.entity_scores(gold, tags)
    per_type = {f"f1_{kind}": row["f1"] for kind, row in result["report"].items()}
    confusion = metrics.confusion_matrix(
      [t for s in tags for t in s], [t for s in gold for t in s], labels
    )
    return {
      **{k: result[k] for k in ("precision", "recall", "f1")},
      **per_type,
      "report": result["report"],
      "report_text": result["report_text"],
      "confusion": confusion,
    }

  summary = {"splits": stats, "labels": labels}
  return common.finetune_task(SPEC, config, model_config, arrays, score, tokenizer, labels, summary)


def predict(predictor, inputs: list[tuple[str, ...]]) -> list[dict]:
  """Entities per text: type, character start/end, and text[start:end]."""
  if any(len(row) != 1 for row in inputs):
    raise ValueError("a token-classification input is one text (no --text_pair)")
  texts = [row[0] for row in inputs]
  words = [ner.split_words(text, predictor.tokenizer) for text in texts]
  for i, text_words in enumerate(words):
    if not text_words:
      raise ValueError(f"input {i + 1}: empty text")
  sentences = [
    ner.TaggedSentence(tuple(w for w, _, _ in ws), None, f"input {i + 1}")
    for i, ws in enumerate(words)
  ]
  arrays, positions, _ = ner.encode_sentences(
    sentences, predictor.tokenizer, predictor.config.data.max_seq_length, predictor.labels
  )
  predicted = predictor.outputs(arrays)["logits"].argmax(-1)
  results = []
  for i, text in enumerate(texts):
    tags = ner.word_tags(predicted[i], positions[i], predictor.labels)
    results.append({"text": text, "entities": ner.entities_in_text(text, words[i], tags)})
  return results


def example_shapes(config):
  t = config.data.max_seq_length
  shapes = dict(
    common.token_shapes(t),
    labels=((t,), np.int32),
    label_weights=((t,), np.float32),
    weight=((), np.float32),
  )
  return common.configured_labels(config, default=9), shapes  # CoNLL-2003's 9 BIO tags


def clue_entities(result: dict) -> dict:
  """CLUENER's label of a prediction: {type: {entity text: [[start, end], ...]}}, ends
  inclusive."""
  label = {}
  for entity in result["entities"]:
    spans = label.setdefault(entity["type"], {}).setdefault(entity["text"], [])
    spans.append([entity["start"], entity["end"] - 1])
  return label


SPEC = TaskSpec(
  name="token_classification",
  packs=True,
  build=build,
  example_shapes=example_shapes,
  data_defaults=DATA_DEFAULTS,
  model_factory=lambda config, model_config, labels, peft: (
    lambda rngs: BertForTokenClassification(model_config, len(labels), rngs, peft)
  ),
  objective=lambda config, labels: TokenClassificationObjective(),
  predict=predict,
  head="classifier",
  hf_architecture="BertForTokenClassification",
  peft_task_type="TOKEN_CLS",
  hf_labels=lambda config, labels: common.label_fields(labels),
  hf_model=lambda model_config, num_labels, rngs: BertForTokenClassification(
    model_config, num_labels, rngs
  ),
  hf_num_labels=True,
  outputs=("logits",),
  distills=True,
  clue_keys=lambda config: ["text"],  # CLUENER's
  clue_label=clue_entities,
)

"""From a config to what the loop needs: a model factory, an objective and data.

A `Task` is the only thing that differs between pretraining and fine-tuning;
`train/loop.py` runs every task the same way. Fine-tuning tasks add what
their metrics need: a `score` function from model outputs on the dev / test
batches to task metrics (F1, MCC, seqeval, SQuAD EM/F1), the label list and
the tokenizer (saved in the workdir for `train/predict.py`).

  task='pretraining'            MLM + NSP (BertForPreTraining)
  task='classification'         sentences / pairs / relations (BertForSequenceClassification)
  task='token_classification'   NER on CoNLL files (BertForTokenClassification)
  task='question_answering'     SQuAD v1.1 spans (BertForQuestionAnswering)
  task='cloze'                  PET-style prompts scored by the MLM head (BertForPreTraining)
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from data import classification, cloze, corpus, finetune, ner, squad
from data import tokenizer as tokenizer_lib
from data.pretraining import MaskingConfig, PretrainingData, build_pretraining_data, split_heldout
from model.config import BertConfig
from model.heads import (
  BertForPreTraining,
  BertForQuestionAnswering,
  BertForSequenceClassification,
  BertForTokenClassification,
)
from model.peft import PeftConfig, check_sequence_fits
from train import metrics, warm_start, writers
from train.losses import (
  ClassificationObjective,
  ClozeObjective,
  PretrainingObjective,
  SpanObjective,
  TokenClassificationObjective,
)


@dataclasses.dataclass
class Task:
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


def load_documents(data) -> list[list[str]]:
  if data.source == "embedded":
    return corpus.embedded_corpus()
  if data.source == "text":
    if not data.paths:
      raise ValueError("data.paths is empty: give text files for data.source='text'")
    documents = corpus.read_bert_text_files([p for p in data.paths.split(",") if p])
  elif data.source == "tfds":
    if not data.tfds_name:
      raise ValueError("data.tfds_name is empty: give a TFDS name for data.source='tfds'")
    documents = corpus.tfds_documents(
      data.tfds_name,
      data.tfds_split,
      data.tfds_text_key,
      data.tfds_data_dir or None,
      data.max_documents or None,
    )
  else:
    raise ValueError(f"data.source={data.source!r}: expected 'text', 'tfds' or 'embedded'")
  return documents[: data.max_documents] if data.max_documents else documents


def load_or_train_tokenizer(data, documents, workdir: str):
  """A vocab by path/name, or one learned from the corpus and kept in the workdir.

  A learned vocab is written once; a resumed run reads the same file back, so
  token ids never shift under a checkpoint.
  """
  if data.vocab != "train":
    return tokenizer_lib.load_tokenizer(data.vocab, lowercase=data.lowercase)
  kept = epath.Path(workdir) / "vocab" / "vocab.txt"
  if not writers.is_remote(workdir):
    if not kept.exists():
      texts = (sentence for document in documents for sentence in document)
      tokenizer_lib.train_wordpiece(texts, data.train_vocab_size, str(kept.parent), data.lowercase)
    return tokenizer_lib.load_tokenizer(str(kept), lowercase=data.lowercase)
  # A bucket workdir: learn (or fetch) the vocab in a local folder, keep a copy in the bucket.
  local = tempfile.mkdtemp(prefix="vocab_")
  if kept.exists():
    (epath.Path(local) / "vocab.txt").write_text(kept.read_text())
  else:
    texts = (sentence for document in documents for sentence in document)
    tokenizer_lib.train_wordpiece(texts, data.train_vocab_size, local, data.lowercase)
    writers.copy_dir(local, kept.parent)
  return tokenizer_lib.load_tokenizer(os.path.join(local, "vocab.txt"), lowercase=data.lowercase)


def build_pretraining(config, workdir: str) -> Task:
  data = config.data
  model_config = BertConfig.from_dict(config.model)
  if data.max_seq_length > model_config.max_position_embeddings:
    raise ValueError(
      f"data.max_seq_length={data.max_seq_length} exceeds "
      f"model.max_position_embeddings={model_config.max_position_embeddings}"
    )
  documents = load_documents(data)
  if not documents:
    raise ValueError(f"data.source={data.source!r} gave an empty corpus")
  tokenizer = load_or_train_tokenizer(data, documents, workdir)
  tokenizer_lib.check_vocab_fits(tokenizer, model_config.vocab_size)
  check_unknown(tokenizer, (s for d in documents for s in d), data, data.paths)
  train_docs, heldout_docs = split_heldout(documents, data.heldout_documents, config.seed)

  def arrays_for(docs, seed):
    return build_pretraining_data(
      docs,
      tokenizer,
      data.max_seq_length,
      data.short_seq_prob,
      data.dupe_factor,
      seed,
      data.whole_word,
    )

  train_arrays, train_stats = arrays_for(train_docs, config.seed)
  heldout_arrays, heldout_stats = arrays_for(heldout_docs, config.seed + 1)
  masking = MaskingConfig.from_tokenizer(
    tokenizer,
    mask_prob=data.mask_prob,
    max_predictions=data.max_predictions,
    whole_word=data.whole_word,
  )
  train_data = PretrainingData(train_arrays, config.batch_size, config.seed, masking)
  heldout = PretrainingData(heldout_arrays, config.batch_size, config.seed + 1, masking)
  eval_batches = [
    heldout.batch(i) for i in range(min(config.eval_batches, heldout.steps_per_epoch))
  ]
  logging.info("pretraining corpus: train %s; heldout %s", train_stats, heldout_stats)
  return Task(
    model_config=model_config,
    model_factory=lambda rngs: BertForPreTraining(model_config, rngs),
    objective=PretrainingObjective(),
    train_data=train_data,
    eval_batches=eval_batches,
    vocab_file=getattr(tokenizer, "vocab_file", None),
    summary={
      "train": dataclasses.asdict(train_stats),
      "heldout": dataclasses.asdict(heldout_stats),
      "vocab_size": len(tokenizer),
    },
    steps_per_epoch=train_data.steps_per_epoch,
  )


# --------------------------------------------------------------------------
# Fine-tuning

SPLITS = ("train", "eval", "test")


def finetune_model_config(config) -> BertConfig:
  model_config = BertConfig.from_dict(config.model)
  if config.data.max_seq_length > model_config.max_position_embeddings:
    raise ValueError(
      f"data.max_seq_length={config.data.max_seq_length} exceeds "
      f"model.max_position_embeddings={model_config.max_position_embeddings}"
    )
  return model_config


def check_unknown(tokenizer, texts, data, where: str = "") -> None:
  """tokenizer.check_unknown_rate on a sample of the training text, named by its source."""
  tokenizer_lib.check_unknown_rate(
    tokenizer,
    texts,
    where or data.get("train_path") or data.get("tfds_name") or data.source,
    data.get("max_unknown_fraction", tokenizer_lib.MAX_UNKNOWN_FRACTION),
  )


def finetune_tokenizer(config, model_config: BertConfig):
  """data.vocab, or else the vocab that came with init.checkpoint / init.hf_dir."""
  vocab = config.data.vocab or warm_start.init_vocab(config.init)
  if not vocab:
    raise ValueError(
      "data.vocab is empty and init gives no vocab.txt: set data.vocab to "
      "the vocab the encoder was trained with"
    )
  tokenizer = tokenizer_lib.load_tokenizer(vocab, lowercase=config.data.lowercase)
  tokenizer_lib.check_vocab_fits(tokenizer, model_config.vocab_size)
  return tokenizer


def split_source(data, split: str) -> str | None:
  """The file path or TFDS split name of a split; None when the config has none."""
  if data.source == "files":
    path = {"train": data.train_path, "eval": data.eval_path, "test": data.test_path}[split]
    return path or None
  if data.source == "tfds":
    if not data.tfds_name:
      raise ValueError("data.tfds_name is empty: give a TFDS name for data.source='tfds'")
    name = {
      "train": data.tfds_train_split,
      "eval": data.tfds_eval_split,
      "test": data.tfds_test_split,
    }[split]
    return name or None
  raise ValueError(f"data.source={data.source!r}: expected 'files' or 'tfds'")


def peft_config(config) -> PeftConfig:
  """The config's `peft` section, checked against the model and sequence length."""
  peft = PeftConfig.from_dict(config.peft.to_dict() if config.get("peft") else None)
  check_sequence_fits(peft, config.data.max_seq_length, config.model.max_position_embeddings)
  return peft


def finetune_model_factory(config, model_config: BertConfig, labels) -> Callable:
  """The model of a fine-tuning task; `train/predict.py` rebuilds it the same way."""
  peft = peft_config(config)
  if config.task == "classification":
    num_labels = 1 if config.data.regression else len(labels)
    return lambda rngs: BertForSequenceClassification(model_config, num_labels, rngs, peft)
  if config.task == "token_classification":
    return lambda rngs: BertForTokenClassification(model_config, len(labels), rngs, peft)
  if config.task == "question_answering":
    return lambda rngs: BertForQuestionAnswering(model_config, rngs, peft)
  raise ValueError(f"task={config.task!r} is not a fine-tuning task")


def finetune_objective(config, labels):
  if config.task == "classification":
    return ClassificationObjective(1 if config.data.regression else len(labels))
  if config.task == "token_classification":
    return TokenClassificationObjective()
  if config.task == "question_answering":
    return SpanObjective()
  raise ValueError(f"task={config.task!r} is not a fine-tuning task")


def _finetune_task(config, model_config, arrays: dict, score, tokenizer, labels, summary) -> Task:
  """Batches for every split present; train and eval are required."""
  for split in ("train", "eval"):
    if split not in arrays:
      raise ValueError(f"no {split} data: set data.{split}_path (or the TFDS split)")
  train_data = finetune.FinetuneData(arrays["train"], config.batch_size, config.seed)
  logging.info("fine-tuning data: %s", summary)
  return Task(
    model_config=model_config,
    model_factory=finetune_model_factory(config, model_config, labels),
    objective=finetune_objective(config, labels),
    train_data=train_data,
    eval_batches=finetune.eval_batches(arrays["eval"], config.batch_size),
    test_batches=finetune.eval_batches(arrays["test"], config.batch_size)
    if "test" in arrays
    else [],
    score=score,
    labels=labels,
    tokenizer=tokenizer,
    vocab_file=getattr(tokenizer, "vocab_file", None),
    summary=summary,
    steps_per_epoch=train_data.steps_per_epoch,
    peft=peft_config(config),
  )


def read_text_examples(data) -> tuple[dict, list[str] | None]:
  """({split: labelled text examples}, the TFDS label names or None) for the splits present.

  TSV files or TFDS by name; relation markers put in when data.entity_markers is set.
  """
  examples, tfds_labels = {}, None
  for split in SPLITS:
    source = split_source(data, split)
    if source is None:
      continue
    if data.source == "files":
      examples[split] = classification.read_tsv(
        source, data.text_columns, data.label_column, data.has_header, data.bad_rows
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
  return examples, tfds_labels


def build_classification(config, workdir: str) -> Task:
  """Single sentences, pairs (text_columns with two names) and relations (entity_markers)."""
  data = config.data
  model_config = finetune_model_config(config)
  tokenizer = finetune_tokenizer(config, model_config)
  examples, tfds_labels = read_text_examples(data)
  check_unknown(tokenizer, (e.text_a for e in examples.get("train", [])), data)
  # A TFDS ClassLabel names the classes itself; data.labels is for files.
  labels = (
    None
    if data.regression
    else (tfds_labels or classification.resolve_labels(data.labels, examples.get("train", [])))
  )
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

  return _finetune_task(
    config, model_config, arrays, score, tokenizer, labels, {"splits": stats, "labels": labels}
  )


def build_token_classification(config, workdir: str) -> Task:
  data = config.data
  model_config = finetune_model_config(config)
  tokenizer = finetune_tokenizer(config, model_config)
  sentences = {}
  for split in SPLITS:
    source = split_source(data, split)
    if source is None:
      continue
    sentences[split] = (
      ner.read_conll(source, data.tag_column)
      if data.source == "files"
      else ner.tfds_sentences(data.tfds_name, source, data.tfds_data_dir or None)
    )
  check_unknown(tokenizer, (" ".join(s.words) for s in sentences.get("train", [])), data)
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

  return _finetune_task(
    config, model_config, arrays, score, tokenizer, labels, {"splits": stats, "labels": labels}
  )


def build_question_answering(config, workdir: str) -> Task:
  data = config.data
  model_config = finetune_model_config(config)
  tokenizer = finetune_tokenizer(config, model_config)
  examples, arrays, windows, stats = {}, {}, {}, {}
  for split in SPLITS:
    source = split_source(data, split)
    if source is None:
      continue
    examples[split] = (
      squad.read_squad(source)
      if data.source == "files"
      else squad.tfds_qa_examples(data.tfds_name, source, data.tfds_data_dir or None)
    )
    if split == "train":
      check_unknown(tokenizer, (e.context for e in examples[split]), data)
    arrays[split], windows[split], stats[split] = squad.encode_windows(
      examples[split], tokenizer, data.max_seq_length, data.doc_stride, data.max_query_length
    )

  def score(split: str, outputs: dict) -> dict:
    n = len(windows[split].example)
    answers = squad.predict_answers(
      examples[split],
      windows[split],
      np.asarray(outputs["start_logits"][:n]),
      np.asarray(outputs["end_logits"][:n]),
      data.n_best_size,
      data.max_answer_length,
    )
    predictions = {qid: answer["text"] for qid, answer in answers.items()}
    gold = {e.qid: [text for text, _ in e.answers] for e in examples[split] if e.answers}
    return metrics.squad_scores(predictions, gold)

  return _finetune_task(config, model_config, arrays, score, tokenizer, None, {"splits": stats})


def _mlm_head_missing(init) -> bool:
  """True when init.hf_dir is a local safetensors checkpoint without cls.predictions.*.

  Such a checkpoint (a sentence-transformers BertModel) leaves the MLM transform
  random, so its cloze scores say little; other sources are not inspected.
  """
  hf_dir = init.get("hf_dir", "")
  path = os.path.join(hf_dir, "model.safetensors") if hf_dir else ""
  if not (path and os.path.isfile(path)):
    return False
  from safetensors import safe_open

  with safe_open(path, "np") as f:
    names = f.keys()
  return not any(name.startswith("cls.predictions.") for name in names)


def build_cloze(config, workdir: str) -> Task:
  """PET-style prompts: the MLM head scores each label's word at the template's [MASK].

  Reads data like build_classification, plus data.template, data.verbalizer and
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
  model_config = finetune_model_config(config)
  tokenizer = finetune_tokenizer(config, model_config)
  columns = classification.parse_columns(
    (data.tfds_text_keys or data.text_columns) if data.source == "tfds" else data.text_columns
  )
  examples, tfds_labels = read_text_examples(data)
  check_unknown(tokenizer, (e.text_a for e in examples.get("train", [])), data)
  verbalizer_labels = list(data.verbalizer.keys()) if hasattr(data.verbalizer, "keys") else []
  labels = tfds_labels or classification.resolve_labels(
    data.labels or verbalizer_labels, examples.get("train", [])
  )
  if not labels:
    raise ValueError("no labels: set data.labels (or give data.verbalizer as label -> word)")
  verbalizer_ids = cloze.verbalizer_token_ids(data.verbalizer, labels, tokenizer)
  k = data.train_examples_per_class
  if k and "train" in examples:
    examples["train"] = cloze.first_k_per_class(examples["train"], labels, k, config.seed)
  arrays, stats, gold = {}, {}, {}
  for split, split_examples in examples.items():
    arrays[split], stats[split] = cloze.encode_cloze(
      split_examples, columns, data.template, tokenizer, data.max_seq_length, labels
    )
    gold[split] = arrays[split]["label"]
  if "eval" not in arrays:
    raise ValueError("no eval data: set data.eval_path (or the TFDS split)")
  trains = config.optimizer.total_steps or config.epochs
  if trains and "train" not in arrays:
    raise ValueError(
      "no train data: set data.train_path (or the TFDS split), or epochs=0 and "
      "optimizer.total_steps=0 to evaluate without training (zero-shot)"
    )
  if _mlm_head_missing(config.init):
    logging.warning(
      "init.hf_dir=%s has no MLM head (cls.predictions.*): its transform starts "
      "random, so cloze scores are close to chance until trained",
      config.init.hf_dir,
    )

  def score(split: str, outputs: dict) -> dict:
    predictions = outputs["logits"][: len(gold[split])].argmax(-1)
    return metrics.classification_scores(list(data.metrics), predictions, gold[split])

  train_data = (
    finetune.FinetuneData(arrays["train"], config.batch_size, config.seed)
    if "train" in arrays
    else None
  )
  test_batches = (
    finetune.eval_batches(arrays["test"], config.batch_size) if "test" in arrays else []
  )
  words = [tokenizer.convert_ids_to_tokens(i) for i in verbalizer_ids]
  summary = {
    "splits": stats,
    "labels": labels,
    "verbalizer": dict(zip(labels, words)),
    "template": data.template,
  }
  logging.info("cloze data: %s", summary)
  return Task(
    model_config=model_config,
    model_factory=lambda rngs: BertForPreTraining(model_config, rngs),
    objective=ClozeObjective(verbalizer_ids),
    train_data=train_data,
    eval_batches=finetune.eval_batches(arrays["eval"], config.batch_size),
    test_batches=test_batches,
    score=score,
    labels=labels,
    tokenizer=tokenizer,
    vocab_file=getattr(tokenizer, "vocab_file", None),
    summary=summary,
    steps_per_epoch=train_data.steps_per_epoch if train_data else None,
  )


BUILDERS = {
  "pretraining": build_pretraining,
  "classification": build_classification,
  "token_classification": build_token_classification,
  "question_answering": build_question_answering,
  "cloze": build_cloze,
}


def build_task(config, workdir: str) -> Task:
  if config.task not in BUILDERS:
    raise ValueError(f"task={config.task!r}: known tasks are {sorted(BUILDERS)}")
  if config.get("init"):  # before anything reads from it: name a missing source as such
    warm_start.check_init_source(config.init)
  return BUILDERS[config.task](config, workdir)

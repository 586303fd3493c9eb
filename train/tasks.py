"""From a config to what the loop needs: a model factory, an objective and data.

A `Task` is the only thing that differs between pretraining and fine-tuning;
`train/loop.py` runs every task the same way.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from absl import logging
from flax import nnx

from data import corpus, tokenizer as tokenizer_lib
from data.pretraining import MaskingConfig, PretrainingData, build_pretraining_data, split_heldout
from model.config import BertConfig
from model.heads import BertForPreTraining
from train.losses import PretrainingObjective


@dataclasses.dataclass
class Task:
  model_config: BertConfig
  model_factory: Callable[[nnx.Rngs], nnx.Module]
  objective: Any
  train_data: Any                 # .batch(step, process_index, process_count) -> numpy dict
  eval_batches: list[dict]        # fixed global batches, numpy
  vocab_file: str | None = None
  summary: dict = dataclasses.field(default_factory=dict)


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
    documents = corpus.tfds_documents(data.tfds_name, data.tfds_split, data.tfds_text_key,
                                      data.tfds_data_dir or None, data.max_documents or None)
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
  vocab_dir = os.path.join(workdir, "vocab")
  vocab_file = os.path.join(vocab_dir, "vocab.txt")
  if not os.path.exists(vocab_file):
    texts = (sentence for document in documents for sentence in document)
    tokenizer_lib.train_wordpiece(texts, data.train_vocab_size, vocab_dir, data.lowercase)
  return tokenizer_lib.load_tokenizer(vocab_file, lowercase=data.lowercase)


def build_pretraining(config, workdir: str) -> Task:
  data = config.data
  model_config = BertConfig.from_dict(config.model)
  if data.max_seq_length > model_config.max_position_embeddings:
    raise ValueError(f"data.max_seq_length={data.max_seq_length} exceeds "
                     f"model.max_position_embeddings={model_config.max_position_embeddings}")
  documents = load_documents(data)
  if not documents:
    raise ValueError(f"data.source={data.source!r} gave an empty corpus")
  tokenizer = load_or_train_tokenizer(data, documents, workdir)
  tokenizer_lib.check_vocab_fits(tokenizer, model_config.vocab_size)
  train_docs, heldout_docs = split_heldout(documents, data.heldout_documents, config.seed)

  def arrays_for(docs, seed):
    return build_pretraining_data(docs, tokenizer, data.max_seq_length, data.short_seq_prob,
                                  data.dupe_factor, seed, data.whole_word)

  train_arrays, train_stats = arrays_for(train_docs, config.seed)
  heldout_arrays, heldout_stats = arrays_for(heldout_docs, config.seed + 1)
  masking = MaskingConfig.from_tokenizer(tokenizer, mask_prob=data.mask_prob,
                                         max_predictions=data.max_predictions,
                                         whole_word=data.whole_word)
  train_data = PretrainingData(train_arrays, config.batch_size, config.seed, masking)
  heldout = PretrainingData(heldout_arrays, config.batch_size, config.seed + 1, masking)
  eval_batches = [heldout.batch(i) for i in range(min(config.eval_batches, heldout.steps_per_epoch))]
  logging.info("pretraining corpus: train %s; heldout %s", train_stats, heldout_stats)
  return Task(
      model_config=model_config,
      model_factory=lambda rngs: BertForPreTraining(model_config, rngs),
      objective=PretrainingObjective(),
      train_data=train_data,
      eval_batches=eval_batches,
      vocab_file=getattr(tokenizer, "vocab_file", None),
      summary={"train": dataclasses.asdict(train_stats), "heldout": dataclasses.asdict(heldout_stats),
               "vocab_size": len(tokenizer)},
  )


BUILDERS = {"pretraining": build_pretraining}


def build_task(config, workdir: str) -> Task:
  if config.task not in BUILDERS:
    raise ValueError(f"task={config.task!r}: known tasks are {sorted(BUILDERS)}")
  return BUILDERS[config.task](config, workdir)

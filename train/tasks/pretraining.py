"""Pretraining: masked-LM + next-sentence prediction on a text corpus (BertForPreTraining).

The corpus is text files, a TFDS text dataset or the embedded sample; the vocab
is named or learned from the corpus and kept in the workdir. Held-out documents
give the evaluation batches.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import numpy as np
from absl import logging
from etils import epath

from data import chinese, corpus, shards
from data import tokenizer as tokenizer_lib
from data.pretraining import MaskingConfig, PretrainingData, build_pretraining_data, split_heldout
from model.config import BertConfig
from model.heads import BertForPreTraining
from train import probe as probe_lib
from train import warm_start, writers
from train.errors import UserError
from train.losses import PretrainingObjective
from train.tasks.base import Task, TaskSpec
from train.tasks.common import check_unknown, token_shapes


def load_documents(data) -> list[list[str]]:
  if data.source == "embedded":
    return corpus.embedded_corpus()
  if data.source == "text":
    if not data.paths:
      raise ValueError("data.paths is empty: give text files for data.source='text'")
    paths = [p for p in data.paths.split(",") if p]
    columns = data.get("text_columns", "")
    documents = (
      corpus.read_table_documents(paths, columns) if columns else corpus.read_bert_text_files(paths)
    )
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
    raise ValueError(
      f"data.source={data.source!r}: expected 'text', 'prepared', 'tfds' or 'embedded'"
    )
  return documents[: data.max_documents] if data.max_documents else documents


def vocab_of(data, init) -> str:
  """data.vocab, or else (when '') the vocab that came with init.hf_dir / init.checkpoint:
  continued pretraining must keep the token ids its weights were trained on."""
  vocab = data.vocab or warm_start.init_vocab(init or {})
  if not vocab:
    raise UserError(
      "data.vocab is empty and init.hf_dir / init.checkpoint brings no vocab.txt: give "
      "data.vocab (a vocab.txt, a directory or an HF name) or 'train'"
    )
  return vocab


def keep_vocab(tokenizer, workdir: str | None) -> None:
  """The workdir carries its vocab (vocab/vocab.txt), where exports and fine-tuning from it
  (init.checkpoint) find it; written once."""
  kept = epath.Path(workdir or "") / "vocab" / "vocab.txt"
  if workdir and not kept.exists():
    by_id = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")


def load_or_train_tokenizer(data, documents, workdir: str, init=None):
  """A vocab by path/name, or one learned from the corpus; either is kept in the workdir
  (vocab/vocab.txt), where fine-tuning from it (init.checkpoint) and exports find it.

  A learned vocab is written once; a resumed run reads the same file back, so
  token ids never shift under a checkpoint.
  """
  kept = epath.Path(workdir) / "vocab" / "vocab.txt"
  if data.vocab != "train":
    tokenizer = tokenizer_lib.load_tokenizer(vocab_of(data, init), lowercase=data.lowercase)
    keep_vocab(tokenizer, workdir)
    return tokenizer
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


def build(config, workdir: str) -> Task:
  data = config.data
  model_config = BertConfig.from_dict(config.model)
  if data.max_seq_length > model_config.max_position_embeddings:
    raise ValueError(
      f"data.max_seq_length={data.max_seq_length} exceeds "
      f"model.max_position_embeddings={model_config.max_position_embeddings}"
    )
  if data.get("packing", False) and data.get("next_sentence", True):
    raise UserError(
      "data.packing=True packs examples for MLM alone: set data.next_sentence=False "
      "(NSP pairs are not packed yet; see README, Packing)"
    )
  if data.get("sentence_order", False) and not data.get("next_sentence", True):
    raise UserError(
      "data.sentence_order=True orders sentence pairs for the NSP head: set data.next_sentence=True"
    )
  if data.source == "prepared":
    return _build_prepared(config, model_config, data.paths, workdir)
  if data.source in ("text", "tfds") and data.get("prepare_in_workdir") and workdir:
    if not data.vocab:  # init's vocab, named: the shards' manifest records which
      config = config.copy_and_resolve_references()
      config.data.vocab = vocab_of(data, config.get("init"))
    return _build_prepared(config, model_config, prepare_in_workdir(config, workdir), workdir)
  documents = load_documents(data)
  if not documents:
    raise ValueError(f"data.source={data.source!r} gave an empty corpus")
  tokenizer = load_or_train_tokenizer(data, documents, workdir, config.get("init"))
  tokenizer_lib.check_vocab_fits(tokenizer, model_config.vocab_size)
  check_unknown(tokenizer, (s for d in documents for s in d), data, data.paths)
  train_docs, heldout_docs = split_heldout(documents, data.heldout_documents, config.seed)
  if data.get("segmenter") and not data.whole_word:
    raise UserError(
      f"data.segmenter={data.segmenter!r} finds words for whole-word masking: set "
      "data.whole_word=True (or data.segmenter='')"
    )
  segment = chinese.segmenter(data.get("segmenter", ""))

  def arrays_for(docs, seed):
    return build_pretraining_data(
      docs,
      tokenizer,
      data.max_seq_length,
      data.short_seq_prob,
      data.dupe_factor,
      seed,
      data.whole_word,
      segment,
      next_sentence=data.get("next_sentence", True),
      packing=data.get("packing", False),
      sentence_order=data.get("sentence_order", False),
    )

  train_arrays, train_stats = arrays_for(train_docs, config.seed)
  heldout_arrays, heldout_stats = arrays_for(heldout_docs, config.seed + 1)
  logging.info("pretraining corpus: train %s; heldout %s", train_stats, heldout_stats)
  summary = {
    "train": dataclasses.asdict(train_stats),
    "heldout": dataclasses.asdict(heldout_stats),
  }
  return _task(config, model_config, tokenizer, train_arrays, heldout_arrays, summary)


def prepare_in_workdir(config, workdir: str) -> str:
  """WORKDIR/data: the text or TFDS corpus prepared once by data.prepare's pipeline, then
  read by index like any prepared directory; a resume finds it there and reuses it.

  Process 0 prepares while the others wait; a host that still sees no manifest (a workdir
  that is not shared) prepares its own, which comes out the same (the pipeline is
  deterministic).
  """
  import jax

  from data import prepare

  data = config.data
  for key in ("text_columns", "max_documents"):
    if data.get(key):
      raise UserError(
        f"data.{key}={data[key]!r} is read in memory only: set data.prepare_in_workdir=False "
        "(a small corpus) or prepare the text files as they are"
      )
  directory = os.fspath(epath.Path(workdir) / "data")
  manifest = epath.Path(directory) / shards.MANIFEST

  def prepare_once():
    if manifest.exists():
      files = json.loads(manifest.read_text())["files"]
      if files != prepare.input_of(config).names:
        raise UserError(
          f"{manifest}: this workdir's corpus was prepared from {files}, not from this "
          f"run's data.paths={data.paths!r} / data.tfds_name={data.tfds_name!r}"
        )
      return
    logging.info("preparing the corpus once into %s (data.prepare_in_workdir)", directory)
    prepare.prepare(config, directory, workers=data.get("prepare_workers", 1))

  if jax.process_index() == 0:
    prepare_once()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("prepare_in_workdir")
    prepare_once()
  return directory


def _build_prepared(config, model_config, directory: str, workdir: str | None) -> Task:
  """Shards that data.prepare made (data/shards.py), read by index: nothing is built here,
  and host memory holds the shard boundaries, not the corpus."""
  data = config.data
  if not directory or "," in directory:
    raise UserError(
      f"data.paths={directory!r}: give the one directory data.prepare wrote, for "
      "data.source='prepared'"
    )
  manifest = shards.read_manifest(directory)
  vocab = os.path.join(directory, shards.VOCAB) if data.vocab == "train" else data.vocab
  tokenizer = tokenizer_lib.load_tokenizer(vocab, lowercase=data.lowercase)
  tokenizer_lib.check_vocab_fits(tokenizer, model_config.vocab_size)
  shards.check_manifest(manifest, data, shards.vocab_sha256(tokenizer), directory)
  keep_vocab(tokenizer, workdir)
  rows = {
    split: shards.PreparedRows(directory, split, manifest, tokenizer.pad_token_id)
    for split in shards.SPLITS
  }
  stats_path = epath.Path(directory) / shards.STATS
  summary = json.loads(stats_path.read_text()) if stats_path.exists() else {}
  summary = {split: summary.get(split) for split in shards.SPLITS}
  logging.info("prepared pretraining data %s: %s", directory, summary)
  return _task(config, model_config, tokenizer, rows["train"], rows["heldout"], summary)


def _task(config, model_config, tokenizer, train_rows, heldout_rows, summary) -> Task:
  data = config.data
  masking = MaskingConfig.from_tokenizer(
    tokenizer,
    mask_prob=data.mask_prob,
    max_predictions=data.max_predictions,
    whole_word=data.whole_word,
  )
  # Packed rows (data.packing): each example's [CLS] starts its segment.
  start = tokenizer.cls_token_id if data.get("packing", False) else None
  train_data = PretrainingData(train_rows, config.batch_size, config.seed, masking, start)
  heldout = PretrainingData(heldout_rows, config.batch_size, config.seed + 1, masking, start)
  eval_batches = [
    heldout.batch(i) for i in range(min(config.eval_batches, heldout.steps_per_epoch))
  ]
  return Task(
    model_config=model_config,
    model_factory=lambda rngs: BertForPreTraining(model_config, rngs),
    objective=PretrainingObjective(data.get("next_sentence", True)),
    train_data=train_data,
    eval_batches=eval_batches,
    vocab_file=getattr(tokenizer, "vocab_file", None),
    summary={**summary, "vocab_size": len(tokenizer)},
    steps_per_epoch=train_data.steps_per_epoch,
    mlm_predictions=data.max_predictions,
    probe=probe_lib.build_probe(
      config.get("probe"), tokenizer, data.max_seq_length, config.batch_size
    ),
  )


def example_shapes(config):
  t, p = config.data.max_seq_length, config.data.max_predictions
  shapes = dict(
    token_shapes(t),
    masked_positions=((p,), np.int32),
    masked_ids=((p,), np.int32),
    masked_weights=((p,), np.float32),
    next_sentence_label=((), np.int32),
  )
  if config.data.get("packing", False):
    shapes.update(segment_ids=((t,), np.int32), position_ids=((t,), np.int32))
  return None, shapes


SPEC = TaskSpec(
  name="pretraining",
  build=build,
  example_shapes=example_shapes,
  model_factory=lambda config, model_config, labels, peft: (
    lambda rngs: BertForPreTraining(model_config, rngs, peft)
  ),
  objective=lambda config, labels: PretrainingObjective(config.data.get("next_sentence", True)),
)

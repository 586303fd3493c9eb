"""BERT pretraining data: documents -> packed NSP pairs -> masked batches.

How the pieces fit:
  documents (corpus.py) --build_pretraining_data--> packed arrays [N, T]
  packed arrays --PretrainingData.batch(step)--> one host's masked batch

Pairs are made once (sentence_pairs.py); masks are drawn per batch
(masking.py). `batch(step)` is a pure function of (seed, step), so resuming
needs only the step number: no iterator state goes into checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from data import chinese
from data.masking import RowGenerators, mask_tokens, word_start_mask
from data.sampling import EpochSampler, host_slice
from data.sentence_pairs import (
  Instance,
  make_full_sentence_rows,
  make_nsp_pairs,
  make_packed_rows,
  pack_instance,
  truncate_seq_pair,
)

__all__ = [
  "Instance",
  "MaskingConfig",
  "PretrainingData",
  "PretrainingStats",
  "build_pretraining_data",
  "make_nsp_pairs",
  "mask_tokens",
  "pack_instance",
  "split_heldout",
  "truncate_seq_pair",
  "word_start_mask",
]

_MASKING_STREAM = 0x6D61736B  # "mask": keeps masking draws apart from other seeds
PACKED_KEYS = ("input_ids", "token_type_ids", "attention_mask", "next_sentence_label")


@dataclasses.dataclass(frozen=True)
class PretrainingStats:
  """What the corpus gave; log it so a bad corpus shows up before training."""

  num_documents: int
  num_sentences: int
  num_tokens: int
  num_instances: int
  random_next_fraction: float
  real_token_share: float = 0.0  # of the rows' positions: how full rows are (data.packing)


def build_pretraining_data(
  documents: list[list[str]],
  tokenizer,
  max_seq_length: int,
  short_seq_prob: float = 0.1,
  dupe_factor: int = 1,
  seed: int = 0,
  whole_word: bool = False,
  segment=None,
  next_sentence: bool = True,
  packing: bool = False,
  sentence_order: bool = False,
) -> tuple[dict[str, np.ndarray], PretrainingStats]:
  """Tokenize documents and pack them into NSP pairs (with `sentence_order`, ALBERT's SOP
  pairs: make_nsp_pairs), unmasked; without `next_sentence`, into single-segment rows of
  whole sentences (make_full_sentence_rows) for MLM alone, or
  with `packing` into rows of several examples, each from one document (make_packed_rows;
  PretrainingData(example_start_id=[CLS]) gives them segment and position ids).

  Returns int32 arrays input_ids, token_type_ids, attention_mask [N, T] and
  next_sentence_label [N], plus word_start [N, T] (bool) when `whole_word`:
  from "##" pieces, or with `segment` (data/chinese.py: text -> words) from its
  words, found once per sentence here. And the corpus statistics. A single
  document is allowed (see make_nsp_pairs for what that does to random-next
  pairs); an empty corpus is not.
  """
  sentences = [sentence for document in documents for sentence in document]
  if not sentences:
    raise ValueError(
      f"empty corpus: {len(documents)} documents and no sentences to make pretraining pairs from"
    )
  encoded = tokenizer(
    sentences,
    add_special_tokens=False,
    return_attention_mask=False,
    return_token_type_ids=False,
    return_offsets_mapping=segment is not None,
    verbose=False,
  )
  token_ids = encoded["input_ids"]
  # Pairs are made over token numbers (positions in the corpus), then looked up: the ids,
  # and for whole-word masking whether each token begins a word.
  flat_ids = np.fromiter((i for ids in token_ids for i in ids), np.int32)
  numbered, position, sentence = [], 0, 0
  for document in documents:
    numbered.append([])
    for ids in token_ids[sentence : sentence + len(document)]:
      numbered[-1].append(list(range(position, position + len(ids))))
      position += len(ids)
    sentence += len(document)
  num_documents = sum(1 for document in numbered if any(document))
  if num_documents == 1:
    logging.warning(
      "pretraining corpus has one document: random-next B segments come "
      "from the same document, so the NSP task is weak"
    )

  if packing and next_sentence:
    raise ValueError("packed rows are for MLM alone: set next_sentence=False")
  if sentence_order and not next_sentence:
    raise ValueError("sentence_order makes sentence pairs: set next_sentence=True")
  if packing:  # a literal "[CLS]" in the text would start a segment: read it as [UNK]
    flat_ids[flat_ids == tokenizer.cls_token_id] = tokenizer.unk_token_id
  rng = np.random.default_rng(seed)
  if next_sentence:
    instances = make_nsp_pairs(
      numbered, max_seq_length, short_seq_prob, rng, dupe_factor, sentence_order
    )
  else:
    make_rows = make_packed_rows if packing else make_full_sentence_rows
    instances = make_rows(numbered, max_seq_length, short_seq_prob, rng, dupe_factor)
  # EXAMPLE_START (-2) and DOCUMENT_BREAK (-1) look up the entries appended here: [CLS] and
  # [SEP], each a word start.
  flat_ids = np.append(
    flat_ids, np.array([tokenizer.cls_token_id, tokenizer.sep_token_id], np.int32)
  )
  arrays = _stack(
    [
      pack_instance(
        _looked_up(instance, flat_ids),
        max_seq_length,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.pad_token_id,
      )
      for instance in instances
    ]
  )
  if whole_word:
    if segment is None:
      starts = word_start_mask(flat_ids, tokenizer)
    else:
      starts = np.fromiter(
        (
          flag
          for text, offsets in zip(sentences, encoded["offset_mapping"], strict=True)
          for flag in chinese.word_starts(text, offsets, segment)
        ),
        bool,
        count=len(flat_ids) - 2,
      )
    starts = np.append(starts, [True, True])
    arrays["word_start"] = np.stack(
      [_word_start_row(instance, starts, max_seq_length) for instance in instances]
    )
  stats = PretrainingStats(
    num_documents=num_documents,
    num_sentences=sum(1 for ids in token_ids if ids),
    num_tokens=sum(len(ids) for ids in token_ids),
    num_instances=len(instances),
    random_next_fraction=float(arrays["next_sentence_label"].mean()),
    real_token_share=float(arrays["attention_mask"].mean()),
  )
  return arrays, stats


def _looked_up(instance: Instance, flat_ids: np.ndarray) -> Instance:
  """An instance over token numbers as one over token ids."""
  return dataclasses.replace(
    instance,
    tokens_a=flat_ids[instance.tokens_a].tolist(),
    tokens_b=flat_ids[instance.tokens_b].tolist(),
  )


def _word_start_row(instance: Instance, starts: np.ndarray, max_seq_length: int) -> np.ndarray:
  """Whether each position of the packed `[CLS] A [SEP] B [SEP]` row begins a word (special
  tokens and padding count as starts; masking never picks them)."""
  row = np.ones(max_seq_length, bool)
  a, b = len(instance.tokens_a), len(instance.tokens_b)
  row[1 : 1 + a] = starts[instance.tokens_a]
  row[2 + a : 2 + a + b] = starts[instance.tokens_b]
  return row


def _stack(packed: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {key: np.stack([example[key] for example in packed]) for key in PACKED_KEYS}


def split_heldout(documents: Sequence, heldout: float | int, seed: int) -> tuple[list, list]:
  """(train, heldout) documents, split by whole documents.

  Splitting before pairs are made keeps every held-out sentence, and every
  random-next B drawn for evaluation, out of training. `heldout` is a
  fraction in (0, 1) (at least one document) or a count. Both parts keep
  the corpus order.
  """
  n = len(documents)
  if isinstance(heldout, float) and heldout >= 1.0 and heldout.is_integer():
    heldout = int(heldout)  # a count that came through a float config field
  if isinstance(heldout, float):
    if not 0.0 < heldout < 1.0:
      raise ValueError(f"heldout fraction must be in (0, 1), got {heldout}")
    count = max(1, round(n * heldout))
  else:
    count = int(heldout)
  if not 0 <= count < n:
    raise ValueError(f"cannot hold out {count} of {n} documents and keep at least one for training")
  is_heldout = np.zeros(n, bool)
  is_heldout[np.random.default_rng(seed).choice(n, count, replace=False)] = True
  train = [d for d, h in zip(documents, is_heldout) if not h]
  held = [d for d, h in zip(documents, is_heldout) if h]
  return train, held


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """The MLM settings `mask_tokens` needs; from_tokenizer fills the ids."""

  vocab_size: int
  mask_id: int
  special_ids: tuple[int, ...]
  mask_prob: float = 0.15
  max_predictions: int = 20
  whole_word: bool = False

  @classmethod
  def from_tokenizer(cls, tokenizer, **settings) -> MaskingConfig:
    """Ids from the tokenizer itself, not from a padded embedding table.

    All special tokens, [UNK] included, are neither targets nor random
    replacements: predicting [UNK] teaches nothing.
    """
    return cls(
      vocab_size=len(tokenizer),
      mask_id=tokenizer.mask_token_id,
      special_ids=tuple(sorted(tokenizer.all_special_ids)),
      **settings,
    )


class InMemoryRows:
  """build_pretraining_data's arrays, read by row like prepared shards are."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    self.arrays = arrays
    self.whole_word = "word_start" in arrays

  def __len__(self) -> int:
    return len(self.arrays["input_ids"])

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {key: value[indices] for key, value in self.arrays.items()}


class PretrainingData:
  """Masked batches as a pure function of (seed, step).

  Epoch e visits the examples in the order permutation(default_rng((seed,
  e))); step s masks with default_rng((seed, s, MASK)). Each epoch drops the
  last N % batch_size examples of its order (a different few each epoch).
  Masks are drawn for the whole global batch on every host and then sliced,
  so a batch does not depend on how many hosts share it (so a run can resume
  on a different topology); that costs each host ~50 ms per 1024 x 512
  tokens on one CPU core.
  """

  def __init__(
    self,
    arrays,
    batch_size: int,
    seed: int,
    masking: MaskingConfig,
    example_start_id: int | None = None,
  ):
    """`arrays`: build_pretraining_data's dict, or rows read by index from disk (anything
    with len() and rows(indices) -> that dict's rows, such as data/shards.PreparedRows).
    `example_start_id` ([CLS]): the rows are packed (make_packed_rows); batches then carry
    segment_ids and position_ids, found from where each example's [CLS] is."""
    if isinstance(arrays, dict):
      missing = [key for key in PACKED_KEYS if key not in arrays]
      if masking.whole_word and "word_start" not in arrays:
        missing.append("word_start (needed for whole-word masking)")
      if missing:
        raise ValueError(f"pretraining arrays lack {missing}")
      arrays = InMemoryRows(arrays)
    elif masking.whole_word and not arrays.whole_word:
      raise ValueError("data.whole_word=True, but the prepared rows have no word starts")
    self.sampler = EpochSampler(
      len(arrays),
      batch_size,
      seed,
      "pretraining examples (use a bigger corpus or dupe_factor)",
    )
    self.num_examples = self.sampler.num_examples
    self.steps_per_epoch = self.sampler.steps_per_epoch
    self.rows = arrays
    self.batch_size = batch_size
    self.seed = seed
    self.masking = masking
    self.example_start_id = example_start_id

  def example_indices(self, step: int) -> np.ndarray:
    """Rows of the packed arrays that make up global batch `step`."""
    return self.sampler.indices(step)

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    """This process's contiguous share of global batch `step`, masked.

    Only those rows are read and masked: each row's masks come from its own generator,
    seeded by (seed, step, its place in the global batch), so every host draws exactly
    the masks one process drawing the whole batch would.
    """
    indices = self.example_indices(step)
    mine = host_slice(len(indices), process_index, process_count)
    arrays = self.rows.rows(indices[mine])
    config = self.masking
    rows = range(mine.start, mine.stop)
    masked = mask_tokens(
      arrays["input_ids"],
      RowGenerators((self.seed, step, _MASKING_STREAM, row) for row in rows),
      vocab_size=config.vocab_size,
      mask_id=config.mask_id,
      special_ids=config.special_ids,
      mask_prob=config.mask_prob,
      max_predictions=config.max_predictions,
      word_start=arrays["word_start"] if config.whole_word else None,
    )
    batch = {
      "input_ids": masked["input_ids"],
      "token_type_ids": arrays["token_type_ids"].astype(np.int32),
      "attention_mask": arrays["attention_mask"].astype(np.int32),
      "masked_positions": masked["masked_positions"],
      "masked_ids": masked["masked_ids"],
      "masked_weights": masked["masked_weights"],
      "next_sentence_label": arrays["next_sentence_label"].astype(np.int32),
    }
    if self.example_start_id is not None:  # from the ids before masking
      batch.update(example_segments(arrays, self.example_start_id))
    return batch


def example_segments(arrays: dict[str, np.ndarray], start_id: int) -> dict[str, np.ndarray]:
  """segment_ids (1, 2, ... for the examples of a packed row, 0 on padding) and position_ids
  (restarting at 0 at each example's first token, `start_id`) of unmasked rows."""
  ids, real = arrays["input_ids"], arrays["attention_mask"] > 0
  starts = (ids == start_id) & real
  positions = np.arange(ids.shape[-1])
  first = np.maximum.accumulate(np.where(starts, positions, 0), axis=-1)
  return {
    "segment_ids": (np.cumsum(starts, axis=-1) * real).astype(np.int32),
    "position_ids": np.where(real, positions - first, 0).astype(np.int32),
  }

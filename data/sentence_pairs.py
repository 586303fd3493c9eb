"""Sentence pairs for next-sentence prediction, as in the BERT paper.

Follows google-research/bert create_pretraining_data.py (rewritten, numpy
rng): documents are cut into chunks of whole sentences close to a target
length; a chunk is split into A and B, and half the time B is replaced by a
run of sentences from another document. Sentences the replaced B would have
used are put back, so no text is wasted.

With `sentence_order` the negative is ALBERT's sentence-order prediction (Lan et
al. 2020) instead: B is always A's continuation, and half the pairs are swapped.
A random B is told apart by topic alone; a swapped pair only by how the text
runs on, which is what a sentence-level objective should teach [CLS].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data.packing import first_fit


@dataclasses.dataclass(frozen=True)
class Instance:
  """One NSP pair of token ids, before [CLS]/[SEP] and padding."""

  tokens_a: list[int]
  tokens_b: list[int]
  is_random_next: bool
  document_index: int  # the document A came from; lets tests check B's origin


def make_nsp_pairs(
  documents: list[list[list[int]]],
  max_seq_length: int,
  short_seq_prob: float,
  rng: np.random.Generator,
  dupe_factor: int = 1,
  sentence_order: bool = False,
) -> list[Instance]:
  """NSP instances from tokenized documents (document -> sentence -> ids).

  `dupe_factor` passes over the corpus give different chunkings of the same
  text. With `short_seq_prob` a document's target length is drawn from
  [2, max_seq_length - 3], so the model also sees short inputs, as in
  fine-tuning. A random-next B always comes from a different document when
  there are two or more. With exactly one document it comes from a random
  place in that same document (the reference falls back to this too): the
  label stays "random next", but B may be near A, so the NSP signal is
  weaker; use more than one document for real runs. Output is shuffled.

  With `sentence_order`, is_random_next means "A and B swapped" (B is never from
  another document); a chunk of one sentence is split at a random token, and a
  chunk of one token makes no pair.
  """
  if max_seq_length < 5:
    raise ValueError(f"max_seq_length={max_seq_length} leaves no room for A and B")
  documents = [[sentence for sentence in document if sentence] for document in documents]
  documents = [document for document in documents if document]
  if not documents:
    raise ValueError("no documents with tokens to make sentence pairs from")
  instances = []
  for _ in range(dupe_factor):
    for document_index in range(len(documents)):
      instances.extend(
        _pairs_from_document(
          documents, document_index, max_seq_length, short_seq_prob, rng, sentence_order
        )
      )
  order = rng.permutation(len(instances))
  return [instances[i] for i in order]


def _pairs_from_document(
  documents: list[list[list[int]]],
  document_index: int,
  max_seq_length: int,
  short_seq_prob: float,
  rng: np.random.Generator,
  sentence_order: bool = False,
) -> list[Instance]:
  document = documents[document_index]
  max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
  target_length = max_num_tokens
  if rng.random() < short_seq_prob:
    target_length = int(rng.integers(2, max_num_tokens + 1))

  instances = []
  chunk: list[list[int]] = []
  chunk_length = 0
  i = 0
  while i < len(document):
    chunk.append(document[i])
    chunk_length += len(document[i])
    if i == len(document) - 1 or chunk_length >= target_length:
      if sentence_order:
        instances.extend(_order_pair(chunk, max_num_tokens, rng, document_index))
      else:
        a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))
        tokens_a = _joined(chunk[:a_end])
        is_random_next = len(chunk) == 1 or rng.random() < 0.5
        if is_random_next:
          other = _other_document(documents, document_index, rng)
          tokens_b = _random_run(other, target_length - len(tokens_a), rng)
          i -= len(chunk) - a_end  # put back the sentences B did not use
        else:
          tokens_b = _joined(chunk[a_end:])
        truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
        instances.append(Instance(tokens_a, tokens_b, is_random_next, document_index))
      chunk, chunk_length = [], 0
    i += 1
  return instances


def _joined(sentences: list[list[int]]) -> list[int]:
  return [t for sentence in sentences for t in sentence]


def _order_pair(
  chunk: list[list[int]], max_num_tokens: int, rng: np.random.Generator, document_index: int
) -> list[Instance]:
  """A chunk cut into A and its continuation B, swapped half the time (is_random_next);
  none from a chunk of one token."""
  if len(chunk) >= 2:
    a_end = int(rng.integers(1, len(chunk)))
    tokens_a = _joined(chunk[:a_end])
    tokens_b = _joined(chunk[a_end:])
  elif len(chunk[0]) >= 2:
    cut = int(rng.integers(1, len(chunk[0])))
    tokens_a, tokens_b = list(chunk[0][:cut]), list(chunk[0][cut:])
  else:
    return []
  truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
  swapped = bool(rng.random() < 0.5)
  if swapped:
    tokens_a, tokens_b = tokens_b, tokens_a
  return [Instance(tokens_a, tokens_b, swapped, document_index)]


def _other_document(
  documents: list[list[list[int]]], document_index: int, rng: np.random.Generator
) -> list[list[int]]:
  """Uniform over the other documents; the same one only if it is alone."""
  if len(documents) == 1:
    return documents[0]
  index = int(rng.integers(len(documents) - 1))
  return documents[index + (index >= document_index)]


def _random_run(
  document: list[list[int]], target_length: int, rng: np.random.Generator
) -> list[int]:
  """Sentences from a random start until target_length tokens (at least one)."""
  tokens: list[int] = []
  for sentence in document[int(rng.integers(len(document))) :]:
    tokens.extend(sentence)
    if len(tokens) >= target_length:
      break
  return tokens


def truncate_seq_pair(
  tokens_a: list[int], tokens_b: list[int], max_num_tokens: int, rng: np.random.Generator
) -> None:
  """Trim in place to max_num_tokens, one token at a time from the longer side.

  Trimming the longer side keeps both segments informative; taking from the
  front or the back at random avoids teaching the model that segments
  always end (or start) at a sentence boundary.
  """
  while len(tokens_a) + len(tokens_b) > max_num_tokens:
    longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def pack_instance(
  instance: Instance, max_seq_length: int, cls_id: int, sep_id: int, pad_id: int
) -> dict[str, np.ndarray]:
  """`[CLS] A [SEP] B [SEP]` (`[CLS] A [SEP]` without B) padded to max_seq_length, with
  segment ids and mask.

  next_sentence_label follows transformers' BertForPreTraining: 0 = B is
  the true continuation, 1 = B is random.
  """
  ids = [cls_id, *instance.tokens_a, sep_id]
  if instance.tokens_b:
    ids += [*instance.tokens_b, sep_id]
  if len(ids) > max_seq_length:
    raise ValueError(f"pair of {len(ids)} tokens exceeds max_seq_length={max_seq_length}")
  length_a = len(instance.tokens_a) + 2
  input_ids = np.full(max_seq_length, pad_id, np.int32)
  input_ids[: len(ids)] = ids
  token_type_ids = np.zeros(max_seq_length, np.int32)
  token_type_ids[length_a : len(ids)] = 1
  attention_mask = np.zeros(max_seq_length, np.int32)
  attention_mask[: len(ids)] = 1
  return {
    "input_ids": input_ids,
    "token_type_ids": token_type_ids,
    "attention_mask": attention_mask,
    "next_sentence_label": np.int32(instance.is_random_next),
  }


DOCUMENT_BREAK = -1  # a token number that stands for the [SEP] between two documents


def _single_segment_setup(documents, max_seq_length: int) -> tuple[list, int]:
  """The documents with tokens, and the tokens a `[CLS] text [SEP]` example holds."""
  if max_seq_length < 3:
    raise ValueError(f"max_seq_length={max_seq_length} leaves no room for text")
  documents = [[sentence for sentence in document if sentence] for document in documents]
  documents = [document for document in documents if document]
  if not documents:
    raise ValueError("no documents with tokens to make rows from")
  return documents, max_seq_length - 2


def _target_drawer(rng: np.random.Generator, short_seq_prob: float, max_num_tokens: int):
  """() -> the next row's target length: max_num_tokens, or with short_seq_prob a shorter one."""

  def draw_target() -> int:
    if rng.random() < short_seq_prob:
      return int(rng.integers(2, max_num_tokens + 1))
    return max_num_tokens

  return draw_target


def make_full_sentence_rows(
  documents: list[list[list[int]]],
  max_seq_length: int,
  short_seq_prob: float,
  rng: np.random.Generator,
  dupe_factor: int = 1,
) -> list[Instance]:
  """Single-segment rows for MLM without NSP (RoBERTa's FULL-SENTENCES, Liu et al. 2019).

  Each row is `[CLS] text [SEP]`: whole sentences in corpus order, filled to
  max_seq_length, running on into the next document after a DOCUMENT_BREAK
  (looked up as [SEP]), so short documents (one tweet, one review) do not each
  pad a row. A sentence longer than a row is cut into row-sized pieces. Each of
  `dupe_factor` passes reads the documents in a fresh order, so rows differ
  between passes; `short_seq_prob` draws a shorter target as make_nsp_pairs
  does. tokens_b stays empty and is_random_next False. Output is shuffled.
  """
  documents, max_num_tokens = _single_segment_setup(documents, max_seq_length)
  draw_target = _target_drawer(rng, short_seq_prob, max_num_tokens)
  instances: list[Instance] = []
  for _ in range(dupe_factor):
    row: list[int] = []
    row_document = 0
    target = draw_target()
    for document_index in rng.permutation(len(documents)):
      for position, sentence in enumerate(documents[document_index]):
        piece = [DOCUMENT_BREAK, *sentence] if row and position == 0 else sentence
        if row and len(row) + len(piece) > target:
          instances.append(Instance(row, [], False, row_document))
          row, piece, target = [], sentence, draw_target()  # a row never starts with a break
        if not row:
          row_document = int(document_index)
        while len(piece) > target:  # a sentence longer than the row
          instances.append(Instance(piece[:target], [], False, int(document_index)))
          piece, target = piece[target:], draw_target()
        row = row + piece
    if row:
      instances.append(Instance(row, [], False, row_document))
  order = rng.permutation(len(instances))
  return [instances[i] for i in order]


EXAMPLE_START = -2  # a token number that stands for the [CLS] opening a packed row's next example
PACK_WINDOW = 1024  # chunks packed together at a time: rows mix documents, memory stays flat


def document_chunks(document: list[list[int]], max_num_tokens: int, draw_target) -> list[list[int]]:
  """A document's sentences, in order, in chunks of whole sentences of up to `draw_target()`
  tokens (<= max_num_tokens); a sentence longer than its chunk is cut into chunk-sized pieces.
  A chunk never takes text from another document."""
  chunks, chunk, target = [], [], draw_target()
  for sentence in document:
    if chunk and len(chunk) + len(sentence) > target:
      chunks.append(chunk)
      chunk, target = [], draw_target()
    piece = sentence
    while len(chunk) + len(piece) > target:  # a sentence longer than the chunk
      cut = target - len(chunk)
      chunks.append(chunk + piece[:cut])
      chunk, piece, target = [], piece[cut:], draw_target()
    chunk = chunk + piece
  if chunk:
    chunks.append(chunk)
  return chunks


def make_packed_rows(
  documents: list[list[list[int]]],
  max_seq_length: int,
  short_seq_prob: float,
  rng: np.random.Generator,
  dupe_factor: int = 1,
) -> list[Instance]:
  """MLM rows (data.packing=True) holding several examples, each `[CLS] chunk [SEP]` of one
  document's whole sentences (document_chunks): the model attends within an example only
  (segment ids, from each example's [CLS]) and positions restart at each, so short
  documents fill rows without seeing each other, unlike make_full_sentence_rows.

  Each of `dupe_factor` passes shuffles all chunks, then packs each window of PACK_WINDOW
  of them first-fit decreasing (data/packing.first_fit) into rows of max_seq_length. A
  row's tokens_a is `c1 DOCUMENT_BREAK EXAMPLE_START c2 ...` (looked up as [SEP] and
  [CLS]), which pack_instance closes with the first [CLS] and the last [SEP]; its
  document_index is its first chunk's. Output is shuffled.
  """
  documents, max_num_tokens = _single_segment_setup(documents, max_seq_length)
  draw_target = _target_drawer(rng, short_seq_prob, max_num_tokens)
  instances: list[Instance] = []
  for _ in range(dupe_factor):
    chunks = [
      (chunk, index)
      for index, document in enumerate(documents)
      for chunk in document_chunks(document, max_num_tokens, draw_target)
    ]
    chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    for start in range(0, len(chunks), PACK_WINDOW):
      window = chunks[start : start + PACK_WINDOW]
      for row in first_fit([len(chunk) + 2 for chunk, _ in window], max_seq_length):
        tokens = list(window[row[0]][0])
        for i in row[1:]:
          tokens += [DOCUMENT_BREAK, EXAMPLE_START, *window[i][0]]
        instances.append(Instance(tokens, [], False, window[row[0]][1]))
  order = rng.permutation(len(instances))
  return [instances[i] for i in order]

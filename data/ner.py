"""Token classification (NER) data: CoNLL files or TFDS conll2003 -> tag ids per sub-token.

  CoNLL file (word ... tag per line, blank line between sentences) --read_conll-->
  TFDS conll2003 --tfds_sentences-->
      TaggedSentence(words, tags, origin)
  --encode_sentences--> {input_ids, ..., labels, label_weights, weight} + where each word starts

Tags are read as IOB1 (CoNLL-2003's own files) or BIO alike and stored as BIO
(`iob1_to_iob2`), the scheme the model learns. A word's tag sits on its first
sub-token; later sub-tokens, [CLS], [SEP] and padding carry weight 0, and a
word's prediction is read back from its first sub-token (`word_tags`).
Sentences longer than max_seq_length are truncated: their cut words count as
'O' in predictions, and the log says how many sentences were cut.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence

import numpy as np

from data.finetune import as_text, label_ids, read_lines, tfds_source

_TAG = re.compile(r"^(O|[BI]-\S+)$")


@dataclasses.dataclass(frozen=True)
class TaggedSentence:
  words: tuple[str, ...]
  tags: tuple[str, ...] | None
  origin: str  # "path:line" of the first word, or the TFDS example


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
  """IOB1 (CoNLL-2003's files: B- only between two touching entities) -> BIO.

  An I-X that does not continue an X (after O, or after another type) opens
  an entity, so it becomes B-X. BIO input comes back unchanged.
  """
  out, previous = [], "O"
  for tag in tags:
    if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
      out.append("B-" + tag[2:])
    else:
      out.append(tag)
    previous = tag
  return out


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """(type, first, last) word indices, inclusive, of each entity in a tag sequence.

  conlleval's reading (seqeval's default mode, which the entity metrics use
  too): an entity starts at B-X, or at I-X after O or another type, so IOB1
  and BIO read alike.
  """
  from seqeval.metrics.sequence_labeling import get_entities

  return [(kind, start, end) for kind, start, end in get_entities(list(tags))]


def _check_tag(tag: str, origin: str) -> None:
  if not _TAG.match(tag):
    raise ValueError(
      f"{origin}: tag {tag!r} is not O, B-TYPE or I-TYPE (IOB1 or BIO; IOBES files are not read)"
    )


def read_conll(path: str, tag_column: int = -1) -> list[TaggedSentence]:
  """Sentences of a CoNLL file: the word in column 0, the tag in `tag_column`.

  Columns are split on whitespace; every token line must have as many as the
  first one (CoNLL-2003: word POS chunk NER). -DOCSTART- lines end a
  sentence and are dropped.
  """
  sentences: list[TaggedSentence] = []
  words, tags, start = [], [], 0
  width, width_line = None, 0

  def close():
    nonlocal words, tags
    if words:
      sentences.append(TaggedSentence(tuple(words), tuple(iob1_to_iob2(tags)), f"{path}:{start}"))
    words, tags = [], []

  for number, line in read_lines(path):
    fields = line.split()
    if not fields or fields[0] == "-DOCSTART-":
      close()
      continue
    if width is None:
      width, width_line = len(fields), number
      if width < 2:
        raise ValueError(f"{path}:{number}: 1 column; a CoNLL line needs the word and its tag")
    elif len(fields) != width:
      raise ValueError(
        f"{path}:{number}: {len(fields)} columns, expected {width} as on line {width_line}"
      )
    tag = fields[tag_column]
    _check_tag(tag, f"{path}:{number}")
    if not words:
      start = number
    words.append(fields[0])
    tags.append(tag)
  close()
  if not sentences:
    raise ValueError(f"{path}: no sentences")
  return sentences


def tfds_sentences(
  name: str,
  split: str,
  data_dir: str | None = None,
  words_key: str = "tokens",
  tags_key: str = "ner",
) -> list[TaggedSentence]:
  """Sentences of a TFDS token-tagging dataset such as conll2003."""
  source, features = tfds_source(name, split, data_dir)
  names = features[tags_key].feature.names
  sentences = []
  for index in range(len(source)):
    record = source[index]
    origin = f"tfds {name}[{split}] #{index}"
    words = [as_text(w) for w in np.asarray(record[words_key]).tolist()]
    tag_ids = np.asarray(record[tags_key]).tolist()
    if len(words) != len(tag_ids):
      raise ValueError(f"{origin}: {len(words)} words but {len(tag_ids)} tags")
    if not words:
      continue
    tags = [names[i] for i in tag_ids]
    for tag in tags:
      _check_tag(tag, origin)
    sentences.append(TaggedSentence(tuple(words), tuple(iob1_to_iob2(tags)), origin))
  return sentences


def resolve_labels(configured: Sequence[str], train: list[TaggedSentence]) -> list[str]:
  """The configured tag list, or 'O' then B-/I- of every entity type in training."""
  if configured:
    return [str(label) for label in configured]
  kinds = sorted({tag[2:] for s in train for tag in s.tags if tag != "O"})
  labels = ["O"] + [f"{prefix}-{kind}" for kind in kinds for prefix in "BI"]
  logging.info("tags taken from the training data: %s", labels)
  return labels


def first_token_positions(word_ids: Sequence[int | None], num_words: int) -> np.ndarray:
  """Position of each word's first sub-token; -1 where it was truncated away (or empty)."""
  positions = np.full(num_words, -1, np.int32)
  previous = None
  for position, word in enumerate(word_ids):
    if word is not None and word != previous:
      positions[word] = position
    previous = word
  return positions


def encode_sentences(
  sentences: list[TaggedSentence], tokenizer, max_seq_length: int, labels: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[np.ndarray], dict]:
  """(arrays, first sub-token position of every word per sentence, stats)."""
  if not sentences:
    return {}, [], {"sentences": 0, "truncated": 0}
  encoded = tokenizer(
    [list(s.words) for s in sentences],
    is_split_into_words=True,
    truncation=True,
    max_length=max_seq_length,
    padding="max_length",
    return_token_type_ids=True,
    return_attention_mask=True,
    verbose=False,
  )
  n = len(sentences)
  tag_ids = np.zeros((n, max_seq_length), np.int32)
  tag_weights = np.zeros((n, max_seq_length), np.float32)
  positions, truncated = [], 0
  for i, sentence in enumerate(sentences):
    first = first_token_positions(encoded.word_ids(i), len(sentence.words))
    positions.append(first)
    kept = first >= 0
    last_kept = np.flatnonzero(kept)[-1] if kept.any() else -1
    # Words lost off the end; a word that tokenizes to nothing (a lone U+FE0F) is not lost.
    lost = [sentence.words[j] for j in range(last_kept + 1, len(sentence.words))]
    truncated += any(tokenizer.tokenize(word) for word in lost)
    if sentence.tags is not None:
      origins = [f"{sentence.origin} (word {j + 1})" for j in range(len(sentence.words))]
      ids = label_ids(list(sentence.tags), labels, origins)
      tag_ids[i, first[kept]] = ids[kept]
      tag_weights[i, first[kept]] = 1.0
  arrays = {
    "input_ids": np.asarray(encoded["input_ids"], np.int32),
    "token_type_ids": np.asarray(encoded["token_type_ids"], np.int32),
    "attention_mask": np.asarray(encoded["attention_mask"], np.int32),
    "labels": tag_ids,
    "label_weights": tag_weights,
    "weight": np.ones(n, np.float32),
  }
  if truncated:
    logging.warning(
      "%d of %d sentences (from %s) are longer than max_seq_length=%d and were "
      "truncated; their cut words count as 'O'",
      truncated,
      n,
      sentences[0].origin.rsplit(":", 1)[0],
      max_seq_length,
    )
  return arrays, positions, {"sentences": n, "truncated": truncated}


def word_tags(
  token_predictions: np.ndarray, positions: np.ndarray, labels: Sequence[str]
) -> list[str]:
  """Tags per word from per-token class ids, read at each word's first sub-token."""
  return [labels[int(token_predictions[p])] if p >= 0 else "O" for p in positions]


def split_words(text: str, tokenizer) -> list[tuple[str, int, int]]:
  """(word, start, end) character spans, split exactly as BERT's tokenizer splits words.

  The tokenizer's own pre-tokenizer does it (whitespace, then punctuation), so
  the words the model tags are the words a span is reported for; each CJK
  character is a word of its own, as BERT's normalizer makes it
  (`tokenize_chinese_chars`), which is also how CLUENER's files are read.
  """
  pre_tokenizer = tokenizer.backend_tokenizer.pre_tokenizer
  words = []
  for word, (start, _) in pre_tokenizer.pre_tokenize_str(text):
    run = 0  # start of the current non-CJK run within `word`
    for i, char in enumerate(word):
      if is_cjk(char):
        if run < i:
          words.append((word[run:i], start + run, start + i))
        words.append((char, start + i, start + i + 1))
        run = i + 1
    if run < len(word):
      words.append((word[run:], start + run, start + len(word)))
  return words


_CJK_RANGES = (  # the blocks BERT's _is_chinese_char counts
  (0x4E00, 0x9FFF),
  (0x3400, 0x4DBF),
  (0x20000, 0x2A6DF),
  (0x2A700, 0x2B73F),
  (0x2B740, 0x2B81F),
  (0x2B820, 0x2CEAF),
  (0xF900, 0xFAFF),
  (0x2F800, 0x2FA1F),
)


def is_cjk(char: str) -> bool:
  code = ord(char)
  return any(low <= code <= high for low, high in _CJK_RANGES)


def entities_in_text(
  text: str, words: list[tuple[str, int, int]], tags: Sequence[str]
) -> list[dict]:
  """Entities with their character span in `text` and the exact text of that span."""
  out = []
  for kind, first, last in entity_spans(tags):
    start, end = words[first][1], words[last][2]
    out.append({"type": kind, "start": start, "end": end, "text": text[start:end]})
  return out

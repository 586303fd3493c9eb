"""Cloze prompts (PET, Schick & Schuetze 2021): the text inside a template with one [MASK].

  template    '{sentence} It was [MASK].'   placeholders name the text columns
  verbalizer  one word per label, each a single vocab token: ('terrible', 'great')

  TextExample --encode_cloze--> {input_ids, token_type_ids, attention_mask,
                                 mask_position, label, weight}

The masked-LM logits at `mask_position`, read at the verbalizer's token ids,
are the class logits (train/losses.ClozeObjective): a pretrained MLM head
classifies with no new parameters, so zero-shot evaluation is possible.

The prompt is one segment, `[CLS] rendered template [SEP]`. Template pieces
and texts are tokenised apart, which matches tokenising the rendered string
when placeholders sit between spaces or punctuation (BERT splits there).
Text that does not fit max_seq_length loses tokens from its end (the longer
text first); the template and its [MASK] are never cut.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np

from data.finetune import label_ids, token_ids

logger = logging.getLogger(__name__)
MASK = "[MASK]"
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclasses.dataclass(frozen=True)
class Piece:
  kind: str  # 'literal' | 'text' | 'mask'
  value: str  # the literal text, the column name, or '[MASK]'


def parse_template(template: str, columns: Sequence[str]) -> list[Piece]:
  """The template as literal / text / mask pieces, checked against the text columns.

  `columns` are the config's text column names in order (text_a, then text_b).
  """
  if template.count(MASK) != 1:
    raise ValueError(
      f"data.template={template!r} has {template.count(MASK)} {MASK} "
      f"tokens: a cloze template needs exactly one"
    )
  names = [str(c) for c in columns]
  pieces = []
  for part in re.split(f"({re.escape(MASK)})", template):
    if part == MASK:
      pieces.append(Piece("mask", MASK))
      continue
    start = 0
    for match in _PLACEHOLDER.finditer(part):
      if match.group(1) not in names:
        raise ValueError(
          f"data.template={template!r}: placeholder {match.group(0)} is not a "
          f"text column; the columns are {names}"
        )
      pieces += [Piece("literal", part[start : match.start()]), Piece("text", match.group(1))]
      start = match.end()
    pieces.append(Piece("literal", part[start:]))
  pieces = [p for p in pieces if p.kind != "literal" or p.value.strip()]
  if not any(p.kind == "text" for p in pieces):
    raise ValueError(
      f"data.template={template!r} has no placeholder for the text; use one of "
      f"{['{' + n + '}' for n in names]}"
    )
  return pieces


def verbalizer_token_ids(verbalizer, labels: Sequence[str], tokenizer) -> list[int]:
  """The vocab id of each label's word, in label order.

  `verbalizer` is a sequence of words in label order or a mapping label -> word.
  Each word must be one token of the vocab, or the MLM head cannot score it.
  """
  labels = [str(label) for label in labels]
  if isinstance(verbalizer, Mapping) or hasattr(verbalizer, "keys"):
    words = {str(label): word for label, word in verbalizer.items()}
    for label in words:
      if label not in labels:
        raise ValueError(
          f"data.verbalizer names label {label!r}, which is not one of the labels {labels}"
        )
    for label in labels:
      if label not in words:
        raise ValueError(f"data.verbalizer has no word for label {label!r} (labels {labels})")
    words = [words[label] for label in labels]
  else:
    words = [] if verbalizer is None else list(verbalizer)
    if len(words) != len(labels):
      raise ValueError(
        f"data.verbalizer has {len(words)} words {words} for {len(labels)} "
        f"labels {labels}: give one word per label, in label order"
      )
  ids = []
  for label, word in zip(labels, words):
    pieces = tokenizer.tokenize(str(word))
    if len(pieces) != 1 or pieces[0] == tokenizer.unk_token:
      raise ValueError(
        f"data.verbalizer: label {label!r} -> word {word!r} must be a single "
        f"token of the vocab, but it tokenises as {pieces}"
      )
    ids.append(tokenizer.convert_tokens_to_ids(pieces[0]))
  if len(set(ids)) != len(ids):
    raise ValueError(f"data.verbalizer gives two labels the same token: {dict(zip(labels, words))}")
  return ids


def encode_cloze(
  examples: list,
  columns: Sequence[str],
  template: str,
  tokenizer,
  max_seq_length: int,
  labels: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict]:
  """`[CLS] template with the texts filled in [SEP]`, padded, and where its [MASK] is.

  `examples` carry text_a (and text_b for a second column) as
  data/classification.TextExample does; their label None: unlabelled.
  """
  pieces = parse_template(template, columns)
  column_of = {str(name): field for name, field in zip(columns, ("text_a", "text_b"))}
  literal_ids = [token_ids(tokenizer, [p.value])[0] if p.kind == "literal" else [] for p in pieces]
  fixed = 2 + 1 + sum(len(ids) for ids in literal_ids)  # [CLS], [SEP], [MASK], literals
  uses = [p.value for p in pieces if p.kind == "text"]
  if max_seq_length - fixed < len(uses):
    raise ValueError(
      f"data.template={template!r} takes {fixed} tokens with [CLS] and [SEP]; "
      f"max_seq_length={max_seq_length} leaves no room for the text"
    )
  if not examples:
    return {}, {"examples": 0, "truncated": 0}
  text_ids = {
    name: token_ids(tokenizer, [getattr(e, column_of[name]) or "" for e in examples])
    for name in dict.fromkeys(uses)
  }
  rows, truncated = [], 0
  for row, example in enumerate(examples):
    texts = {name: list(ids[row]) for name, ids in text_ids.items()}
    if not all(texts.values()):
      raise ValueError(
        f"{example.origin}: the text has no tokens (only spaces or control characters)"
      )
    cut = _truncate(texts, {name: uses.count(name) for name in texts}, max_seq_length - fixed)
    truncated += cut
    ids = [tokenizer.cls_token_id]
    for piece, literal in zip(pieces, literal_ids):
      if piece.kind == "mask":
        mask_position = len(ids)
        ids.append(tokenizer.mask_token_id)
      else:
        ids += texts[piece.value] if piece.kind == "text" else literal
    ids.append(tokenizer.sep_token_id)
    rows.append((ids, mask_position))
  arrays = {
    "input_ids": np.full((len(rows), max_seq_length), tokenizer.pad_token_id, np.int32),
    "token_type_ids": np.zeros((len(rows), max_seq_length), np.int32),
    "attention_mask": np.zeros((len(rows), max_seq_length), np.int32),
    "mask_position": np.array([position for _, position in rows], np.int32),
  }
  for row, (ids, _) in enumerate(rows):
    arrays["input_ids"][row, : len(ids)] = ids
    arrays["attention_mask"][row, : len(ids)] = 1
  if examples[0].label is None:  # unlabelled text (predict)
    arrays["label"] = np.zeros(len(examples), np.int32)
  else:
    arrays["label"] = label_ids(
      [str(e.label) for e in examples], labels, [e.origin for e in examples]
    )
  arrays["weight"] = np.ones(len(examples), np.float32)
  if truncated:
    logger.warning(
      "%d of %d examples (from %s) do not fit max_seq_length=%d with the template "
      "and were truncated",
      truncated,
      len(examples),
      examples[0].origin.split(":")[0],
      max_seq_length,
    )
  return arrays, {"examples": len(examples), "truncated": truncated}


def _truncate(texts: dict[str, list[int]], uses: dict[str, int], room: int) -> bool:
  """Drops end tokens of the longest text until every use fits in `room`; True if any."""

  def length():
    return sum(len(ids) * uses[name] for name, ids in texts.items())

  cut = length() > room
  while length() > room:
    max(texts.values(), key=len).pop()
  return cut

"""Chinese words for whole-word masking (Cui et al. 2019, Chinese-BERT-wwm).

BERT's tokenizer cuts CJK text one character per token (`tokenize_chinese_chars`),
so WordPiece's "##" pieces never mark a Chinese word, and whole-word masking by
"##" masks single characters. A word segmenter marks them instead: a token
begins a word when its first character begins a segmenter word. Segmentation
runs once per sentence when the corpus is read, never per batch.

The segmenter is jieba (`data.segmenter='jieba'`): the most used Chinese
segmenter on PyPI, MIT licensed, its dictionary inside the package, so it runs
offline; Chinese-BERT-wwm itself used HIT's LTP, which needs a model download.
An English word inside Chinese text is one jieba word, so its "##" pieces
follow their word as without a segmenter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

SEGMENTERS = ("", "jieba")  # '': words are WordPiece's (a "##" piece continues its word)


def segmenter(name: str) -> Callable[[str], list[str]] | None:
  """The word cutter of `data.segmenter`; None for ''."""
  if name not in SEGMENTERS:
    raise ValueError(f"data.segmenter={name!r}: expected one of {SEGMENTERS}")
  if not name:
    return None
  try:
    import jieba
  except ImportError:
    raise ImportError(
      "data.segmenter='jieba' needs jieba: pip install '.[chinese]' (or jieba==0.42.1)"
    ) from None
  jieba.setLogLevel(logging.WARNING)  # its dictionary-loading lines on every start
  return lambda text: list(jieba.cut(text, HMM=True))


def word_starts(text: str, offsets: Sequence[tuple[int, int]], cut) -> list[bool]:
  """Per token (character offsets into `text`): whether it begins a word of `cut(text)`."""
  boundaries, position = set(), 0
  for word in cut(text):
    boundaries.add(position)
    position += len(word)
  return [start in boundaries for start, _ in offsets]


def wordpiece_starts(ids: Sequence[int], is_piece: Sequence[bool]) -> list[bool]:
  """Per token: not a "##" continuation (`is_piece` indexed by token id)."""
  return [not is_piece[i] for i in ids]

"""Learning a WordPiece vocab from text, the same vocab in every process.

A run with data.vocab=train must be a function of its config and its text.
The tokenizers library's trainer is not: it numbers the pieces that continue
a word in hash-map order and breaks ties between equally frequent pairs by
those numbers, so two processes given one corpus learn different vocabs (and
report different MLM accuracies). This trainer orders everything by count,
then by the pieces' own text.

The algorithm is the one BERT vocabs are learned with in practice (tokenizers'
WordPieceTrainer): pair merges over words, as in byte-pair encoding, where a
piece that continues a word carries the ## prefix. Words are cut by BERT's own
normalizer and pre-tokenizer, so each CJK character is a word of its own and
the vocab keeps every frequent character.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable

from tokenizers import normalizers, pre_tokenizers

PREFIX = "##"
TEXTS_PER_CALL = 256  # texts joined into one normalizer / pre-tokenizer call


def count_words(texts: Iterable[str], lowercase: bool = True) -> Counter:
  """How often each word occurs, as BertTokenizerFast cuts words before WordPiece."""
  normalizer = normalizers.BertNormalizer(
    clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
  )
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  counts: Counter = Counter()
  texts = iter(texts)
  while chunk := list(itertools.islice(texts, TEXTS_PER_CALL)):
    normalized = normalizer.normalize_str("\n".join(chunk))
    counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalized))
  return counts


def learn_vocab(
  word_counts: Counter,
  vocab_size: int,
  special_tokens: Iterable[str],
  min_frequency: int = 2,
) -> list[str]:
  """The vocab, in id order: special tokens, single characters, then merged pieces.

  Characters (and their ## forms) are kept most frequent first while there is
  room; a word holding one that is not kept takes no part in merging (WordPiece
  reads it as [UNK]). Merging stops at `vocab_size` pieces or when the most
  frequent pair occurs fewer than `min_frequency` times.
  """
  vocab = list(special_tokens)
  units: Counter = Counter()
  for word, n in word_counts.items():
    units[word[0]] += n
    for character in word[1:]:
      units[PREFIX + character] += n
  room = max(vocab_size - len(vocab), 0)
  vocab += sorted(sorted(units, key=lambda unit: (-units[unit], unit))[:room])
  ids = {piece: i for i, piece in enumerate(vocab)}

  words: list[tuple[list[int], int]] = []
  for word, n in sorted(word_counts.items()):
    pieces = [word[0], *(PREFIX + c for c in word[1:])]
    if len(pieces) > 1 and all(piece in ids for piece in pieces):
      words.append(([ids[piece] for piece in pieces], n))
  pair_counts: Counter = Counter()
  where: defaultdict = defaultdict(set)  # pair -> indices of the words that hold it
  for index, (symbols, n) in enumerate(words):
    for pair in zip(symbols, symbols[1:]):
      pair_counts[pair] += n
      where[pair].add(index)
  # Most frequent first; among equals, the pair of older pieces (lower ids).
  heap = [(-count, pair) for pair, count in pair_counts.items()]
  heapq.heapify(heap)

  while len(vocab) < vocab_size and heap:
    negative_count, pair = heapq.heappop(heap)
    if pair_counts.get(pair, 0) != -negative_count:
      continue  # an entry from before the count changed
    if -negative_count < min_frequency:
      break
    merged = vocab[pair[0]] + vocab[pair[1]][len(PREFIX) :]
    if merged not in ids:  # two merge paths can spell one piece: it keeps its first id
      ids[merged] = len(vocab)
      vocab.append(merged)
    merged_id = ids[merged]
    del pair_counts[pair]
    for index in sorted(where.pop(pair)):
      symbols, n = words[index]
      new_symbols = _merge(symbols, pair, merged_id)
      words[index] = (new_symbols, n)
      before = Counter(zip(symbols, symbols[1:]))
      after = Counter(zip(new_symbols, new_symbols[1:]))
      for other in before.keys() | after.keys():
        if other == pair or before[other] == after[other]:
          continue
        pair_counts[other] += (after[other] - before[other]) * n
        if after[other]:
          where[other].add(index)
        else:
          where[other].discard(index)
        if pair_counts[other] > 0:
          heapq.heappush(heap, (-pair_counts[other], other))
        else:
          del pair_counts[other]
  return vocab


def _merge(symbols: list[int], pair: tuple[int, int], merged_id: int) -> list[int]:
  """Every occurrence of `pair` in `symbols`, left to right, replaced by `merged_id`."""
  out: list[int] = []
  i = 0
  while i < len(symbols):
    if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
      out.append(merged_id)
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return out

"""Dynamic masked-LM masking (BERT 80/10/10), vectorised over the batch.

Masking happens when a batch is drawn, not when the corpus is built, so each
epoch sees new masks (RoBERTa's "dynamic masking") and the corpus stays
small. The MLM head only scores the `max_predictions` gathered positions,
which is what makes the output layer affordable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def mask_tokens(
  input_ids: np.ndarray,
  rng: np.random.Generator | RowGenerators,
  *,
  vocab_size: int,
  mask_id: int,
  special_ids: Sequence[int],
  mask_prob: float = 0.15,
  max_predictions: int = 20,
  word_start: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """Choose MLM targets per row and corrupt them: 80% [MASK], 10% random, 10% kept.

  Candidates are tokens whose id is not in `special_ids` (pass [PAD], [CLS],
  [SEP], ... there; padding is excluded because [PAD] is special). Each row
  predicts min(max_predictions, max(1, round(n_candidates * mask_prob)))
  tokens. With `word_start` ([B, T] bool, False on "##" pieces) whole words
  are chosen, in random order, skipping a word that would overshoot the
  budget, as the reference whole-word masking does; a row whose only words
  are longer than its budget gets no targets. Random replacements are drawn
  from the non-special ids in [0, vocab_size).

  Returns input_ids (corrupted), and [B, max_predictions] masked_positions
  (ascending, padded with 0), masked_ids (originals, padded with 0) and
  masked_weights (1.0 real, 0.0 padding).
  """
  input_ids = np.asarray(input_ids)
  candidates = ~np.isin(input_ids, np.asarray(special_ids))
  n_candidates = candidates.sum(axis=1)
  budget = np.minimum(
    max_predictions, np.maximum(1, np.rint(n_candidates * mask_prob).astype(np.int64))
  )
  budget = np.where(n_candidates > 0, budget, 0)
  if word_start is None:
    selected = _select_tokens(candidates, budget, rng)
  else:
    selected = _select_whole_words(candidates, np.asarray(word_start, bool), budget, rng)
  masked_ids = _corrupt(input_ids, selected, rng, vocab_size, mask_id, special_ids)
  return {"input_ids": masked_ids, **_gather_targets(input_ids, selected, max_predictions)}


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijection of uint64 that scatters nearby inputs."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


class RowGenerators:
  """Random numbers per batch row, drawn like a numpy Generator with batch-first shapes.

  Row r's draws are a hash of (its key, a counter), counter-based as Philox or JAX's PRNG
  are, so they depend on that row's key alone: a host that masks only its rows of a
  global batch gets exactly what masking the whole batch would give them. Vectorised over
  rows and draws: no Python work per row.
  """

  def __init__(self, keys):
    """keys: one tuple of non-negative ints per row, e.g. (seed, step, stream, row)."""
    keys = [tuple(key) for key in keys]
    state = np.zeros(len(keys), np.uint64)
    with np.errstate(over="ignore"):
      for column in zip(*keys):  # fold each part of the key in
        state = _mix64(state + _GOLDEN + np.asarray(column, np.uint64))
    self.keys, self.drawn = state, 0

  def _uniform_bits(self, shape) -> np.ndarray:
    if shape[0] != len(self.keys):
      raise ValueError(f"{shape[0]} rows drawn from {len(self.keys)} row generators")
    n = int(np.prod(shape[1:], dtype=np.int64))
    counters = np.arange(self.drawn + 1, self.drawn + n + 1, dtype=np.uint64)
    self.drawn += n
    with np.errstate(over="ignore"):
      bits = _mix64(self.keys[:, None] + counters[None, :] * _GOLDEN)
    return bits.reshape(shape)

  def random(self, shape) -> np.ndarray:
    """Floats in [0, 1), 53 random bits each."""
    return (self._uniform_bits(tuple(shape)) >> np.uint64(11)) * 2.0**-53

  def integers(self, high: int, size) -> np.ndarray:
    """Integers in [0, high)."""
    return (self.random(size) * high).astype(np.int64)


def _select_tokens(
  candidates: np.ndarray, budget: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
  """The `budget` candidates with the smallest uniform scores, per row."""
  scores = np.where(candidates, rng.random(candidates.shape), np.inf)
  rank = np.argsort(np.argsort(scores, axis=1), axis=1)
  return candidates & (rank < budget[:, None])


def _select_whole_words(
  candidates: np.ndarray,
  word_start: np.ndarray,
  budget: np.ndarray,
  rng: np.random.Generator,
) -> np.ndarray:
  """Greedy over words in random order, vectorised across rows.

  The loop runs over word rank (at most T steps), each step deciding one
  word for every row at once.
  """
  batch, length = candidates.shape
  previous_is_candidate = np.pad(candidates[:, :-1], ((0, 0), (1, 0)))
  starts = candidates & (word_start | ~previous_is_candidate)
  word_of_token = np.where(candidates, np.cumsum(starts, axis=1) - 1, -1)
  n_words = starts.sum(axis=1)

  rows = np.repeat(np.arange(batch), length).reshape(batch, length)
  word_length = np.zeros((batch, length), np.int64)
  np.add.at(word_length, (rows[candidates], word_of_token[candidates]), 1)

  scores = np.where(np.arange(length) < n_words[:, None], rng.random((batch, length)), np.inf)
  word_order = np.argsort(scores, axis=1)
  chosen_word = np.zeros((batch, length), bool)
  used = np.zeros(batch, np.int64)
  row_index = np.arange(batch)
  for rank in range(int(n_words.max(initial=0))):
    word = word_order[:, rank]
    size = word_length[row_index, word]
    take = (rank < n_words) & (used + size <= budget)
    chosen_word[row_index, word] = take
    used += np.where(take, size, 0)
  return candidates & np.take_along_axis(chosen_word, np.maximum(word_of_token, 0), axis=1)


def _corrupt(
  input_ids: np.ndarray,
  selected: np.ndarray,
  rng: np.random.Generator,
  vocab_size: int,
  mask_id: int,
  special_ids: Sequence[int],
) -> np.ndarray:
  """80% [MASK], 10% a random non-special id, 10% unchanged (BERT paper, 3.1)."""
  action = rng.random(input_ids.shape)
  replaceable = np.setdiff1d(np.arange(vocab_size), np.asarray(special_ids))
  random_ids = replaceable[rng.integers(len(replaceable), size=input_ids.shape)]
  corrupted = np.where(selected & (action < 0.8), mask_id, input_ids)
  corrupted = np.where(selected & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
  return corrupted.astype(np.int32)


def _gather_targets(
  input_ids: np.ndarray, selected: np.ndarray, max_predictions: int
) -> dict[str, np.ndarray]:
  """Selected positions in ascending order, padded to max_predictions."""
  n_selected = selected.sum(axis=1)  # <= max_predictions by the budget
  # A stable sort of "not selected" brings selected positions first, in order.
  order = np.argsort(~selected, axis=1, kind="stable")[:, :max_predictions]
  if order.shape[1] < max_predictions:  # sequences shorter than max_predictions
    order = np.pad(order, ((0, 0), (0, max_predictions - order.shape[1])))
  real = np.arange(max_predictions) < n_selected[:, None]
  positions = np.where(real, order, 0)
  return {
    "masked_positions": positions.astype(np.int32),
    "masked_ids": np.where(real, np.take_along_axis(input_ids, positions, axis=1), 0).astype(
      np.int32
    ),
    "masked_weights": real.astype(np.float32),
  }


def word_start_mask(input_ids: np.ndarray, tokenizer_or_vocab: object) -> np.ndarray:
  """True where a token begins a word, i.e. is not a "##" continuation piece.

  Takes a tokenizer (anything with get_vocab()) or the vocab as a list of
  token strings in id order.
  """
  if hasattr(tokenizer_or_vocab, "get_vocab"):
    token_to_id = tokenizer_or_vocab.get_vocab()
    is_start = np.ones(max(token_to_id.values()) + 1, bool)
    for token, index in token_to_id.items():
      is_start[index] = not token.startswith("##")
  else:
    is_start = np.array([not token.startswith("##") for token in tokenizer_or_vocab], bool)
  return is_start[np.asarray(input_ids)]

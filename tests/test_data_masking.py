"""Dynamic 80/10/10 masking, token and whole-word (data/masking.py)."""

import numpy as np

from data.masking import mask_tokens, word_start_mask

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL_IDS = (PAD, UNK, CLS, SEP, MASK)
VOCAB_SIZE = 1000


def synthetic_batch(rows=512, length=128, seed=0):
  """[CLS] A [SEP] B [SEP] [PAD]... rows of random ids with random lengths."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(len(SPECIAL_IDS), VOCAB_SIZE, size=(rows, length))
  used = rng.integers(20, length + 1, size=rows)
  sep_a = rng.integers(5, 15, size=rows)
  ids[:, 0] = CLS
  ids[np.arange(rows), sep_a] = SEP
  ids[np.arange(rows), used - 1] = SEP
  ids[np.arange(length) >= used[:, None]] = PAD
  return ids.astype(np.int32)


def random_word_starts(ids, seed=1):
  """~30% of tokens continue the previous word."""
  return np.random.default_rng(seed).random(ids.shape) > 0.3


def mask(ids, seed=0, **kwargs):
  settings = dict(vocab_size=VOCAB_SIZE, mask_id=MASK, special_ids=SPECIAL_IDS)
  settings.update(kwargs)
  return mask_tokens(ids, np.random.default_rng(seed), **settings)


def selected_mask(out, shape):
  """[B, T] bool of the positions the masking chose, from masked_positions."""
  chosen = np.zeros(shape, bool)
  rows, slots = np.nonzero(out["masked_weights"])
  chosen[rows, out["masked_positions"][rows, slots]] = True
  return chosen


def test_masking_selects_15_percent_of_candidates():
  ids = synthetic_batch()
  out = mask(ids)
  n_candidates = (~np.isin(ids, SPECIAL_IDS)).sum()
  fraction = out["masked_weights"].sum() / n_candidates
  assert 0.14 <= fraction <= 0.16


def test_masking_replaces_80_percent_mask_10_random_10_kept():
  ids = synthetic_batch()
  out = mask(ids)
  chosen = selected_mask(out, ids.shape)
  after = out["input_ids"][chosen]
  before = ids[chosen]
  is_mask = after == MASK
  kept = after == before
  randomised = ~is_mask & ~kept
  assert 0.78 <= is_mask.mean() <= 0.82
  assert 0.08 <= randomised.mean() <= 0.12
  assert 0.08 <= kept.mean() <= 0.12
  assert not np.isin(after[randomised], SPECIAL_IDS).any()
  assert after.max() < VOCAB_SIZE


def test_masking_never_selects_special_tokens_or_padding():
  ids = synthetic_batch()
  out = mask(ids)
  chosen = selected_mask(out, ids.shape)
  assert not (chosen & np.isin(ids, SPECIAL_IDS)).any()
  # Nothing outside the chosen positions changes, specials and pads included.
  np.testing.assert_array_equal(out["input_ids"][~chosen], ids[~chosen])


def test_masked_ids_are_the_original_ids_at_masked_positions():
  ids = synthetic_batch()
  out = mask(ids)
  real = out["masked_weights"] == 1.0
  originals = np.take_along_axis(ids, out["masked_positions"], axis=1)
  np.testing.assert_array_equal(out["masked_ids"][real], originals[real])
  assert (out["masked_ids"][~real] == 0).all() and (out["masked_positions"][~real] == 0).all()
  assert real.sum() == selected_mask(out, ids.shape).sum()  # positions are distinct
  assert out["masked_positions"].shape == (512, 20)
  assert out["masked_positions"].dtype == np.int32
  assert out["masked_weights"].dtype == np.float32


def test_masking_budget_per_row_is_rounded_15_percent_capped_by_max_predictions():
  ids = synthetic_batch(rows=64)
  n_candidates = (~np.isin(ids, SPECIAL_IDS)).sum(axis=1)
  out = mask(ids, max_predictions=8)
  expected = np.minimum(8, np.maximum(1, np.rint(n_candidates * 0.15)))
  np.testing.assert_array_equal(out["masked_weights"].sum(axis=1), expected)


def test_masking_picks_one_token_in_a_very_short_row():
  ids = np.array([[CLS, 10, 11, SEP, PAD, PAD]], np.int32)
  out = mask(ids, max_predictions=3)
  assert out["masked_weights"].sum() == 1
  assert out["masked_positions"][0, 0] in (1, 2)


def test_whole_word_masking_never_selects_part_of_a_word():
  ids = synthetic_batch()
  starts = random_word_starts(ids)
  out = mask(ids, word_start=starts)
  chosen = selected_mask(out, ids.shape)
  candidates = ~np.isin(ids, SPECIAL_IDS)
  # A continuation piece is chosen exactly when the token before it is.
  continuation = candidates & ~starts
  continuation[:, 0] = False
  previous_chosen = np.pad(chosen[:, :-1], ((0, 0), (1, 0)))
  previous_candidate = np.pad(candidates[:, :-1], ((0, 0), (1, 0)))
  inside_word = continuation & previous_candidate
  np.testing.assert_array_equal(chosen[inside_word], previous_chosen[inside_word])
  fraction = chosen.sum() / candidates.sum()
  assert 0.13 <= fraction <= 0.16  # words overshoot the budget less often than tokens
  assert out["masked_weights"].sum(axis=1).max() <= 20


def test_whole_word_masking_skips_words_longer_than_the_budget():
  # 8 candidates -> budget 1: the 3-piece word never fits, the single one always does.
  ids = np.array([[CLS, 10, 11, 12, 13, 14, 15, 16, 17, SEP]] * 50, np.int32)
  starts = np.array([[1, 1, 0, 0, 0, 0, 0, 0, 1, 1]] * 50, bool)
  out = mask(ids, word_start=starts)
  np.testing.assert_array_equal(out["masked_positions"][:, 0], 8)
  assert out["masked_weights"].sum() == 50


def test_word_start_mask_marks_hash_pieces_as_continuations():
  vocab = ["[PAD]", "play", "##ing", "##ed", "run"]
  np.testing.assert_array_equal(
    word_start_mask(np.array([[1, 2, 4, 3]]), vocab), [[True, False, True, False]]
  )

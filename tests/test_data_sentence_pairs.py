"""Sentence pairs for next-sentence prediction (data/sentence_pairs.py)."""

import numpy as np
import pytest

from data.sentence_pairs import (
  DOCUMENT_BREAK,
  EXAMPLE_START,
  Instance,
  document_chunks,
  make_full_sentence_rows,
  make_nsp_pairs,
  make_packed_rows,
  pack_instance,
  truncate_seq_pair,
)

PAD, CLS, SEP = 0, 2, 3


def synthetic_documents(num_documents=200, seed=0):
  """Token id = 1000 * document + position in document: origin and order are readable."""
  rng = np.random.default_rng(seed)
  documents = []
  for d in range(num_documents):
    lengths = rng.integers(5, 16, size=rng.integers(10, 31))
    ids = iter(range(1000 * d, 1000 * (d + 1)))
    documents.append([[next(ids) for _ in range(n)] for n in lengths])
  return documents


@pytest.fixture(scope="module")
def pairs():
  return make_nsp_pairs(synthetic_documents(), 128, 0.1, np.random.default_rng(0))


def test_about_half_of_pairs_are_random_next(pairs):
  fraction = np.mean([p.is_random_next for p in pairs])
  assert 0.4 <= fraction <= 0.6
  assert len(pairs) > 400


def test_random_next_b_never_comes_from_the_same_document(pairs):
  for pair in pairs:
    b_documents = {token // 1000 for token in pair.tokens_b}
    assert len(b_documents) == 1
    assert {token // 1000 for token in pair.tokens_a} == {pair.document_index}
    assert (b_documents == {pair.document_index}) == (not pair.is_random_next)


def test_is_next_b_continues_a_in_order(pairs):
  for pair in pairs:
    if not pair.is_random_next:
      assert max(pair.tokens_a) < min(pair.tokens_b)


def test_pairs_fit_max_seq_length_with_both_segments_non_empty(pairs):
  lengths = [len(p.tokens_a) + len(p.tokens_b) for p in pairs]
  assert max(lengths) <= 128 - 3
  assert min(min(len(p.tokens_a), len(p.tokens_b)) for p in pairs) >= 1
  assert np.mean(lengths) > 80  # chunks fill the target; document ends give short ones


def test_short_seq_prob_shortens_pairs():
  documents = synthetic_documents(50)
  full = make_nsp_pairs(documents, 128, 0.0, np.random.default_rng(0))
  short = make_nsp_pairs(documents, 128, 1.0, np.random.default_rng(0))
  mean = lambda ps: np.mean([len(p.tokens_a) + len(p.tokens_b) for p in ps])  # noqa: E731
  assert mean(short) < 0.75 * mean(full)


def test_unused_sentences_are_put_back_after_a_random_next():
  documents = synthetic_documents(50)
  pairs = make_nsp_pairs(documents, 128, 0.0, np.random.default_rng(0))
  total = sum(len(s) for d in documents for s in d)
  used_a = sum(len(p.tokens_a) for p in pairs) + sum(
    len(p.tokens_b) for p in pairs if not p.is_random_next
  )
  # Almost every token appears once on its own document's side (truncation loses a few).
  assert used_a >= 0.9 * total


def test_truncation_removes_from_the_longer_side():
  a, b = list(range(10)), list(range(100, 103))
  truncate_seq_pair(a, b, 8, np.random.default_rng(0))
  assert b == [100, 101, 102]
  assert len(a) == 5 and a == list(range(a[0], a[0] + 5))  # a contiguous slice
  a, b = list(range(20)), list(range(100, 120))
  truncate_seq_pair(a, b, 10, np.random.default_rng(0))
  assert (len(a), len(b)) == (5, 5)


def test_truncation_takes_from_both_front_and_back():
  a = list(range(30))
  truncate_seq_pair(a, [100], 11, np.random.default_rng(0))
  assert a == list(range(a[0], a[0] + 10))
  assert 0 < a[0] and a[-1] < 29  # 20 coin flips: both ends lost tokens


def test_single_document_corpus_draws_random_next_from_itself():
  documents = synthetic_documents(1)
  pairs = make_nsp_pairs(documents, 64, 0.0, np.random.default_rng(0))
  assert any(p.is_random_next for p in pairs) and not all(p.is_random_next for p in pairs)
  assert all(t // 1000 == 0 for p in pairs for t in p.tokens_a + p.tokens_b)


def test_single_sentence_documents_pair_with_other_documents():
  documents = [[[1000 * d + i for i in range(6)]] for d in range(10)]
  pairs = make_nsp_pairs(documents, 32, 0.0, np.random.default_rng(0))
  assert len(pairs) == 10
  assert all(p.is_random_next for p in pairs)
  assert all(p.tokens_b[0] // 1000 != p.document_index for p in pairs)


def test_sentence_order_pairs_are_a_and_its_continuation_swapped_half_the_time():
  documents = synthetic_documents(100)
  pairs = make_nsp_pairs(documents, 128, 0.1, np.random.default_rng(0), sentence_order=True)
  assert 0.4 <= np.mean([p.is_random_next for p in pairs]) <= 0.6
  for pair in pairs:
    tokens = pair.tokens_a + pair.tokens_b
    assert {token // 1000 for token in tokens} == {pair.document_index}
    swapped = pair.is_random_next
    first, second = (pair.tokens_b, pair.tokens_a) if swapped else (pair.tokens_a, pair.tokens_b)
    assert first and second and max(first) < min(second)
  # B is never drawn from elsewhere, so each token is used once at most.
  used = [t for p in pairs for t in p.tokens_a + p.tokens_b]
  assert len(used) == len(set(used)) >= 0.9 * sum(len(s) for d in documents for s in d)


def test_sentence_order_splits_a_lone_sentence_and_skips_a_lone_token():
  documents = [[[1000 * d + i for i in range(6)]] for d in range(10)] + [[[99_000]]]
  pairs = make_nsp_pairs(documents, 32, 0.0, np.random.default_rng(0), sentence_order=True)
  assert len(pairs) == 10
  for pair in pairs:
    in_order = (
      pair.tokens_b + pair.tokens_a if pair.is_random_next else pair.tokens_a + pair.tokens_b
    )
    assert in_order == [1000 * pair.document_index + i for i in range(6)]


def test_pack_instance_lays_out_cls_a_sep_b_sep_and_pads():
  packed = pack_instance(Instance([10, 11], [20, 21, 22], True, 0), 10, CLS, SEP, PAD)
  np.testing.assert_array_equal(packed["input_ids"], [CLS, 10, 11, SEP, 20, 21, 22, SEP, PAD, PAD])
  np.testing.assert_array_equal(packed["token_type_ids"], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(packed["attention_mask"], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
  assert packed["next_sentence_label"] == 1
  assert packed["input_ids"].dtype == np.int32


def test_full_sentence_rows_keep_every_sentence_whole_and_in_order():
  documents = synthetic_documents(60)
  rows = make_full_sentence_rows(documents, 64, 0.0, np.random.default_rng(0))
  assert all(not row.tokens_b and not row.is_random_next for row in rows)
  assert all(len(row.tokens_a) <= 62 for row in rows)
  # every token once (one pass); breaks only between documents, never first or last
  tokens = [t for row in rows for t in row.tokens_a if t != DOCUMENT_BREAK]
  assert sorted(tokens) == sorted(t for d in documents for s in d for t in s)
  for row in rows:
    assert row.tokens_a[0] != DOCUMENT_BREAK and row.tokens_a[-1] != DOCUMENT_BREAK
    runs = [[]]
    for t in row.tokens_a:
      runs.append([]) if t == DOCUMENT_BREAK else runs[-1].append(t)
    for run in runs:  # within a document, consecutive tokens; one document per run
      assert len({t // 1000 for t in run}) == 1
      assert np.all(np.diff(run) == 1)
  # rows are filled: the mean row is most of its length (sentences are 5..15 tokens)
  assert np.mean([len(row.tokens_a) for row in rows]) > 50


def test_full_sentence_rows_cut_a_long_sentence_and_redraw_each_pass():
  long_document = [[list(range(100))]]
  rows = make_full_sentence_rows(long_document, 34, 0.0, np.random.default_rng(0))
  assert sorted(len(r.tokens_a) for r in rows) == [4, 32, 32, 32]
  documents = synthetic_documents(20)
  one = make_full_sentence_rows(documents, 64, 0.0, np.random.default_rng(0), dupe_factor=2)
  single = make_full_sentence_rows(documents, 64, 0.0, np.random.default_rng(0))
  assert len(one) > len(single) * 1.9
  assert len({tuple(r.tokens_a) for r in one}) > len(single) * 1.5  # passes differ


def test_pack_instance_without_b_is_one_segment():
  packed = pack_instance(Instance([7, 8, 9], [], False, 0), 8, CLS, SEP, PAD)
  np.testing.assert_array_equal(packed["input_ids"], [CLS, 7, 8, 9, SEP, PAD, PAD, PAD])
  np.testing.assert_array_equal(packed["token_type_ids"], np.zeros(8))
  np.testing.assert_array_equal(packed["attention_mask"], [1, 1, 1, 1, 1, 0, 0, 0])


def examples_of(row: Instance) -> list[list[int]]:
  """A packed row's examples: its tokens split at DOCUMENT_BREAK, EXAMPLE_START."""
  examples, tokens = [[]], row.tokens_a
  for i, t in enumerate(tokens):
    if t == DOCUMENT_BREAK:
      assert tokens[i + 1] == EXAMPLE_START
      examples.append([])
    elif t != EXAMPLE_START:
      examples[-1].append(t)
  return examples


def test_document_chunks_keep_sentences_whole_and_cut_only_a_long_one():
  document = [[1, 2, 3], [4, 5], [6, 7, 8, 9], list(range(10, 22)), [22]]
  chunks = document_chunks(document, 5, lambda: 5)
  assert chunks == [[1, 2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12, 13, 14],
                    [15, 16, 17, 18, 19], [20, 21, 22]]  # fmt: skip


def test_packed_rows_hold_whole_examples_of_one_document_each():
  documents = synthetic_documents(60)
  rows = make_packed_rows(documents, 64, 0.0, np.random.default_rng(0))
  assert all(not row.tokens_b and not row.is_random_next for row in rows)
  examples = [example for row in rows for example in examples_of(row)]
  # every token once (one pass); each example is one document's consecutive tokens
  assert sorted(t for e in examples for t in e) == sorted(
    t for d in documents for s in d for t in s
  )
  for example in examples:
    assert len({t // 1000 for t in example}) == 1 and np.all(np.diff(example) == 1)
    assert len(example) <= 62
  # each row fits [CLS] e1 [SEP] [CLS] e2 [SEP] ... in 64 positions
  assert all(sum(len(e) + 2 for e in examples_of(row)) <= 64 for row in rows)
  assert max(len(examples_of(row)) for row in rows) > 1  # the documents' last chunks share rows
  assert rows[0].document_index == examples_of(rows[0])[0][0] // 1000
  positions = sum(64 for _ in rows)
  assert sum(len(e) + 2 for e in examples) / positions > 0.9  # first-fit fills rows


def test_packed_rows_are_a_function_of_the_seed():
  documents = synthetic_documents(30)
  first = make_packed_rows(documents, 64, 0.1, np.random.default_rng(3), dupe_factor=2)
  again = make_packed_rows(documents, 64, 0.1, np.random.default_rng(3), dupe_factor=2)
  assert [r.tokens_a for r in first] == [r.tokens_a for r in again]

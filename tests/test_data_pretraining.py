"""From documents to resumable, host-sharded pretraining batches (data/pretraining.py)."""

import dataclasses

import numpy as np
import pytest

from data.pretraining import (
  MaskingConfig,
  PretrainingData,
  build_pretraining_data,
  example_segments,
  split_heldout,
  word_start_mask,
)
from data.tokenizer import load_tokenizer

WORDS = "the cat dog sat on a mat ran far away and then slept in sun it was warm".split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS + ["##s", "##ed", "##ly"]
MASKING = MaskingConfig(vocab_size=len(VOCAB), mask_id=4, special_ids=(0, 1, 2, 3, 4))


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return load_tokenizer(str(path))


def tiny_documents(num_documents=12):
  sentences = [
    "The cat sat on a mat.",
    "The dog ran far away.",
    "And then it slept in the sun.",
    "It was warm.",
    "The cats and dogs sat.",
  ]
  return [[sentences[(d + i) % 5] for i in range(3 + d % 4)] for d in range(num_documents)]


def test_word_start_mask_reads_a_tokenizer(tiny_tokenizer):
  ids = tiny_tokenizer("the cats sat", add_special_tokens=False)["input_ids"]
  assert tiny_tokenizer.convert_ids_to_tokens(ids) == ["the", "cat", "##s", "sat"]
  np.testing.assert_array_equal(word_start_mask(np.array(ids), tiny_tokenizer), [1, 1, 0, 1])


def test_build_rejects_an_empty_corpus(tiny_tokenizer):
  for documents in ([], [[], []]):
    with pytest.raises(ValueError, match="empty corpus"):
      build_pretraining_data(documents, tiny_tokenizer, 32)


def test_build_packs_tokenized_pairs(tiny_tokenizer):
  arrays, stats = build_pretraining_data(tiny_documents(), tiny_tokenizer, 32, seed=0)
  n = stats.num_instances
  assert arrays["input_ids"].shape == (n, 32) and arrays["next_sentence_label"].shape == (n,)
  assert (arrays["input_ids"][:, 0] == tiny_tokenizer.cls_token_id).all()
  assert ((arrays["input_ids"] == tiny_tokenizer.sep_token_id).sum(axis=1) == 2).all()
  lengths = arrays["attention_mask"].sum(axis=1)
  last = np.take_along_axis(arrays["input_ids"], lengths[:, None] - 1, axis=1)
  assert (last == tiny_tokenizer.sep_token_id).all()
  assert stats.num_documents == 12
  assert stats.random_next_fraction == pytest.approx(arrays["next_sentence_label"].mean())
  assert not (arrays["input_ids"] == tiny_tokenizer.unk_token_id).any()


def test_build_accepts_a_single_document(tiny_tokenizer):
  arrays, stats = build_pretraining_data(tiny_documents(1), tiny_tokenizer, 16, dupe_factor=3)
  assert stats.num_documents == 1 and stats.num_instances >= 3


def test_build_is_deterministic_given_the_seed(tiny_tokenizer):
  first, _ = build_pretraining_data(tiny_documents(), tiny_tokenizer, 32, seed=3)
  second, _ = build_pretraining_data(tiny_documents(), tiny_tokenizer, 32, seed=3)
  other, _ = build_pretraining_data(tiny_documents(), tiny_tokenizer, 32, seed=4)
  np.testing.assert_array_equal(first["input_ids"], second["input_ids"])
  assert not np.array_equal(first["input_ids"], other["input_ids"])


def test_split_heldout_keeps_whole_documents_apart():
  documents = [[f"doc {i}"] for i in range(20)]
  train, held = split_heldout(documents, 0.2, seed=0)
  assert len(held) == 4 and len(train) == 16
  assert sorted(train + held) == sorted(documents)
  assert split_heldout(documents, 0.2, seed=0) == (train, held)
  assert split_heldout(documents, 0.2, seed=1) != (train, held)
  assert len(split_heldout(documents, 3, seed=0)[1]) == 3
  with pytest.raises(ValueError, match="20 documents"):
    split_heldout(documents, 20, seed=0)


# ---------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def packed(tiny_tokenizer):
  documents = tiny_documents(60)
  arrays, _ = build_pretraining_data(documents, tiny_tokenizer, 64, dupe_factor=4, whole_word=True)
  return arrays


def dataset(arrays, batch_size=16, seed=0, whole_word=False):
  masking = dataclasses.replace(MASKING, whole_word=whole_word)
  return PretrainingData(arrays, batch_size, seed, masking)


def assert_batches_equal(first, second):
  assert first.keys() == second.keys()
  for key in first:
    assert first[key].dtype == second[key].dtype
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_batch_has_the_keys_shapes_and_dtypes_the_step_expects(packed):
  batch = dataset(packed).batch(0)
  shapes = {key: (value.shape, value.dtype.name) for key, value in batch.items()}
  assert shapes == {
    "input_ids": ((16, 64), "int32"),
    "token_type_ids": ((16, 64), "int32"),
    "attention_mask": ((16, 64), "int32"),
    "masked_positions": ((16, 20), "int32"),
    "masked_ids": ((16, 20), "int32"),
    "masked_weights": ((16, 20), "float32"),
    "next_sentence_label": ((16,), "int32"),
  }


def test_resume_is_bitwise_exact(packed):
  served = dataset(packed)
  for step in range(12):
    served.batch(step)
  resumed = dataset(packed)  # a fresh object, as after a restart
  later = served.steps_per_epoch + 3  # in the second epoch
  assert_batches_equal(served.batch(7), resumed.batch(7))
  assert_batches_equal(served.batch(later), resumed.batch(later))
  assert_batches_equal(served.batch(7), served.batch(7))


def test_different_steps_and_seeds_give_different_batches(packed):
  data = dataset(packed)
  assert not np.array_equal(data.batch(0)["input_ids"], data.batch(1)["input_ids"])
  other_seed = dataset(packed, seed=1)
  assert not np.array_equal(data.batch(0)["input_ids"], other_seed.batch(0)["input_ids"])


def test_masks_are_redrawn_every_step(packed):
  # Identical examples: any difference between two steps comes from the masking.
  arrays = {key: np.repeat(value[:1], 32, axis=0) for key, value in packed.items()}
  data = dataset(arrays, batch_size=16)
  first, second, third = (data.batch(step) for step in (0, 1, data.steps_per_epoch))
  np.testing.assert_array_equal(first["token_type_ids"], second["token_type_ids"])
  assert not np.array_equal(first["masked_positions"], second["masked_positions"])
  assert not np.array_equal(first["masked_positions"], third["masked_positions"])


def test_an_epoch_visits_each_example_at_most_once(packed):
  data = dataset(packed)
  seen = np.concatenate([data.example_indices(s) for s in range(data.steps_per_epoch)])
  assert len(np.unique(seen)) == len(seen) == data.steps_per_epoch * 16
  next_epoch = np.concatenate(
    [data.example_indices(s) for s in range(data.steps_per_epoch, 2 * data.steps_per_epoch)]
  )
  assert not np.array_equal(seen, next_epoch)


def test_process_shards_concatenate_to_the_global_batch_and_read_only_their_rows(packed):
  data = dataset(packed, whole_word=True)
  whole = data.batch(5)
  read = []  # the row indices each call asks the storage for
  rows = data.rows.rows
  data.rows.rows = lambda indices: read.append(np.asarray(indices)) or rows(indices)
  shards = [data.batch(5, process_index=i, process_count=4) for i in range(4)]
  assert shards[0]["input_ids"].shape == (4, 64)
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]), whole[key])
  global_rows = data.example_indices(5)
  for i, indices in enumerate(read):
    np.testing.assert_array_equal(indices, global_rows[4 * i : 4 * (i + 1)])


def test_batch_refuses_a_batch_that_does_not_split_over_processes(packed):
  with pytest.raises(ValueError, match="global batch of 16 does not split over 3 processes"):
    dataset(packed).batch(0, process_index=0, process_count=3)


def test_dataset_refuses_too_few_examples_and_missing_word_starts(packed):
  with pytest.raises(ValueError, match="cannot fill one batch"):
    dataset({k: v[:3] for k, v in packed.items()}, batch_size=4)
  without = {k: v for k, v in packed.items() if k != "word_start"}
  with pytest.raises(ValueError, match="word_start"):
    dataset(without, whole_word=True)


def test_masking_config_from_tokenizer_reads_its_special_ids(tiny_tokenizer):
  assert MaskingConfig.from_tokenizer(tiny_tokenizer) == MASKING


def test_whole_word_batches_mask_every_piece_of_a_chosen_word(packed):
  batch = dataset(packed, whole_word=True).batch(0)
  rows, slots = np.nonzero(batch["masked_weights"])
  chosen = np.zeros(batch["input_ids"].shape, bool)
  chosen[rows, batch["masked_positions"][rows, slots]] = True
  pieces = ~packed["word_start"][dataset(packed).example_indices(0)]
  assert pieces.any()
  np.testing.assert_array_equal(chosen[:, 1:][pieces[:, 1:]], chosen[:, :-1][pieces[:, 1:]])
  assert chosen.any()
  real = batch["masked_weights"] > 0
  real = batch["masked_weights"] > 0
  assert real.any()
  assert not np.isin(batch["masked_ids"][real], MASKING.special_ids).any()


def test_build_without_next_sentence_gives_filled_single_segment_rows(tiny_tokenizer):
  arrays, stats = build_pretraining_data(
    tiny_documents(), tiny_tokenizer, 32, short_seq_prob=0.0, next_sentence=False, whole_word=True
  )
  ids, sep = arrays["input_ids"], tiny_tokenizer.sep_token_id
  assert (ids[:, 0] == tiny_tokenizer.cls_token_id).all()
  assert not arrays["token_type_ids"].any() and not arrays["next_sentence_label"].any()
  lengths = arrays["attention_mask"].sum(axis=1)
  last = np.take_along_axis(ids, lengths[:, None] - 1, axis=1)[:, 0]
  assert (last == sep).all()
  # documents run on after a [SEP]: some rows hold more than one
  assert ((ids == sep).sum(axis=1) > 1).any()
  # every corpus token is in exactly one row (one pass), [CLS]/[SEP] aside
  real = ids[(arrays["attention_mask"] == 1) & (ids != sep) & (ids != tiny_tokenizer.cls_token_id)]
  assert len(real) == stats.num_tokens
  assert arrays["word_start"][ids == sep].all()
  assert stats.num_instances == len(ids) < 20  # 12 documents of 3..6 sentences


def test_example_segments_number_each_cls_and_restart_positions():
  ids = np.array([[2, 7, 8, 3, 2, 9, 3, 0], [2, 7, 3, 0, 0, 0, 0, 0]])
  mask = (ids > 0).astype(np.int32)
  segments = example_segments({"input_ids": ids, "attention_mask": mask}, start_id=2)
  np.testing.assert_array_equal(
    segments["segment_ids"], [[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0]]
  )
  np.testing.assert_array_equal(
    segments["position_ids"], [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 0, 0, 0, 0, 0]]
  )


def test_packed_rows_give_batches_with_segments_of_whole_documents(tiny_tokenizer):
  cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
  documents = tiny_documents(40)
  arrays, stats = build_pretraining_data(
    documents, tiny_tokenizer, 48, next_sentence=False, packing=True, whole_word=True
  )
  # every corpus token once, and each example [CLS] ... [SEP] is one document's text
  ids, real = arrays["input_ids"], arrays["attention_mask"] == 1
  assert ((ids != cls) & (ids != sep) & real).sum() == stats.num_tokens
  assert (ids[:, 0] == cls).all() and ((ids == cls).sum(1) > 1).any()
  assert arrays["word_start"][(ids == cls) | (ids == sep)].all()
  data = PretrainingData(arrays, 8, 0, MASKING, example_start_id=cls)
  batch = data.batch(0)
  rows = arrays["input_ids"][data.example_indices(0)]
  for row, segments, positions in zip(rows, batch["segment_ids"], batch["position_ids"]):
    for segment in range(1, segments.max() + 1):
      example = row[segments == segment]
      assert example[0] == cls and example[-1] == sep and (example[1:-1] != sep).all()
      np.testing.assert_array_equal(positions[segments == segment], np.arange(len(example)))
  # masking never picks an example's [CLS] or [SEP]
  picked = np.take_along_axis(rows, batch["masked_positions"], 1)[batch["masked_weights"] > 0]
  assert not np.isin(picked, [cls, sep]).any()
  with pytest.raises(ValueError, match="next_sentence=False"):
    build_pretraining_data(documents, tiny_tokenizer, 48, packing=True)


def test_a_literal_cls_in_packed_text_does_not_start_a_segment(tiny_tokenizer):
  documents = [["The cat sat [CLS] on a mat.", "It was warm."], ["The dog ran far away."]]
  arrays, _ = build_pretraining_data(
    documents, tiny_tokenizer, 32, short_seq_prob=0.0, next_sentence=False, packing=True
  )
  cls = tiny_tokenizer.cls_token_id
  assert ((arrays["input_ids"] == cls).sum(1) == 2).all()  # two documents, two examples
  assert (arrays["input_ids"] == tiny_tokenizer.unk_token_id).sum() == 1

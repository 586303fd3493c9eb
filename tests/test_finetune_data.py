"""Fine-tuning encoders: labels on the right tokens, spans back to the text, bad input named."""

import logging

import numpy as np
import pytest
from helpers import finetune as ff

from data import classification, finetune, ner, squad
from data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return load_tokenizer(ff.write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt"))


# --------------------------------------------------------------------------
# Batches


def test_training_batches_are_a_pure_function_of_seed_and_step():
  arrays = {"x": np.arange(20), "weight": np.ones(20, np.float32)}
  data = finetune.FinetuneData(arrays, batch_size=8, seed=3)
  assert data.steps_per_epoch == 2
  again = finetune.FinetuneData(arrays, batch_size=8, seed=3)
  for step in (0, 1, 2, 5):
    np.testing.assert_array_equal(data.batch(step)["x"], again.batch(step)["x"])
  epoch = np.concatenate([data.batch(0)["x"], data.batch(1)["x"]])
  assert len(set(epoch.tolist())) == 16  # no row twice within an epoch
  assert not np.array_equal(data.batch(0)["x"], data.batch(2)["x"])  # reshuffled per epoch
  np.testing.assert_array_equal(data.batch(0, 1, 2)["x"], data.batch(0)["x"][4:])


def test_eval_batches_cover_every_row_once_and_pad_with_weight_zero():
  arrays = {"x": np.arange(10), "weight": np.ones(10, np.float32)}
  batches = finetune.eval_batches(arrays, 4)
  assert [len(b["x"]) for b in batches] == [4, 4, 4]
  np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches])[:10], np.arange(10))
  np.testing.assert_array_equal(batches[-1]["weight"], [1, 1, 0, 0])
  assert arrays["weight"].sum() == 10  # the caller's arrays are not changed


# --------------------------------------------------------------------------
# Classification


def test_pairs_are_packed_with_segment_ids(tmp_path, tokenizer):
  path = ff.write_tsv(
    tmp_path / "pairs.tsv",
    [("1", "the cat sat", "a dog ran", "yes")],
    header=("id", "first", "second", "answer"),
  )
  examples = classification.read_tsv(path, "first,second", "answer")
  assert examples[0].origin == f"{path}:2"
  arrays, _ = classification.encode_examples(examples, tokenizer, 16, ["no", "yes"])
  tokens = tokenizer.convert_ids_to_tokens(arrays["input_ids"][0][:9].tolist())
  assert tokens == ["[CLS]", "the", "cat", "sat", "[SEP]", "a", "dog", "ran", "[SEP]"]
  assert arrays["token_type_ids"][0][:10].tolist() == [0] * 5 + [1] * 4 + [0]
  assert arrays["label"].tolist() == [1]


def test_columns_by_number_without_a_header(tmp_path, tokenizer):
  path = tmp_path / "cola.tsv"
  path.write_text("src\t1\t*\tthe cat sat\nsrc\t0\t*\tsat the cat\n", encoding="utf-8")
  examples = classification.read_tsv(str(path), "3", "1", has_header=False)
  assert [(e.text_a, e.label) for e in examples] == [("the cat sat", "1"), ("sat the cat", "0")]


def test_malformed_tsv_row_names_file_and_line(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_text("sentence\tlabel\nthe cat\t1\nthe dog sat\n", encoding="utf-8")
  with pytest.raises(ValueError, match=rf"{path}:3: 1 tab-separated fields, expected 2"):
    classification.read_tsv(str(path), "sentence", "label")


def test_malformed_rows_can_be_skipped_and_are_counted_in_the_log(tmp_path, caplog):
  path = tmp_path / "qqp.tsv"
  path.write_text("sentence\tlabel\nthe cat\t1\nbroken\nthe dog\t0\n", encoding="utf-8")
  with caplog.at_level(logging.WARNING):
    examples = classification.read_tsv(str(path), "sentence", "label", bad_rows="skip")
  assert [e.text_a for e in examples] == ["the cat", "the dog"]
  assert f"{path}: skipped 1 malformed rows (lines [3])" in caplog.text


def test_unknown_label_names_file_and_line(tmp_path, tokenizer):
  path = ff.write_tsv(tmp_path / "dev.tsv", [("the cat", "1"), ("the dog", "maybe")])
  examples = classification.read_tsv(path, "sentence", "label")
  with pytest.raises(
    ValueError, match=rf"{path}:3: unknown label 'maybe'; the labels are \['0', '1'\]"
  ):
    classification.encode_examples(examples, tokenizer, 16, ["0", "1"])


def test_label_names_rename_the_files_labels_in_order_and_must_match_in_number(tmp_path):
  path = ff.write_tsv(tmp_path / "t.tsv", [("good", "1"), ("bad", "0"), ("odd", "2")])
  examples = {"train": classification.read_tsv(path, "sentence", "label", True)}
  named = classification.name_labels(examples, ("0", "1"), ("negative", "positive"))
  assert [e.label for e in named["train"]] == ["positive", "negative", "2"]  # 2: left unknown
  assert [e.text_a for e in named["train"]] == ["good", "bad", "odd"]
  with pytest.raises(ValueError, match=r"label_names has 1 names for 2 labels \['0', '1'\]"):
    classification.name_labels(examples, ("0", "1"), ("negative",))


def test_empty_text_names_file_and_line(tmp_path):
  path = ff.write_tsv(tmp_path / "train.tsv", [("the cat", "1"), ("  ", "0")])
  with pytest.raises(ValueError, match=rf"{path}:3: empty text in column 0"):
    classification.read_tsv(path, "sentence", "label")


def test_text_longer_than_max_seq_length_is_truncated_and_counted(tmp_path, tokenizer, caplog):
  path = ff.write_tsv(tmp_path / "train.tsv", [("the cat " * 20, "1"), ("the dog", "0")])
  examples = classification.read_tsv(path, "sentence", "label")
  with caplog.at_level(logging.WARNING):
    arrays, stats = classification.encode_examples(examples, tokenizer, 8, ["0", "1"])
  assert stats == {"examples": 2, "truncated": 1}
  assert "1 of 2 examples" in caplog.text and "max_seq_length=8" in caplog.text
  tokens = tokenizer.convert_ids_to_tokens(arrays["input_ids"][0].tolist())
  assert tokens == ["[CLS]", "the", "cat", "the", "cat", "the", "cat", "[SEP]"]  # the start is kept


def test_non_utf8_bytes_name_file_and_line(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_bytes(b"sentence\tlabel\nthe cat\t1\nthe \xff dog\t0\n")
  with pytest.raises(ValueError, match=rf"{path}:3: not valid UTF-8"):
    classification.read_tsv(str(path), "sentence", "label")
  conll = tmp_path / "train.conll"
  conll.write_bytes(b"Alice NN I-NP B-PER\n\nBob\xc3 NN I-NP B-PER\n")
  with pytest.raises(ValueError, match=rf"{conll}:3: not valid UTF-8"):
    ner.read_conll(str(conll))
  qa = tmp_path / "dev.json"
  qa.write_bytes(b'{"data": [\n{"title": "x",\n "paragraphs": "\xe9"}]}')
  with pytest.raises(ValueError, match=rf"{qa}:3: not valid UTF-8"):
    squad.read_squad(str(qa))


def test_regression_labels_must_be_numbers(tmp_path, tokenizer):
  path = ff.write_tsv(
    tmp_path / "stsb.tsv",
    [("a cat", "a dog", "3.8"), ("a cat", "a red", "high")],
    header=("sentence1", "sentence2", "score"),
  )
  examples = classification.read_tsv(path, "sentence1,sentence2", "score")
  with pytest.raises(ValueError, match=rf"{path}:3: label 'high' is not a number"):
    classification.encode_examples(examples, tokenizer, 16, None)
  arrays, _ = classification.encode_examples(examples[:1], tokenizer, 16, None)
  assert arrays["label"].dtype == np.float32 and arrays["label"][0] == pytest.approx(3.8)


def test_relation_entities_become_markers(tokenizer):
  text = "The <e1>cat</e1> sat under the <e2>tree</e2>."
  assert (
    classification.mark_entities(text, ["$", "$", "#", "#"])
    == "The $ cat $ sat under the # tree # ."
  )
  with pytest.raises(ValueError, match=r"train.tsv:7: each of .* must occur once"):
    classification.mark_entities("The <e1>cat</e1> sat.", ["$", "$", "#", "#"], "train.tsv:7")


# --------------------------------------------------------------------------
# NER


def test_conll_iob1_is_read_as_bio_and_docstart_is_dropped(tmp_path):
  path = tmp_path / "train.conll"
  path.write_text(
    "-DOCSTART- -X- -X- O\n\nAlice NN I-NP I-PER\nBob NN I-NP B-PER\n"
    "sat VB I-VP O\n\nNew NN I-NP I-LOC\nYork NN I-NP I-LOC\n",
    encoding="utf-8",
  )
  sentences = ner.read_conll(str(path))
  assert [s.tags for s in sentences] == [("B-PER", "B-PER", "O"), ("B-LOC", "I-LOC")]
  assert sentences[1].origin == f"{path}:7"
  assert ner.resolve_labels((), sentences) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_conll_line_with_wrong_column_count_names_file_and_line(tmp_path):
  path = tmp_path / "train.conll"
  path.write_text("Alice NN I-NP B-PER\nsat VB O\n", encoding="utf-8")
  with pytest.raises(ValueError, match=rf"{path}:2: 3 columns, expected 4 as on line 1"):
    ner.read_conll(str(path))


def test_conll_unknown_tag_names_file_and_line(tmp_path):
  path = tmp_path / "train.conll"
  path.write_text("Alice NN I-NP S-PER\n", encoding="utf-8")
  with pytest.raises(ValueError, match=rf"{path}:1: tag 'S-PER' is not O, B-TYPE or I-TYPE"):
    ner.read_conll(str(path))
  path.write_text("Alice NN I-NP B-PER\n", encoding="utf-8")
  sentences = ner.read_conll(str(path))
  with pytest.raises(ValueError, match=rf"{path}:1 \(word 1\): unknown label 'B-PER'"):
    ner.encode_sentences(
      sentences, load_tokenizer(ff.write_vocab(tmp_path / "v.txt")), 16, ["O", "B-LOC", "I-LOC"]
    )


def test_tags_sit_on_first_sub_tokens_only(tokenizer):
  sentence = ner.TaggedSentence(
    ("Alice", "cats", "sat", "Paris"), ("B-PER", "O", "O", "B-LOC"), "x"
  )
  labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
  arrays, positions, _ = ner.encode_sentences([sentence], tokenizer, 10, labels)
  tokens = tokenizer.convert_ids_to_tokens(arrays["input_ids"][0].tolist())
  assert tokens == [
    "[CLS]",
    "alice",
    "cat",
    "##s",
    "sat",
    "paris",
    "[SEP]",
    "[PAD]",
    "[PAD]",
    "[PAD]",
  ]
  assert positions[0].tolist() == [1, 2, 4, 5]
  assert arrays["label_weights"][0].tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 0, 0]
  assert arrays["labels"][0][positions[0]].tolist() == [3, 0, 0, 1]


def test_long_sentences_are_truncated_counted_and_their_cut_words_read_as_o(tokenizer, caplog):
  words = ("Alice",) + ("sat",) * 10 + ("Paris",)
  sentence = ner.TaggedSentence(words, ("B-PER",) + ("O",) * 10 + ("B-LOC",), "x.conll:1")
  with caplog.at_level(logging.WARNING):
    arrays, positions, stats = ner.encode_sentences(
      [sentence], tokenizer, 8, ["O", "B-PER", "B-LOC"]
    )
  assert stats["truncated"] == 1 and "1 of 1 sentences" in caplog.text
  assert (positions[0] >= 0).sum() == 6  # [CLS] + 6 words + [SEP]
  predicted = np.full(8, 1)  # the model says B-PER everywhere
  tags = ner.word_tags(predicted, positions[0], ["O", "B-PER", "B-LOC"])
  assert tags[:6] == ["B-PER"] * 6 and tags[6:] == ["O"] * 6


def test_a_last_word_with_no_sub_token_is_not_called_truncated(tokenizer, caplog):
  """U+FE0F (an emoji's variation selector) alone tokenizes to nothing: the sentence fits."""
  sentence = ner.TaggedSentence(("Alice", "sat", "\ufe0f"), ("B-PER", "O", "O"), "x.conll:1")
  with caplog.at_level(logging.WARNING):
    _, positions, stats = ner.encode_sentences([sentence], tokenizer, 8, ["O", "B-PER"])
  assert positions[0].tolist() == [1, 2, -1]
  assert stats["truncated"] == 0 and "truncated" not in caplog.text


def test_predicted_entities_map_back_to_the_exact_characters(tokenizer):
  text = "Alice  went to New   York, then  Zürich."
  words = ner.split_words(text, tokenizer)
  assert [w for w, _, _ in words] == [
    "Alice",
    "went",
    "to",
    "New",
    "York",
    ",",
    "then",
    "Zürich",
    ".",
  ]
  for word, start, end in words:
    assert text[start:end] == word
  tags = ["B-PER", "O", "O", "B-LOC", "I-LOC", "O", "O", "B-LOC", "O"]
  entities = ner.entities_in_text(text, words, tags)
  assert entities == [
    {"type": "PER", "start": 0, "end": 5, "text": "Alice"},
    {"type": "LOC", "start": 15, "end": 25, "text": "New   York"},
    {"type": "LOC", "start": 33, "end": 39, "text": "Zürich"},
  ]


# --------------------------------------------------------------------------
# SQuAD


CONTEXT = "The cat sat on a big red house. Alice went to Zürich and then sat under a tree."


def squad_file(tmp_path, answer_start=None, answer="Zürich"):
  start = CONTEXT.index(answer) if answer_start is None else answer_start
  data = {
    "data": [
      {
        "title": "t",
        "paragraphs": [
          {
            "context": CONTEXT,
            "qas": [
              {
                "id": "q0",
                "question": "Where did Alice go?",
                "answers": [{"text": answer, "answer_start": start}],
              }
            ],
          }
        ],
      }
    ]
  }
  return ff.write_squad(tmp_path / "dev.json", data)


def test_squad_answer_offset_that_does_not_match_names_file_line_and_question(tmp_path):
  path = squad_file(tmp_path, answer_start=4)
  line = next(i for i, text in enumerate(open(path), 1) if '"q0"' in text)
  with pytest.raises(
    ValueError,
    match=(
      rf"{path}:{line}: question 'q0' \(data\[0\].paragraphs\[0\]"
      r".qas\[0\]\): answers\[0\] answer_start 4 gives 'cat sa'"
    ),
  ):
    squad.read_squad(path)


def test_squad_bad_json_names_the_line(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text('{"data": [\n  {"title": "x",,}\n]}', encoding="utf-8")
  with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
    squad.read_squad(str(path))


def test_windows_follow_doc_stride_and_answers_map_back_to_the_exact_text(tmp_path, tokenizer):
  examples = squad.read_squad(squad_file(tmp_path))
  arrays, windows, stats = squad.encode_windows(
    examples, tokenizer, max_seq_length=16, doc_stride=4, max_query_length=8
  )
  assert stats["windows"] == len(windows.example) > 3
  first_context = [int(np.argmax(windows.offsets[w][:, 0] >= 0)) for w in range(stats["windows"])]
  assert first_context[0] == first_context[1]  # same question length in each window
  starts = [tuple(windows.offsets[w][first_context[w]]) for w in range(stats["windows"])]
  assert len(set(starts)) == len(starts)
  with_answer = [w for w in range(stats["windows"]) if arrays["start_positions"][w] > 0]
  assert with_answer and len(with_answer) < stats["windows"]  # others point at [CLS]
  for w in with_answer:
    s, e = arrays["start_positions"][w], arrays["end_positions"][w]
    assert CONTEXT[windows.offsets[w][s][0] : windows.offsets[w][e][1]] == "Zürich"
  # Every context token may start an answer in exactly one window, and only on context.
  q0 = windows.example == 0
  starts_allowed = [tuple(o) for o in windows.offsets[q0][windows.max_context[q0]]]
  assert sorted(starts_allowed) == sorted(
    set(map(tuple, windows.offsets[q0].reshape(-1, 2))) - {(-1, -1)}
  )
  # Logits peaked on the answer in the window that owns its start: best_answer
  # returns the exact span.
  owners = [w for w in with_answer if windows.max_context[w, arrays["start_positions"][w]]]
  assert len(owners) == 1
  w = owners[0]
  start_logits = np.zeros((stats["windows"], 16))
  end_logits = np.zeros((stats["windows"], 16))
  start_logits[w, arrays["start_positions"][w]] = 5.0
  end_logits[w, arrays["end_positions"][w]] = 5.0
  answers = squad.predict_answers(examples, windows, start_logits, end_logits)
  best = answers["q0"]
  assert best["text"] == "Zürich" and CONTEXT[best["start"] : best["end"]] == "Zürich"


def test_best_answer_respects_max_answer_length_and_context_only():
  offsets = np.array([[-1, -1], [-1, -1], [0, 3], [4, 7], [8, 11], [-1, -1]])
  max_context = offsets[:, 0] >= 0
  context = "abc def ghi"
  start = np.array([9.0, 0, 1, 0, 0, 0])  # [CLS] scores highest but is not context
  end = np.array([0, 0, 0, 0, 3.0, 9.0])  # the final [SEP] too
  assert (
    squad.best_answer(context, [start], [end], [offsets], [max_context])["text"] == "abc def ghi"
  )
  assert squad.best_answer(context, [start], [end], [offsets], [max_context], max_answer_length=2)[
    "text"
  ] in ("def ghi", "ghi")  # tied at 3


def test_max_context_window_is_the_one_with_most_context_on_both_sides():
  # Windows over context tokens 0..5 and 3..8: token 3 has 2 tokens right of it in
  # the first and 0 left in the second; token 4 ties (1 and 1), the first wins.
  assert squad.max_context_windows([(0, 6), (3, 6)], 9).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
  assert squad.max_context_windows([(0, 4)], 4).tolist() == [0, 0, 0, 0]
  # A longer window wins a tie, by 0.01 a token: token 1 has min(1, 3) = min(1, 5) = 1.
  assert squad.max_context_windows([(0, 5), (0, 7)], 7).tolist()[1] == 1


def test_best_answer_starts_a_span_only_where_its_token_has_most_context():
  context = "aa bb cc"
  # Two windows, each [CLS] q [SEP] then its context tokens: window 0 sees "aa bb",
  # window 1 "bb cc"; "bb" is at window 0's right edge, so window 1 owns it.
  offsets = np.array(
    [
      [[-1, -1], [-1, -1], [-1, -1], [0, 2], [3, 5], [-1, -1]],
      [[-1, -1], [-1, -1], [-1, -1], [3, 5], [6, 8], [-1, -1]],
    ]
  )
  max_context = np.array([[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0]], bool)
  start = np.array([[0, 0, 0, -20.0, 9.0, 0], [0, 0, 0, 2.0, 0, 0]])  # "bb" in window 0: 9
  end = np.array([[0, 0, 0, 0, 9.0, 0], [0, 0, 0, 0, 2.0, 0]])
  best = squad.best_answer(context, start, end, offsets, max_context)
  assert best["text"] == "bb cc" and best["score"] == 4.0
  # Without the rule window 0's "bb" (9 + 9) would win.
  assert squad.best_answer(context, start, end, offsets, offsets[..., 0] >= 0)["text"] == "bb"


# --------------------------------------------------------------------------
# TFDS sources (mocked, offline)


def test_tfds_glue_examples_take_label_names_from_the_dataset():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=6):
    examples, labels = classification.tfds_examples("glue/sst2", "train", "sentence")
  assert labels == ["negative", "positive"] and len(examples) == 6
  assert {e.label for e in examples} <= set(labels)
  assert examples[0].origin == "tfds glue/sst2[train] #0"


def test_tfds_conll2003_and_squad_read_through_the_same_encoders(tokenizer):
  import tensorflow_datasets as tfds

  conll = [
    {
      "tokens": np.array([b"Alice", b"sat"]),
      "ner": np.array([1, 0]),
      "pos": np.array([0, 0]),
      "chunks": np.array([0, 0]),
    }
  ]
  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: conll):
    sentences = ner.tfds_sentences("conll2003", "dev")
  assert sentences[0].words == ("Alice", "sat") and sentences[0].tags == ("B-PER", "O")
  start = CONTEXT.index("Zürich")
  records = [
    {
      "id": b"q0",
      "title": b"t",
      "context": CONTEXT.encode(),
      "question": b"Where?",
      "answers": {"text": np.array(["Zürich".encode()]), "answer_start": np.array([start])},
    }
  ]
  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: records):
    examples = squad.tfds_qa_examples("squad/v1.1", "validation")
  assert examples[0].answers == (("Zürich", start),)
  bad = [dict(records[0], answers={"text": np.array([b"Alice"]), "answer_start": np.array([0])})]
  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: bad):
    with pytest.raises(ValueError, match=r"tfds squad/v1.1\[validation\] #0: answer_start 0"):
      squad.tfds_qa_examples("squad/v1.1", "validation")


# --------------------------------------------------------------------------
# Task builders (no training): regression, relations, TFDS by name


def test_regression_task_scores_pearson_and_spearman(tmp_path):
  from train.tasks import build_task

  rows = [
    ("a cat sat", "a dog sat", str(score)) for score in (0.5, 1.0, 4.0, 2.5, 3.0, 5.0, 0.0, 1.5)
  ]
  path = ff.write_tsv(tmp_path / "stsb.tsv", rows, header=("sentence1", "sentence2", "score"))
  config = ff.tiny_config("classification", tmp_path)
  config.data.update(
    train_path=path,
    eval_path=path,
    text_columns="sentence1,sentence2",
    label_column="score",
    regression=True,
    metrics=("pearson", "spearman"),
  )
  task = build_task(config, str(tmp_path))
  assert task.labels is None and task.objective.regression
  gold = np.array([float(r[2]) for r in rows], np.float32)
  padded = np.concatenate([gold, [9.0] * 8])[:, None]  # eval padding rows are cut off
  assert task.score("eval", {"logits": padded}) == pytest.approx({"pearson": 1.0, "spearman": 1.0})
  assert task.score("eval", {"logits": -padded})["pearson"] == pytest.approx(-1.0)


def test_relation_task_puts_markers_around_both_entities(tmp_path):
  from train.tasks import build_task

  rows = [
    ("The <e1>cat</e1> sat under the <e2>tree</e2>.", "Under(e1,e2)"),
    ("The <e1>dog</e1> ran to the <e2>house</e2>.", "To(e1,e2)"),
  ] * 4
  path = ff.write_tsv(tmp_path / "rel.tsv", rows, header=("sentence", "relation"))
  config = ff.tiny_config("classification", tmp_path)
  config.data.update(
    train_path=path, eval_path=path, label_column="relation", entity_markers=("$", "$", "#", "#")
  )
  task = build_task(config, str(tmp_path))
  assert task.labels == ["To(e1,e2)", "Under(e1,e2)"]
  ids = task.eval_batches[0]["input_ids"][0]
  tokens = task.tokenizer.convert_ids_to_tokens(ids[:11].tolist())
  assert tokens == ["[CLS]", "the", "$", "cat", "$", "sat", "under", "the", "#", "tree", "#"]


def test_tfds_classification_by_name_takes_the_dataset_labels(tmp_path):
  import tensorflow_datasets as tfds

  from train.tasks import build_task

  config = ff.tiny_config("classification", tmp_path)
  config.data.update(
    source="tfds",
    tfds_name="glue/sst2",
    text_columns="sentence",
    labels=("0", "1"),
    max_unknown_fraction=1.0,  # mock data is random characters: all [UNK] under any vocab
  )
  with tfds.testing.mock_data(num_examples=16):
    task = build_task(config, str(tmp_path))
  assert task.labels == ["negative", "positive"]
  assert task.steps_per_epoch == 2 and len(task.eval_batches) == 2

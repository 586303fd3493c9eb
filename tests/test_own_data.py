"""A user's own files through the generic configs: any TSV / CSV / JSON lines or CoNLL file."""

import json

import numpy as np
import pytest
from helpers import finetune as ff

from configs.finetune import classification as classification_config
from configs.finetune import token_classification as token_classification_config
from data import classification
from train import tasks

FOUR_CLASSES = [
  ("the match ended in a late goal", "sport"),
  ("shares fell after the report", "business"),
  ("the band played a new song", "music"),
  ("rain is expected on monday", "weather"),
]


def tiny(config, tmp_path):
  """A generic config made small: the tiny test BERT and its vocab (made for other words, so
  [UNK] is allowed), no init weights."""
  config.model.update(ff.TINY)
  config.data.update(
    vocab=ff.write_vocab(tmp_path / "vocab.txt"), max_seq_length=32, max_unknown_fraction=1.0
  )
  config.init.hf_dir = ""
  config.batch_size = 4
  return config


def write(path, lines):
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
  return str(path)


def test_a_headerless_four_class_tsv_trains_with_the_generic_config_and_its_own_labels(tmp_path):
  rows = [f"{text}\t{label}" for text, label in FOUR_CLASSES * 5]
  config = tiny(classification_config.get_config("tiny"), tmp_path)
  config.data.update(
    train_path=write(tmp_path / "train.tsv", rows),
    eval_path=write(tmp_path / "dev.tsv", rows[:8]),
    max_train_examples=12,
  )
  task = tasks.build_task(config, str(tmp_path / "run"))
  assert task.labels == ["business", "music", "sport", "weather"]  # the file's, sorted
  assert task.summary["splits"]["train"]["examples"] == 12  # the first 12 rows only
  assert task.summary["splits"]["eval"]["examples"] == 8  # not the first row taken as a header
  rows_in_batches = np.concatenate([b["row"] for b in task.eval_batches])
  labels = np.concatenate([b["label"] for b in task.eval_batches])[np.argsort(rows_in_batches)]
  assert labels[:8].tolist() == [2, 0, 1, 3, 2, 0, 1, 3]


def test_a_header_is_detected_when_the_first_rows_label_is_unlike_the_rest(tmp_path):
  rows = [f"{text}\t{label}" for text, label in FOUR_CLASSES * 3]
  with_header = write(tmp_path / "h.tsv", ["text\tlabel", *rows])
  without = write(tmp_path / "n.tsv", rows)
  read = lambda path: classification.read_examples(path, "0", "1", has_header="auto")
  assert len(read(with_header)) == len(read(without)) == 12
  assert read(with_header)[0].origin.endswith("h.tsv:2")
  scores = write(tmp_path / "s.tsv", ["sentence\tscore", "a\t0.5", "b\t3.25", "c\t1"])
  assert [e.label for e in classification.read_examples(scores, "0", "1", "auto")] == [
    "0.5",
    "3.25",
    "1",
  ]


def test_a_named_column_in_a_headerless_file_suggests_column_numbers(tmp_path):
  path = write(tmp_path / "n.tsv", [f"{t}\t{label}" for t, label in FOUR_CLASSES])
  with pytest.raises(ValueError, match=r"n.tsv:1: no column 'sentence' in the header .*has_header"):
    classification.read_examples(path, "sentence", "label")


def test_csv_with_quoted_commas_and_json_lines_read_by_key(tmp_path):
  csv_path = write(
    tmp_path / "d.csv", ["text,label", '"fast, cheap and good",pos', '"slow, ""meh""",neg']
  )
  examples = classification.read_examples(csv_path, "text", "label")
  assert [(e.text_a, e.label) for e in examples] == [
    ("fast, cheap and good", "pos"),
    ('slow, "meh"', "neg"),
  ]
  records = [
    {"sentence1": "他在北京工作", "sentence2": "他住在北京", "label": "1"},
    {"sentence1": "今天下雨", "sentence2": "天气很好", "label": 0},
  ]
  jsonl = write(tmp_path / "d.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
  examples = classification.read_examples(jsonl, "sentence1,sentence2", "label")
  assert [(e.text_a, e.text_b, e.label) for e in examples] == [
    ("他在北京工作", "他住在北京", "1"),
    ("今天下雨", "天气很好", 0),
  ]
  with pytest.raises(ValueError, match=r"d.jsonl:1: no key 'text'; the line has \['label'"):
    classification.read_examples(jsonl, "text", "label")
  with pytest.raises(ValueError, match="JSON lines name one or two keys"):
    classification.read_examples(jsonl, "0", "1")
  bad = write(tmp_path / "bad.jsonl", ['{"text": "a", "label": 1}', "[1, 2]"])
  with pytest.raises(ValueError, match=r"bad.jsonl:2: a line is one JSON object; got list"):
    classification.read_examples(bad, "text", "label")


def test_a_conll_file_with_its_own_tag_set_trains_with_the_generic_config(tmp_path):
  sentences = [
    ["Aspirin B-DRUG", "eases O", "headache B-SYMPTOM"],
    ["Ibuprofen B-DRUG", "treats O", "joint B-SYMPTOM", "pain I-SYMPTOM"],
  ] * 4
  lines = [line for sentence in sentences for line in [*sentence, ""]]
  config = tiny(token_classification_config.get_config("tiny"), tmp_path)
  config.data.update(
    train_path=write(tmp_path / "train.conll", lines),
    eval_path=write(tmp_path / "dev.conll", lines[:9]),
  )
  task = tasks.build_task(config, str(tmp_path / "run"))
  # 'O', then B- and I- of each entity type the training file has, in name order.
  assert task.labels == ["O", "B-DRUG", "I-DRUG", "B-SYMPTOM", "I-SYMPTOM"]
  (batch,) = task.eval_batches  # 2 sentences and 2 copies at weight 0 fill a batch of 4
  assert np.sum(batch["label_weights"] * batch["weight"][:, None]) == 7  # a tag per word

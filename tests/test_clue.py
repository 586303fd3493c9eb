"""CLUE formats: CLUENER2020 spans <-> BIO exactly, bad files named by line, and a Chinese NER
run end to end (CLUENER files in, entities with character spans out of train.predict)."""

import io
import json
import re

import numpy as np
import pytest
from helpers import finetune as ff

from data import clue
from data.tokenizer import SPECIAL_TOKENS
from train import loop, predict
from train.writers import read_metrics

# Hand-written lines in CLUENER2020's layout (one of them as in its README's example).
CLUENER_LINES = [
  {
    "text": "浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。",
    "label": {"name": {"叶老桂": [[9, 11]]}, "company": {"浙商银行": [[0, 3]]}},
  },
  {
    "text": "记者张伟在上海报道，上海和北京的游客很多。",
    "label": {
      "name": {"张伟": [[2, 3]]},
      "address": {"上海": [[5, 6], [10, 11]], "北京": [[13, 14]]},
    },
  },
  {"text": "今天天气很好。", "label": {}},
]


def write_jsonl(path, records):
  path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", "utf-8")
  return str(path)


def test_cluener_spans_round_trip_through_bio_exactly(tmp_path):
  sentences = clue.read_cluener(write_jsonl(tmp_path / "dev.json", CLUENER_LINES))
  assert [s.origin for s in sentences] == [f"{tmp_path}/dev.json:{i}" for i in (1, 2, 3)]
  first = sentences[0]
  assert "".join(first.words) == CLUENER_LINES[0]["text"]
  assert first.tags[:5] == ("B-company", "I-company", "I-company", "I-company", "O")
  assert first.tags[9:13] == ("B-name", "I-name", "I-name", "O")
  for sentence, record in zip(sentences, CLUENER_LINES):
    assert clue.cluener_label(record["text"], sentence.tags) == record["label"]


@pytest.mark.parametrize(
  "record, message",
  [
    ({"txt": "你好"}, "needs a 'text' string"),
    ({"text": "你好", "label": {"name": {"你好世界": [[0, 3]]}}}, "lies outside the text"),
    ({"text": "张伟好", "label": {"name": {"张伟": [[1, 2]]}}}, "holds '伟好', not the entity"),
    ({"text": "张伟好", "label": {"name": {"张伟": [0, 1]}}}, "is not [start, end]"),
    ({"text": "张伟好", "label": {"name": {"张伟": [[0, 1]]}, "x": {"伟": [[1, 1]]}}}, "overlaps"),
  ],
)
def test_a_bad_cluener_line_is_named_by_file_and_line(tmp_path, record, message):
  path = write_jsonl(tmp_path / "train.json", [CLUENER_LINES[2], record])
  with pytest.raises(ValueError, match=re.escape(message)) as error:
    clue.read_cluener(path)
  assert str(error.value).startswith(f"{path}:2: ")


def test_a_line_that_is_not_json_is_named(tmp_path):
  path = tmp_path / "train.json"
  path.write_text('{"text": "好", "label": {}}\n{"text": \n', "utf-8")
  with pytest.raises(ValueError, match=rf"^{path}:2: not a JSON object"):
    clue.read_cluener(str(path))


NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄勇"]
PLACES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉"]
TEMPLATES = ["{n}在{p}工作。", "{n}昨天去了{p}。", "记者{n}报道，{p}发展很快。", "{p}的{n}说很好。"]


def generated_lines(n, seed):
  """CLUENER lines from templates: a person and a place in each."""
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(n):
    name, place = rng.choice(NAMES), rng.choice(PLACES)
    text = rng.choice(TEMPLATES).format(n=name, p=place)
    label = {
      "name": {name: [[text.index(name), text.index(name) + len(name) - 1]]},
      "address": {place: [[text.index(place), text.index(place) + len(place) - 1]]},
    }
    lines.append({"text": text, "label": label})
  return lines


@pytest.mark.slow
def test_a_chinese_ner_run_learns_from_cluener_files_and_predicts_character_spans(tmp_path):
  train, dev = generated_lines(96, 0), generated_lines(24, 1)
  characters = sorted({c for line in train + dev for c in line["text"]})
  vocab = tmp_path / "zh_vocab.txt"  # ner_config writes its own vocab.txt
  vocab.write_text("\n".join([*SPECIAL_TOKENS, *characters]) + "\n", "utf-8")
  config = ff.ner_config(
    tmp_path,
    **{
      "data.train_path": write_jsonl(tmp_path / "train.json", train),
      "data.eval_path": write_jsonl(tmp_path / "dev.json", dev),
      "data.vocab": str(vocab),
      "model.vocab_size": 128,
      "epochs": 6,
    },
  )
  workdir = str(tmp_path / "run")
  final = loop.train_and_evaluate(config, workdir)
  evals = [r for r in read_metrics(workdir) if r["split"] == "eval"]
  assert evals[-1]["f1"] > 0.8 and final["f1"] > 0.8
  (result,) = predict.Predictor(workdir)(["王芳在杭州工作。"])  # one character a word
  entities = {(e["type"], e["text"], e["start"], e["end"]) for e in result["entities"]}
  assert entities == {("name", "王芳", 0, 2), ("address", "杭州", 3, 5)}
  # A CLUENER test file (id + text) gives CLUENER's submission lines.
  test = write_jsonl(tmp_path / "test.json", [{"id": 7, "text": "王芳在杭州工作。"}])
  out = io.StringIO()
  predict.predict_file(predict.Predictor(workdir), test, out, show_progress=False)
  assert json.loads(out.getvalue()) == {
    "id": 7,
    "label": {"name": {"王芳": [[0, 1]]}, "address": {"杭州": [[3, 4]]}},
  }
  assert (
    clue.cluener_label(
      "王芳在杭州工作。",
      clue.bio_tags("王芳在杭州工作。", json.loads(out.getvalue())["label"], "out"),
    )
    == json.loads(out.getvalue())["label"]
  )


# TNEWS's layout: label code, its description, the sentence, keywords.
TNEWS = [
  ("100", "news_story", "今天的故事很感人"),
  ("102", "news_entertainment", "明星电影票房很高"),
]


def tnews_lines(n, seed):
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(n):
    code, desc, text = TNEWS[int(rng.integers(2))]
    lines.append({"label": code, "label_desc": desc, "sentence": text, "keywords": ""})
  return lines


@pytest.mark.slow
def test_a_clue_classification_config_trains_on_its_json_and_writes_a_submission(tmp_path):
  from configs.finetune import clue as clue_configs

  config = clue_configs.get_config("tnews")
  assert (config.batch_size, config.optimizer.lr, config.epochs) == (16, 3e-5, 2)  # CLUE's
  characters = sorted({c for _, _, text in TNEWS for c in text})
  vocab = tmp_path / "zh_vocab.txt"
  vocab.write_text("\n".join([*SPECIAL_TOKENS, *characters]) + "\n", "utf-8")
  config.model.update(ff.TINY)
  config.init.hf_dir = ""
  config.data.update(
    vocab=str(vocab),
    train_path=write_jsonl(tmp_path / "train.json", tnews_lines(32, 0)),
    eval_path=write_jsonl(tmp_path / "dev.json", tnews_lines(16, 1)),
    max_seq_length=32,
  )
  config.checkpoint.async_save = False
  config.optimizer.update(lr=1e-2, total_steps=64)  # CLUE's 2 epochs are of 53,360 rows
  config.eval_every_steps = 32  # not each 2-step epoch: an evaluation and a save each
  config.mesh.shape = dict(data=-1, fsdp=1, tensor=1)
  workdir = str(tmp_path / "run")
  final = loop.train_and_evaluate(config, workdir)
  assert final["accuracy"] == 1.0
  test = [{"id": i, "sentence": text, "keywords": ""} for i, (_, _, text) in enumerate(TNEWS)]
  out = io.StringIO()
  predict.predict_file(
    predict.Predictor(workdir), write_jsonl(tmp_path / "test.json", test), out, show_progress=False
  )
  assert [json.loads(line) for line in out.getvalue().splitlines()] == [
    {"id": 0, "label": "100"},
    {"id": 1, "label": "102"},
  ]


def test_ocnli_reads_as_distributed_and_leaves_out_rows_without_a_majority(tmp_path, caplog):
  """OCNLI / CMNLI lines (sentence1, sentence2, label; '-' where annotators had no majority,
  as in OCNLI's dev set): '-' rows are left out of every split, as CLUE's processor does."""
  from configs.finetune import clue as clue_configs
  from data import classification
  from train.tasks.classification import read_text_examples

  config = clue_configs.get_config("ocnli")
  assert (config.batch_size, config.optimizer.lr, config.epochs) == (32, 2e-5, 3)  # OCNLI's
  pairs = [
    ("他在看书。", "他在读东西。"),
    ("天很冷。", "天很热。"),
    ("她去了北京。", "她喜欢旅行。"),
  ]
  labels = ["entailment", "contradiction", "neutral"]
  train = [
    {"sentence1": a, "sentence2": b, "label": label, "genre": "news", "id": i}
    for i, ((a, b), label) in enumerate(zip(pairs, labels))
  ]
  dev = [dict(train[0], label0="entailment"), dict(train[1], label="-", label0="neutral")]
  config.data.update(
    train_path=write_jsonl(tmp_path / "train.50k.json", train),
    eval_path=write_jsonl(tmp_path / "dev.json", dev),
  )
  with caplog.at_level("INFO"):
    examples, _ = read_text_examples(config.data)
  assert [e.label for e in examples["eval"]] == ["entailment"]
  assert (examples["eval"][0].text_a, examples["eval"][0].text_b) == pairs[0]
  assert "1 of 2 eval rows left out" in caplog.text
  resolved = classification.resolve_labels(config.data.labels, examples["train"])
  assert list(resolved) == sorted(labels)

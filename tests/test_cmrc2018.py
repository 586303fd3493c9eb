"""CMRC 2018: Chinese answers as character spans, scored as cmrc2018_evaluate.py (v5) does."""

import numpy as np
import pytest
from helpers import finetune as ff

from configs.finetune import cmrc2018
from data import squad
from data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from train import metrics, tasks
from train.errors import UserError

# Hand-written CMRC-style paragraphs (SQuAD's layout): Chinese, digits, Latin words.
PARAGRAPHS = [
  ("北京大学创建于1898年，初名京师大学堂。", "北京大学创建于哪一年？", "1898年"),
  ("长江是中国第一长河，全长约6300公里。", "长江全长约多少公里？", "6300公里"),
  ("iPhone 6手机由苹果公司在2014年发布。", "iPhone 6由哪家公司发布？", "苹果公司"),
  ("《红楼梦》的作者是曹雪芹，成书于清代。", "《红楼梦》的作者是谁？", "曹雪芹"),
]


def cmrc_data():
  paragraphs = []
  for i, (context, question, answer) in enumerate(PARAGRAPHS):
    qa = {"id": f"c{i}", "question": question}
    qa["answers"] = [{"text": answer, "answer_start": context.index(answer)}]
    paragraphs.append({"context": context, "qas": [qa]})
  return {"version": "v1.0", "data": [{"title": "t", "paragraphs": paragraphs}]}


DIGIT_PIECES = [f"##{d}" for d in range(10)]


@pytest.fixture
def chinese_vocab(tmp_path):
  characters = sorted({c for row in PARAGRAPHS for text in row for c in text.lower()} - {" "})
  path = tmp_path / "vocab_zh.txt"
  path.write_text(
    "\n".join([*SPECIAL_TOKENS, "iphone", *DIGIT_PIECES, *characters]) + "\n", encoding="utf-8"
  )
  return str(path)


@pytest.mark.parametrize(
  "prediction, truth, exact, f1",
  [
    ("北京大学。", "北京大学", 1.0, 1.0),  # '。' is on the script's punctuation list
    ("在北京", "北京大学", 0.0, 4 / 7),  # common substring 2: P 2/3, R 2/4
    ("民人国中", "中国人民", 0.0, 0.25),  # a substring, not a bag: 1 of 4 (bag F1 would be 1)
    ("iphone 6", "iPhone 6手机", 0.0, 2 / 3),  # Latin words are one segment each
    ("1998", "1998年", 0.0, 2 / 3),
    ("好…", "好", 0.0, 2 / 3),  # "…" is not on the list (its "……" never matches one character)
    ("清代", "曹雪芹", 0.0, 0.0),
  ],
)
def test_cmrc_exact_match_and_f1_by_hand(prediction, truth, exact, f1):
  assert metrics.cmrc_exact_match(prediction, truth) == exact
  assert metrics.cmrc_f1(prediction, truth) == pytest.approx(f1)


def test_cmrc_segments_split_chinese_by_character_and_keep_latin_words():
  assert metrics.cmrc_segments("iPhone 6手机，售价5,288元") == (
    ["iphone", "6", "手", "机", "售", "价", "5,288", "元"]
  )


def test_scores_average_over_questions_and_an_unanswered_one_scores_zero():
  gold = {"a": ["北京大学"], "b": ["中国人民"]}
  scores = metrics.squad_scores({"a": "在北京"}, gold, "cmrc2018")
  assert scores == pytest.approx({"exact_match": 0.0, "f1": (4 / 7) / 2})


def test_chinese_answers_are_found_and_read_back_as_character_spans(tmp_path, chinese_vocab):
  examples = squad.read_squad(ff.write_squad(tmp_path / "dev.json", cmrc_data()))
  tokenizer = load_tokenizer(chinese_vocab)
  arrays, windows, _ = squad.encode_windows(examples, tokenizer, 64, 32, 24)
  for w, example in enumerate(windows.example):
    start, end = arrays["start_positions"][w], arrays["end_positions"][w]
    text, answer_start = examples[example].answers[0]
    span = windows.offsets[w, start, 0], windows.offsets[w, end, 1]
    assert (span[0], examples[example].context[span[0] : span[1]]) == (answer_start, text)


def test_the_task_scores_chinese_spans_as_cmrc2018_and_not_as_squad(tmp_path, chinese_vocab):
  """The same logits, one answer a character short: CMRC F1 credits the overlap, SQuAD's
  whitespace tokens cannot (a Chinese answer is one 'word' to them)."""
  path = ff.write_squad(tmp_path / "dev.json", cmrc_data())
  scores = {}
  for scoring in ("cmrc2018", "squad"):
    config = ff.tiny_config(
      "question_answering",
      tmp_path,
      **{"data.vocab": chinese_vocab, "model.vocab_size": 128, "batch_size": 2},
    )
    config.data.update(
      train_path=path, eval_path=path, max_seq_length=64, max_query_length=24, doc_stride=32
    )
    config.data.answer_scoring = scoring
    task = tasks.build_task(config, str(tmp_path / scoring))
    arrays, _, _ = squad.encode_windows(squad.read_squad(path), task.tokenizer, 64, 32, 24)
    n = len(arrays["start_positions"])
    start_logits, end_logits = np.zeros((n, 64)), np.zeros((n, 64))
    start_logits[np.arange(n), arrays["start_positions"]] = 10.0
    end_logits[np.arange(n), arrays["end_positions"]] = 10.0
    end_logits[0, arrays["end_positions"][0]] = 0.0  # the first answer: '1898' for '1898年'
    end_logits[0, arrays["end_positions"][0] - 1] = 10.0
    scores[scoring] = task.score("eval", {"start_logits": start_logits, "end_logits": end_logits})
  assert scores["cmrc2018"] == pytest.approx({"exact_match": 3 / 4, "f1": (3 + 2 / 3) / 4})
  assert scores["squad"]["f1"] == pytest.approx(3 / 4)


def test_cmrc2018_config_scores_as_cmrc_and_a_bad_scoring_is_named(tmp_path):
  assert cmrc2018.get_config().data.answer_scoring == "cmrc2018"
  config = ff.squad_config(tmp_path, **{"data.answer_scoring": "bleu"})
  with pytest.raises(UserError, match="data.answer_scoring='bleu'; known"):
    tasks.build_task(config, str(tmp_path / "run"))

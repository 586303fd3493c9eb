"""Task metrics against values worked out by hand (and, where one exists, a reference library)."""

import math

import numpy as np
import pytest

from data.ner import entity_spans, iob1_to_iob2
from train import metrics


def test_accuracy_and_binary_f1_by_hand():
  assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
  # tp = 2, fp = 1, fn = 1: precision = recall = 2/3
  assert metrics.binary_f1([1, 1, 0, 1, 0], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)
  assert metrics.binary_f1([0, 0], [1, 1]) == 0.0


def test_macro_f1_by_hand_and_against_sklearn():
  # Class 0: P 1/2 R 1/2 F1 1/2; class 1: P 1 R 1/2 F1 2/3; class 2: never right, F1 0.
  predictions, labels = [0, 0, 1, 2], [0, 1, 1, 0]
  assert metrics.macro_f1(predictions, labels) == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
  sklearn = pytest.importorskip("sklearn.metrics")  # seqeval brings it
  rng = np.random.default_rng(0)
  labels, predictions = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
  expected = sklearn.f1_score(labels, predictions, average="macro")
  assert metrics.macro_f1(predictions, labels) == pytest.approx(expected)


def test_confusion_matrix_by_hand():
  # gold 0 0 1 1 2, predicted 0 1 1 1 0: rows gold, columns predicted.
  assert metrics.confusion_matrix([0, 1, 1, 1, 0], [0, 0, 1, 1, 2], range(3)) == [
    [1, 1, 0],
    [0, 2, 0],
    [1, 0, 0],
  ]
  assert metrics.confusion_matrix(["O", "B-PER"], ["B-PER", "B-PER"], ["O", "B-PER"]) == [
    [0, 0],
    [1, 1],
  ]
  with pytest.raises(ValueError, match="'B-LOC' is not one of"):
    metrics.confusion_matrix(["B-LOC"], ["O"], ["O", "B-PER"])


def test_matthews_correlation_by_hand():
  # tp = 2, tn = 2, fp = 1, fn = 1: (2*2 - 1*1) / sqrt(3*3*3*3) = 1/3
  assert metrics.matthews_corrcoef([1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]) == pytest.approx(1 / 3)
  assert metrics.matthews_corrcoef([1, 0, 1], [1, 0, 1]) == pytest.approx(1.0)
  assert metrics.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # a constant predictor


def test_multiclass_matthews_agrees_with_sklearn():
  from sklearn.metrics import matthews_corrcoef

  rng = np.random.default_rng(0)
  labels, predictions = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
  predictions[:25] = labels[:25]
  assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
    matthews_corrcoef(labels, predictions)
  )


def test_pearson_and_spearman_by_hand():
  # dx = (-1.5, -.5, .5, 1.5), dy = (-3, -1, 0, 4): 11 / sqrt(5 * 26)
  assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
  # ranks with a tie: x -> (1, 2.5, 2.5, 4), y -> (1, 3, 2, 4): 4.5 / sqrt(4.5 * 5)
  assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
  assert metrics.spearman([1, 2, 3], [10, 20, 1000]) == pytest.approx(1.0)


def test_classification_scores_names_an_unknown_metric():
  with pytest.raises(ValueError, match=r"unknown metrics \['auc'\]"):
    metrics.classification_scores(["accuracy", "auc"], [1], [1])


GOLD_IOB1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "O", "I-ORG"]
PREDICTED = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"]


def test_iob1_reads_as_bio_with_the_same_entities():
  assert iob1_to_iob2(GOLD_IOB1) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "O", "B-ORG"]
  assert entity_spans(GOLD_IOB1) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 6, 6)]
  assert entity_spans(iob1_to_iob2(GOLD_IOB1)) == entity_spans(GOLD_IOB1)


def test_entity_scores_by_hand_on_iob1_gold():
  """Gold: PER[0-1], LOC[3], LOC[4], ORG[6]; predicted: PER[0-1], LOC[3-4], ORG[6].

  2 of 3 predicted entities are right (P = 2/3) and 2 of 4 gold ones found
  (R = 1/2): F1 = 4/7. Per type: PER and ORG perfect, LOC 0 of 2.
  """
  for gold in (GOLD_IOB1, iob1_to_iob2(GOLD_IOB1)):
    scores = metrics.entity_scores([gold], [PREDICTED])
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(1 / 2)
    assert scores["f1"] == pytest.approx(4 / 7)
    assert scores["report"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert scores["report"]["PER"]["f1"] == 1.0 and scores["report"]["ORG"]["support"] == 1
    assert "LOC" in scores["report_text"]


def test_entity_scores_refuse_misaligned_sentences():
  with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
    metrics.entity_scores([["O", "O"]], [["O"]])


def test_squad_normalisation_exact_match_and_f1_by_hand():
  assert metrics.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
  assert metrics.squad_exact_match("the Eiffel tower", "Eiffel Tower.") == 1.0
  # 'in eiffel tower of paris' vs 'eiffel tower': P = 2/5, R = 1
  assert metrics.squad_f1("in the Eiffel Tower of Paris", "Eiffel Tower") == pytest.approx(4 / 7)
  assert metrics.squad_f1("a", "the") == 0.0  # both normalise to nothing


def test_squad_scores_take_the_best_gold_answer_and_count_missing_predictions():
  answers = {
    "q1": ["Denver Broncos", "Broncos"],
    "q2": ["the quick fox", "fox jumps"],
    "q3": ["Paris"],
  }
  predictions = {"q1": "Denver Broncos", "q2": "a fox"}  # q3 unanswered: scores 0
  scores = metrics.squad_scores(predictions, answers)
  assert scores["exact_match"] == pytest.approx(1 / 3)
  assert scores["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)

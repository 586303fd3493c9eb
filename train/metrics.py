"""Task metrics from predictions: plain numpy and Python, no JAX.

Every function takes host arrays or strings and returns floats in [0, 1]
(correlations in [-1, 1]); the SQuAD scores are fractions too, not the
official script's percentages. Entity-level NER scores come from seqeval, the
library the CoNLL numbers in papers are computed with (conlleval semantics).
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Iterable, Sequence

import numpy as np


def accuracy(predictions, labels) -> float:
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  return float(np.mean(predictions == labels)) if labels.size else 0.0


def binary_f1(predictions, labels, positive: int = 1) -> float:
  """F1 of the positive class (MRPC, QQP report this beside accuracy)."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  true_pos = np.sum((predictions == positive) & (labels == positive))
  predicted, actual = np.sum(predictions == positive), np.sum(labels == positive)
  if true_pos == 0:
    return 0.0
  precision, recall = true_pos / predicted, true_pos / actual
  return float(2 * precision * recall / (precision + recall))


def macro_f1(predictions, labels) -> float:
  """The mean of every class's F1 (each class in turn the positive one), over the classes
  in the gold labels or the predictions: what multi-class benchmarks (CLUE's TNEWS) report."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  classes = np.union1d(predictions, labels)
  if not classes.size:
    return 0.0
  return float(np.mean([binary_f1(predictions, labels, positive=c) for c in classes]))


def confusion_matrix(predictions, labels, classes: Sequence) -> list[list[int]]:
  """counts[gold][predicted] over `classes` (ids or tag strings), as nested lists for JSON."""
  index = {c: i for i, c in enumerate(classes)}
  counts = np.zeros((len(classes), len(classes)), np.int64)
  for p, t in zip(np.asarray(predictions).tolist(), np.asarray(labels).tolist()):
    if t not in index or p not in index:
      raise ValueError(
        f"confusion_matrix: {t if t not in index else p!r} is not one of {list(classes)}"
      )
    counts[index[t], index[p]] += 1
  return counts.tolist()


def matthews_corrcoef(predictions, labels) -> float:
  """Matthews correlation, multi-class form (Gorodkin 2004); 0 when undefined.

  For two classes it is (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)),
  CoLA's metric.
  """
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  classes = np.union1d(predictions, labels)
  index = {c: i for i, c in enumerate(classes)}
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  for p, t in zip(predictions, labels):
    confusion[index[t], index[p]] += 1
  n = confusion.sum()
  correct = np.trace(confusion)
  true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
  cov_tp = correct * n - pred_counts @ true_counts
  cov_pp = n * n - pred_counts @ pred_counts
  cov_tt = n * n - true_counts @ true_counts
  if cov_pp == 0 or cov_tt == 0:
    return 0.0
  return float(cov_tp / np.sqrt(cov_pp * cov_tt))


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return float(np.sum(x * y) / denominator) if denominator else 0.0


def _average_ranks(x) -> np.ndarray:
  """Ranks 1..n, ties sharing the mean of their ranks (as scipy.stats.rankdata)."""
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x), np.float64)
  sorted_x = x[order]
  start = 0
  while start < len(x):
    end = start
    while end + 1 < len(x) and sorted_x[end + 1] == sorted_x[start]:
      end += 1
    ranks[order[start : end + 1]] = (start + end) / 2 + 1
    start = end + 1
  return ranks


def spearman(x, y) -> float:
  """Pearson correlation of the (tie-averaged) ranks."""
  return pearson(_average_ranks(x), _average_ranks(y))


CLASSIFICATION_METRICS = {
  "accuracy": accuracy,
  "f1": binary_f1,
  "macro_f1": macro_f1,
  "mcc": matthews_corrcoef,
}
REGRESSION_METRICS = {"pearson": pearson, "spearman": spearman}


def classification_scores(names: Sequence[str], predictions, labels) -> dict[str, float]:
  """The named metrics (config `data.metrics`) of class ids or regression values."""
  table = dict(CLASSIFICATION_METRICS, **REGRESSION_METRICS)
  unknown = [n for n in names if n not in table]
  if unknown:
    raise ValueError(f"unknown metrics {unknown}; known: {sorted(table)}")
  return {name: table[name](predictions, labels) for name in names}


# --------------------------------------------------------------------------
# Entities (NER)


def entity_scores(
  true_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]
) -> dict:
  """Entity-level micro precision / recall / F1 and the per-type report.

  Returns {'precision', 'recall', 'f1', 'report': {type: {precision, recall,
  f1, support}}, 'report_text': seqeval's table}. Sentences must align.
  """
  from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

  true_tags, predicted_tags = [list(t) for t in true_tags], [list(p) for p in predicted_tags]
  for i, (t, p) in enumerate(zip(true_tags, predicted_tags)):
    if len(t) != len(p):
      raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")
  table = classification_report(true_tags, predicted_tags, output_dict=True, zero_division=0)
  report = {
    kind: {
      "precision": float(row["precision"]),
      "recall": float(row["recall"]),
      "f1": float(row["f1-score"]),
      "support": int(row["support"]),
    }
    for kind, row in table.items()
    if not kind.endswith(" avg")
  }
  return {
    "precision": float(precision_score(true_tags, predicted_tags, zero_division=0)),
    "recall": float(recall_score(true_tags, predicted_tags, zero_division=0)),
    "f1": float(f1_score(true_tags, predicted_tags, zero_division=0)),
    "report": report,
    "report_text": classification_report(true_tags, predicted_tags, digits=4, zero_division=0),
  }


# --------------------------------------------------------------------------
# SQuAD v1.1, as the official evaluate-v1.1.py computes it


def normalize_answer(text: str) -> str:
  """Lower case, drop punctuation and the articles a/an/the, squeeze whitespace."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def squad_exact_match(prediction: str, truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction: str, truth: str) -> float:
  """Bag-of-tokens F1 between the normalised strings."""
  predicted_tokens = normalize_answer(prediction).split()
  true_tokens = normalize_answer(truth).split()
  common = collections.Counter(predicted_tokens) & collections.Counter(true_tokens)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted_tokens), same / len(true_tokens)
  return 2 * precision * recall / (precision + recall)


def squad_scores(
  predictions: dict[str, str], answers: dict[str, Iterable[str]], scoring: str = "squad"
) -> dict:
  """Mean over questions of the best EM / F1 against any gold answer.

  `scoring`: 'squad' (evaluate-v1.1.py) or 'cmrc2018' (cmrc2018_evaluate.py). A
  question without a prediction scores 0 (both official scripts' rule).
  """
  if not answers:
    return {"exact_match": 0.0, "f1": 0.0}
  exact_match, span_f1 = ANSWER_SCORERS[scoring]
  exact, f1 = 0.0, 0.0
  for qid, truths in answers.items():
    truths = list(truths)
    prediction = predictions.get(qid)
    if prediction is None:
      continue
    exact += max(exact_match(prediction, t) for t in truths)
    f1 += max(span_f1(prediction, t) for t in truths)
  return {"exact_match": exact / len(answers), "f1": f1 / len(answers)}


# --------------------------------------------------------------------------
# CMRC 2018, as its official cmrc2018_evaluate.py (v5) computes it: Chinese
# characters are scored one by one, the longest common substring gives F1.

# The official script's punctuation list. Its '……' is two characters and the
# script compares one character at a time, so it never matches; kept as is.
CMRC_PUNCTUATION = frozenset(
  ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "="]
  + ["，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、"]
  + ["「", "」", "（", "）", "－", "～", "『", "』"]
)
_CMRC_HAN = re.compile(r"[\u4e00-\u9fa5]")
# What nltk.word_tokenize makes of the non-Chinese runs between Chinese characters,
# for the text of answers: words, numbers with their separators, one token per symbol.
# (Treebank's contraction rules, "don't" -> "do n't", are not reproduced.)
_CMRC_LATIN = re.compile(r"\d+(?:[.,]\d+)*|\w+|[^\w\s]")


def cmrc_segments(text: str, remove_punctuation: bool = True) -> list[str]:
  """Each Chinese character a segment, each Latin word or number one (mixed_segmentation)."""
  segments, latin = [], ""
  for char in text.lower().strip():
    if remove_punctuation and char in CMRC_PUNCTUATION:
      continue
    if _CMRC_HAN.match(char) or char in CMRC_PUNCTUATION:
      segments += _CMRC_LATIN.findall(latin)
      latin = ""
      segments.append(char)
    else:
      latin += char
  return segments + _CMRC_LATIN.findall(latin)


def _longest_common_substring(a: list[str], b: list[str]) -> int:
  best, previous = 0, [0] * (len(b) + 1)
  for x in a:
    current = [0] * (len(b) + 1)
    for j, y in enumerate(b):
      if x == y:
        current[j + 1] = previous[j] + 1
        best = max(best, current[j + 1])
    previous = current
  return best


def cmrc_exact_match(prediction: str, truth: str) -> float:
  def strip(text: str) -> str:
    return "".join(c for c in text.lower().strip() if c not in CMRC_PUNCTUATION)

  return float(strip(prediction) == strip(truth))


def cmrc_f1(prediction: str, truth: str) -> float:
  """F1 of the longest common substring of segments (not SQuAD's bag of words)."""
  predicted, true = cmrc_segments(prediction), cmrc_segments(truth)
  same = _longest_common_substring(true, predicted)
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted), same / len(true)
  return 2 * precision * recall / (precision + recall)


ANSWER_SCORERS = {"squad": (squad_exact_match, squad_f1), "cmrc2018": (cmrc_exact_match, cmrc_f1)}

"""NER end to end: CoNLL (IOB1) in, entity F1 with a per-type report out, entities on the text."""

import json
import os

import numpy as np
import pytest
from helpers import finetune as ff

from train import loop, predict
from train.writers import read_metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("ner")
  config = ff.ner_config(
    tmp_path, **{"epochs": 3, "optimizer.lr": 1e-2, "checkpoint.every_steps": 1000}
  )
  workdir = str(tmp_path / "run")
  return config, workdir, loop.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_loss_falls_and_entity_f1_is_reported_per_type(run):
  _, workdir, final = run
  records = read_metrics(workdir)
  train = [r for r in records if r["split"] == "train"]
  assert train[-1]["loss"] < 0.3 * train[0]["loss"]
  evals = [r for r in records if r["split"] == "eval"]
  assert {"precision", "recall", "f1", "f1_PER", "f1_LOC", "token_accuracy"} <= set(evals[-1])
  assert final["best"]["metric"] == "f1" and final["best"]["value"] > 0.8
  assert set(final["report"]) == {"PER", "LOC"} and final["report"]["LOC"]["support"] > 0
  # Word-level tag confusion: every dev word once, rows gold; the plot beside it.
  confusion = np.asarray(final["confusion"])
  assert confusion.shape == (5, 5)
  assert confusion.sum() == sum(len(words) for words, _ in ff.ner_sentences(20, 1))
  assert np.trace(confusion) > 0.8 * confusion.sum()
  assert os.path.getsize(os.path.join(workdir, "confusion_eval.png")) > 1000
  with open(os.path.join(workdir, "labels.json")) as f:
    assert json.load(f) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]  # from IOB1 train data


def test_predicted_entities_carry_exact_character_spans(run):
  _, workdir, _ = run
  text = "Alice  saw Bob under the tree in New   York ."
  (result,) = predict.predict(workdir, texts=[text])
  entities = result["entities"]
  for entity in entities:
    assert text[entity["start"] : entity["end"]] == entity["text"]
  assert [(e["type"], e["text"]) for e in entities] == [
    ("PER", "Alice"),
    ("PER", "Bob"),
    ("LOC", "New   York"),
  ]

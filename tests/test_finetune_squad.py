"""SQuAD end to end: windows with a doc stride, EM/F1 on dev, answers as exact context spans."""

import pytest
from helpers import finetune as ff

from data import squad
from train import loop, predict
from train.writers import read_metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("squad")
  config = ff.squad_config(
    tmp_path, **{"epochs": 3, "optimizer.lr": 1e-2, "checkpoint.every_steps": 1000}
  )
  workdir = str(tmp_path / "run")
  return config, workdir, loop.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_loss_falls_and_exact_match_and_f1_are_reported(run):
  config, workdir, final = run
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert train[-1]["loss"] < 0.3 * train[0]["loss"]
  assert {"exact_match", "f1", "span_accuracy"} <= set(final)
  assert final["best"]["value"] > 0.8
  examples = squad.read_squad(config.data.eval_path)
  from data.tokenizer import load_tokenizer

  _, windows, _ = squad.encode_windows(examples, load_tokenizer(config.data.vocab), 32, 8, 8)
  assert len(windows.example) > len(examples)  # contexts longer than a window were split


def test_answer_is_an_exact_span_of_the_context(run):
  _, workdir, _ = run
  context = "The big dog ran under a tree. Dave  went to  Berlin and then sat on a red house."
  (result,) = predict.predict(workdir, question="Where did Dave go?", context=context)
  assert result["answer"] == "Berlin"
  assert context[result["start"] : result["end"]] == "Berlin"

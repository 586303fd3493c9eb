"""Sentence classification end to end: learns, stops early, keeps the best, predicts, resumes."""

import glob
import io
import json
import os
import shutil

import numpy as np
import pytest
from helpers import assert_bitwise_equal, saved_state
from helpers import finetune as ff
from helpers.wandb_files import read_offline_run

from train import loop, predict
from train.checkpoint import Checkpointer
from train.early_stopping import EarlyStopping
from train.writers import read_metrics

PATIENCE = 2
STEPS_PER_EPOCH = 8  # 64 training sentences, batch 8


def run_config(tmp_path, **overrides):
  """8 epochs at a high lr: dev accuracy saturates early, so patience runs out."""
  config = ff.classification_config(
    tmp_path,
    **{
      "epochs": 8,
      "optimizer.lr": 1e-2,
      "early_stopping.patience": PATIENCE,
      "early_stopping.metric": "accuracy",
      "checkpoint.every_steps": 1000,
      "data.label_names": ("negative", "positive"),  # the files' labels are 0 / 1
    },
  )
  config.data.test_path = str(shutil.copy(config.data.eval_path, tmp_path / "test.tsv"))
  return ff.set_keys(config, overrides)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("classification")
  config = run_config(tmp_path, **{"wandb.enabled": True, "wandb.mode": "offline"})
  workdir = str(tmp_path / "run")
  final = loop.train_and_evaluate(config, workdir)
  return config, workdir, final


def evals(workdir):
  return [r for r in read_metrics(workdir) if r["split"] == "eval"]


def test_loss_falls_and_dev_metrics_are_logged(run):
  _, workdir, final = run
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert train[-1]["loss"] < 0.5 * train[0]["loss"]
  assert {"loss", "accuracy", "f1", "mcc"} <= set(evals(workdir)[0])
  assert evals(workdir)[-1]["step"] == final["step"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    assert json.load(f) == json.loads(json.dumps(final))
  assert final["best"]["eval"]["accuracy"] > 0.9
  # The last dev evaluation's confusion (rows gold) agrees with its accuracy; test has its own.
  confusion = np.asarray(final["confusion"])
  assert confusion.sum() == 20 and np.trace(confusion) / 20 == pytest.approx(final["accuracy"])
  assert np.asarray(final["test"]["confusion"]).sum() == 20
  for split in ("eval", "test"):
    assert os.path.getsize(os.path.join(workdir, f"confusion_{split}.png")) > 1000


def test_wandb_offline_run_holds_the_config_metrics_plots_and_final_metrics(run):
  config, workdir, final = run
  wandb_run = read_offline_run(workdir)
  with open(os.path.join(workdir, "wandb_run_id")) as f:  # a resumed run continues this id
    assert f.read() == wandb_run["id"]
  assert wandb_run["config"]["optimizer"]["lr"] == config.optimizer.lr
  history = {
    (row["_step"], key): value
    for row in wandb_run["history"]
    for key, value in row.items()
    if not key.startswith("_")
  }
  # Every scalar of metrics.jsonl is in W&B at its step, but the test split's (scored at the
  # best step, earlier than the last: W&B takes no step that goes back; it is in the summary).
  logged = {
    (r["step"], f"{r['split']}/{key}"): value
    for r in read_metrics(workdir)
    for key, value in r.items()
    if key not in ("step", "split") and r["split"] != "test"
  }
  assert len(logged) > 20
  assert {key: history.get(key) for key in logged} == pytest.approx(logged)
  (files,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "files"))
  for image in ("loss_curves", "confusion_eval", "confusion_test"):  # the plots, at the last step
    assert history[(final["step"], f"{image}/_type")] == "image-file"
    assert os.path.getsize(os.path.join(files, history[(final["step"], f"{image}/path")])) > 1000
  summary = wandb_run["summary"]
  assert summary["test"]["accuracy"] == pytest.approx(final["test"]["accuracy"])
  assert summary["best"]["step"] == final["best"]["step"]


def test_early_stopping_stops_after_patience_evaluations_without_improvement(run):
  config, workdir, final = run
  records = evals(workdir)
  accuracies = [r["accuracy"] for r in records]
  best_index = int(np.argmax(accuracies))  # the first of equal values counts
  assert records[best_index]["step"] == final["best"]["step"]
  assert len(records) == best_index + 1 + PATIENCE  # then stopped
  assert final["step"] == final["best"]["step"] + PATIENCE * STEPS_PER_EPOCH
  assert final["step"] < config.epochs * STEPS_PER_EPOCH


def test_early_stopping_counts_only_evaluations_that_do_not_improve():
  stopping = EarlyStopping("f1", "max", patience=2)
  decisions = []
  for step, value in enumerate([0.5, 0.4, 0.6, 0.6, 0.55]):
    decisions.append((stopping.update(step, {"f1": value}), stopping.should_stop))
  assert decisions == [(True, False), (False, False), (True, False), (False, False), (False, True)]
  assert (stopping.best_step, stopping.best_value) == (2, 0.6)
  resumed = EarlyStopping("f1", "max", 2, saved=json.loads(json.dumps(stopping.to_meta())))
  assert resumed.should_stop and resumed.best_step == 2
  lowest = EarlyStopping("loss", "min", 1)
  assert lowest.update(0, {"loss": 2.0}) and lowest.update(1, {"loss": 1.0})
  with pytest.raises(
    ValueError,
    match=r"early_stopping.metric='f1' is not among the "
    r"evaluation metrics \['loss'\]",
  ):
    EarlyStopping("f1").update(0, {"loss": 1.0, "report_text": "x"})


def test_best_checkpoint_is_the_best_evaluation_and_test_uses_it(run):
  config, workdir, final = run
  best_dir = os.path.join(workdir, "best", "checkpoints")
  assert sorted(int(d) for d in os.listdir(best_dir) if d.isdigit()) == [final["best"]["step"]]
  predictor = predict.Predictor(workdir)
  assert predictor.step == final["best"]["step"]
  rows = [line.split("\t") for line in open(config.data.eval_path).read().splitlines()[1:]]
  results = predictor([text for text, _ in rows])
  names = dict(zip(config.data.labels, config.data.label_names))  # the file has 0 / 1
  accuracy = np.mean([r["label"] == names[label] for r, (_, label) in zip(results, rows)])
  assert accuracy == pytest.approx(final["best"]["eval"]["accuracy"])
  # The test file is a copy of the dev file: the best parameters score the same on it.
  assert final["test"]["accuracy"] == pytest.approx(final["best"]["eval"]["accuracy"])
  assert final["test"]["mcc"] == pytest.approx(final["best"]["eval"]["mcc"])


def test_predict_gives_class_and_probability_from_a_file(run, tmp_path):
  _, workdir, _ = run
  inputs = tmp_path / "inputs.txt"
  inputs.write_text("The cat sat on a good tree.\n\nA bad dog ran.\n", encoding="utf-8")
  results = predict.predict(workdir, input_file=str(inputs))
  assert [r["text"] for r in results] == ["The cat sat on a good tree.", "A bad dog ran."]
  assert [r["label"] for r in results] == ["positive", "negative"]
  with open(os.path.join(workdir, "labels.json")) as f:
    assert json.load(f) == ["negative", "positive"]
  assert all(0.5 < r["probability"] <= 1.0 for r in results)
  with pytest.raises(ValueError, match="input 2: empty text"):
    predict.predict(workdir, texts=["a good cat", " "])


def test_a_streamed_file_gives_the_same_results_in_order_with_few_compiles(run, tmp_path):
  _, workdir, _ = run
  texts = [f"{'a good ' * (i % 7)}cat number {i}" for i in range(45)]
  inputs = tmp_path / "many.txt"
  inputs.write_text("\n".join(texts) + "\n", encoding="utf-8")
  predictor = predict.Predictor(workdir, batch_size=4)
  whole = predictor([(t,) for t in texts])
  out = io.StringIO()
  speed = predict.predict_file(predictor, str(inputs), out, chunk_size=10, show_progress=False)
  streamed = [json.loads(line) for line in out.getvalue().splitlines()]
  assert [r["text"] for r in streamed] == texts
  assert [r["label"] for r in streamed] == [r["label"] for r in whole]
  assert [r["probability"] for r in streamed] == pytest.approx([r["probability"] for r in whole])
  assert speed["inputs"] == 45 and speed["inputs_per_second"] > 0
  # Batches of 4 in length buckets: a compile per bucket used, not per chunk or batch.
  assert speed["compiled_batch_shapes"] == len(predictor.batch_shapes) <= 3
  # An error names the input by its place in the stream, not in its chunk.
  rows = [("a good cat",)] * 12 + [(" ",)]
  with pytest.raises(ValueError, match="^input 13: empty text"):
    list(predictor.stream(rows, chunk_size=5))


@pytest.mark.slow
def test_resume_is_bitwise_exact_with_early_stopping(run, tmp_path):
  config, straight, final = run
  workdir = str(tmp_path / "resumed")
  loop.train_and_evaluate(run_config(tmp_path, stop_at_step=12), workdir)
  assert saved_state(workdir)[0] == 12
  resumed_final = loop.train_and_evaluate(run_config(tmp_path), workdir)
  assert resumed_final["best"] == final["best"] and resumed_final["step"] == final["step"]
  step_a, a = saved_state(straight)
  step_b, b = saved_state(workdir)
  assert step_a == step_b == final["step"]
  assert_bitwise_equal(a, b)
  _, best_a = saved_state(os.path.join(straight, "best"))
  _, best_b = saved_state(os.path.join(workdir, "best"))
  assert_bitwise_equal(best_a, best_b)
  # The checkpoint remembers that patience ran out, so a rerun trains no further.
  with Checkpointer(workdir, async_save=False) as checkpointer:
    progress = checkpointer.read_meta()["early_stopping"]
  assert EarlyStopping("accuracy", "max", PATIENCE, progress).should_stop


def test_k_shot_head_training_keeps_k_rows_of_each_class(tmp_path):
  from train.tasks import build_task

  config = ff.classification_config(tmp_path, **{"data.train_examples_per_class": 4})
  task = build_task(config, "")
  assert task.summary["splits"]["train"]["examples"] == 8
  assert sorted(task.train_data.arrays["label"].tolist()) == [0] * 4 + [1] * 4

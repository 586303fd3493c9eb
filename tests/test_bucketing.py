"""Length bucketing (data/finetune.Buckets): batches padded to the shortest bucket that holds them.

Every fine-tuning test runs with data.bucket_lengths='auto' (the default), so
the resume, early-stopping and predict tests cover bucketed batches; these
check that bucketing changes no number and compiles once per length.
"""

import logging

import jax
import numpy as np
import pytest
from helpers import finetune as ff

from data.finetune import Buckets, bucket_lengths, eval_batches
from train import loop
from train import mesh as mesh_lib
from train.run import build_run
from train.writers import read_metrics


def test_bucket_lengths_from_the_config_string():
  assert bucket_lengths("auto", 128) == (16, 24, 32, 48, 64, 96, 128)
  assert bucket_lengths("auto", 100) == (16, 24, 32, 48, 64, 96, 100)
  assert bucket_lengths("none", 128) == (128,)
  assert bucket_lengths("64, 32", 128) == (32, 64, 128)
  with pytest.raises(ValueError, match=r"data.bucket_lengths='short': expected 'auto', 'none'"):
    bucket_lengths("short", 128)
  with pytest.raises(ValueError, match=r"lengths must lie in 1..max_seq_length=64"):
    bucket_lengths("32,128", 64)


def test_a_batch_is_cut_to_the_shortest_bucket_that_holds_its_longest_row():
  mask = np.zeros((3, 2, 64), np.int32)  # multiple-choice layout: [examples, choices, length]
  mask[0, 1, :20] = 1
  mask[1:, :, :5] = 1
  batch = {"input_ids": mask * 7, "attention_mask": mask, "label": np.arange(3)}
  cut = Buckets((16, 32, 64), ("input_ids", "attention_mask"))(batch)
  assert cut["input_ids"].shape == (3, 2, 32) and cut["label"].shape == (3,)
  assert int(cut["attention_mask"].sum()) == int(mask.sum())  # no real token lost
  batches = eval_batches({k: v[1:] for k, v in batch.items()}, 2, Buckets((16, 64), ("input_ids",)))
  assert batches[0]["input_ids"].shape == (2, 2, 16)


def _runs(tmp_path, make_config):
  """The same task built bucketed and unbucketed, dropout off: (bucketed run, padded run)."""
  runs = []
  for setting in ("auto", "none"):
    config = make_config(tmp_path / setting)
    config.model.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config.data.bucket_lengths = setting
    runs.append(build_run(config, str(tmp_path / setting / "run")))
  return runs


@pytest.mark.parametrize("make_config", [ff.classification_config, ff.ner_config])
def test_bucketed_batches_give_the_same_loss_metrics_and_update(tmp_path, make_config):
  def folder_config(path):
    path.mkdir()
    return make_config(path)

  bucketed, padded = _runs(tmp_path, folder_config)
  assert bucketed.task.eval_batches[0]["input_ids"].shape[1] == 16
  assert padded.task.eval_batches[0]["input_ids"].shape[1] == 32
  scores = []
  for run in (bucketed, padded):
    with mesh_lib.activate(run.mesh, run.rules):
      scores.append(
        loop.evaluate(
          run.eval_step,
          run.state.params,
          run.frozen,
          run.task.eval_batches,
          run.mesh,
          run.rules,
          run.task.objective,
          run.task.score,
        )
      )
  for key in ("loss", "accuracy", "f1"):
    if key in scores[1]:
      np.testing.assert_allclose(scores[0][key], scores[1][key], rtol=1e-5)
  steps = []
  for run in (bucketed, padded):
    batch = mesh_lib.shard_batch(run.task.train_data.batch(0), run.mesh, run.rules)
    with mesh_lib.activate(run.mesh, run.rules):
      state, metrics = run.train_step(run.state, run.frozen, batch)
    steps.append((jax.device_get(metrics), jax.device_get(state.params)))
  np.testing.assert_allclose(steps[0][0]["loss"], steps[1][0]["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), steps[0][1], steps[1][1])


def test_the_train_step_compiles_once_per_bucket_length(tmp_path, caplog):
  # The rows hold 7 to 11 tokens: batches of 8 whose longest is 10 or 11 land in two buckets.
  config = ff.classification_config(tmp_path, **{"data.bucket_lengths": "10,11"})
  workdir = str(tmp_path / "run")
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      loop.train_and_evaluate(config, workdir)
  finally:
    jax.config.update("jax_log_compiles", False)
  compiles = [r for r in caplog.records if "Compiling jit(train_step)" in r.getMessage()]
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  lengths = int(train[-1]["compiled_lengths"])
  assert len(compiles) == lengths == 2  # 10 and 11; no batch needs max_seq_length=32
  assert all(0.2 < r["real_token_fraction"] <= 1.0 for r in train)


def test_bucketed_eval_takes_rows_shortest_first_and_gives_outputs_back_in_order():
  from data.finetune import gather_outputs

  lengths = np.array([30, 3, 12, 5, 14, 2, 9])
  mask = (np.arange(32)[None, :] < lengths[:, None]).astype(np.int32)
  arrays = {"attention_mask": mask, "input_ids": mask * 5, "weight": np.ones(7, np.float32)}
  batches = eval_batches(arrays, 3, Buckets((8, 16, 32), ("attention_mask", "input_ids")))
  assert [b["input_ids"].shape[1] for b in batches] == [8, 16, 32]  # was 32 for every batch
  assert batches[-1]["weight"].tolist() == [1, 0, 0]
  # A model output per row (its length) and per token, back in the arrays' row order.
  outputs = [
    {"length": b["attention_mask"].sum(-1), "tokens": b["input_ids"].astype(np.float32)}
    for b in batches
  ]
  gathered = gather_outputs(batches, outputs, ("tokens",))
  np.testing.assert_array_equal(gathered["length"][:7], lengths)
  np.testing.assert_array_equal(gathered["tokens"][:7, :32][mask == 1], 5)

"""The pretraining job end to end: learns, resumes bit for bit, refuses foreign checkpoints."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import assert_bitwise_equal, saved_state, xla_flags
from helpers.pretraining import tiny_config

from train import hf, loop
from train import mesh as mesh_lib
from train import step as step_lib
from train.errors import UserError
from train.losses import PretrainingObjective
from train.profiling import train_flops_per_step
from train.state import create_train_state
from train.tasks import build_task
from train.writers import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_loss_falls_and_logs_are_written(tmp_path):
  config = tiny_config(
    tmp_path, **{"optimizer.total_steps": 30, "log_every_steps": 5, "eval_every_steps": 15}
  )
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  train = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
  assert train[-1]["mlm_loss"] < train[0]["mlm_loss"] - 0.5
  assert {
    "loss",
    "mlm_accuracy",
    "nsp_accuracy",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "step_time",
    "data_wait_time",
    "model_tflops_per_second",
  } <= set(train[0])
  assert "mfu" not in train[0]  # no known peak for a CPU
  for row in train:
    assert 0 < row["data_wait_time"] < row["step_time"]
    assert row["model_tflops_per_second"] == pytest.approx(
      train_flops_per_step(config_model(config), 8, 32, 5) / row["step_time"] / 1e12, rel=1e-6
    )
  assert os.path.getsize(tmp_path / "run" / "loss_curves.png") > 5000
  assert os.listdir(tmp_path / "run" / "tensorboard")


def test_mlm_alone_learns_and_leaves_the_nsp_head_untouched(tmp_path):
  config = tiny_config(
    tmp_path,
    **{
      "data.next_sentence": False,
      "optimizer.total_steps": 30,
      "optimizer.weight_decay": 0.0,
      "checkpoint.every_steps": 10,
    },
  )
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  rows = read_metrics(tmp_path / "run")
  train = [r for r in rows if r["split"] == "train"]
  assert train[-1]["mlm_loss"] < train[0]["mlm_loss"] - 0.5
  assert train[-1]["loss"] == pytest.approx(train[-1]["mlm_loss"])
  assert not any(key.startswith("nsp") for row in rows for key in row)
  # no gradient reaches the NSP head or the pooler (only NSP reads it)
  _, start, _ = hf.read_workdir_params(str(tmp_path / "run"), step=10)
  _, end, step = hf.read_workdir_params(str(tmp_path / "run"))
  assert step == 30
  for a, b in ((start["nsp"], end["nsp"]), (start["bert"]["pooler"], end["bert"]["pooler"])):
    jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(start["mlm"]["bias"], end["mlm"]["bias"])


def test_sentence_order_trains_the_nsp_head_and_needs_sentence_pairs(tmp_path):
  sop = {"data.sentence_order": True, "optimizer.total_steps": 4}
  loop.train_and_evaluate(
    tiny_config(tmp_path, **sop, **{"checkpoint.every_steps": 2}), str(tmp_path / "run")
  )
  rows = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
  assert rows[-1]["loss"] == pytest.approx(rows[-1]["mlm_loss"] + rows[-1]["nsp_loss"])
  _, start, _ = hf.read_workdir_params(str(tmp_path / "run"), step=2)
  _, end, _ = hf.read_workdir_params(str(tmp_path / "run"))
  assert not np.array_equal(start["nsp"]["kernel"], end["nsp"]["kernel"])
  # The in-memory path made SOP pairs, not NSP pairs: the same step's batch differs.
  sop_batch = build_task(tiny_config(tmp_path, **sop), str(tmp_path / "t1")).train_data.batch(0)
  nsp_batch = build_task(tiny_config(tmp_path), str(tmp_path / "t2")).train_data.batch(0)
  assert not np.array_equal(sop_batch["input_ids"], nsp_batch["input_ids"])
  with pytest.raises(UserError, match="set data.next_sentence=True"):
    loop.train_and_evaluate(
      tiny_config(tmp_path, **sop, **{"data.next_sentence": False}), str(tmp_path / "mlm")
    )


@pytest.mark.slow
def test_packed_mlm_rows_learn_compile_once_and_resume_bitwise(tmp_path, caplog):
  """data.packing=True: several documents' examples a row, each in its own segment."""
  packed = {"data.next_sentence": False, "data.packing": True}
  config = tiny_config(tmp_path, **packed, **{"optimizer.total_steps": 30})
  with caplog.at_level("INFO"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert caplog.text.count("train step compiles for batch length") == 1
  train = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
  assert train[-1]["mlm_loss"] < train[0]["mlm_loss"] - 0.5
  loop.train_and_evaluate(tiny_config(tmp_path, **packed), str(tmp_path / "straight"))
  loop.train_and_evaluate(tiny_config(tmp_path, **packed, stop_at_step=3), str(tmp_path / "b"))
  loop.train_and_evaluate(tiny_config(tmp_path, **packed), str(tmp_path / "b"))
  step_a, a = saved_state(str(tmp_path / "straight"))
  step_b, b = saved_state(str(tmp_path / "b"))
  assert step_a == step_b == 8
  assert_bitwise_equal(a, b)
  with pytest.raises(Exception, match="data.next_sentence=False"):
    loop.train_and_evaluate(tiny_config(tmp_path, **{"data.packing": True}), str(tmp_path / "c"))


def config_model(config):
  from model.config import BertConfig

  return BertConfig.from_dict(config.model)


def test_profile_steps_write_a_trace_for_tensorboard(tmp_path):
  workdir = tmp_path / "run"
  config = tiny_config(tmp_path, **{"optimizer.total_steps": 6, "profile_steps": 2})
  loop.train_and_evaluate(config, str(workdir))
  traces = list((workdir / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 1000


@pytest.mark.slow
def test_exported_workdir_loads_in_transformers(tmp_path):
  from transformers import BertForPreTraining

  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(tmp_path, **{"optimizer.total_steps": 4}), workdir)
  config, params, step = hf.read_workdir_params(workdir)
  assert step == 4 and config.hidden_size == 32
  hf.save_hf_checkpoint(str(tmp_path / "hf"), params, config)
  torch_model = BertForPreTraining.from_pretrained(str(tmp_path / "hf"))
  np.testing.assert_array_equal(
    torch_model.bert.encoder.layer[1].intermediate.dense.weight.detach().numpy(),
    params["bert"]["encoder"]["layers"]["ffn"]["intermediate"]["kernel"][1].T,
  )


@pytest.mark.slow
def test_resume_is_bitwise_exact(tmp_path):
  config = tiny_config(tmp_path)
  loop.train_and_evaluate(config, str(tmp_path / "straight"))
  loop.train_and_evaluate(tiny_config(tmp_path, stop_at_step=3), str(tmp_path / "resumed"))
  assert saved_state(str(tmp_path / "resumed"))[0] == 3
  loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  step_a, a = saved_state(str(tmp_path / "straight"))
  step_b, b = saved_state(str(tmp_path / "resumed"))
  assert step_a == step_b == 8
  assert_bitwise_equal(a, b)


def test_a_run_stopped_before_its_final_metrics_writes_them_when_run_again(tmp_path):
  """Killed after its last checkpoint, before final_metrics.json (while it evaluated): run
  again, it evaluates that checkpoint and ends with the metrics the finished run had."""
  config = tiny_config(tmp_path)
  workdir = tmp_path / "run"
  finished = loop.train_and_evaluate(config, str(workdir))
  (workdir / "final_metrics.json").unlink()
  again = loop.train_and_evaluate(config, str(workdir))
  assert (workdir / "final_metrics.json").exists()
  assert again["step"] == finished["step"] == 8
  for key in ("loss", "mlm_accuracy", "nsp_accuracy"):
    assert again[key] == pytest.approx(finished[key], rel=1e-6), key
  assert saved_state(str(workdir))[0] == 8  # nothing trained again


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(tmp_path):
  """A process killed mid-run (no chance to save) resumes from its last checkpoint."""
  config = tiny_config(tmp_path, **{"optimizer.total_steps": 60, "checkpoint.every_steps": 5})
  loop.train_and_evaluate(config, str(tmp_path / "straight"))
  workdir = str(tmp_path / "killed")
  args = [
    sys.executable,
    "-m",
    "train.main",
    f"--config={REPO}/tests/helpers/pretraining_config.py",
    f"--workdir={workdir}",
    f"--config.data.paths={config.data.paths}",
    f"--config.data.vocab={config.data.vocab}",
  ]
  env = dict(
    os.environ, PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests"), JAX_PLATFORMS="cpu"
  )
  env["XLA_FLAGS"] = xla_flags(8)
  process = subprocess.Popen(
    args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  checkpoints = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and process.poll() is None:
    steps = [d for d in os.listdir(checkpoints)] if os.path.isdir(checkpoints) else []
    if any(d.isdigit() and int(d) >= 10 for d in steps):
      break
    time.sleep(0.2)
  assert process.poll() is None, "the run ended before it could be killed"
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_at, _ = saved_state(workdir)
  assert 10 <= killed_at < 60
  loop.train_and_evaluate(config, workdir)
  _, a = saved_state(str(tmp_path / "straight"))
  _, b = saved_state(workdir)
  assert_bitwise_equal(a, b)


@pytest.mark.slow
def test_checkpoint_from_another_config_is_refused_and_kept(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(tmp_path, stop_at_step=2), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  _, saved = saved_state(workdir)
  other = tiny_config(tmp_path, **{"model.hidden_size": 64})
  with pytest.raises(ValueError, match=r"config.model.hidden_size: checkpoint 32, config 64"):
    loop.train_and_evaluate(other, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert_bitwise_equal(saved, saved_state(workdir)[1])


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(tmp_path):
  """SGD's update is the gradient itself (times lr), so params compare the gradients.

  (Adam's first step, g / (|g| + eps), turns float rounding of near-zero
  gradients into O(lr) differences, so it would test Adam, not accumulation.)
  """
  config = tiny_config(
    tmp_path, **{"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}
  )
  task = build_task(config, str(tmp_path))
  mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
  rules = mesh_lib.DEFAULT_RULES
  tx = optax.sgd(0.5)
  batch = mesh_lib.shard_batch(task.train_data.batch(0), mesh, rules)
  results = []
  for accum in (1, 4):
    graphdef, state, frozen, _ = create_train_state(task.model_factory, tx, mesh, rules, seed=0)
    step = jax.jit(
      step_lib.make_train_step(graphdef, tx, PretrainingObjective(), grad_accum_steps=accum)
    )
    with mesh_lib.activate(mesh, rules):
      state, metrics = step(state, frozen, batch)
    results.append((jax.device_get(nnx.to_pure_dict(state.params)), jax.device_get(metrics)))
  (big, big_metrics), (accumulated, acc_metrics) = results
  np.testing.assert_allclose(acc_metrics["total_loss"], big_metrics["total_loss"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(big), jax.tree.leaves(accumulated)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  for key in ("mlm_loss", "mlm_correct", "mlm_count", "nsp_loss", "nsp_correct"):
    np.testing.assert_allclose(acc_metrics[key], big_metrics[key], rtol=1e-5)

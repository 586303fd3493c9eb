"""Two processes x 4 CPU devices train exactly like one process x 8 devices, on prepared
shards (data.prepare), each process reading only its own rows of every batch."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import saved_state, xla_flags
from helpers.pretraining import tiny_config

from data import prepare
from train import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_reach_the_loss_and_params_of_one(tmp_path):
  steps = 4
  overrides = {
    "optimizer.total_steps": steps,
    "eval_every_steps": steps,
    "checkpoint.every_steps": steps,
    "model.hidden_dropout_prob": 0.0,
    "model.attention_probs_dropout_prob": 0.0,
  }
  config = tiny_config(tmp_path, **overrides)
  shards = str(tmp_path / "shards")
  prepare.prepare(config, shards, workers=1)
  config.data.update(source="prepared", paths=shards)
  single = loop.train_and_evaluate(config, str(tmp_path / "one_process"))

  port = _free_port()
  workdir = str(tmp_path / "two_processes")
  env = dict(
    os.environ,
    PYTHONPATH=REPO + os.pathsep + os.path.join(REPO, "tests"),
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=xla_flags(4),
  )
  processes = []
  for process_id in range(2):
    args = [
      sys.executable,
      "-m",
      "train.main",
      f"--config={REPO}/tests/helpers/pretraining_config.py",
      f"--workdir={workdir}",
      "--config.data.source=prepared",
      f"--config.data.paths={shards}",
      f"--config.data.vocab={config.data.vocab}",
      f"--config.optimizer.total_steps={steps}",
      f"--config.eval_every_steps={steps}",
      f"--config.checkpoint.every_steps={steps}",
      "--config.model.hidden_dropout_prob=0.0",
      "--config.model.attention_probs_dropout_prob=0.0",
      f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2",
      f"--process_id={process_id}",
    ]
    log = open(tmp_path / f"process_{process_id}.log", "w")
    processes.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=log))
  codes = [p.wait(timeout=300) for p in processes]
  assert codes == [0, 0], (tmp_path / "process_0.log").read_text()[-3000:]

  _, one = saved_state(str(tmp_path / "one_process"))
  step, two = saved_state(workdir)
  assert step == steps
  import jax

  for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(two["params"])):
    np.testing.assert_allclose(a, b, atol=1e-5)
  import json

  final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  assert abs(final["loss"] - single["loss"]) < 1e-4

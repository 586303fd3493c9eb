"""The README's main command, as written, from a fresh copy of the tree.

`bash launch/local.sh` with its relative default workdir (workdirs/bert_tiny),
cut to a few steps through the launcher's STEPS variable. A unit test that
passes an absolute tmp_path cannot see what broke here once: Orbax refusing
the relative checkpoint path at the first save.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from train.writers import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12


def copy_tree(destination: str) -> None:
  """The files a clone of this tree would hold: tracked and untracked-but-not-ignored."""
  listed = subprocess.run(
    ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    cwd=REPO,
    capture_output=True,
  )
  if listed.returncode != 0:  # not a git checkout: copy all but the build outputs
    shutil.copytree(
      REPO,
      destination,
      dirs_exist_ok=True,
      ignore=shutil.ignore_patterns(
        ".git", ".venv", "workdirs", "__pycache__", ".pytest_cache", "*.egg-info"
      ),
    )
    return
  for relative in filter(None, listed.stdout.decode().split("\0")):
    source = os.path.join(REPO, relative)
    if os.path.isfile(source):
      os.makedirs(os.path.join(destination, os.path.dirname(relative)), exist_ok=True)
      shutil.copy2(source, os.path.join(destination, relative))


def run_main_command(tree: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, STEPS=str(STEPS), VENV=sys.prefix)
  env.pop("WORKDIR", None)
  env.pop("XLA_FLAGS", None)  # the README's job runs on the machine's one CPU device
  return subprocess.run(
    ["bash", "launch/local.sh"], cwd=tree, env=env, capture_output=True, text=True, timeout=900
  )


@pytest.mark.slow
def test_main_command_runs_checkpoints_and_resumes_from_a_fresh_copy(tmp_path):
  if not os.path.isfile(os.path.join(sys.prefix, ".installed")):
    pytest.skip(f"{sys.prefix} was not made by launch/local.sh (no .installed marker)")
  tree = str(tmp_path / "fresh")
  copy_tree(tree)
  # The copy runs on this venv: it must not look newer than the install, or the
  # launcher would reinstall this venv from the copy.
  installed = os.path.getmtime(os.path.join(sys.prefix, ".installed"))
  os.utime(os.path.join(tree, "pyproject.toml"), (installed - 1, installed - 1))
  workdir = os.path.join(tree, "workdirs", "bert_tiny")  # the README's relative default

  first = run_main_command(tree)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "Traceback" not in first.stderr
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps[-1] == STEPS and len(steps) == 3  # every quarter, max_to_keep 3
  assert not [d for d in os.listdir(os.path.join(workdir, "checkpoints")) if "tmp" in d]
  train_rows = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert train_rows[-1]["step"] == STEPS
  assert train_rows[-1]["mlm_loss"] < train_rows[0]["mlm_loss"]
  assert any(
    f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard"))
  )
  assert os.path.getsize(os.path.join(workdir, "loss_curves.png")) > 5000
  with open(os.path.join(workdir, "final_metrics.json")) as f:
    assert json.load(f)["step"] == STEPS
  rows_before = len(read_metrics(workdir))

  second = run_main_command(tree)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f"resumed from step {STEPS}" in second.stderr
  assert f"is already at step {STEPS} of {STEPS}: nothing to train" in second.stderr
  assert "had already finished; its final metrics are in" in second.stderr
  assert "'mlm_accuracy'" in second.stderr.split("final eval:")[-1]  # the metrics, not {}
  assert len(read_metrics(workdir)) == rows_before  # nothing logged twice
  assert (
    sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == steps
  )

  # The README's export line, relative paths and all.
  export = subprocess.run(
    [
      sys.executable,
      "-m",
      "train.hf",
      "export",
      "--workdir=workdirs/bert_tiny",
      "--out=workdirs/bert_tiny_hf",
    ],
    cwd=tree,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert export.returncode == 0, export.stderr[-3000:]
  assert f"wrote step {STEPS} of workdirs/bert_tiny" in export.stdout
  assert os.path.isfile(os.path.join(tree, "workdirs", "bert_tiny_hf", "model.safetensors"))

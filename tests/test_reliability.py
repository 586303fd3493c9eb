"""What goes wrong in real runs is caught, named, and loses nothing saved.

Divergence stops the run before a NaN state is saved; a damaged newest
checkpoint is set aside and the run resumes, bit for bit, from the one before;
a second job on a live workdir is refused, a dead job's lock is not.
"""

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import absl_records_in, saved_state
from helpers import finetune as ff
from helpers.pretraining import tiny_config

from data.tokenizer import load_tokenizer
from train import loop
from train.checkpoint import read_on_host
from train.errors import NonFiniteError, UserError
from train.tasks import build_task
from train.workdir import LEASE_SECONDS
from train.writers import read_metrics


def steps_in(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


@pytest.mark.slow
def test_divergence_stops_before_saving_and_keeps_the_last_finite_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(tmp_path, **{"checkpoint.max_to_keep": 2, "stop_at_step": 4})
  loop.train_and_evaluate(config, workdir)
  assert steps_in(workdir) == [2, 4]
  before = saved_state(workdir, 4)[1]

  # The same run, resumed with a learning rate that blows it up.
  config = tiny_config(tmp_path, **{"checkpoint.max_to_keep": 2, "optimizer.lr": 1e10})
  with pytest.raises(NonFiniteError, match=r"training diverged at step (6|8)") as raised:
    loop.train_and_evaluate(config, workdir)
  message = str(raised.value)
  assert "Stopped without saving" in message
  assert f"the newest checkpoint, step 4 in {workdir}/checkpoints, is finite and kept" in message
  assert steps_in(workdir) == [2, 4]  # rotation did not push the finite ones out
  for step in (2, 4):
    floats = [x for x in jax.tree.leaves(saved_state(workdir, step)[1]) if x.dtype.kind == "f"]
    assert len(floats) > 10 and all(np.isfinite(x).all() for x in floats)
  jax.tree.map(np.testing.assert_array_equal, saved_state(workdir, 4)[1], before)


@pytest.mark.slow
def test_divergence_before_the_first_checkpoint_says_none_was_written(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(
    tmp_path,
    **{
      "optimizer.lr": 1e10,
      "optimizer.warmup_steps": 0,
      "optimizer.clip_norm": 0.0,
      "checkpoint.every_steps": 8,
    },
  )
  with pytest.raises(NonFiniteError, match="no checkpoint was written yet"):
    loop.train_and_evaluate(config, workdir)
  assert not os.path.isdir(os.path.join(workdir, "checkpoints")) or steps_in(workdir) == []


def truncate_largest_array_file(step_dir):
  data = os.path.join(step_dir, "state", "d")  # the arrays' chunks, as a restore reads them
  files = [os.path.join(data, f) for f in os.listdir(data)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  return largest


def delete_state_metadata(step_dir):
  path = os.path.join(step_dir, "state", "_METADATA")
  os.remove(path)
  return path


@pytest.mark.slow
@pytest.mark.parametrize("damage", [truncate_largest_array_file, delete_state_metadata])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_exactly(
  tmp_path, caplog, damage
):
  config = tiny_config(tmp_path, **{"checkpoint.max_to_keep": 3})
  straight = str(tmp_path / "straight")
  loop.train_and_evaluate(config, straight)

  workdir = str(tmp_path / "damaged")
  loop.train_and_evaluate(tiny_config(tmp_path, **{"stop_at_step": 6}), workdir)
  assert steps_in(workdir) == [2, 4, 6]
  damage(os.path.join(workdir, "checkpoints", "6"))

  with absl_records_in(caplog):
    loop.train_and_evaluate(config, workdir)
  warned = "\n".join(r.getMessage() for r in caplog.records)
  assert "Checkpoint 6 in" in warned and "is damaged" in warned
  assert "Resuming from checkpoint 4" in warned and "6.damaged" in warned
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "6.damaged"))  # kept, not deleted
  assert steps_in(workdir)[-1] == 8
  jax.tree.map(np.testing.assert_array_equal, saved_state(workdir)[1], saved_state(straight)[1])


@pytest.mark.slow
def test_no_readable_checkpoint_names_each_one(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(tmp_path, **{"stop_at_step": 4}), workdir)
  for step in steps_in(workdir):
    delete_state_metadata(os.path.join(workdir, "checkpoints", str(step)))
  with pytest.raises(UserError, match=r"no checkpoint in .* can be read: step 4 .*step 2") as e:
    loop.train_and_evaluate(tiny_config(tmp_path), workdir)
  assert "run again to start from step 0" in str(e.value)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2.damaged", "4.damaged"]


def write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  record = {"host": socket.gethostname(), "started": time.time() - 60, "refreshed": time.time()}
  record.update(holder)
  with open(os.path.join(workdir, "lock.json"), "w") as f:
    json.dump(record, f)
  return record


def test_a_second_job_on_a_live_workdir_stops_at_once_and_names_the_first(tmp_path):
  workdir = str(tmp_path / "run")
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    record = write_lock(workdir, pid=other.pid)
    with pytest.raises(UserError, match=rf"in use by another job \(pid {other.pid} on "):
      loop.train_and_evaluate(tiny_config(tmp_path), workdir)
  finally:
    other.kill()
    other.wait()
  with open(os.path.join(workdir, "lock.json")) as f:
    assert json.load(f) == record  # the other job's lock is untouched
  assert sorted(os.listdir(workdir)) == ["lock.json"]  # nothing written beside it


@pytest.mark.parametrize(
  "holder",
  [
    {"pid": "dead"},  # this host, a pid that has exited
    {"host": "another-host", "pid": 1, "refreshed": time.time() - 2 * LEASE_SECONDS},
  ],
  ids=["dead_pid_here", "expired_lease_elsewhere"],
)
def test_a_stale_lock_does_not_block_a_restart(tmp_path, holder):
  workdir = str(tmp_path / "run")
  if holder["pid"] == "dead":
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    holder = dict(holder, pid=gone.pid)
  write_lock(workdir, **holder)
  loop.train_and_evaluate(tiny_config(tmp_path, **{"optimizer.total_steps": 2}), workdir)
  assert steps_in(workdir) == [2]
  assert not os.path.exists(os.path.join(workdir, "lock.json"))  # released at the end


def test_a_fresh_lease_from_another_host_blocks(tmp_path):
  workdir = str(tmp_path / "run")
  write_lock(workdir, host="pod-worker-0", pid=1)
  with pytest.raises(UserError, match=r"pid 1 on pod-worker-0, started .* last seen \d+ s ago"):
    loop.train_and_evaluate(tiny_config(tmp_path), workdir)


@pytest.mark.slow
def test_a_resumed_run_logs_each_step_once(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny_config(tmp_path, **{"checkpoint.max_to_keep": 4})
  loop.train_and_evaluate(config, workdir)
  straight = {(r["step"], r["split"]): r for r in read_metrics(workdir)}
  # As if the job had been killed after logging step 8 with only step 4 saved.
  for step in (6, 8):
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  loop.train_and_evaluate(config, workdir)
  rows = [(r["step"], r["split"]) for r in read_metrics(workdir)]
  assert len(rows) == len(set(rows)) and set(rows) == set(straight)
  for row in read_metrics(workdir):  # the rerun steps log what the first run logged
    assert row.get("loss") == straight[(row["step"], row["split"])].get("loss")


def test_a_hub_vocab_that_cannot_be_resolved_is_an_error_not_five_tokens():
  with pytest.raises(FileNotFoundError, match=r"vocab 'no-such-org/no-such-bert' is not a file"):
    load_tokenizer("no-such-org/no-such-bert")


@pytest.mark.parametrize(
  "make_config, train_file",
  [
    (ff.classification_config, "train.tsv"),
    (ff.ner_config, "train.conll"),
    (ff.squad_config, "train.json"),
  ],
  ids=["classification", "ner", "squad"],
)
def test_a_vocab_that_maps_the_training_text_to_unk_stops_the_run(
  tmp_path, make_config, train_file
):
  config = make_config(tmp_path)
  with open(config.data.vocab, "w") as f:  # the specials and one word: the rest is [UNK]
    f.write("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
  with pytest.raises(ValueError, match=rf"\d+\.\d% of the tokens of .*{train_file} are \[UNK\]"):
    build_task(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_predict_on_an_unfinished_run_warns_and_names_the_step(tmp_path, caplog):
  from train.predict import Predictor

  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(ff.classification_config(tmp_path, stop_at_step=2), workdir)
  assert not os.listdir(os.path.join(workdir, "best", "checkpoints"))  # never evaluated
  with absl_records_in(caplog):
    predictor = Predictor(workdir)
    warned = "\n".join(r.getMessage() for r in caplog.records)
    caplog.clear()
    chosen = Predictor(workdir, step=2)
  assert predictor.step == 2
  assert f"{workdir} has no best checkpoint" in warned and "using its newest, step 2" in warned
  assert "--step=N picks another" in warned
  assert chosen.step == 2 and "no best checkpoint" not in caplog.text


@pytest.mark.slow
def test_unfinished_saves_of_a_killed_run_are_removed_with_a_note(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  config = tiny_config(tmp_path, **{"optimizer.total_steps": 4})
  loop.train_and_evaluate(tiny_config(tmp_path, **{"stop_at_step": 2}), workdir)
  stray = os.path.join(workdir, "checkpoints", "4.orbax-checkpoint-tmp-1764633600")
  os.makedirs(os.path.join(stray, "state"))  # what a SIGKILL during a save leaves
  read_on_host(os.path.join(workdir, "checkpoints"))  # a reader leaves it alone
  assert os.path.isdir(stray)
  with absl_records_in(caplog):
    loop.train_and_evaluate(config, workdir)
  assert "Removing 1 unfinished save(s)" in caplog.text and "4.orbax-checkpoint-tmp" in caplog.text
  assert not os.path.exists(stray) and steps_in(workdir) == [2, 4]


@pytest.mark.slow
def test_resuming_with_another_optimizer_says_so(tmp_path):
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(tmp_path, **{"stop_at_step": 2}), workdir)
  with pytest.raises(UserError, match=r"checkpoint 2 in .* holds a state of another layout"):
    loop.train_and_evaluate(tiny_config(tmp_path, **{"optimizer.name": "sgd"}), workdir)
  assert steps_in(workdir) == [2]  # not mistaken for damage: nothing set aside


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_a_missing_or_empty_init_hf_dir_is_named_as_such(tmp_path, kind):
  hf_dir = tmp_path / "minilm"
  if kind == "empty":
    hf_dir.mkdir()
  config = ff.classification_config(tmp_path, **{"init.hf_dir": str(hf_dir), "data.vocab": ""})
  expected = "does not exist" if kind == "missing" else r"holds no config.json \(it holds nothing\)"
  with pytest.raises(FileNotFoundError, match=rf"init.hf_dir={hf_dir} {expected}"):
    build_task(config, str(tmp_path / "run"))


def test_a_batch_the_mesh_cannot_split_is_refused_before_the_workdir_exists(tmp_path):
  workdir = tmp_path / "run"
  config = tiny_config(tmp_path, **{"batch_size": 6})  # 8 devices on the data axis
  with pytest.raises(
    ValueError,
    match=r"batch_size=6 does not split over the 8 batch shards of "
    r"the mesh \(data=8 × fsdp=1 of 8 devices\): use a batch_size that is a "
    r"multiple of 8",
  ):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


class _BrokenRows:
  """The task's training data, with one step that raises as a bad row would."""

  def __init__(self, data, bad_step: int):
    self._data, self._bad_step = data, bad_step

  def batch(self, step, *args):
    if step == self._bad_step:
      raise ValueError(f"row {step} of train.txt is broken")
    return self._data.batch(step, *args)

  def __getattr__(self, name):
    return getattr(self._data, name)


@pytest.mark.slow
def test_an_error_inside_the_loop_closes_the_checkpoints_and_keeps_every_save(
  tmp_path, monkeypatch
):
  """Not a NaN, not a refusal: any error between steps still waits for the async saves and
  closes every checkpoint manager (no orbax thread left to die at interpreter exit)."""
  closed = []
  close = loop.Checkpointer.close
  monkeypatch.setattr(
    loop.Checkpointer, "close", lambda self: (closed.append(str(self.directory)), close(self))
  )
  build_run = loop.build_run

  def build_with_a_broken_row(config, workdir):
    run = build_run(config, workdir)
    run.task = dataclasses.replace(run.task, train_data=_BrokenRows(run.task.train_data, 5))
    return run

  monkeypatch.setattr(loop, "build_run", build_with_a_broken_row)
  workdir = str(tmp_path / "run")
  config = tiny_config(tmp_path, **{"checkpoint.async_save": True})
  with pytest.raises(ValueError, match="row 5 of train.txt is broken"):
    loop.train_and_evaluate(config, workdir)
  assert closed and all(path.endswith("checkpoints") for path in closed)
  assert steps_in(workdir) == [2, 4]
  assert [row["step"] for row in read_metrics(workdir) if row.get("split") == "eval"] == [4]

"""Metrics reach TensorBoard, metrics.jsonl and the loss-curve PNG; disabled writers write none."""

import glob
import io
import math
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from train import writers


def read_tensorboard_scalars(logdir) -> dict:
  """{(tag, step): value} from every event file, checking each record's CRCs.

  tensorboard itself is not installed, so this reads the TFRecord framing
  (length, crc, payload, crc) and decodes tensorboardX's Event protobuf.
  """
  scalars = {}
  for path in glob.glob(os.path.join(str(logdir), "events.out.tfevents.*")):
    data = io.BytesIO(open(path, "rb").read())
    while header := data.read(8):
      assert struct.unpack("I", data.read(4))[0] == masked_crc32c(header)
      payload = data.read(struct.unpack("Q", header)[0])
      assert struct.unpack("I", data.read(4))[0] == masked_crc32c(payload)
      event = event_pb2.Event.FromString(payload)
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = value.simple_value
  return scalars


def write_a_short_run(workdir):
  with writers.MetricWriter(workdir) as writer:
    for step in range(0, 100, 10):
      writer.write(step, {"loss": np.float32(5.0 - 0.04 * step), "lr": 1e-4})
      if step % 50 == 40:
        writer.write(step, {"loss": 4.5 - 0.03 * step, "accuracy": 0.5 + step / 400}, split="eval")


def test_metrics_jsonl_reads_back_what_was_written(tmp_path):
  write_a_short_run(tmp_path)
  records = writers.read_metrics(tmp_path)
  assert len(records) == 12
  assert records[0] == {"step": 0, "split": "train", "loss": 5.0, "lr": 1e-4}
  assert records[-2] == {"step": 90, "split": "train", "loss": pytest.approx(1.4), "lr": 1e-4}
  evals = [r for r in records if r["split"] == "eval"]
  assert evals == [
    {"step": 40, "split": "eval", "loss": pytest.approx(3.3), "accuracy": 0.6},
    {"step": 90, "split": "eval", "loss": pytest.approx(1.8), "accuracy": 0.725},
  ]


def test_nan_loss_survives_the_round_trip(tmp_path):
  with writers.MetricWriter(tmp_path) as writer:
    writer.write(1, {"loss": float("nan")})
  assert math.isnan(writers.read_metrics(tmp_path)[0]["loss"])


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
  write_a_short_run(tmp_path)
  scalars = read_tensorboard_scalars(tmp_path / "tensorboard")
  assert scalars[("train/loss", 50)] == pytest.approx(3.0)
  assert scalars[("eval/accuracy", 90)] == pytest.approx(0.725)
  assert len([tag for tag, _ in scalars if tag == "train/lr"]) == 10


def test_flush_puts_metrics_jsonl_on_disk_while_the_writer_is_open(tmp_path):
  writer = writers.MetricWriter(tmp_path)
  writer.write(7, {"loss": 2.5})
  writer.flush()
  assert writers.read_metrics(tmp_path) == [{"step": 7, "split": "train", "loss": 2.5}]
  writer.close()
  assert read_tensorboard_scalars(tmp_path / "tensorboard")[("train/loss", 7)] == 2.5


def test_plot_writes_a_png_with_train_and_eval_curves(tmp_path):
  write_a_short_run(tmp_path)
  path = writers.plot_loss_curves(tmp_path, keys=("loss", "accuracy", "absent"))
  assert path == str(tmp_path / "loss_curves.png")
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 5_000


def test_plot_without_any_requested_key_says_which(tmp_path):
  write_a_short_run(tmp_path)
  with pytest.raises(ValueError, match="none of the keys \\['f1'\\]"):
    writers.plot_loss_curves(tmp_path, keys=("f1",))


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  with writers.MetricWriter(workdir, enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
    writer.flush()
  assert not workdir.exists()


def test_progress_bar_counts_from_the_resumed_step(capsys):
  bar = writers.progress(total=100, initial=40, desc="train")
  bar.update(10)
  assert bar.n == 50 and bar.total == 100
  bar.close()
  assert "train" in capsys.readouterr().err
  silent = writers.progress(total=10, enabled=False)
  silent.update(5)
  silent.close()


@pytest.fixture
def bucket(tmp_path):
  """gs:// served by an in-memory fsspec filesystem: what gcsfs does, without a network."""
  import fsspec
  from fsspec.implementations.memory import MemoryFileSystem

  class FakeGcs(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store, pseudo_dirs = {}, [""]

    def __init__(self, *args, finalize_on_close=True, **kwargs):
      super().__init__(*args, **kwargs)

  fsspec.register_implementation("gs", FakeGcs, clobber=True)
  fsspec.register_implementation("gcs", FakeGcs, clobber=True)
  FakeGcs.clear_instance_cache()
  yield FakeGcs
  FakeGcs.store.clear()
  fsspec.register_implementation("gs", "gcsfs.GCSFileSystem", clobber=True)
  fsspec.register_implementation("gcs", "gcsfs.GCSFileSystem", clobber=True)
  FakeGcs.clear_instance_cache()


def test_a_bucket_workdir_gets_metrics_tensorboard_and_curves(bucket, tmp_path):
  workdir = "gs://runs/sst2"
  with writers.MetricWriter(workdir) as writer:
    writer.write(1, {"loss": 2.0})
    writer.flush()  # what the loop does at every checkpoint
    assert [r["loss"] for r in writers.read_metrics(workdir)] == [2.0]
    writer.write(2, {"loss": 1.5})
  with writers.MetricWriter(workdir) as writer:  # a resumed run appends
    writer.write(3, {"loss": 1.0})
  assert [(r["step"], r["loss"]) for r in writers.read_metrics(workdir)] == [
    (1, 2.0),
    (2, 1.5),
    (3, 1.0),
  ]
  events = [p for p in bucket.store if "/runs/sst2/tensorboard/events.out.tfevents" in p]
  assert len(events) == 2  # one event file per writer, copied up from local staging
  local = tmp_path / "events"
  local.mkdir()
  for i, path in enumerate(events):
    (local / f"events.out.tfevents.{i}").write_bytes(bucket.store[path].getvalue())
  assert read_tensorboard_scalars(local) == {
    ("train/loss", 1): 2.0,
    ("train/loss", 2): 1.5,
    ("train/loss", 3): 1.0,
  }
  png = writers.plot_loss_curves(workdir)
  assert png == "gs://runs/sst2/loss_curves.png"
  assert bucket.store["gs://runs/sst2/loss_curves.png"].getvalue()[:4] == b"\x89PNG"
  assert not os.path.exists("gs:")  # nothing went to a local folder named like the URL


def test_run_files_go_to_a_bucket_workdir(bucket, tmp_path):
  import json
  import types

  import ml_collections
  from etils import epath
  from helpers import finetune as ff

  from data.tokenizer import load_tokenizer
  from train import loop

  tokenizer = load_tokenizer(ff.write_vocab(tmp_path / "vocab.txt"))
  task = types.SimpleNamespace(labels=["neg", "pos"], tokenizer=tokenizer)
  loop.save_run_files(ml_collections.ConfigDict({"task": "classification"}), task, "gs://runs/c")
  assert json.loads(epath.Path("gs://runs/c/labels.json").read_text()) == ["neg", "pos"]
  assert json.loads(epath.Path("gs://runs/c/config.json").read_text()) == {"task": "classification"}
  tokenizer.save_pretrained(str(tmp_path / "local"))
  saved = sorted(p.name for p in (tmp_path / "local").iterdir())
  assert saved and sorted(p.name for p in epath.Path("gs://runs/c/tokenizer").iterdir()) == saved
  assert (epath.Path("gs://runs/c/tokenizer") / saved[0]).read_bytes() == (
    tmp_path / "local" / saved[0]
  ).read_bytes()


def test_wandb_mode_is_offline_without_an_api_key_and_the_environment_wins(tmp_path, monkeypatch):
  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
  monkeypatch.delenv("NETRC", raising=False)
  assert writers.wandb_mode() == "offline"
  assert writers.wandb_mode("disabled") == "disabled"
  monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
  assert writers.wandb_mode() == "online"
  (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "1" * 40)
  (tmp_path / ".netrc").chmod(0o600)  # netrc refuses a password file others can read
  monkeypatch.delenv("WANDB_API_KEY")
  assert writers.wandb_mode() == "online"
  monkeypatch.setenv("WANDB_MODE", "offline")
  assert writers.wandb_mode("online") == "offline"

"""Entry points report what a user can fix in one message; bugs keep their traceback."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=configs/pretrain/bert_tiny.py"


def run(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, **(env or {})),
  )


def test_an_unknown_config_key_names_the_flag_and_the_closest_keys(tmp_path):
  workdir = tmp_path / "run"
  result = run(
    "train.main",
    TINY,
    f"--workdir={workdir}",
    "--config.optimizer.learning_rate=1",
    "--config.batchsize=8",
  )
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-2] == (
    "error: --config.optimizer.learning_rate: configs/pretrain/bert_tiny.py has no key "
    "'optimizer.learning_rate'; did you mean optimizer.lr, optimizer.end_lr, "
    "optimizer.warmup_ratio?"
  )
  assert lines[-1].startswith(
    "--config.batchsize: configs/pretrain/bert_tiny.py has no key "
    "'batchsize'; did you mean batch_size"
  )
  assert not workdir.exists()


@pytest.mark.slow
def test_a_bad_value_is_one_line_and_verbose_keeps_the_traceback(tmp_path):
  args = ("train.main", TINY, f"--workdir={tmp_path / 'run'}", "--config.checkpoint.max_to_keep=0")
  short = run(*args)
  assert short.returncode == 1
  assert "Traceback" not in short.stderr
  assert "error: checkpoint.max_to_keep=0 must be >= 1 (or None for all)" in short.stderr
  verbose = run(*args, "--verbose")
  assert verbose.returncode == 1
  assert "Traceback" in verbose.stderr and "checkpoint.py" in verbose.stderr


@pytest.mark.slow
def test_a_missing_init_checkpoint_is_one_line(tmp_path):
  # The init is read once the workdir's checkpoint manager is open (train/loop.py closes it
  # on the way out; left open, orbax's thread can print a traceback at interpreter exit).
  data = tmp_path / "train.tsv"
  data.write_text("sentence\tlabel\n" + "".join(f"text {i}\t{i % 2}\n" for i in range(8)))
  result = run(
    "train.main",
    "--config=configs/finetune/classification.py:tiny",
    f"--workdir={tmp_path / 'run'}",
    f"--config.data.train_path={data}",
    f"--config.data.eval_path={data}",
    f"--config.init.checkpoint={tmp_path / 'pretrained'}",
    "--config.init.hf_dir=",
  )
  assert result.returncode == 1
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-2] == (
    f"error: init.checkpoint={tmp_path / 'pretrained'} does not exist: give the workdir of "
    "a pretraining run"
  )


@pytest.mark.slow
def test_predict_on_a_missing_workdir_is_one_line(tmp_path):
  result = run("train.predict", f"--workdir={tmp_path / 'nothing'}", "--text=hello")
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert f"error: {tmp_path / 'nothing' / 'config.json'} does not exist" in result.stderr


@pytest.mark.slow
def test_show_config_prints_every_field_with_its_value_and_comment():
  result = run(
    "train.main",
    "--config=configs/finetune/sst2.py:minilm",
    "--config.optimizer.lr=1e-4",
    "--show_config",
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert "optimizer.lr = 0.0001" in lines  # the override, not the default
  assert "model.hidden_size = 384" in lines  # the size the config's argument picked
  assert "batch_size = 32  # global, across all hosts and devices" in lines
  bucket = next(line for line in lines if line.startswith("data.bucket_lengths = 'auto'  # "))
  assert "one compile each" in bucket  # the block comment above the field
  assert "wandb.entity = ''  # a W&B team" in result.stdout  # a section built by a function
  assert len(lines) == len(set(lines)) > 100


def test_a_missing_workdir_is_named():
  result = run("train.main", TINY)
  assert result.returncode == 1
  assert "--workdir is required" in result.stderr and "Traceback" not in result.stderr


def test_compilation_cache_dir_prefers_the_flag_then_jax_variable_then_home():
  from train.cli import compilation_cache_dir

  assert compilation_cache_dir("/c", {"JAX_COMPILATION_CACHE_DIR": "/env"}) == "/c"
  assert compilation_cache_dir(None, {"JAX_COMPILATION_CACHE_DIR": "/env"}) == "/env"
  assert compilation_cache_dir(None, {}) == os.path.expanduser("~/.cache/bert-flax/xla")
  assert compilation_cache_dir("gs://b/xla", {}) == "gs://b/xla"
  assert compilation_cache_dir("none", {"JAX_COMPILATION_CACHE_DIR": "/env"}) is None


def test_a_cache_folder_that_cannot_be_made_turns_the_cache_off(tmp_path, monkeypatch, caplog):
  import jax

  from train.cli import enable_compilation_cache

  blocker = tmp_path / "a_file"
  blocker.write_text("")
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "kept"))
  try:
    assert enable_compilation_cache(str(blocker / "xla")) is None
    assert jax.config.jax_compilation_cache_dir is None
    assert "JAX_COMPILATION_CACHE_DIR" not in os.environ
    assert f"compilation cache off: cannot make {blocker / 'xla'}" in caplog.text
    assert enable_compilation_cache(str(tmp_path / "made")) == str(tmp_path / "made")
    assert (tmp_path / "made").is_dir()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "made")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.slow
def test_a_job_keeps_its_compilations_under_home_unless_told_none(tmp_path):
  # The default cache is ~/.cache/bert-flax/xla; HOME points at tmp_path, and the suite's
  # own cache variable is dropped so the default applies.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cache = tmp_path / ".cache" / "bert-flax" / "xla"

  def job(name, *flags):
    return subprocess.run(
      [sys.executable, "-m", "train.main", "--config=configs/pretrain/bert_tiny.py:4"]
      + [f"--workdir={tmp_path / name}", *flags],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env=env,
    )

  off = job("off", "--compilation_cache_dir=none")
  assert off.returncode == 0, off.stderr[-2000:]
  assert "compilation cache: off" in off.stderr
  assert not cache.exists()
  on = job("on")
  assert on.returncode == 0, on.stderr[-2000:]
  assert f"compilation cache: {cache}" in on.stderr
  assert len(list(cache.iterdir())) >= 2  # the train step and the eval step at least

"""The linear probe of pretraining runs (train/probe.py)."""

import numpy as np
import pytest
from helpers import pretraining as pf

from train import api, loop, probe
from train.writers import read_metrics


def test_ridge_probe_separates_separable_features_and_not_noise():
  rng = np.random.default_rng(0)
  y_train, y_eval = rng.integers(3, size=600), rng.integers(3, size=600)
  centers = rng.normal(size=(3, 16)) * 3
  x_train = centers[y_train] + rng.normal(size=(600, 16))
  x_eval = centers[y_eval] + rng.normal(size=(600, 16))
  assert probe.ridge_accuracy(x_train, y_train, x_eval, y_eval, 3, 1.0) > 0.97
  noise = rng.normal(size=(600, 16))
  chance = probe.ridge_accuracy(noise, y_train, rng.normal(size=(600, 16)), y_eval, 3, 1.0)
  assert 0.25 < chance < 0.42
  # the label is one feature's sign, among many noisy ones: a probe reads it off
  x = rng.normal(size=(3000, 64))
  labels = (x[:, 5] > 0).astype(int)
  assert probe.ridge_accuracy(x[:2000], labels[:2000], x[2000:], labels[2000:], 2, 1.0) > 0.9


def write_probe_tsv(path, n, seed):
  """Sentences of the pretraining helpers' words; the label says whether 'red' is in it."""
  rng = np.random.default_rng(seed)
  rows = ["sentence\tlabel"]
  for _ in range(n):
    label = int(rng.integers(2))
    words = [w for w in rng.choice(pf.WORDS, 6) if w != "red"] + (["red"] if label else [])
    rows.append(" ".join(words) + f"\t{label}")
  path.write_text("\n".join(rows) + "\n", encoding="utf-8")
  return str(path)


def test_a_run_reports_the_probe_of_its_saved_weights(tmp_path):
  config = pf.tiny_config(
    tmp_path,
    **{
      "probe.train_path": write_probe_tsv(tmp_path / "probe_train.tsv", 60, 0),
      "probe.eval_path": write_probe_tsv(tmp_path / "probe_dev.tsv", 30, 1),
      "data.next_sentence": False,
    },
  )
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  evals = [r for r in read_metrics(workdir) if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [4, 8] and all("probe_accuracy" in r for r in evals)
  # the same probe by hand, from the final checkpoint through the Python API
  model, tokenizer = api.load(workdir, head="none")

  def features(path):
    rows = [line.split("\t") for line in open(path).read().splitlines()[1:]]
    batch = tokenizer([t for t, _ in rows], padding=True, return_tensors="np")
    sequence = np.asarray(model(**batch)["sequence_output"], np.float64)
    mask = batch["attention_mask"][..., None]
    return (sequence * mask).sum(1) / mask.sum(1), np.array([int(label) for _, label in rows])

  (x, y), (x_eval, y_eval) = features(config.probe.train_path), features(config.probe.eval_path)
  expected = probe.ridge_accuracy(x, y, x_eval, y_eval, 2, config.probe.l2)
  assert evals[-1]["probe_accuracy"] == pytest.approx(expected, abs=1 / 30 + 1e-9)


def test_a_probe_without_eval_file_is_named(tmp_path):
  config = pf.tiny_config(
    tmp_path, **{"probe.train_path": write_probe_tsv(tmp_path / "p.tsv", 10, 0)}
  )
  with pytest.raises(ValueError, match="probe.eval_path is empty"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))

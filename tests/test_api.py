"""train/api.py: README's snippet runs as written, HF parity, missing heads named loudly."""

import logging
import os
import re

import jax
import numpy as np
import pytest
import torch
from helpers import absl_records_in
from helpers import finetune as ff
from helpers.pretraining import tiny_config as pretraining_config

from benchmarks.shared import minilm_dir
from train import api, loop

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
TEXTS = ["the cat sat on the mat", "a second, rather longer text about a dog"]


def readme_snippet() -> str:
  """The ```python block of README's 'Python API' section."""
  with open(README) as f:
    section = f.read().split("## Python API", 1)[1].split("\n## ", 1)[0]
  return re.search(r"```python\n(.*?)```", section, re.S)[1]


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """The two workdirs README's snippet names: the main job's and the SST-2 command's."""
  root = tmp_path_factory.mktemp("api")
  for sub in ("pretraining", "classification"):
    (root / sub).mkdir()
  pretrained = root / "workdirs" / "bert_tiny"
  loop.train_and_evaluate(pretraining_config(root / "pretraining"), str(pretrained))
  classifier = root / "sst2"
  config = ff.classification_config(
    root / "classification", **{"data.label_names": ("negative", "positive")}
  )
  loop.train_and_evaluate(config, str(classifier))
  return root, classifier


def test_readme_python_api_snippet_runs_as_written(workdirs, monkeypatch):
  root, classifier = workdirs
  code = readme_snippet()
  assert "/tmp/sst2" in code and "workdirs/bert_tiny" in code
  monkeypatch.chdir(root)  # the main job's workdir is relative, as README's command leaves it
  namespace = {}
  exec(compile(code.replace("/tmp/sst2", str(classifier)), "README.md", "exec"), namespace)
  outputs = namespace["outputs"]
  length = namespace["batch"]["input_ids"].shape[1]
  assert outputs["mlm_logits"].shape == (2, length, 64)  # the tiny model's vocab
  assert outputs["sequence_output"].shape == (2, length, 32)
  assert outputs["nsp_logits"].shape == (2, 2)
  assert np.all(np.isfinite(outputs["mlm_logits"]))
  results = namespace["results"]
  assert len(results) == 2 and {r["label"] for r in results} <= {"negative", "positive"}


def test_a_fine_tuned_workdir_loads_with_its_head_and_agrees_with_its_predictor(workdirs):
  _, classifier = workdirs
  model, tokenizer = api.load(str(classifier))
  assert model.head == "classification"
  logits = model(**tokenizer(TEXTS, padding=True, return_tensors="np"))["logits"]
  assert logits.shape == (2, 2)
  predictions = api.predictor(str(classifier))(TEXTS)
  probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  names = ("negative", "positive")
  assert [r["label"] for r in predictions] == [names[i] for i in logits.argmax(-1)]
  np.testing.assert_allclose(
    [r["probability"] for r in predictions], probabilities.max(-1), atol=1e-5
  )


def test_an_hf_directory_loads_as_its_architecture_and_matches_transformers():
  from transformers import BertModel

  model, tokenizer = api.load(minilm_dir())
  assert model.head == "none"
  # The weights live on the device, not as numpy arrays copied in at every call.
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(model._state))
  batch = tokenizer(TEXTS, padding=True, return_tensors="np")
  ours = model(**batch)
  reference = BertModel.from_pretrained(minilm_dir()).eval()
  with torch.no_grad():
    theirs = reference(**{k: torch.from_numpy(v) for k, v in batch.items()})
  mask = batch["attention_mask"][..., None].astype(bool)
  np.testing.assert_allclose(
    np.where(mask, ours["sequence_output"], 0),
    np.where(mask, theirs.last_hidden_state.numpy(), 0),
    atol=2e-5,
  )
  np.testing.assert_allclose(ours["pooled_output"], theirs.pooler_output.numpy(), atol=2e-5)


def test_heads_the_checkpoint_lacks_are_named_in_a_warning(caplog):
  with absl_records_in(caplog), caplog.at_level(logging.WARNING):
    model, _ = api.load(minilm_dir(), head="pretraining")
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(
    "no mlm / nsp weights" in w and "start new" in w and "identity" in w for w in warnings
  ), warnings
  assert model.head == "pretraining"
  caplog.clear()
  with absl_records_in(caplog), caplog.at_level(logging.WARNING):
    api.load(minilm_dir())
  assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_bad_arguments_are_named():
  with pytest.raises(ValueError, match="head='mlm'"):
    api.load(minilm_dir(), head="mlm")
  model, tokenizer = api.load(minilm_dir())
  with pytest.raises(ValueError, match=r"expected \[batch, length\]"):
    model(input_ids=tokenizer(TEXTS[0])["input_ids"])

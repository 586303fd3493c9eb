"""Where fine-tuning weights come from (an HF directory, a pretraining workdir); head objectives."""

import logging
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from helpers import absl_records_in
from helpers import finetune as ff
from helpers.finetune import TINY, write_hf_dir

from model.config import BertConfig
from model.convert import hf_to_params
from model.heads import (
  BertForPreTraining,
  BertForQuestionAnswering,
  BertForSequenceClassification,
  BertForTokenClassification,
)
from train import losses, warm_start
from train import mesh as mesh_lib
from train.checkpoint import Checkpointer, fingerprint
from train.state import create_train_state
from train.tasks import build_task
from train.tasks.common import finetune_tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """One classification task and its random state, shared: building a state compiles."""
  tmp_path = tmp_path_factory.mktemp("init")
  config = ff.classification_config(tmp_path)
  task = build_task(config, "")
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  tx = optax.sgd(0.1)
  _, state, frozen, _ = create_train_state(task.model_factory, tx, mesh, rules, config.seed)
  return config, task, (state, frozen), tx, (mesh, rules)


def pure(params):
  return jax.device_get(nnx.to_pure_dict(params))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def init_section(**values):
  return ml_collections.ConfigDict(dict(dict(hf_dir="", checkpoint=""), **values))


@pytest.mark.slow
def test_init_from_an_hf_directory_loads_the_encoder_and_keeps_a_fresh_head(base, tmp_path):
  config, task, state, tx, _ = base
  hf_dir, tensors, torch_model = write_hf_dir(tmp_path / "hf", config.data.vocab)
  loaded = warm_start.initialise(*state, init_section(hf_dir=hf_dir), task.model_config, tx)[0]
  expected, _ = hf_to_params(tensors, task.model_config)
  assert_trees_equal(pure(loaded.params)["bert"], expected["bert"])
  assert_trees_equal(pure(loaded.params)["classifier"], pure(state[0].params)["classifier"])
  # The same encoder computes the same thing as transformers' BertModel.
  ids = np.array([[2, 10, 11, 12, 3, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: task.model_factory(nnx.Rngs(0))))
  ours, _ = nnx.merge(graphdef, jax.device_get(loaded.params)).bert(ids, None, mask)
  with torch.no_grad():
    reference = torch_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  np.testing.assert_allclose(
    np.asarray(ours)[:, :5], reference.last_hidden_state.numpy()[:, :5], atol=1e-5
  )


def test_pretraining_heads_the_hf_directory_lacks_are_named_in_a_warning(base, tmp_path, caplog):
  """A BertModel directory has no cls.*: continued pretraining from it must say its MLM / NSP
  heads start random. A fine-tuning head starting fresh is the design and says nothing."""
  config, task, state, tx, (mesh, rules) = base
  hf_dir, _, _ = write_hf_dir(tmp_path / "hf", config.data.vocab)
  model_config = task.model_config
  pretraining = create_train_state(
    lambda rngs: BertForPreTraining(model_config, rngs), tx, mesh, rules, 0
  )[1:3]
  for start, heads in ((pretraining, "mlm / nsp"), (state, None)):
    caplog.clear()
    with absl_records_in(caplog), caplog.at_level(logging.WARNING):
      warm_start.initialise(*start, init_section(hf_dir=hf_dir), model_config, tx)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if heads:
      assert any(f"no {heads} weights" in w and "heads start new" in w for w in warned)
    else:
      assert not warned, warned


def test_an_empty_data_vocab_takes_the_init_sources_vocab(tmp_path):
  config = ff.classification_config(tmp_path)
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  shutil.copy(config.data.vocab, hf_dir / "vocab.txt")
  config = ff.set_keys(config, {"init.hf_dir": str(hf_dir), "data.vocab": ""})
  assert (
    finetune_tokenizer(config, BertConfig.from_dict(config.model)).name_or_path
    == f"{hf_dir}/vocab.txt"
  )
  workdir = tmp_path / "pre"
  (workdir / "vocab").mkdir(parents=True)
  shutil.copy(config.data.vocab or hf_dir / "vocab.txt", workdir / "vocab" / "vocab.txt")
  config = ff.set_keys(config, {"init.hf_dir": "", "init.checkpoint": str(workdir)})
  assert (
    finetune_tokenizer(config, BertConfig.from_dict(config.model)).name_or_path
    == f"{workdir}/vocab/vocab.txt"
  )
  config = ff.set_keys(config, {"init.checkpoint": ""})
  with pytest.raises(ValueError, match="data.vocab is empty and init gives no vocab.txt"):
    finetune_tokenizer(config, BertConfig.from_dict(config.model))


def test_hf_directory_of_another_size_is_refused_naming_the_keys(base, tmp_path):
  config, task, state, tx, _ = base
  hf_dir, _, _ = write_hf_dir(
    tmp_path / "hf", config.data.vocab, hidden_size=48, num_attention_heads=4
  )
  with pytest.raises(ValueError, match=r"model.hidden_size: config 32, checkpoint 48"):
    warm_start.initialise(*state, init_section(hf_dir=hf_dir), task.model_config, tx)[0]


def write_pretraining_workdir(path, config, mesh_and_rules):
  """A checkpoint as the pretraining loop writes it (state + meta with the config)."""
  model_config = BertConfig.from_dict(config.model)
  _, state, _, _ = create_train_state(
    lambda rngs: BertForPreTraining(model_config, rngs), optax.sgd(1e-3), *mesh_and_rules, seed=5
  )
  with Checkpointer(path, async_save=False) as checkpointer:
    checkpointer.save(7, state, {"config": fingerprint(config), "total_steps": 7})
  return str(path), pure(state.params)


def test_init_from_a_pretraining_workdir_loads_its_encoder_and_refuses_another_size(base, tmp_path):
  config, task, state, tx, mesh_and_rules = base
  pretrained_dir, pretrained = write_pretraining_workdir(tmp_path / "pre", config, mesh_and_rules)
  init = init_section(checkpoint=pretrained_dir)
  loaded = warm_start.initialise(*state, init, task.model_config, tx)[0]
  assert_trees_equal(pure(loaded.params)["bert"], pretrained["bert"])
  assert_trees_equal(pure(loaded.params)["classifier"], pure(state[0].params)["classifier"])
  assert set(pure(loaded.params)) == {"bert", "classifier"}  # no MLM / NSP heads
  with pytest.raises(
    ValueError,
    match=(
      r"init.checkpoint=.* \(step 7\) was trained with another "
      r"architecture: model.vocab_size: checkpoint 64, config 80"
    ),
  ):
    warm_start.initialise(*state, init, task.model_config.replace(vocab_size=80), tx)[0]


def test_vocab_larger_than_the_model_is_refused(tmp_path):
  config = ff.classification_config(tmp_path, **{"model.vocab_size": 40})
  with pytest.raises(ValueError, match=r"has 46 tokens but model.vocab_size is 40"):
    build_task(config, "")


# --------------------------------------------------------------------------
# Heads and objectives


CONFIG = BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def batch_with_padding(rng, n_real=3, n_pad=2, length=8):
  ids = rng.integers(5, 64, (n_real + n_pad, length)).astype(np.int32)
  return {
    "input_ids": ids,
    "token_type_ids": np.zeros_like(ids),
    "attention_mask": np.ones_like(ids),
    "weight": np.array([1.0] * n_real + [0.0] * n_pad, np.float32),
  }


@pytest.mark.parametrize("kind", ["classes", "regression", "tokens", "spans"])
def test_padding_rows_of_weight_zero_change_no_loss(kind):
  rng = np.random.default_rng(0)
  batch = batch_with_padding(rng)
  if kind == "classes":
    model, objective = (
      BertForSequenceClassification(CONFIG, 3, nnx.Rngs(0)),
      losses.ClassificationObjective(3),
    )
    batch["label"] = rng.integers(0, 3, 5).astype(np.int32)
  elif kind == "regression":
    model, objective = (
      BertForSequenceClassification(CONFIG, 1, nnx.Rngs(0)),
      losses.ClassificationObjective(1),
    )
    batch["label"] = rng.normal(size=5).astype(np.float32)
  elif kind == "tokens":
    model, objective = (
      BertForTokenClassification(CONFIG, 5, nnx.Rngs(0)),
      losses.TokenClassificationObjective(),
    )
    batch["labels"] = rng.integers(0, 5, (5, 8)).astype(np.int32)
    batch["label_weights"] = (rng.random((5, 8)) < 0.5).astype(np.float32)
  else:
    model, objective = BertForQuestionAnswering(CONFIG, nnx.Rngs(0)), losses.SpanObjective()
    batch["start_positions"] = rng.integers(0, 8, 5).astype(np.int32)
    batch["end_positions"] = rng.integers(0, 8, 5).astype(np.int32)
  # Rows are independent: the real rows' outputs are the first rows of the padded batch's.
  real = {key: value[:3] for key, value in batch.items()}
  outputs = jax.jit(lambda b: objective.outputs(model, b, None))(batch)  # one compile, not per op
  real_outputs = {key: value[:3] for key, value in outputs.items()}
  loss, sums = objective.loss_and_sums(outputs, batch, objective.normalizers(batch))
  real_loss, real_sums = objective.loss_and_sums(real_outputs, real, objective.normalizers(real))
  np.testing.assert_allclose(loss, real_loss, rtol=1e-6)
  assert objective.finalize(sums) == pytest.approx(objective.finalize(real_sums))
  if kind == "regression":
    predictions = np.asarray(real_outputs["logits"])[:, 0]
    assert float(loss) == pytest.approx(np.mean((predictions - real["label"]) ** 2), rel=1e-5)


def test_head_output_shapes_and_parameter_paths():
  ids = jnp.ones((2, 8), jnp.int32)

  def shapes(make):
    return jax.eval_shape(lambda: make(nnx.Rngs(0))(ids))

  assert shapes(lambda r: BertForSequenceClassification(CONFIG, 4, r)).shape == (2, 4)
  assert shapes(lambda r: BertForTokenClassification(CONFIG, 5, r)).shape == (2, 8, 5)
  start, end = shapes(lambda r: BertForQuestionAnswering(CONFIG, r))
  assert start.shape == end.shape == (2, 8) and start.dtype == jnp.float32
  qa = nnx.eval_shape(lambda: BertForQuestionAnswering(CONFIG, nnx.Rngs(0)))
  assert set(nnx.to_pure_dict(nnx.state(qa, nnx.Param))) == {"bert", "qa_outputs"}
  with pytest.raises(ValueError, match="num_labels=0"):
    BertForSequenceClassification(CONFIG, 0, nnx.Rngs(0))


def test_a_fine_tuning_config_takes_the_init_sources_architecture(tmp_path, caplog):
  """The encoder's sizes come from init.hf_dir's / init.checkpoint's config.json: a config
  need not restate them (a model that differed could not load the weights)."""
  config = ff.classification_config(tmp_path)
  hf_dir, _, _ = write_hf_dir(tmp_path / "hf", config.data.vocab, intermediate_size=80)
  config.init.hf_dir = hf_dir
  with absl_records_in(caplog), caplog.at_level(logging.INFO):
    warm_start.adopt_init_architecture(config)
  assert config.model.intermediate_size == 80 and config.model.hidden_size == TINY["hidden_size"]
  assert f"model architecture from {hf_dir}/config.json: {{'intermediate_size': 80}}" in caplog.text
  workdir = tmp_path / "pretrained"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text('{"model": {"vocab_size": 96, "dtype": "bfloat16"}}')
  config.init.update(hf_dir="", checkpoint=str(workdir))
  warm_start.adopt_init_architecture(config)
  assert config.model.vocab_size == 96 and config.model.dtype == "float32"  # sizes only

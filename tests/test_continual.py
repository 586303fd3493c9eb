"""Continual learning (train/continual.py) and EWC (train/ewc.py) on the tests' own tiny tasks."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import finetune as ff

from train import continual, ewc, tasks
from train import mesh as mesh_lib
from train.state import create_train_state


def continual_config(tmp_path, method="naive", weight=0.0):
  c = ml_collections.ConfigDict()
  c.method, c.ewc_weight, c.fisher_examples = method, weight, 32
  c.order = ("sentiment", "ner")
  c.init = ml_collections.ConfigDict(dict(hf_dir="", checkpoint=""))
  c.stages = ml_collections.ConfigDict()
  c.stages.sentiment = ff.classification_config(tmp_path)
  c.stages.ner = ff.ner_config(tmp_path)
  for stage in c.stages.values():
    stage.optimizer.total_steps = 12
    stage.eval_every_steps = 12
  return c


def penalised_drift(workdir, fisher) -> float:
  """sum F (theta_2 - theta_1)^2 over the encoder: the forgetting EWC penalises."""
  first = continual.final_params(os.path.join(workdir, "0_sentiment"))["bert"]
  second = continual.final_params(os.path.join(workdir, "1_ner"))["bert"]
  return float(
    sum(
      jax.tree.leaves(jax.tree.map(lambda f, a, b: np.sum(f * (b - a) ** 2), fisher, first, second))
    )
  )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  data = tmp_path_factory.mktemp("data")
  out = {}
  for method, weight in (("naive", 0.0), ("ewc", 1e4)):
    workdir = str(tmp_path_factory.mktemp(method))
    out[method] = (workdir, continual.run(continual_config(data, method, weight), workdir))
  return out


@pytest.mark.slow
def test_forgetting_matrix_scores_each_task_with_its_own_head(runs):
  workdir, result = runs["naive"]
  matrix = result["matrix"]
  assert result["tasks"] == ["sentiment", "ner"] and result["metrics"] == ["accuracy", "f1"]
  assert matrix[0][1] is None and None not in matrix[1]
  # Right after its own training, a task's score is what its run measured at its end.
  for k, name in enumerate(result["tasks"]):
    with open(os.path.join(workdir, f"{k}_{name}", "final_metrics.json")) as f:
      assert matrix[k][k] == pytest.approx(json.load(f)[result["metrics"][k]], abs=1e-6)
  assert result["forgetting"] == [pytest.approx(matrix[0][0] - matrix[1][0]), None]
  with open(os.path.join(workdir, "forgetting.md")) as f:
    assert "**forgetting**" in f.read()
  assert os.path.getsize(os.path.join(workdir, "forgetting.png")) > 1000


@pytest.mark.slow  # its fixture trains a run
def test_second_task_starts_from_the_first_encoder_and_ewc_holds_it(runs):
  naive_dir, _ = runs["naive"]
  ewc_dir, _ = runs["ewc"]
  anchor, fisher = ewc.load(os.path.join(ewc_dir, "ewc.npz"))
  first = continual.final_params(os.path.join(ewc_dir, "0_sentiment"))["bert"]
  assert jax.tree.structure(anchor) == jax.tree.structure(first) == jax.tree.structure(fisher)
  for a, f in zip(jax.tree.leaves(anchor), jax.tree.leaves(first)):
    np.testing.assert_array_equal(a, f)  # the anchor is the first task's final encoder, bit for bit
  mean = np.mean(np.concatenate([v.ravel() for v in jax.tree.leaves(fisher)]))
  assert mean == pytest.approx(1.0, rel=1e-4)  # normalised
  # Both second tasks started from the same encoder (same seeds, same first task); the
  # penalty keeps the weights that mattered to the first task far closer to it.
  ewc_drift, naive_drift = penalised_drift(ewc_dir, fisher), penalised_drift(naive_dir, fisher)
  assert ewc_drift < 0.5 * naive_drift, (ewc_drift, naive_drift)


@pytest.mark.slow
def test_rerun_skips_finished_tasks(runs, tmp_path):
  workdir, result = runs["naive"]
  mtime = os.path.getmtime(os.path.join(workdir, "1_ner", "final_metrics.json"))
  again = continual.run(continual_config(tmp_path, "naive"), workdir)
  assert again["matrix"] == result["matrix"]
  assert os.path.getmtime(os.path.join(workdir, "1_ner", "final_metrics.json")) == mtime


def test_penalty_adds_the_ewc_gradient():
  params = {"bert": {"w": jnp.array([1.0, 2.0, 3.0])}, "classifier": {"w": jnp.array([5.0])}}
  tx = ewc.penalty(0.5)
  state = tx.init(params)
  state = ewc.EwcState(
    anchor={"bert": {"w": jnp.array([1.0, 1.0, 1.0])}, "classifier": {"w": jnp.array([0.0])}},
    fisher={"bert": {"w": jnp.array([0.0, 2.0, 4.0])}, "classifier": {"w": jnp.array([0.0])}},
  )
  grads = jax.tree.map(jnp.ones_like, params)
  out, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(out["bert"]["w"], [1.0, 1.0 + 0.5 * 2 * 1, 1.0 + 0.5 * 4 * 2])
  np.testing.assert_allclose(out["classifier"]["w"], [1.0])


@pytest.mark.slow
def test_fisher_is_the_mean_squared_per_example_gradient(tmp_path):
  config = ff.classification_config(tmp_path)
  task = tasks.build_task(config, str(tmp_path / "run"))
  mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
  rules = mesh_lib.DEFAULT_RULES
  graphdef, state, frozen, _ = create_train_state(
    task.model_factory, optax.identity(), mesh, rules, 0
  )
  batch = dict(task.eval_batches[0])
  batch["weight"] = np.asarray(batch["weight"]).copy()
  batch["weight"][-1] = 0.0  # a padding row counts for nothing
  fisher = ewc.fisher_diagonal(
    graphdef, state.params, frozen, task.objective, [batch], mesh, rules, chunk=3
  )

  def loss(p, i):
    one = {k: np.asarray(v)[i : i + 1] for k, v in batch.items()}
    model = nnx.merge(graphdef, p, frozen)
    return task.objective(model, one, None, task.objective.normalizers(one))[0]

  rows = [i for i in range(len(batch["weight"])) if batch["weight"][i] > 0]
  squares = [
    jax.tree.map(
      lambda g: np.asarray(g) ** 2, nnx.to_pure_dict(jax.grad(loss)(state.params, i))["bert"]
    )
    for i in rows
  ]
  expected = jax.tree.map(lambda *s: sum(s) / len(rows), *squares)
  assert jax.tree.structure(fisher) == jax.tree.structure(expected)
  for f, e in zip(jax.tree.leaves(fisher), jax.tree.leaves(expected)):
    np.testing.assert_allclose(f, e, rtol=1e-4, atol=1e-10)


def test_bad_continual_configs(tmp_path):
  c = continual_config(tmp_path, "replay")
  with pytest.raises(ValueError, match=r"method='replay': known methods are \('naive', 'ewc'\)"):
    continual.stage_configs(c)
  c = continual_config(tmp_path, "ewc", 0.0)
  with pytest.raises(ValueError, match="method='ewc' needs ewc_weight > 0"):
    continual.stage_configs(c)
  c = continual_config(tmp_path)
  c.order = ("sentiment", "pos")
  with pytest.raises(ValueError, match=r"order names \['pos'\], which stages does not define"):
    continual.stage_configs(c)
  c = continual_config(tmp_path)
  c.stages.ner.model.hidden_size = 64
  with pytest.raises(ValueError, match="stages.ner.model differs from stages.sentiment.model"):
    continual.stage_configs(c)


def test_shipped_config_names_every_stage_and_its_data():
  from configs.continual import sst2_conll

  c = sst2_conll.get_config("/data")
  stages = continual.stage_configs(c)
  assert [name for name, _ in stages] == ["sst2", "conll2003"]
  assert c.stages.sst2.data.train_path == "/data/sst2/train.tsv"
  assert c.stages.conll2003.data.eval_path == "/data/conll2003/dev.txt"
  assert [s.early_stopping.metric for _, s in stages] == ["accuracy", "f1"]

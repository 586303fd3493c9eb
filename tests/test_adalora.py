"""AdaLoRA's rank budget, importance masking and orthogonality regulariser (train/adalora.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import random_batch

from model.config import BertConfig
from model.heads import BertForSequenceClassification
from model.peft import AdaLoraConfig, PeftConfig, trainable
from train import adalora
from train import mesh as mesh_lib
from train import step as step_lib
from train.losses import ClassificationObjective
from train.state import create_train_state

CONFIG = BertConfig(
  vocab_size=64,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
  max_position_embeddings=40,
  hidden_dropout_prob=0.0,
  attention_probs_dropout_prob=0.0,
)


def test_budget_follows_the_cubic_schedule():
  # 100 steps, t_i = 10, t_f = 20: full budget 48 to step 10, cubic to 16 at step 80, then 16.
  b = lambda t: int(adalora.budget(t, 100, 10, 20, 48, 16))  # noqa: E731
  assert [b(1), b(10)] == [48, 48]
  assert b(45) == int(np.floor(16 + 32 * 0.5**3))  # half way: 16 + 32/8 = 20
  assert b(20) == int(np.floor(16 + 32 * (1 - 10 / 70) ** 3))
  assert [b(80), b(81), b(100)] == [16, 16, 16]
  assert all(b(t) >= b(t + 1) for t in range(1, 100))


def test_phase_steps_refuses_a_schedule_with_no_room():
  peft = PeftConfig(
    method="adalora",
    rank=4,
    adalora=AdaLoraConfig(target_rank=2, warmup_ratio=0.5, final_ratio=0.5),
  )
  with pytest.raises(ValueError, match="warmup_ratio=0.5 and final_ratio=0.5 of 10 steps"):
    adalora.phase_steps(peft, 10)


def test_config_errors_name_the_key():
  with pytest.raises(
    ValueError, match=r"peft.adalora.target_rank=9: must lie in \[1, peft.rank=8\]"
  ):
    PeftConfig.from_dict({"method": "adalora", "rank": 8, "adalora": {"target_rank": 9}})
  with pytest.raises(ValueError, match=r"unknown peft.adalora keys \['budget'\]"):
    PeftConfig.from_dict({"method": "adalora", "adalora": {"budget": 3}})
  with pytest.raises(ValueError, match="peft.adalora.mask_interval=0"):
    PeftConfig.from_dict({"method": "adalora", "adalora": {"mask_interval": 0}})


def test_orthogonality_penalty_by_hand():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2, 8, 3)).astype(np.float32)  # two stacked layers, fan_in 8, r 3
  b = rng.normal(size=(2, 3, 4, 2)).astype(np.float32)  # fan_out 4 x 2
  tree = {"layer": {"low_rank": {"a": a, "b": b, "e": np.zeros((2, 3), np.float32)}}}
  expected = []
  for layer in range(2):
    p, q = a[layer], b[layer].reshape(3, 8)
    expected.append(np.linalg.norm(p.T @ p - np.eye(3)))
    expected.append(np.linalg.norm(q @ q.T - np.eye(3)))
  np.testing.assert_allclose(adalora.orthogonality_penalty(tree), np.mean(expected), rtol=1e-5)
  q_orth = np.linalg.qr(rng.normal(size=(8, 3)))[0].astype(np.float32)
  tree = {"low_rank": {"a": q_orth, "b": q_orth.T.copy(), "e": np.ones(3, np.float32)}}
  assert float(adalora.orthogonality_penalty(tree)) < 1e-5


def _run(peft: PeftConfig, total_steps: int, shape=(1, 1, 1)):
  devices = jax.devices()[: int(np.prod(shape))]
  mesh = mesh_lib.make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)), devices)
  rules = mesh_lib.DEFAULT_RULES
  tx = adalora.rank_allocation(optax.adamw(1e-2), peft, total_steps)
  factory = lambda rngs: BertForSequenceClassification(CONFIG, 3, rngs, peft)  # noqa: E731
  graphdef, state, frozen, shardings = create_train_state(
    factory, tx, mesh, rules, 0, trainable(peft)
  )
  step = jax.jit(
    step_lib.make_train_step(
      graphdef, tx, ClassificationObjective(3), param_shardings=shardings.params
    ),
    out_shardings=(shardings, None),
  )
  ids, types, mask = random_batch(3, 8, 12, CONFIG.vocab_size)
  labels = np.random.default_rng(4).integers(0, 3, 8).astype(np.int32)
  batch = mesh_lib.shard_batch(
    {
      "input_ids": ids,
      "token_type_ids": types,
      "attention_mask": mask,
      "label": labels,
      "weight": np.ones(8, np.float32),
    },
    mesh,
    rules,
  )
  history = []
  with mesh_lib.activate(mesh, rules):
    for _ in range(total_steps):
      state, metrics = step(state, frozen, batch)
      ranks = {k: np.asarray(v) for k, v in adalora.ranks(state.params).items()}
      history.append((float(metrics["total_loss"]), sum(int(v.sum()) for v in ranks.values())))
  return history, state


PEFT = PeftConfig(
  method="adalora",
  rank=4,
  targets=("query", "value", "ffn.output"),
  adalora=AdaLoraConfig(target_rank=2, warmup_ratio=0.2, final_ratio=0.2, mask_interval=2),
)


@pytest.mark.slow
def test_ranks_shrink_to_the_target_budget_and_move_between_matrices():
  history, state = _run(PEFT, 20)
  losses, alive = zip(*history)
  assert losses[-1] < losses[0], losses
  # 2 layers x 3 matrices x rank 4 = 24 triplets, budget 2 x 6 = 12 at the end; e starts at
  # 0, so 'alive' counts the e that Adam has moved off zero and no mask has reset.
  assert alive[3] == 24  # t_i = 4 steps: no mask yet
  assert [a for a in alive[16:]] == [12] * 4, alive  # the last t_f = 4 steps hold the target
  assert all(
    alive[t] <= int(adalora.budget(t + 1, 20, 4, 4, 24, 12))
    for t in range(4, 20)
    if (t + 1) % 2 == 0 or t + 1 > 16
  )
  per_matrix = np.concatenate([np.ravel(v) for v in adalora.ranks(state.params).values()])
  assert per_matrix.sum() == 12 and len(set(per_matrix.tolist())) > 1, per_matrix  # uneven


def test_masked_singular_values_are_the_least_important():
  peft = PeftConfig(
    method="adalora",
    rank=4,
    adalora=AdaLoraConfig(
      target_rank=1, warmup_ratio=0.0, final_ratio=0.0, mask_interval=1, orth_reg_weight=0.0
    ),
  )
  params = {"low_rank": {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4)), "e": jnp.ones((4,))}}
  # Gradients make triplet k's importance grow with k (for e, P's column and Q's row).
  grads = {
    "low_rank": {
      "a": jnp.tile(jnp.arange(1.0, 5.0), (4, 1)),
      "b": jnp.tile(jnp.arange(1.0, 5.0)[:, None], (1, 4)),
      "e": jnp.arange(1.0, 5.0),
    }
  }
  tx = adalora.rank_allocation(optax.sgd(0.0), peft, total_steps=2)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)  # step 1 of 2: budget 4 -> floor(1 + 3/8)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(np.asarray(new["low_rank"]["e"]), [0.0, 0.0, 0.0, 1.0])
  np.testing.assert_array_equal(np.asarray(new["low_rank"]["a"]), np.ones((4, 4)))  # P, Q kept


@functools.cache
def _one_device():
  return _run(PEFT, 10)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2)])
def test_rank_allocation_on_meshes_matches_one_device(shape):
  one, one_state = _one_device()
  many, state = _run(PEFT, 10, shape)
  assert [a for _, a in many] == [a for _, a in one]
  np.testing.assert_allclose([loss for loss, _ in many], [loss for loss, _ in one], rtol=2e-5)
  for x, y in zip(
    jax.tree.leaves(nnx.to_pure_dict(state.params)),
    jax.tree.leaves(nnx.to_pure_dict(one_state.params)),
  ):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-5)


@pytest.mark.slow
def test_loop_runs_adalora_and_reports_the_ranks_reached(tmp_path):
  from helpers import finetune as ff

  from train import loop

  config = ff.classification_config(
    tmp_path,
    **{
      "peft.method": "adalora",
      "peft.rank": 4,
      "peft.adalora.target_rank": 2,
      "peft.adalora.warmup_ratio": 0.2,
      "peft.adalora.final_ratio": 0.2,
      "peft.adalora.mask_interval": 2,
      "optimizer.total_steps": 20,
      "eval_every_steps": 20,
    },
  )
  final = loop.train_and_evaluate(config, str(tmp_path / "run"))
  ranks = final["adalora_ranks"]
  # 2 layers x (query, value), rank 4 each, cut to an average of 2: 8 singular values left.
  assert sorted(ranks) == [
    f"bert/encoder/layers/attention/{m}/low_rank" for m in ("query", "value")
  ]
  assert all(len(per_layer) == 2 for per_layer in ranks.values()), ranks  # stacked layers
  assert sum(np.sum(v) for v in ranks.values()) == 8, ranks

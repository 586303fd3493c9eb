"""Parameter-efficient fine-tuning (model/peft.py) through the one train step and loop."""

import functools
import os
import shutil

import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from helpers import finetune as ff
from helpers import random_batch, tiny_hf_config

from model.config import BertConfig
from model.heads import BertForSequenceClassification, BertForTokenClassification
from model.peft import PeftConfig, merge_low_rank, trainable
from train import loop, optim
from train import mesh as mesh_lib
from train import step as step_lib
from train.checkpoint import read_on_host
from train.losses import ClassificationObjective
from train.state import create_train_state, split_params

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
METHODS = {
  "none": {},
  "lora": dict(rank=4, targets=("query", "value", "ffn.*")),
  "adalora": dict(rank=4),
  "adapter": dict(adapter_size=8),
  "prefix": dict(num_virtual_tokens=3),
  "prefix_mlp": dict(method="prefix", num_virtual_tokens=3, prefix_projection=16),
  "prompt": dict(num_virtual_tokens=3),
  "bitfit": {},
}


def peft_of(name: str) -> PeftConfig:
  return PeftConfig(**dict({"method": name}, **METHODS[name]))


def leaf_paths(tree) -> set[str]:
  return {"/".join(optim.path_names(p)) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _batch(batch=8, length=12):
  ids, types, mask = random_batch(3, batch, length, CONFIG.vocab_size)
  labels = np.random.default_rng(4).integers(0, 3, batch).astype(np.int32)
  return {
    "input_ids": ids,
    "token_type_ids": types,
    "attention_mask": mask,
    "label": labels,
    "weight": np.ones(batch, np.float32),
  }


def model_factory(peft: PeftConfig):
  return lambda rngs: BertForSequenceClassification(CONFIG, 3, rngs, peft)


def test_each_method_trains_only_its_own_parameters():
  kinds = {
    "lora": lambda p: "low_rank" in p and p.split("/")[-1] in ("a", "b"),
    "adalora": lambda p: "low_rank" in p,
    "adapter": lambda p: "adapter" in p or "/norm/" in p,
    "prefix": lambda p: p.startswith("bert/prefix/"),
    "prefix_mlp": lambda p: p.startswith("bert/prefix/"),
    "prompt": lambda p: p == "bert/prompt",
    "bitfit": lambda p: p.endswith("/bias"),
  }
  for name, kind in kinds.items():
    peft = peft_of(name)
    _, params = nnx.split(nnx.eval_shape(lambda p=peft: model_factory(p)(nnx.Rngs(0))), nnx.Param)
    train, frozen = split_params(params, trainable(peft))
    encoder = {p for p in leaf_paths(train) if p.startswith("bert/")}
    assert encoder and all(kind(p) for p in encoder), (name, sorted(encoder)[:4])
    assert {p for p in leaf_paths(train) if not p.startswith("bert/")} == {
      "classifier/kernel",
      "classifier/bias",
    }  # the head always trains
    assert not any(kind(p) for p in leaf_paths(frozen) if p.startswith("bert/")), name
    counts = optim.count_params(train, frozen)
    assert counts["percent"] < 40.0, (name, counts)  # tiny model: the head alone is ~0.4 %
  lora = peft_of("lora")
  _, params = nnx.split(nnx.eval_shape(lambda: model_factory(lora)(nnx.Rngs(0))), nnx.Param)
  train, _ = split_params(params, trainable(lora))
  # 2 layers x (query, value: 32x4 + 4x32, intermediate: 32x4 + 4x64, output: 64x4 + 4x32) + head
  expected = 2 * (2 * (128 + 128) + (128 + 256) + (256 + 128)) + 32 * 3 + 3
  assert optim.count_params(train)["total"] == expected


@pytest.mark.parametrize("name", ["lora", "adalora", "adapter"])
def test_added_branches_start_as_the_base_model(name):
  """LoRA's B, AdaLoRA's e and the adapters' up projection start at zero: the output is W's."""
  ids, types, mask = random_batch(0, 4, 10, CONFIG.vocab_size)
  base = model_factory(PeftConfig())(nnx.Rngs(0))
  peft_model = model_factory(peft_of(name))(nnx.Rngs(0))
  base_tree = nnx.to_pure_dict(nnx.state(base, nnx.Param))
  tree = nnx.to_pure_dict(nnx.state(peft_model, nnx.Param))

  def copy_base(t, b):
    return {
      k: v if k not in b else copy_base(v, b[k]) if isinstance(v, dict) else b[k]
      for k, v in t.items()
    }

  nnx.update(peft_model, copy_base(tree, base_tree))
  np.testing.assert_array_equal(
    np.asarray(peft_model(ids, types, mask)), np.asarray(base(ids, types, mask))
  )


def _train(peft: PeftConfig, shape, steps=3):
  """Losses, trainable params and opt state after `steps` AdamW steps."""
  devices = jax.devices()[: int(np.prod(shape))]
  mesh = mesh_lib.make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)), devices)
  rules = mesh_lib.DEFAULT_RULES
  tx = optax.adamw(3e-2)
  graphdef, state, frozen, shardings = create_train_state(
    model_factory(peft), tx, mesh, rules, 0, trainable(peft)
  )
  step = jax.jit(
    step_lib.make_train_step(
      graphdef, tx, ClassificationObjective(3), param_shardings=shardings.params
    ),
    out_shardings=(shardings, None),
  )
  batch = mesh_lib.shard_batch(_batch(), mesh, rules)
  losses = []
  with mesh_lib.activate(mesh, rules):
    for _ in range(steps):
      state, metrics = step(state, frozen, batch)
      losses.append(float(metrics["total_loss"]))
  return losses, jax.device_get(nnx.to_pure_dict(state.params)), state.opt_state


_REFERENCE = {}


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2)])
@pytest.mark.parametrize("name", ["lora", "adalora", "adapter", "prefix_mlp", "prompt", "bitfit"])
def test_each_method_on_each_mesh_matches_one_device(name, shape):
  peft = peft_of(name)
  if name not in _REFERENCE:
    _REFERENCE[name] = _train(peft, (1, 1, 1))
  one_losses, one_params, _ = _REFERENCE[name]
  losses, params, opt_state = _train(peft, shape)
  assert losses[-1] < losses[0], losses  # it learns
  np.testing.assert_allclose(losses, one_losses, rtol=2e-5)
  # Adam's normalised step (lr 3e-2) turns reduction-order noise in a near-zero gradient
  # into parameter noise: 2.4e-5 was seen on one of 256 LoRA entries on an 8-way fsdp mesh.
  # A sharding mistake moves parameters by about the learning rate.
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(one_params)):
    np.testing.assert_allclose(x, y, atol=1e-4)
  # Moments exist for the trainable leaves only. (That frozen weights stay the base's, bit for
  # bit, is checked end to end through the loop in the LoRA run test below.)
  adam = opt_state[0]
  assert leaf_paths(adam.mu) == leaf_paths(params) == leaf_paths(adam.nu)
  assert optim.tree_bytes(opt_state) == 2 * optim.tree_bytes(params) + 4  # + the step count


@pytest.mark.slow
def test_prompt_and_prefix_keep_one_output_per_token():
  ids, types, mask = random_batch(1, 2, 9, CONFIG.vocab_size)
  for name in ("prompt", "prefix"):
    model = BertForTokenClassification(CONFIG, 5, nnx.Rngs(0), peft_of(name))
    assert model(ids, types, mask).shape == (2, 9, 5)


def randomise_low_rank(tree, rng):
  """The tree with every low-rank branch drawn at random (they start at zero)."""
  out = {}
  for key, value in tree.items():
    if key == "low_rank":
      out[key] = {n: rng.normal(0, 0.2, v.shape).astype(np.float32) for n, v in value.items()}
    elif isinstance(value, dict):
      out[key] = randomise_low_rank(value, rng)
    else:
      out[key] = value
  return out


def test_merged_low_rank_equals_the_unmerged_model():
  ids, types, mask = random_batch(2, 3, 10, CONFIG.vocab_size)
  for name in ("lora", "adalora"):
    peft = peft_of(name)
    model = model_factory(peft)(nnx.Rngs(0))
    tree = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    tree = randomise_low_rank(tree, np.random.default_rng(5))
    nnx.update(model, tree)
    plain = model_factory(PeftConfig())(nnx.Rngs(1))
    nnx.update(plain, merge_low_rank(tree, peft))
    unmerged, merged = np.asarray(model(ids, types, mask)), np.asarray(plain(ids, types, mask))
    assert (
      np.abs(
        unmerged - np.asarray(model_factory(PeftConfig())(nnx.Rngs(1))(ids, types, mask))
      ).max()
      > 1e-3
    )
    np.testing.assert_allclose(merged, unmerged, atol=1e-5)


# --------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
  "values, message",
  [
    (
      dict(method="lora", targets=("attention.qkv",)),
      r"peft.targets \['attention.qkv'\] match no module; the modules of a layer are",
    ),
    (dict(method="lorra"), r"peft.method='lorra': known methods are"),
    (dict(method="lora", ranks=4), r"unknown peft keys \['ranks'\]"),
  ],
)
def test_bad_peft_settings_are_named(values, message):
  with pytest.raises(ValueError, match=message):
    PeftConfig.from_dict(values)


def test_rank_larger_than_the_layer_is_refused():
  with pytest.raises(
    ValueError,
    match=r"peft.rank=40 exceeds attention.query's smaller side "
    r"\(32 in, 32 out\)",
  ):
    model_factory(PeftConfig(method="lora", rank=40))(nnx.Rngs(0))


def test_prefix_longer_than_the_position_table_is_refused(tmp_path):
  from train.tasks import build_task

  config = ff.classification_config(
    tmp_path, **{"peft.method": "prefix", "peft.num_virtual_tokens": 40}
  )
  with pytest.raises(
    ValueError,
    match=r"peft.num_virtual_tokens=40 \+ data.max_seq_length=32 "
    r"exceeds model.max_position_embeddings=64",
  ):
    build_task(config, str(tmp_path))


# --------------------------------------------------------------------------
# Through the loop: checkpoints hold the trainable part, resume needs the same base


def _hf_base(path, vocab_file, seed):
  from transformers import BertModel

  torch.manual_seed(seed)
  model = BertModel(tiny_hf_config(**ff.TINY)).eval()
  model.save_pretrained(str(path))
  shutil.copy(vocab_file, path / "vocab.txt")
  return str(path), {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_lora_run_saves_only_trainable_parameters_and_resumes_only_on_its_base(tmp_path):
  config = ff.classification_config(
    tmp_path,
    **{
      "peft.method": "lora",
      "peft.rank": 4,
      "optimizer.total_steps": 8,
      "stop_at_step": 4,
      "eval_every_steps": 4,
    },
  )
  base_dir, base = _hf_base(tmp_path / "base", config.data.vocab, seed=0)
  other_dir, _ = _hf_base(tmp_path / "other", config.data.vocab, seed=1)
  config.init.hf_dir = base_dir
  workdir = str(tmp_path / "run")
  final = loop.train_and_evaluate(config, workdir)
  assert final["parameters"]["trainable"] < final["parameters"]["total"] / 5

  parts, meta, step = read_on_host(os.path.join(workdir, "checkpoints"), parts=None)
  assert step == 4 and meta["base"]["init"] == base_dir
  saved = leaf_paths(parts["params"])
  assert saved and all("low_rank" in p or p.startswith("classifier/") for p in saved)
  moments = {p.split("/mu/")[1] for p in leaf_paths(parts["opt_state"]) if "/mu/" in p}
  assert moments == saved  # Adam's first moments: exactly the trainable leaves
  assert (
    np.abs(
      parts["params"]["bert"]["encoder"]["layers"]["attention"]["query"]["low_rank"]["b"]
    ).max()
    > 0
  )  # B started at zero: it trained

  config.init.hf_dir = other_dir
  with pytest.raises(ValueError, match="holds a run trained on other frozen base weights"):
    loop.train_and_evaluate(config, workdir)
  config.init.hf_dir = base_dir
  config.stop_at_step = 0
  assert loop.train_and_evaluate(config, workdir)["step"] == 8

  from train.predict import Predictor

  predictor = Predictor(workdir, checkpoint="latest")
  # Every frozen encoder weight the run predicts with is the base's, bit for bit.
  from model.convert import hf_to_params
  from model.convert import leaf_paths as tree_paths

  expected = hf_to_params(base, BertConfig.from_dict(config.model))[0]["bert"]
  used = nnx.to_pure_dict(predictor.params)["bert"]
  for path in tree_paths(expected):
    leaf = functools.partial(functools.reduce, lambda t, k: t[k], path)
    np.testing.assert_array_equal(np.asarray(leaf(used)), leaf(expected), err_msg=str(path))
  assert predictor(["a good cat"])[0]["label"] in ("0", "1")

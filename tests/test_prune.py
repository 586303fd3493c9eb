"""Structured pruning (train/prune.py): the importance is the gate gradient, a pruned model
equals the unpruned one with those heads and neurons masked, a pruning run gives an ordinary
fine-tuned workdir that exports to transformers, and bad input is refused in one line."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import finetune as ff

from model.config import BertConfig
from model.heads import BertForSequenceClassification
from train import api, loop, prune
from train.errors import UserError

TINY = BertConfig(
  vocab_size=64,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=48,
  max_position_embeddings=64,
  hidden_dropout_prob=0.0,
  attention_probs_dropout_prob=0.0,
)


def classifier(config: BertConfig, seed: int = 0):
  return BertForSequenceClassification(config, 2, nnx.Rngs(seed))


def batch(seed: int = 0, rows: int = 4, length: int = 12):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, 64, (rows, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[0, 8:] = 0
  return ids, np.zeros_like(ids), mask


def test_a_pruned_model_equals_the_full_one_with_those_heads_and_neurons_masked():
  full = classifier(TINY)
  tree = nnx.to_pure_dict(nnx.state(full, nnx.Param))
  heads = np.array([[0, 2], [1, 3]])  # layer 0 keeps heads 0 and 2, layer 1 heads 1 and 3
  neurons = np.stack([np.arange(0, 48, 2), np.arange(1, 48, 2)])  # half of each layer's
  masked = jax.tree.map(np.array, tree)
  layers = masked["bert"]["encoder"]["layers"]
  for layer in range(2):
    for head in set(range(4)) - set(heads[layer]):
      layers["attention"]["output"]["kernel"][layer, head] = 0.0
    for neuron in set(range(48)) - set(neurons[layer]):
      layers["ffn"]["output"]["kernel"][layer, neuron] = 0.0
  nnx.update(full, masked)

  small_config = TINY.replace(num_attention_heads=2, attention_head_size=8, intermediate_size=24)
  small = classifier(small_config, seed=1)
  nnx.update(small, prune.prune_tree(tree, heads, neurons))
  ids, types, mask = batch()
  np.testing.assert_allclose(small(ids, types, mask), full(ids, types, mask), atol=1e-5)


def test_importance_is_the_gradient_of_a_gate_on_each_head_and_neuron():
  """|dL/dxi| at xi = 1, with xi scaling one head's (one neuron's) output rows: central
  differences of the loss against what importance() reads off one gradient."""
  model = classifier(TINY.replace(initializer_range=0.2))  # gradients well above float32's noise
  graphdef, params = nnx.split(model, nnx.Param)
  ids, types, mask = batch()
  labels = np.array([0, 1, 1, 0], np.int32)

  class Objective:
    def normalizers(self, batch):
      return None

    def __call__(self, model, batch, rng, norm):
      logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
      logp = jax.nn.log_softmax(logits)
      return -jnp.sum(jnp.take_along_axis(logp, batch["labels"][:, None], 1)), {}

  data = dict(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
  heads, neurons = prune.importance(graphdef, params, Objective(), [data])
  assert heads.shape == (2, 4) and neurons.shape == (2, 48)

  tree = nnx.to_pure_dict(params)

  def loss_with_gate(path, layer, index, gate):
    gated = jax.tree.map(np.array, tree)
    kernel = prune._get(gated, path)
    kernel[layer, index] *= gate
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, gated)
    return float(Objective()(nnx.merge(graphdef, state), data, None, None)[0])

  eps = 1e-2
  for path, scores, index in ((prune.HEAD_KERNEL, heads, 3), (prune.NEURON_KERNEL, neurons, 7)):
    for layer in range(2):
      up = loss_with_gate(path, layer, index, 1 + eps)
      down = loss_with_gate(path, layer, index, 1 - eps)
      slope = abs(up - down) / (2 * eps)
      np.testing.assert_allclose(slope, scores[layer, index], rtol=2e-2, atol=1e-6)
  assert np.all(heads > 0) and len(np.unique(heads)) == heads.size  # distinct, informative


def test_most_important_keeps_each_layers_top_scores_in_order():
  scores = np.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]])
  np.testing.assert_array_equal(prune.most_important(scores, 2), [[1, 3], [0, 1]])


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("prune")
  config = ff.classification_config(tmp_path, epochs=6, **{"model.num_attention_heads": 4})
  assert config.model.num_attention_heads == 4  # heads of 8
  workdir = str(tmp_path / "full")
  loop.train_and_evaluate(config, workdir)
  return tmp_path, config, workdir


def pruning_config(tmp_path, source, **overrides):
  c = ff.classification_config(tmp_path, epochs=0)
  c.data.vocab = ""  # the source's tokenizer
  c.prune.update(source=source, heads=0.5, ffn=0.25, batches=3)
  c.update(overrides)
  return c


def test_a_pruning_run_is_an_ordinary_workdir_that_exports_to_transformers(finetuned):
  import torch
  from transformers import BertForSequenceClassification as TorchClassifier

  from train import hf

  tmp_path, _, source = finetuned
  workdir = str(tmp_path / "pruned")
  final = loop.train_and_evaluate(pruning_config(tmp_path, source), workdir)
  assert final["prune_heads_kept"] == 2 and final["prune_heads_of"] == 4
  assert final["prune_neurons_kept"] == 48 and final["prune_neurons_of"] == 64
  record = json.load(open(os.path.join(workdir, "prune.json")))
  assert np.asarray(record["head_importance"]).shape == (2, 4)
  assert os.path.isfile(os.path.join(workdir, "head_importance.png"))

  model, tokenizer = api.load(workdir)
  assert model.config.num_attention_heads == 2 and model.config.head_dim == 8
  kernel = nnx.to_pure_dict(nnx.state(model.module, nnx.Param))["bert"]["encoder"]["layers"]
  assert kernel["ffn"]["intermediate"]["kernel"].shape == (2, 32, 48)

  out = str(tmp_path / "hf")
  hf.export_finetuned(workdir, out)
  torch_model = TorchClassifier.from_pretrained(out).eval()
  assert torch_model.config.num_attention_heads == 4  # the pruned heads as zeros
  inputs = tokenizer(["a fine film", "a dull and bad film"], padding=True, return_tensors="np")
  with torch.no_grad():
    expected = torch_model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()
  np.testing.assert_allclose(model(**inputs)["logits"], expected, atol=1e-4)


def test_pruning_that_cannot_be_done_is_refused_in_one_line(finetuned, tmp_path):
  from train.run import build_run

  _, _, source = finetuned
  cases = [
    (dict(heads=1.0), "prune.heads=1: the fraction to remove, in \\[0, 1\\)"),
    (dict(ffn=-0.1), "prune.ffn=-0.1: the fraction to remove"),
    (dict(source=str(tmp_path / "nowhere")), "no fine-tuned workdir there"),
  ]
  for changes, message in cases:
    config = pruning_config(tmp_path, source)
    config.prune.update(changes)
    with pytest.raises(UserError, match=message):
      build_run(config, str(tmp_path / "run"))
  ner = ff.ner_config(tmp_path, epochs=0)
  ner.prune.update(source=source)
  with pytest.raises(UserError, match="holds a 'classification' run; task='token_classif"):
    build_run(ner, str(tmp_path / "run"))
  config = pruning_config(tmp_path, source)
  config.init.hf_dir = "bert-base-uncased"
  with pytest.raises(UserError, match="prune.source=.* and init.hf_dir are both set"):
    build_run(config, str(tmp_path / "run"))

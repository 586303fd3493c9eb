"""Compression of a fine-tuned model (train/compress.py). Pruning (train/prune.py): the
importance is the gate gradient, a pruned model equals the unpruned one with those heads and
neurons masked. int8 (model/quantize.py): a quantized matmul is within a stated tolerance of
float, and the checkpoint holds int8. Both runs give ordinary fine-tuned workdirs that export
to transformers; bad input is refused in one line."""

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
  c.compress.update(source=source, prune_heads=0.5, prune_ffn=0.25, importance_batches=3)
  c.update(overrides)
  c.lock()  # as config_flags gives it to train.main: no key can be added on the way
  return c


def test_a_pruning_run_is_an_ordinary_workdir_that_exports_to_transformers(finetuned):
  import torch
  from transformers import BertForSequenceClassification as TorchClassifier

  from train import hf

  tmp_path, _, source = finetuned
  workdir = str(tmp_path / "pruned")
  final = loop.train_and_evaluate(pruning_config(tmp_path, source), workdir)
  assert final["compress_heads"] == 2 and final["compress_ffn"] == 48
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
    (dict(prune_heads=1.0), "compress.prune_heads=1: the fraction to remove, in \\[0, 1\\)"),
    (dict(prune_ffn=-0.1), "compress.prune_ffn=-0.1: the fraction to remove"),
    (dict(source=str(tmp_path / "nowhere")), "no fine-tuned workdir there"),
  ]
  for changes, message in cases:
    config = pruning_config(tmp_path, source)
    config.compress.update(changes)
    with pytest.raises(UserError, match=message):
      build_run(config, str(tmp_path / "run"))
  ner = ff.ner_config(tmp_path, epochs=0)
  ner.compress.update(source=source)
  with pytest.raises(UserError, match="holds a 'classification' run; task='token_classif"):
    build_run(ner, str(tmp_path / "run"))
  config = pruning_config(tmp_path, source)
  config.init.hf_dir = "bert-base-uncased"
  with pytest.raises(UserError, match="compress.source=.* and init.hf_dir are both set"):
    build_run(config, str(tmp_path / "run"))


@pytest.mark.parametrize("quantization, tolerance", [("int8_weights", 0.01), ("int8", 0.02)])
def test_a_quantized_matmul_is_within_a_stated_tolerance_of_float(quantization, tolerance):
  """int8 per-channel weights (and per-token activations): every output of a Dense within
  `tolerance` x the largest |output|."""
  from model.bert import Dense
  from model.quantize import quantize_kernel

  spec, shape = "btd,dhk->bthk", (32, 4, 8)
  float_dense = Dense(spec, shape, ("embed", "heads", "kv"), ("heads", "kv"), nnx.Rngs(0), 0.1)
  int8_dense = Dense(
    spec,
    shape,
    ("embed", "heads", "kv"),
    ("heads", "kv"),
    nnx.Rngs(0),
    0.1,
    quantization=quantization,
  )
  assert int8_dense.kernel[...].dtype == jnp.int8 and int8_dense.kernel_scale[...].shape == (
    1,
    4,
    8,
  )
  values, scale = quantize_kernel(float_dense.kernel[...], (1, 4, 8))
  int8_dense.kernel[...] = values
  int8_dense.kernel_scale[...] = scale
  int8_dense.bias[...] = float_dense.bias[...] + 0.5
  float_dense.bias[...] = float_dense.bias[...] + 0.5
  x = jax.random.normal(jax.random.key(1), (3, 7, 32))
  expected, got = float_dense(x), int8_dense(x)
  error = float(jnp.max(jnp.abs(got - expected)) / jnp.max(jnp.abs(expected)))
  assert error < tolerance
  assert error > 1e-5  # it did run in int8


@pytest.mark.parametrize("quantization", ["int8_weights", "int8"])
def test_an_int8_run_keeps_int8_kernels_predicts_and_exports(finetuned, tmp_path, quantization):
  import torch
  from transformers import BertForSequenceClassification as TorchClassifier

  from train import hf
  from train.checkpoint import read_on_host

  _, source_config, source = finetuned
  workdir = str(tmp_path / quantization)
  config = pruning_config(tmp_path, source)
  config.compress.update(prune_heads=0.0, prune_ffn=0.0)
  config.model.quantization = quantization
  final = loop.train_and_evaluate(config, workdir)
  source_final = json.load(open(os.path.join(source, "final_metrics.json")))
  assert abs(final["accuracy"] - source_final["best"]["eval"]["accuracy"]) <= 0.1
  assert final["compress_quantization"] == quantization

  parts, _, _ = read_on_host(os.path.join(workdir, "checkpoints"))
  layers = parts["params"]["bert"]["encoder"]["layers"]
  for module in (layers["attention"]["query"], layers["ffn"]["output"]):
    assert module["kernel"].dtype == np.int8 and module["kernel_scale"].dtype == np.float32
  assert parts["params"]["classifier"]["kernel"].dtype == np.float32  # the head stays float

  model, tokenizer = api.load(workdir)
  inputs = tokenizer(["a fine film", "a dull and bad film"], padding=True, return_tensors="np")
  ours = model(**inputs)["logits"]
  source_model, _ = api.load(source)
  np.testing.assert_allclose(ours, source_model(**inputs)["logits"], atol=0.05)

  out = str(tmp_path / f"hf_{quantization}")
  hf.export_finetuned(workdir, out)  # kernel x scale, in float32
  torch_model = TorchClassifier.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = torch_model(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()
  # Weight-only int8 is the exported float model exactly; int8 activations add their noise.
  np.testing.assert_allclose(ours, theirs, atol=1e-4 if quantization == "int8_weights" else 0.05)


def test_int8_weights_do_not_train(finetuned, tmp_path):
  from train.run import build_run

  _, _, source = finetuned
  config = pruning_config(tmp_path, source, epochs=1)
  config.model.quantization = "int8"
  with pytest.raises(UserError, match="model.quantization='int8' with .* training steps"):
    build_run(config, str(tmp_path / "run"))


@pytest.mark.slow
def test_quantization_aware_training_computes_what_the_int8_model_computes(finetuned, tmp_path):
  """'int8_qat' trains float weights through int8 rounding; compressed to 'int8', the model
  gives the QAT model's logits (the same rounding, now in int8 arithmetic)."""
  from model.bert import Dense
  from model.quantize import quantize_kernel

  spec, shape, names = "btf,fd->btd", (48, 32), ("mlp", "embed")
  qat = Dense(spec, shape, names, ("embed",), nnx.Rngs(0), 0.1, quantization="int8_qat")
  int8 = Dense(spec, shape, names, ("embed",), nnx.Rngs(0), 0.1, quantization="int8")
  int8.kernel[...], int8.kernel_scale[...] = quantize_kernel(qat.kernel[...], (1, 32))
  x = jax.random.normal(jax.random.key(2), (2, 5, 48))
  np.testing.assert_allclose(qat(x), int8(x), rtol=1e-5, atol=1e-5)
  # Straight-through: the kernel's gradient is that of the float matmul on rounded inputs.
  grad = jax.grad(lambda k: jnp.sum(jnp.einsum(spec, x, k)))(qat.kernel[...])
  graphdef, state = nnx.split(qat)
  qat_grad = jax.grad(lambda s: jnp.sum(nnx.merge(graphdef, s)(x)))(state)["kernel"][...]
  assert not np.allclose(qat_grad, grad)  # the inputs were rounded...
  np.testing.assert_allclose(qat_grad, grad, rtol=0.05, atol=0.05)  # ...to int8 precision

  _, _, source = finetuned
  qat_dir = str(tmp_path / "qat")
  config = pruning_config(tmp_path, source, epochs=2)
  config.compress.update(prune_heads=0.0, prune_ffn=0.0)
  config.model.quantization = "int8_qat"
  config.optimizer.lr = 1e-4
  loop.train_and_evaluate(config, qat_dir)
  int8_dir = str(tmp_path / "qat_int8")
  config = pruning_config(tmp_path, qat_dir)
  config.compress.update(prune_heads=0.0, prune_ffn=0.0)
  config.model.quantization = "int8"
  loop.train_and_evaluate(config, int8_dir)
  (qat_model, tokenizer), (int8_model, _) = api.load(qat_dir), api.load(int8_dir)
  inputs = tokenizer(["a fine film", "a dull and bad film"], padding=True, return_tensors="np")
  np.testing.assert_allclose(
    int8_model(**inputs)["logits"], qat_model(**inputs)["logits"], atol=1e-4
  )

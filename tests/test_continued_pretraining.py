"""Continued pretraining (configs/pretrain/continued.py): MLM on a task's own text from an HF
encoder without MLM head; the result exports to transformers with the same logits."""

import json

import numpy as np
import pytest
import scipy.special
from flax import nnx
from helpers import finetune as ff
from helpers import set_keys

from configs.pretrain import continued
from data import corpus
from model.convert import hf_to_params, new_mlm_head
from train import api, hf, loop
from train.errors import UserError
from train.writers import read_metrics


def continued_config(tmp_path, **overrides):
  vocab = ff.write_vocab(tmp_path / "vocab.txt")
  hf_dir, tensors, _ = ff.write_hf_dir(tmp_path / "hf", vocab)
  c = continued.get_config("tiny")
  c.init.hf_dir = hf_dir
  c.data.update(
    paths=ff.write_tsv(tmp_path / "train.tsv", ff.sentiment_rows(300, 0)),
    max_seq_length=32,
    max_predictions=5,
    heldout_documents=60,
  )
  c.batch_size = 8
  c.optimizer.update(lr=3e-3, warmup_steps=2, total_steps=30)
  c.checkpoint.update(every_steps=10, async_save=False)
  c.log_every_steps = 5
  c.eval_every_steps = 10
  c.eval_batches = 2
  c.mesh.shape = dict(data=-1, fsdp=1, tensor=1)
  return set_keys(c, overrides), tensors


def test_table_columns_read_as_documents(tmp_path):
  tsv = ff.write_tsv(tmp_path / "t.tsv", [("A b. C d.", "1"), ("e f", "0")])
  assert corpus.read_table_documents([tsv], "sentence") == [["A b.", "C d."], ["e f"]]
  jsonl = tmp_path / "pairs.jsonl"
  jsonl.write_text(
    "\n".join(json.dumps(dict(sentence1=a, sentence2=b, label="0")) for a, b in [("x", "y")])
  )
  assert corpus.read_table_documents([str(jsonl)], "sentence1,sentence2") == [["x", "y"]]
  with pytest.raises(ValueError, match="t.tsv"):
    corpus.read_table_documents([tsv], "text")


def test_the_encoder_comes_from_the_checkpoint_and_the_mlm_head_is_new(tmp_path):
  # lr 1e-12: ten steps that leave every weight where it started (within 1e-9)
  config, tensors = continued_config(
    tmp_path, **{"optimizer.lr": 1e-12, "optimizer.total_steps": 10}
  )
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  saved_config, params, _ = hf.read_workdir_params(str(tmp_path / "run"))
  assert saved_config.hidden_size == 32 and saved_config.vocab_size == 64  # from the HF dir
  expected = hf_to_params(tensors, saved_config)[0]["bert"]
  for path, value in _leaves(expected):
    np.testing.assert_allclose(_at(params["bert"], path), value, atol=1e-9, err_msg=str(path))
  assert np.abs(params["mlm"]["bias"]).max() < 1e-9  # a new decoder bias starts at zero
  # A new transform starts as the identity: the decoder reads the encoder's output.
  np.testing.assert_allclose(params["mlm"]["transform"]["kernel"], np.eye(32), atol=1e-9)


def test_a_new_mlm_head_scores_the_encoder_output_against_the_word_embeddings(tmp_path):
  """Loaded from an encoder-only HF directory, the MLM logits are LayerNorm(gelu(h)) . E^T: the
  identity transform, zero biases, the decoder tied to the word embeddings."""
  vocab = ff.write_vocab(tmp_path / "vocab.txt")
  hf_dir, _, _ = ff.write_hf_dir(tmp_path / "hf", vocab)
  encoder, tokenizer = api.load(hf_dir, head="none")
  batch = tokenizer(["the cat sat", "a good mat"], padding=True, return_tensors="np")
  hidden = encoder(**batch)["sequence_output"].astype(np.float64)
  words = np.asarray(nnx.state(encoder.module)["bert"]["embeddings"]["word"][...], np.float64)
  gelu = 0.5 * hidden * (1 + scipy.special.erf(hidden / np.sqrt(2)))
  centred = gelu - gelu.mean(-1, keepdims=True)
  normed = centred / np.sqrt(centred.var(-1, keepdims=True) + encoder.config.layer_norm_eps)
  expected = normed @ words.T
  model, _ = api.load(hf_dir, head="pretraining")
  np.testing.assert_allclose(model(**batch)["mlm_logits"], expected, atol=2e-4)


@pytest.mark.slow
def test_it_learns_and_exports_to_transformers_with_the_same_logits(tmp_path):
  import torch
  from transformers import BertForPreTraining

  config, _ = continued_config(tmp_path)
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  train = [r for r in read_metrics(workdir) if r["split"] == "train"]
  assert train[-1]["mlm_loss"] < train[0]["mlm_loss"] - 0.5
  model_config, params, _ = hf.read_workdir_params(workdir)
  out = hf.save_hf_checkpoint(str(tmp_path / "hf_out"), params, model_config)
  ours, tokenizer = api.load(workdir)
  batch = tokenizer(["the cat sat on a good mat", "bad house"], padding=True, return_tensors="np")
  mine = np.asarray(ours(**batch)["mlm_logits"], np.float32)
  torch_model = BertForPreTraining.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = torch_model(**{k: torch.tensor(v) for k, v in batch.items()}).prediction_logits
  np.testing.assert_allclose(mine, theirs.numpy(), atol=2e-4, rtol=1e-4)


def test_an_empty_vocab_without_an_init_vocab_is_named(tmp_path):
  config, _ = continued_config(tmp_path)
  config.init.hf_dir = ""
  with pytest.raises(UserError, match="data.vocab is empty"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))


def _leaves(tree, prefix=()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, (*prefix, key))
    else:
      yield (*prefix, key), value


def _at(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_a_new_untied_decoder_starts_as_the_word_embeddings():
  words = np.arange(12.0).reshape(4, 3)
  model = {
    "bert": {},
    "mlm": {"transform": {"kernel": np.zeros((3, 3))}, "decoder": np.zeros((4, 3))},
  }
  head = new_mlm_head(model, {"bert": {"embeddings": {"word": words}}})["mlm"]
  np.testing.assert_array_equal(head["decoder"], words)
  np.testing.assert_array_equal(head["transform"]["kernel"], np.eye(3))
  trained = {"bert": {}, "mlm": {"bias": np.ones(4)}}
  assert new_mlm_head(model, trained) is trained  # a source's own head is kept as it is

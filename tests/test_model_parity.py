"""Our BERT is transformers' BERT: same weights in, same numbers out."""

import numpy as np
import pytest
import torch
from helpers import flax_from_torch, random_batch, tiny_hf_config

TOL = 1e-4


def _compare(hf_config, seed, batch, length):
  from transformers import BertForPreTraining

  torch.manual_seed(seed)
  torch_model = BertForPreTraining(hf_config).eval()
  ours = flax_from_torch(torch_model)
  ids, types, mask = random_batch(seed, batch, length, hf_config.vocab_size)
  out = ours(ids, types, mask)
  with torch.no_grad():
    ref = torch_model(
      torch.tensor(ids, dtype=torch.long),
      token_type_ids=torch.tensor(types, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      output_hidden_states=True,
    )
  # HF's pooler reads position 0 of every row; padded rows compare too.
  diffs = {
    "sequence_output": np.abs(np.asarray(out["sequence_output"]) - ref.hidden_states[-1].numpy()),
    "mlm_logits": np.abs(np.asarray(out["mlm_logits"]) - ref.prediction_logits.numpy()),
    "nsp_logits": np.abs(np.asarray(out["nsp_logits"]) - ref.seq_relationship_logits.numpy()),
  }
  with torch.no_grad():
    pooled_ref = torch_model.bert(
      torch.tensor(ids, dtype=torch.long),
      token_type_ids=torch.tensor(types, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    ).pooler_output.numpy()
  diffs["pooled_output"] = np.abs(np.asarray(out["pooled_output"]) - pooled_ref)
  # Padded positions of the sequence output are not used by anything; compare real tokens.
  diffs["sequence_output"] = diffs["sequence_output"][mask.astype(bool)]
  diffs["mlm_logits"] = diffs["mlm_logits"][mask.astype(bool)]
  return {k: float(v.max()) for k, v in diffs.items()}


def test_matches_transformers_on_padded_pairs():
  diffs = _compare(tiny_hf_config(), seed=0, batch=4, length=24)
  assert all(d < TOL for d in diffs.values()), diffs


@pytest.mark.slow
def test_matches_transformers_with_other_sizes_and_activation():
  config = tiny_hf_config(
    hidden_size=48,
    num_hidden_layers=3,
    num_attention_heads=6,
    intermediate_size=96,
    hidden_act="gelu_new",
    type_vocab_size=3,
    layer_norm_eps=1e-7,
    vocab_size=257,
  )
  diffs = _compare(config, seed=1, batch=3, length=33)
  assert all(d < TOL for d in diffs.values()), diffs


def test_masked_positions_give_the_gathered_full_logits():
  from transformers import BertForPreTraining

  torch.manual_seed(2)
  ours = flax_from_torch(BertForPreTraining(tiny_hf_config()).eval())
  ids, types, mask = random_batch(2, 2, 16, 101)
  positions = np.array([[1, 5, 7], [0, 2, 3]], np.int32)
  full = np.asarray(ours(ids, types, mask)["mlm_logits"])
  gathered = np.asarray(ours(ids, types, mask, masked_positions=positions)["mlm_logits"])
  np.testing.assert_allclose(gathered, np.take_along_axis(full, positions[..., None], 1), atol=1e-5)


@pytest.mark.slow
def test_gradients_match_transformers_with_padding_and_the_tied_decoder():
  """MLM (every position, padding too, as a span loss reads them) + NSP: every
  gradient equals torch's.

  The [PAD] row of the word embeddings takes no gradient from its lookups
  (transformers' padding_idx) but does from the tied MLM decoder.
  """
  import jax
  import optax
  from flax import nnx
  from transformers import BertForPreTraining

  from model.config import BertConfig
  from model.convert import params_to_hf

  torch.manual_seed(3)
  torch_model = BertForPreTraining(
    tiny_hf_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  )
  ours = flax_from_torch(torch_model)
  ids, types, mask = random_batch(3, 4, 20, torch_model.config.vocab_size)
  assert (ids == 0).any()  # padded rows look up [PAD]
  rng = np.random.default_rng(3)
  labels = rng.integers(0, torch_model.config.vocab_size, ids.shape)
  nsp = rng.integers(0, 2, ids.shape[0])

  def loss_fn(model):
    out = model(ids, types, mask)
    mlm = optax.softmax_cross_entropy_with_integer_labels(out["mlm_logits"], labels)
    return (
      mlm.mean() + optax.softmax_cross_entropy_with_integer_labels(out["nsp_logits"], nsp).mean()
    )

  loss, grads = nnx.value_and_grad(loss_fn)(ours)
  as_long = lambda a: torch.tensor(np.asarray(a), dtype=torch.long)
  ref = torch_model(
    as_long(ids),
    token_type_ids=as_long(types),
    attention_mask=as_long(mask),
    labels=as_long(labels),
    next_sentence_label=as_long(nsp),
  )
  ref.loss.backward()
  np.testing.assert_allclose(float(loss), ref.loss.item(), rtol=1e-5)
  config = BertConfig.from_hf_dict(torch_model.config.to_dict())
  ours_hf = params_to_hf(
    jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(grads, nnx.Param))), config
  )
  for name, parameter in torch_model.named_parameters():
    np.testing.assert_allclose(ours_hf[name], parameter.grad.numpy(), atol=1e-6, err_msg=name)
  pad_row = ours_hf["bert.embeddings.word_embeddings.weight"][0]
  assert np.abs(pad_row).max() > 1e-4  # the decoder's gradient reaches it

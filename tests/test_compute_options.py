"""Compute options change how XLA runs the maths, not the maths."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import random_batch

from model.bert import LayerSlices, unstack_layers
from model.config import BertConfig
from model.heads import BertForPreTraining

BASE = BertConfig(
  vocab_size=97,
  hidden_size=64,
  num_hidden_layers=3,
  num_attention_heads=4,
  intermediate_size=96,
  max_position_embeddings=32,
)


def _params(config):
  return nnx.split(BertForPreTraining(config, nnx.Rngs(0)), nnx.Param)[1]


def _run(config, params, dropout_seed=None):
  """Outputs and parameter gradients of a scalar of all outputs."""
  graphdef = nnx.split(BertForPreTraining(config, nnx.Rngs(0)), nnx.Param)[0]
  ids, types, mask = random_batch(0, 4, 20, config.vocab_size)
  rng = None if dropout_seed is None else jax.random.key(dropout_seed)

  @jax.jit
  def f(params):
    out = nnx.merge(graphdef, params)(ids, types, mask, dropout_rng=rng)
    return jnp.sum(out["mlm_logits"] ** 2) * 1e-3 + jnp.sum(out["nsp_logits"]), out

  (_, out), grads = jax.value_and_grad(f, has_aux=True)(params)
  return out, grads


def _max_diff(a, b):
  return max(
    float(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)).max())
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  "changes",
  [
    {"scan_layers": True},
    {"remat_policy": "full"},
    {"remat_policy": "dots", "scan_layers": True},
    {"attention_impl": "xla"},
  ],
)
def test_scan_remat_and_fused_attention_match_the_plain_stack(changes):
  params = _params(BASE)
  ref_out, ref_grads = _run(BASE, params)
  out, grads = _run(BASE.replace(**changes), params)
  assert _max_diff(out, ref_out) < 1e-5
  assert _max_diff(grads, ref_grads) < 1e-5


@pytest.mark.slow
def test_scan_and_loop_draw_the_same_dropout_masks():
  params = _params(BASE)
  loop_out, loop_grads = _run(BASE, params, dropout_seed=7)
  scan_out, scan_grads = _run(
    BASE.replace(scan_layers=True, remat_policy="full"), params, dropout_seed=7
  )
  no_dropout, _ = _run(BASE, params)
  assert _max_diff(loop_out, scan_out) < 1e-5 and _max_diff(loop_grads, scan_grads) < 1e-5
  assert _max_diff(loop_out, no_dropout) > 1e-2  # dropout really was on


def test_dropout_masks_drop_at_the_rate_independently_and_scale_the_kept():
  from model.bert import dropout, keep_mask

  # 4 x 1001 x 257 elements (an odd last axis: its final word gives one half).
  keep = np.asarray(keep_mask(jax.random.key(3), 0.1, (4, 1001, 257)))
  assert keep.shape == (4, 1001, 257)
  dropped = 1 - keep.mean()
  assert abs(dropped - 0.1) < 0.002  # 1 M draws: the standard error is 0.0003
  # The low and high halves of a word decide different elements: no correlation between
  # element j and element j + 129 (the same word's other half), nor along the rows.
  lo, hi = keep[..., :128].astype(float).ravel(), keep[..., 129:257].astype(float).ravel()
  assert abs(np.corrcoef(lo, hi)[0, 1]) < 0.01
  assert abs(np.corrcoef(keep[:, :-1].ravel(), keep[:, 1:].ravel())[0, 1]) < 0.01
  # Another key, another mask; the same key, the same mask.
  assert (np.asarray(keep_mask(jax.random.key(4), 0.1, (4, 1001, 257))) != keep).mean() > 0.1
  np.testing.assert_array_equal(np.asarray(keep_mask(jax.random.key(3), 0.1, (4, 1001, 257))), keep)
  x = jnp.full((4, 1001, 257), 2.0, jnp.float32)
  out = np.asarray(dropout(x, 0.1, jax.random.key(3)))
  np.testing.assert_array_equal(out, np.where(keep, np.float32(2.0 / 0.9), 0))


# bf16 compute keeps ~3 significant digits per op; through 3 layers the hidden
# states (LayerNorm-scaled, |h| ~ 1) stay within 0.1 and the logits' relative
# error under 5 %. Parameters stay float32.
BF16_TOL_HIDDEN = 0.1
BF16_TOL_RELATIVE_LOGITS = 0.05


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32_and_keeps_float32_params():
  params = _params(BASE)
  ref, _ = _run(BASE, params)
  out, grads = _run(BASE.replace(dtype="bfloat16"), params)
  assert out["sequence_output"].dtype == jnp.bfloat16
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
  hidden = np.abs(
    np.asarray(out["sequence_output"], np.float32) - np.asarray(ref["sequence_output"])
  )
  assert hidden.max() < BF16_TOL_HIDDEN, hidden.max()
  logits, ref_logits = np.asarray(out["mlm_logits"]), np.asarray(ref["mlm_logits"])
  relative = np.linalg.norm(logits - ref_logits) / np.linalg.norm(ref_logits)
  assert relative < BF16_TOL_RELATIVE_LOGITS, relative


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_einsum_in_bfloat16_on_padded_rows():
  """cuDNN's kernel (bfloat16 only) against the einsum path at the same dtype; on a GPU
  run it with JAX_PLATFORMS unset (conftest defaults it to cpu)."""
  params = _params(BASE)
  bf16 = BASE.replace(dtype="bfloat16")
  ref, ref_grads = _run(bf16, params)
  out, grads = _run(bf16.replace(attention_impl="cudnn"), params)
  hidden = np.asarray(out["sequence_output"], np.float32)
  ref_hidden = np.asarray(ref["sequence_output"], np.float32)
  assert np.abs(hidden - ref_hidden).max() < BF16_TOL_HIDDEN
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.linalg.norm(a - b) <= BF16_TOL_RELATIVE_LOGITS * np.linalg.norm(b) + 1e-6


def test_layers_split_for_inference_give_the_same_outputs_without_slicing_weights():
  model = BertForPreTraining(BASE, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  ids, types, mask = random_batch(0, 2, 20, BASE.vocab_size)
  forward = jax.jit(lambda state: nnx.merge(graphdef, state)(ids, types, mask))
  split = unstack_layers(state)
  kernels = split["bert"]["encoder"]["layers"]["ffn"]["intermediate"]["kernel"].get_value()
  assert isinstance(kernels, LayerSlices) and len(kernels) == BASE.num_hidden_layers
  jax.tree.map(np.testing.assert_array_equal, forward(state), forward(split))

  # The stacked state's forward slices every layer's kernels out of their stack at each
  # call (a copy in XLA); the split one has no such slice left.
  def kernel_slices(state):
    text = forward.lower(state).compile().as_text()
    return sum(
      f"[{BASE.hidden_size},{BASE.intermediate_size}]" in line
      for line in text.split("\n")
      if "slice" in line
    )

  assert kernel_slices(state) >= BASE.num_hidden_layers
  assert kernel_slices(split) == 0
  scanned = nnx.split(BertForPreTraining(dataclasses.replace(BASE, scan_layers=True), nnx.Rngs(0)))
  with pytest.raises(ValueError, match="set scan_layers=False"):
    nnx.merge(scanned[0], split)(ids, types, mask)

"""Our dropout masks, applied inside transformers' PyTorch BERT.

Two training runs with dropout on differ by their masks as well as by their
framework, and the masks alone move a short fine-tuning run by points. To see
the framework's share, `mask_reader` reads off the keep-masks our objective
draws under a key, and `torch_applies` makes torch use them, in call order:
embeddings, then per layer the attention probabilities, the attention output
and the feed-forward output, then the head's. A PyTorch run fed our train
step's masks (`train.step.step_key`) follows ours to float rounding.

Used by finetune_vs_torch.py (--torch_dropout=ours) and the dropout-on case
of tests/test_train_parity.py. Torch needs `attn_implementation="eager"`:
its SDPA attention draws its masks inside the kernel.
"""

from __future__ import annotations

import contextlib
import sys
import unittest.mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import model.bert
from train import mesh as mesh_lib
from train.step import step_key


def mask_reader(objective, graphdef, frozen, model_config, mesh, rules):
  """(params, batch, run_key, step) -> the keep-masks train step `step` draws, in call order.

  The model's own `dropout` is wrapped to also return its mask (the mask of a
  ones tensor), under the step's key (`step_key`), so these are the masks the
  train step draws (one micro-batch: no gradient accumulation); XLA prunes the
  rest of the forward pass. Needs the unrolled layer loop.
  """
  if model_config.scan_layers or model_config.remat_policy != "none":
    raise ValueError(
      "reading dropout masks needs scan_layers=False and remat_policy='none' "
      f"(got {model_config.scan_layers}, {model_config.remat_policy!r})"
    )
  original = model.bert.dropout
  modules = [
    m
    for name, m in sys.modules.items()
    if name.startswith("model.") and getattr(m, "dropout", None) is original
  ]

  def masks(params, batch, key):
    kept = []

    def recording(x, rate, rng):
      if rng is not None and rate > 0:
        kept.append(original(jnp.ones(x.shape, jnp.float32), rate, rng) != 0)
      return original(x, rate, rng)

    with contextlib.ExitStack() as stack:
      for module in modules:
        stack.enter_context(unittest.mock.patch.object(module, "dropout", recording))
      objective(nnx.merge(graphdef, params, frozen), batch, key, objective.normalizers(batch))
    return kept

  masks = jax.jit(masks)

  def read(params, batch, run_key, step: int) -> list[np.ndarray]:
    with mesh_lib.activate(mesh, rules):
      return [np.asarray(m) for m in masks(params, batch, step_key(run_key, step))]

  return read


@contextlib.contextmanager
def torch_applies(masks: list[np.ndarray]):
  """torch's functional dropout (which nn.Dropout and eager attention call) uses `masks` in turn.

  Raises if torch asks for a mask of another shape, or for more or fewer masks
  than given: a dropout in another place than ours.
  """
  import torch

  original = torch.nn.functional.dropout
  queue = list(masks)

  def dropout(x, p=0.5, training=True, inplace=False):
    if not training or p == 0:
      return original(x, p, training, inplace)
    if not queue:
      raise RuntimeError(f"torch called dropout more often than our model ({len(masks)} masks)")
    keep = torch.from_numpy(np.array(queue.pop(0)))  # a writable copy: jax's arrays are read-only
    if keep.shape != x.shape:
      raise RuntimeError(
        f"dropout call {len(masks) - len(queue)}: torch's tensor is "
        f"{tuple(x.shape)}, our mask {tuple(keep.shape)}"
      )
    return torch.where(keep, x / (1 - p), torch.zeros((), dtype=x.dtype))

  torch.nn.functional.dropout = dropout
  try:
    yield
  finally:
    torch.nn.functional.dropout = original
  if queue:
    raise RuntimeError(f"torch used {len(masks) - len(queue)} of our {len(masks)} dropout masks")

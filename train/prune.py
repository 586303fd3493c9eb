"""Structured pruning of a fine-tuned model: attention heads and FFN neurons, by importance.

Michel et al. 2019 ("Are Sixteen Heads Really Better than One?") score head h by how much
the loss moves with a gate xi_h on its output: I_h = |dL/dxi_h|, summed over batches. A
gate on head h scales the rows of the attention output kernel that read that head, so at
xi = 1, dL/dxi_h = sum(W_O[h] * dL/dW_O[h]): one ordinary gradient scores every head, and
the model needs no gates. An FFN neuron is scored the same way through its row of the FFN
output kernel.

The encoder keeps its stacked layer layout (one compiled layer body), so every layer keeps
the same number of heads and of neurons: the most important of its own. What comes out is
an ordinary, smaller BERT: fewer heads of the original width (`model.attention_head_size`)
and a narrower `intermediate_size`. It trains, evaluates, predicts and exports like any
fine-tuned model; transformers gets the pruned heads back as zeros (model/convert.py).

A run prunes through `compress` (train/compress.py): the source's fine-tuned model, pruned,
is the run's model before its first step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ENCODER = ("bert", "encoder", "layers")
HEAD_KERNEL = (*ENCODER, "attention", "output", "kernel")  # [layers, heads, head_dim, hidden]
NEURON_KERNEL = (*ENCODER, "ffn", "output", "kernel")  # [layers, intermediate, hidden]


def kept(total: int, fraction: float) -> int:
  """How many of `total` stay when `fraction` of them is pruned (at least one)."""
  return max(1, total - round(total * fraction))


def _get(tree: dict, path):
  for key in path:
    tree = tree[key]
  return tree


def importance(graphdef, params, objective, batches) -> tuple[np.ndarray, np.ndarray]:
  """(|dL/dxi| of every head [layers, heads], of every FFN neuron [layers, intermediate]),
  summed over `batches` (sharded global batches), dropout off."""

  def loss(params, batch):
    model = nnx.merge(graphdef, params)
    return objective(model, batch, None, objective.normalizers(batch))[0]

  @jax.jit
  def scores(params, batch):
    grads = nnx.to_pure_dict(jax.grad(loss)(params, batch))
    values = nnx.to_pure_dict(params)
    gate = lambda path, axes: jnp.abs(jnp.sum(_get(values, path) * _get(grads, path), axes))
    return gate(HEAD_KERNEL, (2, 3)), gate(NEURON_KERNEL, (2,))

  heads = neurons = 0.0
  for batch in batches:
    h, n = scores(params, batch)
    heads, neurons = heads + np.asarray(h), neurons + np.asarray(n)
  return heads, neurons


def most_important(scores: np.ndarray, count: int) -> np.ndarray:
  """Per layer, the indices of its `count` highest scores, in their original order."""
  top = np.argsort(-scores, axis=1, kind="stable")[:, :count]
  return np.sort(top, axis=1)


def prune_tree(tree: dict, heads: np.ndarray, neurons: np.ndarray) -> dict:
  """The parameter tree with only `heads` [layers, kept] and `neurons` [layers, kept] of each
  stacked layer; everything else as it is."""
  take = lambda x, index, axis: np.take_along_axis(
    np.asarray(x), np.expand_dims(index, tuple(range(2, x.ndim))).swapaxes(1, axis), axis
  )
  layers = _get(tree, ENCODER)
  attention, ffn = dict(layers["attention"]), dict(layers["ffn"])
  for name in ("query", "key", "value"):  # kernel [L, hidden, heads, kv], bias [L, heads, kv]
    kernel, bias = attention[name]["kernel"], attention[name]["bias"]
    attention[name] = dict(kernel=take(kernel, heads, 2), bias=take(bias, heads, 1))
  output = attention["output"]  # kernel [L, heads, kv, hidden]
  attention["output"] = dict(output, kernel=take(output["kernel"], heads, 1))
  inner = ffn["intermediate"]  # kernel [L, hidden, intermediate], bias [L, intermediate]
  ffn["intermediate"] = dict(
    inner, kernel=take(inner["kernel"], neurons, 2), bias=take(inner["bias"], neurons, 1)
  )
  ffn["output"] = dict(ffn["output"], kernel=take(ffn["output"]["kernel"], neurons, 1))
  layers = dict(layers, attention=attention, ffn=ffn)
  encoder = dict(tree["bert"]["encoder"], layers=layers)
  return dict(tree, bert=dict(tree["bert"], encoder=encoder))


def plot_head_importance(scores: np.ndarray, kept_heads: np.ndarray, out_png: str) -> str:
  """Each layer's head scores as a heatmap (share of the layer's total); kept heads boxed."""
  from matplotlib.patches import Rectangle

  from train import writers

  share = 100 * scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-30)
  layers, heads = share.shape
  fig = writers.new_figure(1.8 + 0.5 * heads, 1.2 + 0.45 * layers)
  ax = fig.subplots()
  image = ax.imshow(share, cmap="Oranges", vmin=0)
  for layer, kept in enumerate(kept_heads):
    for head in kept:
      ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
  ax.set_xticks(range(heads))
  ax.set_yticks(range(layers))
  ax.set_xlabel("head")
  ax.set_ylabel("layer")
  ax.set_title("head importance |dL/d gate| (boxed: kept)")
  fig.colorbar(image, ax=ax, label="% of the layer's importance")
  return writers.save_png(fig, out_png)

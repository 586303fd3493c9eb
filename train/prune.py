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

A run prunes when `prune.source` names a fine-tuned workdir of its task: the run's model is
the source's, pruned, head included, before the first step. `train.steps=0` evaluates the
pruned model as it is (Michel et al. prune without retraining); more steps fine-tune it.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from model.config import BertConfig
from train.errors import UserError

ENCODER = ("bert", "encoder", "layers")
HEAD_KERNEL = (*ENCODER, "attention", "output", "kernel")  # [layers, heads, head_dim, hidden]
NEURON_KERNEL = (*ENCODER, "ffn", "output", "kernel")  # [layers, intermediate, hidden]


def enabled(config) -> bool:
  return bool(config.get("prune", {}).get("source", ""))


def kept(total: int, fraction: float, key: str) -> int:
  """How many of `total` stay when `fraction` of them is pruned (at least one)."""
  if not 0.0 <= fraction < 1.0:
    raise UserError(f"prune.{key}={fraction:g}: the fraction to remove, in [0, 1)")
  return max(1, total - round(total * fraction))


def source_run(config):
  """The fine-tuned run prune.source names, checked against this run's task and labels."""
  from train import finetuned

  source = config.prune.source
  where = f"prune.source={source}"
  if not os.path.isfile(os.path.join(source, "config.json")):
    raise UserError(f"{where}: no fine-tuned workdir there (it holds no config.json)")
  run = finetuned.read_run(source)
  if run.task != config.task:
    raise UserError(f"{where} holds a {run.task!r} run; task={config.task!r} needs its own")
  if run.peft.method != "none":
    raise UserError(
      f"{where} is a {run.peft.method} run: prune a fully fine-tuned model (or merge first)"
    )
  if config.get("init") and (config.init.get("checkpoint") or config.init.get("hf_dir")):
    raise UserError(
      f"{where} and init.{'checkpoint' if config.init.get('checkpoint') else 'hf_dir'} are "
      "both set: a pruned run's weights are the source's (--config.init.hf_dir= clears it)"
    )
  return run


def adopt_source(config) -> None:
  """config.model becomes the source's architecture, pruned; data.vocab its tokenizer."""
  run = source_run(config)
  m = run.model_config
  p = config.prune
  pruned = dict(
    num_attention_heads=kept(m.num_attention_heads, p.heads, "heads"),
    attention_head_size=m.head_dim,
    intermediate_size=kept(m.intermediate_size, p.ffn, "ffn"),
  )
  from train.hf import ARCH_KEYS

  config.model.update({key: getattr(m, key) for key in ARCH_KEYS}, **pruned)
  tokenizer = os.path.join(p.source, "tokenizer")
  if os.path.isdir(tokenizer):
    config.data.vocab = tokenizer
  logging.info(
    "pruning %s: heads %d -> %d, ffn %d -> %d per layer",
    p.source,
    m.num_attention_heads,
    pruned["num_attention_heads"],
    m.intermediate_size,
    pruned["intermediate_size"],
  )


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


class PruneHook:
  """The run hook of pruning (train/run.py): a fresh run starts from the source, pruned.

  A resumed run has the pruned weights in its checkpoint already. `prune.json` and
  `head_importance.png` in the workdir keep every score and what was kept.
  """

  def __init__(self, config, task, mesh, rules, frozen, tx, workdir: str | None):
    self.config, self.task, self.mesh, self.rules = config, task, mesh, rules
    self.frozen, self.tx, self.workdir = frozen, tx, workdir
    self.summary: dict = {}

  def on_start(self, state, resuming: bool):
    if resuming:
      return state
    from train import finetuned, tasks
    from train import mesh as mesh_lib
    from train.state import abstract_model, load_params

    p, model_config = self.config.prune, BertConfig.from_dict(self.config.model)
    source = source_run(self.config)
    factory = tasks.model_factory(source.config, source.model_config, source.labels)
    graphdef, abstract = abstract_model(factory)
    tree = finetuned.full_params(source)
    params = jax.tree.map(jnp.asarray, tree)
    nnx.replace_by_pure_dict(abstract, params)
    batches = [
      mesh_lib.shard_batch(
        self.task.train_data.batch(step, jax.process_index(), jax.process_count()),
        self.mesh,
        self.rules,
      )
      for step in range(p.batches)
    ]
    head_scores, neuron_scores = importance(graphdef, abstract, self.task.objective, batches)
    heads = most_important(head_scores, model_config.num_attention_heads)
    neurons = most_important(neuron_scores, model_config.intermediate_size)
    pruned = prune_tree(tree, heads, neurons)
    state, _ = load_params(state, self.frozen, pruned, self.tx)
    self.summary = {
      "prune_heads_kept": int(heads.shape[1]),
      "prune_heads_of": int(head_scores.shape[1]),
      "prune_neurons_kept": int(neurons.shape[1]),
      "prune_neurons_of": int(neuron_scores.shape[1]),
    }
    logging.info("pruned %s on %d batches: %s", p.source, p.batches, self.summary)
    if self.workdir and jax.process_index() == 0:
      self._write(head_scores, neuron_scores, heads, neurons)
    return state

  def _write(self, head_scores, neuron_scores, heads, neurons) -> None:
    from train import writers

    record = dict(
      source=self.config.prune.source,
      batches=self.config.prune.batches,
      head_importance=head_scores.tolist(),
      heads_kept=heads.tolist(),
      neuron_importance_sum_kept=[
        float(s[k].sum() / max(s.sum(), 1e-30)) for s, k in zip(neuron_scores, neurons)
      ],
      neurons_kept=neurons.tolist(),
    )
    writers.write_text(os.path.join(self.workdir, "prune.json"), json.dumps(record, indent=1))
    plot_head_importance(head_scores, heads, os.path.join(self.workdir, "head_importance.png"))

  def on_end(self, state, mesh) -> dict:
    return dict(self.summary)


def plot_head_importance(scores: np.ndarray, kept_heads: np.ndarray, out_png: str) -> str:
  """Each layer's head scores as a heatmap (share of the layer's total); kept heads boxed."""
  import io

  from etils import epath
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Rectangle

  share = 100 * scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-30)
  layers, heads = share.shape
  fig = Figure(figsize=(1.8 + 0.5 * heads, 1.2 + 0.45 * layers), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
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
  png = io.BytesIO()
  fig.savefig(png, format="png")
  epath.Path(out_png).write_bytes(png.getvalue())
  return out_png

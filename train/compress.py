"""A run whose model is a fine-tuned workdir's, made smaller: pruned, int8, or both.

`compress.source` names a fine-tuned workdir of the run's task. The run's architecture and
tokenizer become the source's, with `compress.prune_heads` / `prune_ffn` of every layer's
heads / FFN neurons removed (train/prune.py) and `model.quantization` applied
(model/quantize.py). Before the first step a run hook loads the source's weights, head
included, prunes them by importance and quantizes them. With `epochs=0` the run evaluates
that model as it is and keeps it as checkpoint 0: post-training pruning (Michel et al. 2019)
and post-training quantization. With steps, a pruned float model is fine-tuned further, and
with model.quantization='int8_qat' it trains through int8 rounding (quantization-aware); its
workdir, compressed with 'int8' and epochs 0, is then the int8 model it trained to be.
Either way the workdir is an ordinary fine-tuned one: it evaluates, predicts and exports.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from model.config import BertConfig
from model.quantize import quantize_tree
from train import prune
from train.errors import UserError

STORED_INT8 = ("int8_weights", "int8")  # quantizations whose kernels are int8 parameters


def enabled(config) -> bool:
  return bool(config.get("compress", {}).get("source", ""))


def _check_fraction(config, key: str) -> float:
  fraction = config.compress[key]
  if not 0.0 <= fraction < 1.0:
    raise UserError(f"compress.{key}={fraction:g}: the fraction to remove, in [0, 1)")
  return fraction


def source_run(config):
  """The fine-tuned run compress.source names, checked against this run's task."""
  from train import finetuned

  source = config.compress.source
  where = f"compress.source={source}"
  if not os.path.isfile(os.path.join(source, "config.json")):
    raise UserError(f"{where}: no fine-tuned workdir there (it holds no config.json)")
  run = finetuned.read_run(source)
  if run.task != config.task:
    raise UserError(f"{where} holds a {run.task!r} run; task={config.task!r} needs its own")
  if run.peft.method != "none":
    raise UserError(
      f"{where} is a {run.peft.method} run: compress a fully fine-tuned model (export merged)"
    )
  if run.model_config.quantization in STORED_INT8:
    raise UserError(f"{where} is quantized already: compress its float source instead")
  if config.get("init") and (config.init.get("checkpoint") or config.init.get("hf_dir")):
    which = "checkpoint" if config.init.get("checkpoint") else "hf_dir"
    raise UserError(
      f"{where} and init.{which} are both set: the run's weights are the source's "
      f"(--config.init.{which}= clears it)"
    )
  return run


def adopt_source(config) -> None:
  """config.model becomes the source's architecture, pruned; data.vocab its tokenizer."""
  from train.hf import ARCH_KEYS

  run = source_run(config)
  m = run.model_config
  heads = prune.kept(m.num_attention_heads, _check_fraction(config, "prune_heads"))
  ffn = prune.kept(m.intermediate_size, _check_fraction(config, "prune_ffn"))
  config.model.update(
    {key: getattr(m, key) for key in ARCH_KEYS if key != "quantization"},  # the run's own
    num_attention_heads=heads,
    attention_head_size=m.head_dim,
    intermediate_size=ffn,
  )
  tokenizer = os.path.join(config.compress.source, "tokenizer")
  if os.path.isdir(tokenizer):
    config.data.vocab = tokenizer
  logging.info(
    "compressing %s: heads %d -> %d, ffn %d -> %d per layer, quantization %s",
    config.compress.source,
    m.num_attention_heads,
    heads,
    m.intermediate_size,
    ffn,
    config.model.get("quantization", "none"),
  )


def check_trainable(config, total_steps: int) -> None:
  """int8 weights take no gradient: a quantized run evaluates its source (epochs 0)."""
  quantization = config.model.get("quantization", "none")
  if quantization in STORED_INT8 and total_steps:
    raise UserError(
      f"model.quantization={quantization!r} with {total_steps} training steps: int8 weights "
      "do not train; quantize a fine-tuned model with compress.source and epochs=0, or train "
      "with 'int8_qat' first"
    )


class CompressHook:
  """The run hook of compression (train/run.py): a fresh run starts from the source, pruned
  and quantized. A resumed run has those weights in its checkpoint already. A pruning run
  writes `prune.json` (every score, what was kept) and `head_importance.png`."""

  def __init__(self, config, task, mesh, rules, frozen, tx, workdir: str | None):
    self.config, self.task, self.mesh, self.rules = config, task, mesh, rules
    self.frozen, self.tx, self.workdir = frozen, tx, workdir
    self.summary: dict = {}

  def on_start(self, state, resuming: bool):
    if resuming:
      return state
    from train import finetuned, tasks
    from train.state import abstract_model, load_params

    source = source_run(self.config)
    tree = finetuned.full_params(source)
    model_config = BertConfig.from_dict(self.config.model)
    m = source.model_config
    if (model_config.num_attention_heads, model_config.intermediate_size) != (
      m.num_attention_heads,
      m.intermediate_size,
    ):
      factory = tasks.model_factory(source.config, m, source.labels)
      tree = self._pruned(tree, abstract_model(factory), model_config)
    self.summary.update(compress_heads=model_config.num_attention_heads)
    self.summary.update(compress_ffn=model_config.intermediate_size)
    if model_config.quantization in STORED_INT8:
      tree = quantize_tree(tree, nnx.to_pure_dict(state.params))
      self.summary.update(compress_quantization=model_config.quantization)
    state, _ = load_params(state, self.frozen, tree, self.tx)
    logging.info("compressed %s: %s", self.config.compress.source, self.summary)
    return state

  def _pruned(self, tree: dict, source_model, model_config) -> dict:
    from train import mesh as mesh_lib

    graphdef, abstract = source_model
    nnx.replace_by_pure_dict(abstract, jax.tree.map(jnp.asarray, tree))
    batches = [
      mesh_lib.shard_batch(
        self.task.train_data.batch(step, jax.process_index(), jax.process_count()),
        self.mesh,
        self.rules,
      )
      for step in range(self.config.compress.importance_batches)
    ]
    head_scores, neuron_scores = prune.importance(graphdef, abstract, self.task.objective, batches)
    heads = prune.most_important(head_scores, model_config.num_attention_heads)
    neurons = prune.most_important(neuron_scores, model_config.intermediate_size)
    if self.workdir and jax.process_index() == 0:
      self._write(head_scores, neuron_scores, heads, neurons)
    return prune.prune_tree(tree, heads, neurons)

  def _write(self, head_scores, neuron_scores, heads, neurons) -> None:
    from train import writers

    record = dict(
      source=self.config.compress.source,
      batches=self.config.compress.importance_batches,
      head_importance=head_scores.tolist(),
      heads_kept=heads.tolist(),
      neuron_importance_kept_share=[
        float(s[k].sum() / max(s.sum(), 1e-30)) for s, k in zip(neuron_scores, neurons)
      ],
      neurons_kept=neurons.tolist(),
    )
    writers.write_text(os.path.join(self.workdir, "prune.json"), json.dumps(record, indent=1))
    png = os.path.join(self.workdir, "head_importance.png")
    prune.plot_head_importance(head_scores, heads, png)

  def on_end(self, state, mesh) -> dict:
    return dict(self.summary)

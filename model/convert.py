"""The one mapping between transformers' BERT tensors and our parameter tree.

HF side: a flat dict of numpy arrays named as in `BertForPreTraining.state_dict()`,
plus a task's head: one `Linear` named at the top level (`classifier.*` of
`BertFor{Sequence,Token}Classification` and `BertForMultipleChoice`,
`qa_outputs.*` of `BertForQuestionAnswering`); torch `Linear` weights are [out, in].
Our side: the nested pure dict of `nnx.state(model).to_pure_dict()`, layers stacked
on axis 0 and attention kernels split into heads. Pure numpy, no I/O: `train/hf.py`
reads and writes the files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from model.config import BertConfig

Tree = dict[str, Any]


# BertModel's own modules: a checkpoint saved from BertModel names them without "bert.".
ENCODER_MODULES = ("embeddings.", "encoder.", "pooler.")
# Our top-level modules that are not a task head: the encoder and the pretraining heads.
PRETRAINING_MODULES = ("bert", "mlm", "nsp")


def normalise_hf_names(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Accepts BertModel, BertForPreTraining and BertFor<Task> names, old gamma/beta LayerNorms.

  Returns names as in `BertForPreTraining` ("bert." prefix on the encoder);
  buffers such as `position_ids` are dropped.
  """
  out = {}
  for name, value in tensors.items():
    if name.endswith("position_ids"):
      continue
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    if name.startswith(ENCODER_MODULES):
      name = "bert." + name
    out[name] = np.asarray(value)
  return out


def _layer_map(i: int, c: BertConfig) -> list[tuple[str, tuple[str, ...], Any, Any]]:
  """(hf name, our path inside one layer, hf->ours, ours->hf) for layer i."""
  h, nh, hd = c.hidden_size, c.num_attention_heads, c.head_dim
  # A pruned model (fewer heads of the original width) goes to transformers, which derives
  # the head width from hidden_size, with its missing heads as zeros: a zero head's values
  # and output rows are zero, so it adds nothing, and the logits are unchanged.
  zero_heads = c.hf_num_attention_heads - nh
  p = f"bert.encoder.layer.{i}."
  pad = lambda x, axis: np.concatenate(
    [x, np.zeros((*x.shape[:axis], zero_heads, *x.shape[axis + 1 :]), x.dtype)], axis
  )
  qkv_in = lambda w: w.T.reshape(h, nh, hd)
  qkv_out = lambda k: pad(np.asarray(k), 1).reshape(h, h).T
  head_bias_in = lambda b: b.reshape(nh, hd)
  head_bias_out = lambda b: pad(np.asarray(b), 0).reshape(h)
  o_in = lambda w: w.T.reshape(nh, hd, h)
  o_out = lambda k: pad(np.asarray(k), 0).reshape(h, h).T
  t, same = (lambda w: w.T), (lambda x: x)
  rows = []
  for name in ("query", "key", "value"):
    rows += [
      (p + f"attention.self.{name}.weight", ("attention", name, "kernel"), qkv_in, qkv_out),
      (p + f"attention.self.{name}.bias", ("attention", name, "bias"), head_bias_in, head_bias_out),
    ]
  rows += [
    (p + "attention.output.dense.weight", ("attention", "output", "kernel"), o_in, o_out),
    (p + "attention.output.dense.bias", ("attention", "output", "bias"), same, same),
    (p + "attention.output.LayerNorm.weight", ("attention", "norm", "scale"), same, same),
    (p + "attention.output.LayerNorm.bias", ("attention", "norm", "bias"), same, same),
    (p + "intermediate.dense.weight", ("ffn", "intermediate", "kernel"), t, t),
    (p + "intermediate.dense.bias", ("ffn", "intermediate", "bias"), same, same),
    (p + "output.dense.weight", ("ffn", "output", "kernel"), t, t),
    (p + "output.dense.bias", ("ffn", "output", "bias"), same, same),
    (p + "output.LayerNorm.weight", ("ffn", "norm", "scale"), same, same),
    (p + "output.LayerNorm.bias", ("ffn", "norm", "bias"), same, same),
  ]
  return rows


def _top_map(config: BertConfig) -> list[tuple[str, tuple[str, ...], Any, Any]]:
  t, same = (lambda w: w.T), (lambda x: x)
  e = "bert.embeddings."
  decoder = (
    []
    if config.tie_word_embeddings  # the word embeddings serve; HF's copy is not read
    else [("cls.predictions.decoder.weight", ("mlm", "decoder"), same, same)]
  )
  return decoder + [
    (e + "word_embeddings.weight", ("bert", "embeddings", "word"), same, same),
    (e + "position_embeddings.weight", ("bert", "embeddings", "position"), same, same),
    (e + "token_type_embeddings.weight", ("bert", "embeddings", "token_type"), same, same),
    (e + "LayerNorm.weight", ("bert", "embeddings", "norm", "scale"), same, same),
    (e + "LayerNorm.bias", ("bert", "embeddings", "norm", "bias"), same, same),
    ("bert.pooler.dense.weight", ("bert", "pooler", "dense", "kernel"), t, t),
    ("bert.pooler.dense.bias", ("bert", "pooler", "dense", "bias"), same, same),
    ("cls.predictions.transform.dense.weight", ("mlm", "transform", "kernel"), t, t),
    ("cls.predictions.transform.dense.bias", ("mlm", "transform", "bias"), same, same),
    ("cls.predictions.transform.LayerNorm.weight", ("mlm", "norm", "scale"), same, same),
    ("cls.predictions.transform.LayerNorm.bias", ("mlm", "norm", "bias"), same, same),
    ("cls.predictions.bias", ("mlm", "bias"), same, same),
    ("cls.seq_relationship.weight", ("nsp", "kernel"), t, t),
    ("cls.seq_relationship.bias", ("nsp", "bias"), same, same),
  ]


def head_names(names) -> list[str]:
  """The task heads among top-level names: one Linear each, `<head>.weight` / `<head>.bias`
  on the HF side, `<head>/kernel` / `<head>/bias` on ours."""
  heads = {name.split(".")[0] for name in names if name.count(".") == 1}
  return sorted(heads - {"bert", "cls", *PRETRAINING_MODULES})


def _head_map(heads) -> list[tuple[str, tuple[str, ...], Any, Any]]:
  """Fine-tuning heads: optional on both sides (a model has at most one of them).

  Our kernels are [hidden, classes] whatever the einsum ('bd,dc' or 'btd,dc').
  """
  t, same = (lambda w: w.T), (lambda x: x)
  rows = []
  for head in heads:
    rows += [
      (f"{head}.weight", (head, "kernel"), t, t),
      (f"{head}.bias", (head, "bias"), same, same),
    ]
  return rows


def set_path(tree: Tree, path, value):
  """tree[path[0]][path[1]]... = value, making the dicts on the way."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: Tree, path):
  """tree[path[0]][path[1]]..."""
  for key in path:
    tree = tree[key]
  return tree


def leaf_paths(tree: Tree, prefix: tuple[str, ...] = ()):
  """The key path of every leaf of a nested dict."""
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from leaf_paths(value, prefix + (key,))
    else:
      yield prefix + (key,)


LAYERS_PATH = ("bert", "encoder", "layers")


def hf_to_params(tensors: Mapping[str, np.ndarray], config: BertConfig) -> tuple[Tree, list[str]]:
  """HF tensors -> our nested tree (float32), and the HF names that were absent.

  A `BertModel` checkpoint has no `cls.*` heads: their names come back in the
  missing list and the caller keeps freshly initialised heads for them. A
  fine-tuning head (`classifier.*`, `qa_outputs.*`: a top-level Linear) is mapped
  when present and never counted missing: most checkpoints have none.
  """
  hf = normalise_hf_names(tensors)
  heads = head_names(hf)
  tree: Tree = {}
  missing = []
  for name, path, to_ours, _ in _top_map(config):
    if name in hf:
      set_path(tree, path, to_ours(hf[name]).astype(np.float32))
    else:
      missing.append(name)
  for name, path, to_ours, _ in _head_map(heads):
    if name in hf:
      set_path(tree, path, to_ours(hf[name]).astype(np.float32))
  per_layer: list[dict] = []
  for i in range(config.num_hidden_layers):
    layer: Tree = {}
    for name, path, to_ours, _ in _layer_map(i, config):
      if name not in hf:
        missing.append(name)
        continue
      set_path(layer, path, to_ours(hf[name]).astype(np.float32))
    per_layer.append(layer)
  flat_paths = [path for _, path, _, _ in _layer_map(0, config)]
  stacked: Tree = {}
  for path in flat_paths:
    try:
      set_path(stacked, path, np.stack([get_path(layer, path) for layer in per_layer]))
    except KeyError:
      pass
  set_path(tree, LAYERS_PATH, stacked)
  extra = sorted(
    set(hf)
    - _all_hf_names(config, heads)
    - {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
  )
  if extra:
    raise ValueError(
      f"checkpoint has tensors this BERT does not: {extra[:5]}"
      f"{' ...' if len(extra) > 5 else ''} (num_hidden_layers="
      f"{config.num_hidden_layers}; is it a BERT checkpoint of this size?)"
    )
  return tree, missing


def _all_hf_names(config: BertConfig, heads) -> set[str]:
  names = {name for name, *_ in _top_map(config) + _head_map(heads)}
  for i in range(config.num_hidden_layers):
    names |= {name for name, *_ in _layer_map(i, config)}
  return names


def params_to_hf(params: Tree, config: BertConfig) -> dict[str, np.ndarray]:
  """Our tree -> HF tensors of the heads it holds (pretraining, classifier, qa_outputs).

  The encoder must be complete; the tied MLM decoder bias is written out too. A
  leaf with no HF name (an unmerged LoRA branch, an adapter, prefix or prompt)
  raises rather than vanish from the export.
  """
  out, mapped = {}, set()
  heads = sorted(set(params) - set(PRETRAINING_MODULES))
  for name, path, _, to_hf in _top_map(config) + _head_map(heads):
    if path[0] != "bert" and path[0] not in params:
      continue  # a head this model does not have
    out[name] = np.ascontiguousarray(to_hf(np.asarray(get_path(params, path), np.float32)))
    mapped.add(path)
  stacked = get_path(params, LAYERS_PATH)
  for i in range(config.num_hidden_layers):
    for name, path, _, to_hf in _layer_map(i, config):
      out[name] = np.ascontiguousarray(to_hf(np.asarray(get_path(stacked, path)[i], np.float32)))
  mapped |= {LAYERS_PATH + path for _, path, _, _ in _layer_map(0, config)}
  unmapped = ["/".join(p) for p in leaf_paths(params) if p not in mapped]
  if unmapped:
    raise ValueError(
      f"parameters with no HF BERT tensor: {unmapped[:5]}"
      f"{' ...' if len(unmapped) > 5 else ''} (merge LoRA / AdaLoRA branches "
      "first with model.peft.merge_low_rank; adapter, prefix and prompt "
      "parameters have no place in transformers' BERT)"
    )
  if "cls.predictions.bias" in out:
    out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
  return out


def check_shapes(reference: Tree, loaded: Tree, prefix: str = "") -> None:
  """Raises naming the first key whose shape differs from the model's."""
  for key, value in loaded.items():
    where = f"{prefix}/{key}" if prefix else key
    if key not in reference:
      raise ValueError(f"checkpoint key {where!r} is not in the model")
    if isinstance(value, dict):
      check_shapes(reference[key], value, where)
    elif tuple(np.shape(reference[key])) != tuple(np.shape(value)):
      raise ValueError(
        f"shape mismatch at {where!r}: checkpoint {tuple(np.shape(value))}, "
        f"model {tuple(np.shape(reference[key]))}"
      )


def union_trees(a: Tree, b: Tree) -> Tree:
  """Every key of `a` and `b`; where both have a leaf, `b`'s. No shape checks."""
  out = dict(a)
  for key, value in b.items():
    out[key] = union_trees(out[key], value) if isinstance(value, dict) and key in out else value
  return out


def merge_trees(base: Tree, update: Tree) -> Tree:
  """`base` with every leaf present in `update` replaced (shapes checked first)."""
  check_shapes(base, update)
  out = dict(base)
  for key, value in update.items():
    out[key] = merge_trees(base[key], value) if isinstance(value, dict) else value
  return out


def new_mlm_head(model_tree: Tree, tree: Tree) -> Tree:
  """`tree` given an MLM head where the model has one and `tree` has none.

  A source without an MLM head (all-MiniLM-L6-v2 ships the encoder alone) gets
  one whose transform starts as the identity (an untied decoder: as the word
  embeddings), so its first logits read the encoder's output against each word's
  embedding, where a random transform scrambles it. MiniLM's untrained head then
  ranks SST-2's label words the right way round for three of four verbalizers
  (benchmarks.cloze_signal: ROC AUC 0.53-0.60, zero-shot up to 57.11 %); with a
  random transform three of four ranked the wrong way (0.43-0.49), none above
  50.92 %. Biases stay zero, LayerNorm at one.
  """
  if "mlm" not in model_tree or "mlm" in tree:
    return tree
  mlm = model_tree["mlm"]
  head = {"transform": {"kernel": np.eye(*np.shape(mlm["transform"]["kernel"]), dtype=np.float32)}}
  if "decoder" in mlm and "bert" in tree:
    head["decoder"] = np.asarray(get_path(tree, ("bert", "embeddings", "word")), np.float32)
  return {**tree, "mlm": head}

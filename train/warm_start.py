"""Where a run's first weights come from: a pretraining workdir, an HF BERT, or nowhere.

Either source gives a tree with the encoder under 'bert', the name every
model in model/heads.py keeps its encoder under; parts the model lacks (the
MLM / NSP heads, when fine-tuning) are dropped, and a task head stays freshly
initialised, also when the source is a fine-tuned run (continual learning
starts each task from the previous task's encoder this way). An architecture
that differs from the config stops the run naming each differing key; a vocab
that differs shows up as a shape error on 'bert/embeddings/word'.

Checkpoints are read with `train.checkpoint.read_on_host`: the parameters
alone, onto the host, whatever mesh or device count they were saved from.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from model import convert
from model.config import BertConfig
from train import hf
from train.checkpoint import read_on_host
from train.errors import UserError
from train.state import TrainState, load_params


def _check_architecture(saved_model: dict, config: BertConfig, where: str) -> None:
  clashes = [
    f"model.{key}: checkpoint {saved_model[key]}, config {getattr(config, key)}"
    for key in hf.ARCH_KEYS
    if key in saved_model and saved_model[key] != getattr(config, key)
  ]
  if clashes:
    raise ValueError(f"{where} was trained with another architecture: " + "; ".join(clashes))


def workdir_params(workdir: str, config: BertConfig) -> dict:
  """The parameters of the newest checkpoint of a workdir of this codebase."""
  parts, meta, step = read_on_host(os.path.join(workdir, "checkpoints"))
  params = parts["params"]
  saved_model = meta.get("config", {}).get("model", {})
  _check_architecture(saved_model, config, f"init.checkpoint={workdir} (step {step})")
  if "bert" not in params:
    raise ValueError(
      f"init.checkpoint={workdir}: its parameters have no 'bert' encoder "
      f"(top-level keys {sorted(params)})"
    )
  logging.info("weights from %s, step %d", workdir, step)
  return _without_task_heads(params, workdir)


def hf_params(name_or_dir: str, config: BertConfig) -> dict:
  """The tree of an HF BERT directory or hub name, through model/convert.py."""
  _, tree, missing = hf.load_hf_checkpoint(hf.resolve_hf_source(name_or_dir), config)
  encoder_missing = [name for name in missing if name.startswith("bert.")]
  if encoder_missing:
    logging.warning(
      "%s lacks encoder tensors %s: they stay randomly initialised",
      name_or_dir,
      encoder_missing[:5],
    )
  return _without_task_heads(tree, name_or_dir)


def _without_task_heads(tree: dict, where: str) -> dict:
  """A fine-tuned model's head (classifier, qa_outputs) is another task's: heads start fresh."""
  heads = sorted(set(tree) - set(convert.PRETRAINING_MODULES))
  if heads:
    logging.info("%s: not using its task head %s", where, heads)
  return {key: value for key, value in tree.items() if key not in heads}


def check_init_source(init) -> None:
  """Names a missing or empty init.checkpoint / init.hf_dir before anything reads from it."""
  from data.tokenizer import looks_like_local_path

  checkpoint, hf_dir = init.get("checkpoint", ""), init.get("hf_dir", "")
  if checkpoint and not os.path.isdir(os.path.join(checkpoint, "checkpoints")):
    what = "does not exist" if not os.path.exists(checkpoint) else "holds no checkpoints/"
    raise FileNotFoundError(
      f"init.checkpoint={checkpoint} {what}: give the workdir of a pretraining run"
    )
  if hf_dir and (os.path.exists(hf_dir) or looks_like_local_path(hf_dir)):
    if not os.path.isdir(hf_dir):
      raise FileNotFoundError(
        f"init.hf_dir={hf_dir} does not exist: give an HF model directory (config.json and "
        "model.safetensors) or a hub name"
      )
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
      held = sorted(os.listdir(hf_dir))[:4]
      raise FileNotFoundError(
        f"init.hf_dir={hf_dir} holds no config.json (it holds {held or 'nothing'}): give an HF "
        "model directory (config.json and model.safetensors)"
      )


def init_architecture(init) -> tuple[dict, str]:
  """(the architecture keys of init.checkpoint's config.json or of a local init.hf_dir's, where
  from); ({}, '') without an init source, or for a hub name (read when loading)."""
  checkpoint, hf_dir = init.get("checkpoint", ""), init.get("hf_dir", "")
  if checkpoint:
    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
      return {}, ""
    with open(path) as f:
      saved = json.load(f).get("model", {})
  elif hf_dir and os.path.isdir(hf_dir):
    saved, path = hf.read_hf_config(hf_dir), os.path.join(hf_dir, "config.json")
  else:
    return {}, ""
  return {key: saved[key] for key in hf.ARCH_KEYS if key in saved}, path


def init_layers(init) -> tuple[tuple[int, ...], int | None]:
  """(init.layers, the source's layer count), checked: the source layers the model keeps, in
  order (DistilBERT's student: every other layer of its teacher); ((), None) keeps all."""
  layers = tuple(int(i) for i in (init.get("layers") or ()))
  if not layers:
    return (), None
  source_layers = init_architecture(init)[0].get("num_hidden_layers")
  if source_layers is None and init.get("hf_dir"):  # a hub name: its config.json, cached
    source_layers = hf.read_hf_config(hf.resolve_hf_source(init.hf_dir))["num_hidden_layers"]
  if source_layers is None:
    raise UserError(f"init.layers={list(layers)}: needs init.checkpoint or init.hf_dir")
  if any(not 0 <= i < source_layers for i in layers) or len(set(layers)) != len(layers):
    raise UserError(
      f"init.layers={list(layers)}: distinct indices of the source's {source_layers} layers "
      f"(0 to {source_layers - 1})"
    )
  return layers, source_layers


def select_layers(tree: dict, layers: tuple[int, ...]) -> dict:
  """The tree with only `layers` of its stacked encoder layers, in that order."""
  if not layers:
    return tree
  bert = dict(tree["bert"])
  encoder = dict(bert["encoder"])
  index = np.asarray(layers)
  encoder["layers"] = jax.tree.map(lambda x: np.asarray(x)[index], encoder["layers"])
  bert["encoder"] = encoder
  return dict(tree, bert=bert)


def adopt_init_architecture(config) -> None:
  """config.model takes the init source's architecture (sizes, vocab, positions): a model that
  differed could not load its weights anyway, so a fine-tuning config need not restate them.
  With init.layers, the model has that many layers."""
  architecture, where = init_architecture(config.get("init", {}))
  layers, _ = init_layers(config.get("init", {}))
  if layers:
    architecture["num_hidden_layers"] = len(layers)
  changed = {key: value for key, value in architecture.items() if config.model.get(key) != value}
  if changed:
    logging.info("model architecture from %s: %s", where, changed)
    config.model.update(changed)


def init_vocab(init) -> str:
  """The vocab that came with the init weights ('' if none): the tokenizer must match them."""
  if init.get("checkpoint"):
    path = os.path.join(init.checkpoint, "vocab", "vocab.txt")
    return path if os.path.isfile(path) else ""
  if init.get("hf_dir") and os.path.isdir(init.hf_dir):
    return init.hf_dir if os.path.isfile(os.path.join(init.hf_dir, "vocab.txt")) else ""
  return init.get("hf_dir", "")  # a hub name: its tokenizer comes from the hub too


def base_tree(init, config: BertConfig) -> tuple[dict | None, str]:
  """(parameter tree, description) of `init.checkpoint` / `init.hf_dir`; (None, '') without."""
  checkpoint, hf_dir = init.get("checkpoint", ""), init.get("hf_dir", "")
  if checkpoint and hf_dir:
    raise ValueError(
      f"init.checkpoint={checkpoint} and init.hf_dir={hf_dir}: set one, not both "
      "(--config.init.hf_dir= clears a config's default HF model)"
    )
  if not (checkpoint or hf_dir):
    return None, ""
  layers, source_layers = init_layers(init)
  if layers:  # read the source at its own depth, then keep the chosen layers
    config = config.replace(num_hidden_layers=source_layers)
  if checkpoint:
    tree, where = workdir_params(checkpoint, config), f"init.checkpoint={checkpoint}"
  else:
    tree, where = hf_params(hf_dir, config), f"init.hf_dir={hf_dir}"
  if layers:
    where += f" (layers {list(layers)})"
  return select_layers(tree, layers), where


def initialise(state: TrainState, frozen, init, config: BertConfig, tx):
  """(state, frozen) with what they share with the init weights loaded; as is without."""
  tree, where = base_tree(init, config)
  if tree is None:
    return state, frozen
  model_tree = convert.union_trees(nnx.to_pure_dict(state.params), nnx.to_pure_dict(frozen))
  model_keys = set(model_tree)
  dropped = sorted(set(tree) - model_keys)
  tree = {key: value for key, value in tree.items() if key in model_keys}
  logging.info(
    "initialised %s from %s%s", sorted(tree), where, f"; not used: {dropped}" if dropped else ""
  )
  # Fine-tuning heads start fresh by design; pretraining heads the source lacks are news.
  absent = [m for m in convert.PRETRAINING_MODULES if m in model_keys and m not in tree]
  if absent:
    logging.warning(
      "%s has no %s weights: the model's %s new%s",
      where,
      " / ".join(absent),
      "head starts" if len(absent) == 1 else "heads start",
      " (the MLM transform as the identity: cloze scores stay near chance until continued "
      "pretraining, configs/pretrain/continued.py, trains it)"
      if "mlm" in absent
      else "",
    )
  tree = convert.new_mlm_head(model_tree, tree)
  try:
    return load_params(state, frozen, tree, tx)
  except ValueError as e:
    raise ValueError(
      f"{where}: {e} (does model.vocab_size / the vocab match the checkpoint?)"
    ) from None

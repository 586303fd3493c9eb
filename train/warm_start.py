"""Where a run's first weights come from: a pretraining workdir, an HF BERT, or nowhere.

Either source gives a tree with the encoder under 'bert', the name every
model in model/heads.py keeps its encoder under; parts the model lacks (the
MLM / NSP heads, when fine-tuning) are dropped, and a task head stays freshly
initialised. An architecture that differs from the config stops the run
naming each differing key; a vocab that differs shows up as a shape error on
'bert/embeddings/word'.

`read_checkpoint_params` is also how `train/predict.py` reads a fine-tuned
workdir: it restores the parameters alone, onto the host, whatever mesh or
device count they were saved from.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx

from model.config import BertConfig
from train import hf
from train.checkpoint import Checkpointer
from train.state import TrainState, load_params


def _strip_values(tree):
  """Orbax keeps nnx.Param's {'value': array} wrapper; the pure tree has bare arrays."""
  if isinstance(tree, dict):
    if set(tree) == {"value"}:
      return np.asarray(tree["value"])
    return {key: _strip_values(value) for key, value in tree.items()}
  return np.asarray(tree)


def read_checkpoint_params(checkpoints_dir: str, step: int | None = None) -> tuple[dict, dict, int]:
  """(params as a pure numpy tree, the checkpoint's meta, its step) from a Checkpointer dir.

  `checkpoints_dir` is the directory a `Checkpointer(workdir)` writes into
  (<workdir>/checkpoints); only the 'params' part of the state is read.
  """
  manager = Checkpointer(os.path.dirname(checkpoints_dir.rstrip("/")), async_save=False)
  try:
    if manager.latest_step() is None:
      raise FileNotFoundError(f"no checkpoints in {checkpoints_dir}")
    step = manager.latest_step() if step is None else int(step)
    meta = manager.read_meta(step)
  finally:
    manager.close()
  item = os.path.join(checkpoints_dir, str(step), "state")
  handler = ocp.PyTreeCheckpointHandler()
  try:  # the item's own metadata: shapes and dtypes, whatever mesh wrote them
    metadata = handler.metadata(epath.Path(item)).tree
  finally:
    handler.close()
  host = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  target = {"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=host),
                                   metadata["params"])}
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=host), target)
  with ocp.PyTreeCheckpointer() as reader:
    restored = reader.restore(item, args=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True))
  return _strip_values(restored["params"]), meta, step


def _check_architecture(saved_model: dict, config: BertConfig, where: str) -> None:
  clashes = [f"model.{key}: checkpoint {saved_model[key]}, config {getattr(config, key)}"
             for key in hf.ARCH_KEYS if key in saved_model and saved_model[key] != getattr(config, key)]
  if clashes:
    raise ValueError(f"{where} was trained with another architecture: " + "; ".join(clashes))


def workdir_params(workdir: str, config: BertConfig) -> dict:
  """The parameters of the newest checkpoint of a workdir of this codebase."""
  params, meta, step = read_checkpoint_params(os.path.join(workdir, "checkpoints"))
  saved_model = meta.get("config", {}).get("model", {})
  _check_architecture(saved_model, config, f"init.checkpoint={workdir} (step {step})")
  if "bert" not in params:
    raise ValueError(f"init.checkpoint={workdir}: its parameters have no 'bert' encoder "
                     f"(top-level keys {sorted(params)})")
  logging.info("weights from %s, step %d", workdir, step)
  return params


def hf_params(name_or_dir: str, config: BertConfig) -> dict:
  """The tree of an HF BERT directory or hub name, through model/convert.py."""
  _, tree, missing = hf.load_hf_checkpoint(hf.resolve_hf_source(name_or_dir), config)
  encoder_missing = [name for name in missing if name.startswith("bert.")]
  if encoder_missing:
    logging.warning("%s lacks encoder tensors %s: they stay randomly initialised",
                    name_or_dir, encoder_missing[:5])
  return tree


def init_vocab(init) -> str:
  """The vocab that came with the init weights ('' if none): the tokenizer must match them."""
  if init.get("checkpoint"):
    path = os.path.join(init.checkpoint, "vocab", "vocab.txt")
    return path if os.path.isfile(path) else ""
  if init.get("hf_dir") and os.path.isdir(init.hf_dir):
    return init.hf_dir if os.path.isfile(os.path.join(init.hf_dir, "vocab.txt")) else ""
  return init.get("hf_dir", "")  # a hub name: its tokenizer comes from the hub too


def initialise(state: TrainState, init, config: BertConfig, tx) -> TrainState:
  """`state` with what it shares with `init.checkpoint` / `init.hf_dir` loaded; as is without."""
  checkpoint, hf_dir = init.get("checkpoint", ""), init.get("hf_dir", "")
  if checkpoint and hf_dir:
    raise ValueError("set init.checkpoint or init.hf_dir, not both")
  if not (checkpoint or hf_dir):
    return state
  where = f"init.checkpoint={checkpoint}" if checkpoint else f"init.hf_dir={hf_dir}"
  tree = workdir_params(checkpoint, config) if checkpoint else hf_params(hf_dir, config)
  model_keys = set(nnx.to_pure_dict(state.params))
  dropped = sorted(set(tree) - model_keys)
  tree = {key: value for key, value in tree.items() if key in model_keys}
  logging.info("initialised %s from %s%s", sorted(tree), where,
               f"; not used: {dropped}" if dropped else "")
  try:
    return load_params(state, tree, tx)
  except ValueError as e:
    raise ValueError(f"{where}: {e} (does model.vocab_size / the vocab match the checkpoint?)") from None

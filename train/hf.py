"""Hugging Face BERT checkpoint directories in and out.

Import: a directory with config.json and model.safetensors (or
pytorch_model.bin, read with torch's weights_only loader) -> (BertConfig, our
parameter tree). Export: our tree -> a directory `transformers.
BertForPreTraining.from_pretrained` loads. The tensor mapping lives in
`model/convert.py`; this file only reads and writes.

  python -m train.hf export --workdir=DIR --out=HF_DIR [--step=N]
  python -m train.hf check --hf_dir=HF_DIR_OR_NAME   # load, convert, print a summary

Import needs no command: set `init.hf_dir` in a config and the job converts on
load (train/loop.py).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from model import convert
from model.config import BertConfig

ARCH_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size", "max_position_embeddings", "type_vocab_size")


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no config.json in the HF checkpoint directory")
  with open(path) as f:
    return json.load(f)


def read_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """model.safetensors if present, else pytorch_model.bin (needs torch)."""
  safetensors_path = os.path.join(hf_dir, "model.safetensors")
  bin_path = os.path.join(hf_dir, "pytorch_model.bin")
  if os.path.isfile(safetensors_path):
    from safetensors.numpy import load_file
    return load_file(safetensors_path)
  if os.path.isfile(bin_path):
    import torch  # optional: only old-style checkpoints need it
    state = torch.load(bin_path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}
  raise FileNotFoundError(f"{hf_dir}: neither model.safetensors nor pytorch_model.bin")


def check_config_matches(config: BertConfig, hf_config: dict[str, Any], where: str) -> None:
  """The model we build must have the checkpoint's architecture; name each clash."""
  clashes = [f"model.{k}: config {getattr(config, k)}, checkpoint {hf_config[k]}"
             for k in ARCH_KEYS if k in hf_config and hf_config[k] != getattr(config, k)]
  if clashes:
    raise ValueError(f"{where} does not match the model config: " + "; ".join(clashes))


def load_hf_checkpoint(hf_dir: str, config: BertConfig | None = None):
  """Returns (config, our parameter tree, names of HF tensors the checkpoint lacked).

  Without `config` the architecture comes from config.json; with it, the two
  must agree (a clear error names each differing key).
  """
  hf_config = read_hf_config(hf_dir)
  if config is None:
    config = BertConfig.from_hf_dict(hf_config)
  check_config_matches(config, hf_config, os.path.join(hf_dir, "config.json"))
  tree, missing = convert.hf_to_params(read_hf_tensors(hf_dir), config)
  return config, tree, missing


def resolve_hf_source(name_or_dir: str) -> str:
  """A local directory as is; a hub name through huggingface_hub's cache/download."""
  if os.path.isdir(name_or_dir):
    return name_or_dir
  from huggingface_hub import snapshot_download
  return snapshot_download(name_or_dir, allow_patterns=["config.json", "*.safetensors",
                                                         "pytorch_model.bin", "vocab.txt"])


def save_hf_checkpoint(out_dir: str, params: dict, config: BertConfig,
                       vocab_file: str | None = None) -> str:
  """Writes config.json + model.safetensors (+ vocab.txt) for BertForPreTraining."""
  from safetensors.numpy import save_file
  if os.path.exists(os.path.join(out_dir, "model.safetensors")):
    raise FileExistsError(f"{out_dir} already holds a model.safetensors; refusing to overwrite")
  os.makedirs(out_dir, exist_ok=True)
  tensors = convert.params_to_hf(params, config)
  tensors.pop("cls.predictions.decoder.weight", None)  # tied to the word embeddings
  hf_config = dict(config.to_hf_dict(), model_type="bert",
                   architectures=["BertForPreTraining"], tie_word_embeddings=True,
                   position_embedding_type="absolute")
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  if vocab_file:
    shutil.copy(vocab_file, os.path.join(out_dir, "vocab.txt"))
  return out_dir


def read_workdir_params(workdir: str, step: int | None = None):
  """(BertConfig, params, step) of a pretraining workdir's checkpoint, on the host."""
  from train.checkpoint import read_on_host  # Orbax only when exporting
  parts, meta, step = read_on_host(os.path.join(workdir, "checkpoints"), step)
  return BertConfig.from_dict(meta["config"]["model"]), parts["params"], step


def _workdir_vocab(workdir: str) -> str | None:
  path = os.path.join(workdir, "vocab", "vocab.txt")
  return path if os.path.isfile(path) else None


def _leaves(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _leaves(value)
  else:
    yield tree


def main(argv):
  from absl import flags
  flags_ = flags.FLAGS
  command = argv[1] if len(argv) > 1 else ""
  if command == "export":
    config, params, step = read_workdir_params(flags_.workdir, flags_.step)
    vocab = flags_.vocab or _workdir_vocab(flags_.workdir)
    save_hf_checkpoint(flags_.out, params, config, vocab)
    print(f"wrote step {step} of {flags_.workdir} to {flags_.out} "
          f"(BertForPreTraining{', vocab.txt' if vocab else ''})")
  elif command == "check":
    config, tree, missing = load_hf_checkpoint(resolve_hf_source(flags_.hf_dir))
    count = sum(int(np.prod(np.shape(x))) for x in _leaves(tree))
    print(f"{flags_.hf_dir}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"vocab {config.vocab_size}; {count:,} parameters converted; "
          f"absent (freshly initialised when used): {missing or 'none'}")
  else:
    raise SystemExit("usage: python -m train.hf export --workdir=DIR --out=HF_DIR [--step=N] "
                     "| check --hf_dir=DIR_OR_NAME")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "pretraining workdir to export")
  flags.DEFINE_integer("step", None, "checkpoint step (default: latest)")
  flags.DEFINE_string("out", None, "output HF directory (must not hold a model yet)")
  flags.DEFINE_string("vocab", None, "vocab.txt to ship with the export (default: the workdir's)")
  flags.DEFINE_string("hf_dir", None, "HF checkpoint directory or hub name, for `check`")
  app.run(main)

"""Hugging Face BERT checkpoint directories in and out.

Import: a directory with config.json and model.safetensors (or
pytorch_model.bin, read with torch's weights_only loader) -> (BertConfig, our
parameter tree). Export: our tree -> a directory `transformers.
BertForPreTraining.from_pretrained` loads (pretraining workdirs), or, for a
fine-tuned workdir, one that its task's transformers class (`BertForSequenceClassification`,
`BertForMultipleChoice`, ...: the task's hf_architecture) loads, with labels and LoRA /
AdaLoRA folded into the kernels (--format=merged); or LoRA as an HF PEFT adapter
on the run's init.hf_dir (--format=peft). The tensor mapping lives in
`model/convert.py`; this file only reads and writes.

  python -m train.hf export --workdir=DIR --out=HF_DIR [--step=N] [--format=merged|peft]
  python -m train.hf check --hf_dir=HF_DIR_OR_NAME   # load, convert, print a summary

A fine-tuned workdir is exported from its best checkpoint (<workdir>/best), or
the newest when there is none; --step picks one of <workdir>/checkpoints.

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
from train import finetuned

ARCH_KEYS = (
  "vocab_size",
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "intermediate_size",
  "max_position_embeddings",
  "type_vocab_size",
  "attention_head_size",
  "quantization",
)


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
  clashes = [
    f"model.{k}: config {getattr(config, k)}, checkpoint {hf_config[k]}"
    for k in ARCH_KEYS
    if k in hf_config and hf_config[k] != getattr(config, k)
  ]
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

  return snapshot_download(
    name_or_dir, allow_patterns=["config.json", "*.safetensors", "pytorch_model.bin", "vocab.txt"]
  )


def _refuse_overwrite(out_dir: str, overwrite: bool = False) -> None:
  """An export goes into a new or empty directory: a user's files there are never replaced."""
  held = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
  if held and not overwrite:
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    raise FileExistsError(
      f"--out={out_dir} is not empty (it holds {shown}); refusing to overwrite. Choose a new "
      "or empty directory, or pass --overwrite to write over what is there"
    )


def _write_model_dir(out_dir: str, tensors: dict, hf_config: dict) -> None:
  from safetensors.numpy import save_file

  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_config, f, indent=2)
  save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})


def _hf_model_config(config: BertConfig, architecture: str, **extra) -> dict[str, Any]:
  return dict(
    config.to_hf_dict(),
    model_type="bert",
    architectures=[architecture],
    position_embedding_type="absolute",
    **extra,
  )


def save_hf_checkpoint(
  out_dir: str,
  params: dict,
  config: BertConfig,
  vocab_file: str | None = None,
  overwrite: bool = False,
) -> str:
  """Writes config.json + model.safetensors (+ vocab.txt) for BertForPreTraining."""
  _refuse_overwrite(out_dir, overwrite)
  tensors = convert.params_to_hf(params, config)
  if config.tie_word_embeddings:
    tensors.pop("cls.predictions.decoder.weight", None)  # transformers ties it on load
  _write_model_dir(out_dir, tensors, _hf_model_config(config, "BertForPreTraining"))
  if vocab_file:
    shutil.copy(vocab_file, os.path.join(out_dir, "vocab.txt"))
  return out_dir


# --------------------------------------------------------------------------
# Fine-tuned workdirs

# Our module names inside a layer -> transformers' (the suffix after encoder.layer.{i}.).
HF_LAYER_MODULES = {
  "attention.query": "attention.self.query",
  "attention.key": "attention.self.key",
  "attention.value": "attention.self.value",
  "attention.output": "attention.output.dense",
  "ffn.intermediate": "intermediate.dense",
  "ffn.output": "output.dense",
}
# Methods whose parameters transformers' BERT has no place for.
ARCHITECTURE_METHODS = ("adapter", "prefix", "prompt")
EXPORT_FORMATS = ("merged", "peft")


def export_finetuned(
  workdir: str,
  out_dir: str,
  step: int | None = None,
  export_format: str = "merged",
  overwrite: bool = False,
) -> finetuned.FinetunedRun:
  """Writes a fine-tuned workdir as an HF model (merged) or an HF PEFT LoRA adapter (peft)."""
  _refuse_overwrite(out_dir, overwrite)
  if export_format not in EXPORT_FORMATS:
    raise ValueError(f"--format={export_format!r}: expected one of {EXPORT_FORMATS}")
  run = finetuned.read_run(workdir, step=step)
  method = run.peft.method
  if export_format == "peft" and not run.spec.peft_task_type:
    raise ValueError(
      f"--format=peft: HF PEFT has no task type for task={run.task!r}; export it with "
      "--format=merged"
    )
  if export_format == "peft" and method != "lora":
    merged_ok = method not in ARCHITECTURE_METHODS
    raise ValueError(
      f"--format=peft: only LoRA runs have the HF PEFT format here; this run used "
      f"peft.method={method!r}" + ("; export it with --format=merged" if merged_ok else "")
    )
  if method in ARCHITECTURE_METHODS:
    raise ValueError(
      f"peft.method={method!r} changes BERT's architecture: transformers' "
      f"{run.spec.hf_architecture} has no place for its parameters, so it has no "
      "merged export (predict with `python -m train.predict` instead)"
    )
  if export_format == "peft":
    save_lora_adapter(out_dir, run)
  else:
    save_finetuned_model(out_dir, run)
  tokenizer_dir = os.path.join(workdir, "tokenizer")
  if os.path.isdir(tokenizer_dir):
    for name in os.listdir(tokenizer_dir):
      if os.path.isfile(os.path.join(tokenizer_dir, name)):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
  return run


def save_finetuned_model(out_dir: str, run: finetuned.FinetunedRun) -> str:
  """config.json + model.safetensors for transformers' model of the task, LoRA merged."""
  from model.peft import merge_low_rank
  from model.quantize import dequantize_tree

  # transformers has no int8 BERT: a quantized model goes out as kernel x scale, in float32.
  tree = dequantize_tree(merge_low_rank(finetuned.full_params(run), run.peft))
  tensors = convert.params_to_hf(tree, run.model_config)
  spec = run.spec
  if not spec.hf_pooler:  # transformers builds these without the pooler
    tensors = {k: v for k, v in tensors.items() if not k.startswith("bert.pooler.")}
  _write_model_dir(
    out_dir,
    tensors,
    _hf_model_config(
      run.model_config, spec.hf_architecture, **spec.hf_labels(run.config, run.labels)
    ),
  )
  return out_dir


def lora_target_modules(targets) -> list[str] | str:
  """PEFT's target_modules for our targeted layer modules (HF names, matched as suffixes).

  'output.dense' alone would match attention.output.dense too, so FFN output
  without attention output becomes a regex over whole module names.
  """
  names = [HF_LAYER_MODULES[m] for m in targets]
  suffixes = [n.split(".")[-1] if n.startswith("attention.self.") else n for n in names]
  if "ffn.output" in targets and "attention.output" not in targets:
    return r".*\.encoder\.layer\.\d+\.(" + "|".join(n.replace(".", r"\.") for n in names) + ")"
  return suffixes


def save_lora_adapter(out_dir: str, run: finetuned.FinetunedRun) -> str:
  """adapter_config.json + adapter_model.safetensors as peft's PeftModel.save_pretrained writes.

  lora_A.weight [r, in] and lora_B.weight [out, r] per targeted layer module; the
  head under its own name (peft strips 'modules_to_save.default' on save). The
  base is the run's init.hf_dir, as trained: LoRA runs train nothing else in 'bert'.
  Loading needs the base built with the run's num_labels (`from_pretrained(base,
  num_labels=N)`): an adapter config has no place for them.
  """
  from safetensors.numpy import save_file

  from model.peft import LAYER_MODULES

  hf_dir = run.config.init.get("hf_dir", "")
  if not hf_dir:
    checkpoint = run.config.init.get("checkpoint", "")
    where = f"init.checkpoint={checkpoint}" if checkpoint else "random weights (no init)"
    raise ValueError(
      f"--format=peft needs the run's base as an HF model (init.hf_dir); this run "
      f"started from {where}. Export with --format=merged instead"
    )
  if os.path.isdir(hf_dir):
    _, _, missing = load_hf_checkpoint(hf_dir, run.model_config)
    lacking = [name for name in missing if name.startswith("bert.")]
    if lacking:
      raise ValueError(
        f"init.hf_dir={hf_dir} lacks {lacking[:3]}: those weights were random in "
        "training and an adapter cannot carry them; use --format=merged"
      )
  peft, head = run.peft, run.spec.head
  targets = [m for m in LAYER_MODULES if peft.targets_module(m)]
  layers = run.params["bert"]["encoder"]["layers"]
  tensors = {}
  for module in targets:
    group, name = module.split(".")
    branch = layers[group][name]["low_rank"]
    for i in range(run.model_config.num_hidden_layers):
      prefix = f"base_model.model.bert.encoder.layer.{i}.{HF_LAYER_MODULES[module]}."
      tensors[prefix + "lora_A.weight"] = np.asarray(branch["a"][i]).reshape(-1, peft.rank).T
      tensors[prefix + "lora_B.weight"] = np.asarray(branch["b"][i]).reshape(peft.rank, -1).T
  tensors[f"base_model.model.{head}.weight"] = np.asarray(run.params[head]["kernel"]).T
  tensors[f"base_model.model.{head}.bias"] = np.asarray(run.params[head]["bias"])
  tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
  alpha = int(peft.alpha) if float(peft.alpha).is_integer() else float(peft.alpha)
  adapter_config = {
    "peft_type": "LORA",
    "task_type": run.spec.peft_task_type,
    "base_model_name_or_path": hf_dir,
    "r": peft.rank,
    "lora_alpha": alpha,
    "lora_dropout": peft.dropout,
    "target_modules": lora_target_modules(targets),
    "modules_to_save": [head],
    "bias": "none",
    "fan_in_fan_out": False,
    "init_lora_weights": True,
    "use_rslora": False,
    "use_dora": False,
    "inference_mode": True,
  }
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
    json.dump(adapter_config, f, indent=2)
  save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
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
  if command == "export" and finetuned.finetuned_task(flags_.workdir):
    run = export_finetuned(flags_.workdir, flags_.out, flags_.step, flags_.format, flags_.overwrite)
    what = (
      f"an HF PEFT LoRA adapter on {run.config.init.hf_dir}"
      if flags_.format == "peft"
      else f"{run.spec.hf_architecture}, peft.method={run.peft.method} merged"
    )
    print(f"wrote step {run.step} of {flags_.workdir} to {flags_.out} ({what})")
  elif command == "export":
    if flags_.format != "merged":
      raise SystemExit(f"--format={flags_.format}: a pretraining workdir exports merged only")
    config, params, step = read_workdir_params(flags_.workdir, flags_.step)
    vocab = flags_.vocab or _workdir_vocab(flags_.workdir)
    save_hf_checkpoint(flags_.out, params, config, vocab, flags_.overwrite)
    print(
      f"wrote step {step} of {flags_.workdir} to {flags_.out} "
      f"(BertForPreTraining{', vocab.txt' if vocab else ''})"
    )
  elif command == "check":
    config, tree, missing = load_hf_checkpoint(resolve_hf_source(flags_.hf_dir))
    count = sum(int(np.prod(np.shape(x))) for x in _leaves(tree))
    print(
      f"{flags_.hf_dir}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
      f"vocab {config.vocab_size}; {count:,} parameters converted; "
      f"absent (freshly initialised when used): {missing or 'none'}"
    )
  else:
    raise SystemExit(
      "usage: python -m train.hf export --workdir=DIR --out=HF_DIR [--step=N] "
      "[--format=merged|peft] | check --hf_dir=DIR_OR_NAME"
    )


if __name__ == "__main__":
  from absl import flags

  flags.DEFINE_string("workdir", None, "pretraining or fine-tuning workdir to export")
  flags.DEFINE_integer(
    "step",
    None,
    "checkpoint step (default: latest; a fine-tuned workdir: its best checkpoint, else the latest)",
  )
  flags.DEFINE_string("out", None, "output HF directory: new or empty, unless --overwrite")
  flags.DEFINE_bool("overwrite", False, "export into a non-empty --out, replacing its files")
  flags.DEFINE_enum(
    "format",
    "merged",
    list(EXPORT_FORMATS),
    "fine-tuned workdirs: 'merged' (a full transformers model, LoRA folded in) "
    "or 'peft' (an HF PEFT LoRA adapter on the run's init.hf_dir)",
  )
  flags.DEFINE_string("vocab", None, "vocab.txt to ship with the export (default: the workdir's)")
  flags.DEFINE_string("hf_dir", None, "HF checkpoint directory or hub name, for `check`")
  from train import cli

  cli.run(main)

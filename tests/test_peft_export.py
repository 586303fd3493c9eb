"""Fine-tuned workdirs out to transformers: merged models and HF PEFT LoRA adapters.

Each workdir is written as the loop writes one (config.json, labels.json,
tokenizer/, best/ checkpoints holding the trainable parameters of a PEFT run),
with random LoRA branches (B starts at zero) and heads, on an HF base written
by transformers. transformers / peft must then compute what our model does.
"""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from helpers import finetune as ff
from helpers import random_batch
from helpers.finetune import write_hf_dir

from model.config import BertConfig
from model.convert import hf_to_params, merge_trees, params_to_hf
from model.peft import trainable
from train import hf, loop, tasks, warm_start
from train.checkpoint import Checkpointer, fingerprint
from train.state import split_params
from train.tasks.common import finetune_tokenizer, peft_config

pytest.importorskip("peft")

LABELS = {
  "classification": ["neg", "pos", "mixed"],
  "token_classification": ["B-LOC", "B-PER", "I-LOC", "O"],
  "question_answering": None,
}
HF_CLASSES = {
  "classification": "BertForSequenceClassification",
  "token_classification": "BertForTokenClassification",
  "question_answering": "BertForQuestionAnswering",
}
TOLERANCE = 1e-4


def _randomise(tree, method, rng):
  """Random LoRA / AdaLoRA branches and heads; bitfit moves the encoder's biases."""

  def walk(node, path):
    out = {}
    for key, value in node.items():
      where = path + (key,)
      if isinstance(value, dict):
        out[key] = walk(value, where)
      elif "low_rank" in where or where[0] != "bert":
        out[key] = rng.normal(0, 0.2, np.shape(value)).astype(np.float32)
      elif method == "bitfit" and key == "bias":
        out[key] = (np.asarray(value) + rng.normal(0, 0.05, np.shape(value))).astype(np.float32)
      else:
        out[key] = np.asarray(value)
    return out

  return walk(tree, ())


def make_workdir(
  tmp_path, task="classification", method="lora", with_init=True, seed=0, **peft_values
):
  """(workdir, our model with every parameter, hf base dir) as the loop leaves them."""
  config = ff.tiny_config(task, tmp_path)
  config.peft.update(
    {
      "method": method,
      "rank": 4,
      "alpha": 8.0,
      "targets": ("attention.query", "attention.value"),
      **peft_values,
    }
  )
  base_dir = ""
  if with_init:
    base_dir, _, _ = write_hf_dir(tmp_path / "base", config.data.vocab)
  config.init.hf_dir = base_dir
  model_config = BertConfig.from_dict(config.model)
  labels = LABELS[task]
  model = tasks.model_factory(config, model_config, labels)(nnx.Rngs(seed))
  tree = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  base, _ = warm_start.base_tree(config.init, model_config)
  if base is not None:
    tree = merge_trees(tree, {k: v for k, v in base.items() if k in tree})
  tree = _randomise(tree, method, np.random.default_rng(seed))
  nnx.update(model, tree)
  params, _ = split_params(nnx.state(model, nnx.Param), trainable(peft_config(config)))
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  tokenizer = finetune_tokenizer(config, model_config)
  loop.save_run_files(config, types.SimpleNamespace(labels=labels, tokenizer=tokenizer), workdir)
  meta = {"config": fingerprint(config)}
  with Checkpointer(os.path.join(workdir, loop.BEST_DIR), 1, async_save=False) as best:
    best.save(7, {"params": params}, meta)
  return workdir, model, base_dir


def _inputs(vocab_size):
  return random_batch(11, 3, 12, vocab_size)


def ours(model, task):
  """Our outputs, dropout off, as numpy [..., outputs] (QA: start and end stacked)."""
  ids, types_, mask = _inputs(model.config.vocab_size)
  out = model(ids, types_, mask)
  return np.stack(out, -1) if task == "question_answering" else np.asarray(out)


def theirs(torch_model, task, vocab_size):
  ids, types_, mask = _inputs(vocab_size)
  torch_model.eval()
  with torch.no_grad():
    out = torch_model(
      input_ids=torch.tensor(ids, dtype=torch.long),
      token_type_ids=torch.tensor(types_, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    )
  if task == "question_answering":
    return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
  return out.logits.numpy()


def assert_close(a, b, task, vocab_size):
  """Token-level outputs compared at real tokens; padding is nobody's business."""
  if task != "classification":
    real = _inputs(vocab_size)[2].astype(bool)
    a, b = a[real], b[real]
  assert a.shape == b.shape
  assert np.abs(a - b).max() < TOLERANCE, np.abs(a - b).max()


def hf_class(task):
  import transformers

  return getattr(transformers, HF_CLASSES[task])


def num_labels(task):
  return len(LABELS[task]) if LABELS[task] else 2


# --------------------------------------------------------------------------
# The mapping


def test_task_heads_map_both_ways_and_pretraining_names_stay():
  config = BertConfig(**ff.TINY)
  from model.heads import BertForQuestionAnswering, BertForSequenceClassification

  for model in (
    BertForSequenceClassification(config, 3, nnx.Rngs(0)),
    BertForQuestionAnswering(config, nnx.Rngs(0)),
  ):
    tree = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    head = "qa_outputs" if "qa_outputs" in tree else "classifier"
    tensors = params_to_hf(tree, config)
    assert tensors[f"{head}.weight"].shape == (tree[head]["kernel"].shape[1], 32)
    assert not any(name.startswith("cls.") for name in tensors)
    back, missing = hf_to_params(tensors, config)
    assert all(name.startswith("cls.") for name in missing)  # no pretraining heads: fine
    jax.tree.map(np.testing.assert_array_equal, back, tree)


def test_unmerged_low_rank_branches_are_not_dropped_silently():
  config = BertConfig(**ff.TINY)
  from model.heads import BertForSequenceClassification
  from model.peft import PeftConfig

  model = BertForSequenceClassification(config, 2, nnx.Rngs(0), PeftConfig(method="lora", rank=2))
  tree = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  with pytest.raises(
    ValueError,
    match=r"no HF BERT tensor: \['bert/encoder/layers/attention/"
    r"query/low_rank/a'.*merge_low_rank",
  ):
    params_to_hf(tree, config)


# --------------------------------------------------------------------------
# LoRA as an HF PEFT adapter


@pytest.mark.parametrize(
  "targets, hf_targets",
  [
    (("attention.query", "attention.value"), ["query", "value"]),
    (("attention.output", "ffn.output"), ["attention.output.dense", "output.dense"]),
    # 'output.dense' alone would catch attention.output.dense too: a regex instead.
    (("attention.key", "ffn.intermediate", "ffn.output"), None),
  ],
)
def test_lora_adapter_loads_in_peft_with_our_logits(tmp_path, targets, hf_targets):
  from peft import PeftModel
  from transformers import BertForSequenceClassification

  workdir, model, base_dir = make_workdir(tmp_path, targets=targets)
  out = str(tmp_path / "adapter")
  hf.export_finetuned(workdir, out, export_format="peft")
  with open(os.path.join(out, "adapter_config.json")) as f:
    adapter_config = json.load(f)
  assert adapter_config["peft_type"] == "LORA" and adapter_config["task_type"] == "SEQ_CLS"
  assert (adapter_config["r"], adapter_config["lora_alpha"]) == (4, 8)
  assert adapter_config["modules_to_save"] == ["classifier"]
  assert adapter_config["base_model_name_or_path"] == base_dir
  if hf_targets is None:
    assert isinstance(adapter_config["target_modules"], str)
  else:
    assert sorted(adapter_config["target_modules"]) == sorted(hf_targets)
  from safetensors.numpy import load_file

  names = load_file(os.path.join(out, "adapter_model.safetensors"))
  for module in targets:
    prefix = f"base_model.model.bert.encoder.layer.1.{hf.HF_LAYER_MODULES[module]}."
    lora_a, lora_b = names[prefix + "lora_A.weight"], names[prefix + "lora_B.weight"]
    assert lora_a.shape[0] == 4 and lora_b.shape[1] == 4  # [r, in], [out, r]
  assert names["base_model.model.classifier.weight"].shape == (3, 32)
  assert len(names) == 2 * 2 * len(targets) + 2

  base = BertForSequenceClassification.from_pretrained(base_dir, num_labels=3)
  peft_model = PeftModel.from_pretrained(base, out)
  lora_layers = [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A.default")]
  assert len(lora_layers) == 2 * len(targets)  # no module more, none less
  assert_close(
    theirs(peft_model, "classification", 64), ours(model, "classification"), "classification", 64
  )
  assert os.path.isfile(os.path.join(out, "tokenizer.json"))


@pytest.mark.parametrize("task", ["token_classification", "question_answering"])
def test_lora_adapter_of_other_tasks_loads_in_peft(tmp_path, task):
  from peft import PeftModel

  workdir, model, base_dir = make_workdir(tmp_path, task=task)
  out = str(tmp_path / "adapter")
  hf.export_finetuned(workdir, out, export_format="peft")
  with open(os.path.join(out, "adapter_config.json")) as f:
    adapter_config = json.load(f)
  assert (
    adapter_config["task_type"]
    == {"token_classification": "TOKEN_CLS", "question_answering": "QUESTION_ANS"}[task]
  )
  base = hf_class(task).from_pretrained(base_dir, num_labels=num_labels(task))
  peft_model = PeftModel.from_pretrained(base, out)
  if task == "question_answering":
    # peft 0.21.2's PeftModelForQuestionAnswering.forward drops token_type_ids (not the
    # export's doing): the model it wraps, LoRA layers in place, takes them.
    peft_model = peft_model.get_base_model()
  assert_close(theirs(peft_model, task, 64), ours(model, task), task, 64)


# --------------------------------------------------------------------------
# Merged: a plain transformers model of the task


@pytest.mark.parametrize(
  "task, method",
  [
    ("classification", "lora"),
    ("classification", "adalora"),
    ("classification", "bitfit"),
    ("token_classification", "lora"),
    ("question_answering", "none"),
  ],
)
def test_merged_export_loads_in_transformers_with_our_logits(tmp_path, task, method):
  workdir, model, _ = make_workdir(tmp_path, task=task, method=method)
  out = str(tmp_path / "merged")
  hf.export_finetuned(workdir, out)
  with open(os.path.join(out, "config.json")) as f:
    hf_config = json.load(f)
  assert hf_config["architectures"] == [HF_CLASSES[task]]
  torch_model = hf_class(task).from_pretrained(out)
  if LABELS[task]:
    assert hf_config["num_labels"] == len(LABELS[task])
    assert torch_model.config.id2label == dict(enumerate(LABELS[task]))
    assert torch_model.config.label2id == {label: i for i, label in enumerate(LABELS[task])}
  assert_close(theirs(torch_model, task, 64), ours(model, task), task, 64)
  if method in ("lora", "adalora"):  # the branches are in the kernels: they moved off the base
    base = hf.read_hf_tensors(str(tmp_path / "base"))["encoder.layer.0.attention.self.query.weight"]
    merged = torch_model.state_dict()["bert.encoder.layer.0.attention.self.query.weight"].numpy()
    assert np.abs(merged - base).max() > 1e-2


def test_a_merged_export_imports_back_and_inits_a_new_run_without_its_head(tmp_path):
  workdir, model, _ = make_workdir(tmp_path, method="none")
  out = str(tmp_path / "merged")
  hf.export_finetuned(workdir, out)
  model_config = model.config
  _, tree, _ = hf.load_hf_checkpoint(out, model_config)
  expected = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  jax.tree.map(np.testing.assert_array_equal, tree, expected)
  # As init.hf_dir of another task, the head is not reused: heads start fresh.
  assert "classifier" not in warm_start.hf_params(out, model_config)


def test_merged_export_refuses_to_overwrite(tmp_path):
  workdir, _, _ = make_workdir(tmp_path)
  hf.export_finetuned(workdir, str(tmp_path / "merged"))
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    hf.export_finetuned(workdir, str(tmp_path / "merged"))


# --------------------------------------------------------------------------
# What cannot be exported says so


@pytest.mark.parametrize(
  "method, export_format, message",
  [
    (
      "adalora",
      "peft",
      (
        r"only LoRA runs have the HF PEFT format here; this run used "
        r"peft.method='adalora'; export it with --format=merged"
      ),
    ),
    ("bitfit", "peft", r"only LoRA runs have the HF PEFT format.*'bitfit'"),
    ("prefix", "peft", r"only LoRA runs have the HF PEFT format.*'prefix'$"),
    (
      "adapter",
      "merged",
      (
        r"peft.method='adapter' changes BERT's architecture: transformers' "
        r"BertForSequenceClassification has no place for its parameters"
      ),
    ),
    ("prompt", "merged", r"peft.method='prompt' changes BERT's architecture"),
  ],
)
def test_exports_that_do_not_exist_are_refused(tmp_path, method, export_format, message):
  workdir, _, _ = make_workdir(tmp_path, method=method, num_virtual_tokens=2, adapter_size=4)
  with pytest.raises(ValueError, match=message):
    hf.export_finetuned(workdir, str(tmp_path / "out"), export_format=export_format)
  assert not os.path.exists(tmp_path / "out")


def test_adapter_without_an_hf_base_is_refused(tmp_path):
  workdir, _, _ = make_workdir(tmp_path, method="none", with_init=False)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  config["peft"]["method"] = "lora"  # a LoRA run on random weights, as far as export can tell
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  with pytest.raises(
    ValueError,
    match=r"--format=peft needs the run's base as an HF model "
    r"\(init.hf_dir\).*random weights",
  ):
    hf.export_finetuned(workdir, str(tmp_path / "out"), export_format="peft")


@pytest.mark.slow
def test_command_line_export(tmp_path):
  from peft import PeftModel
  from transformers import BertForSequenceClassification

  workdir, model, base_dir = make_workdir(tmp_path)
  out = str(tmp_path / "adapter")
  env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "train.hf",
      "export",
      f"--workdir={workdir}",
      f"--out={out}",
      "--format=peft",
    ],
    check=False,
    capture_output=True,
    text=True,
    env=env,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert "wrote step 7" in result.stdout and "PEFT LoRA adapter" in result.stdout
  peft_model = PeftModel.from_pretrained(
    BertForSequenceClassification.from_pretrained(base_dir, num_labels=3), out
  )
  assert_close(
    theirs(peft_model, "classification", 64), ours(model, "classification"), "classification", 64
  )


# --------------------------------------------------------------------------
# A real run of the loop


@pytest.mark.slow
def test_a_trained_lora_run_exports_what_predict_computes(tmp_path):
  """The loop's own workdir (best/ and checkpoints/ with the whole train state)."""
  from peft import PeftModel
  from transformers import BertForSequenceClassification

  from train.predict import Predictor

  config = ff.classification_config(
    tmp_path,
    **{
      "epochs": 1,
      "peft.method": "lora",
      "peft.rank": 4,
      "peft.alpha": 16.0,
      "peft.targets": ("attention.query", "attention.value"),
      "optimizer.lr": 1e-2,
    },
  )
  base_dir, _, _ = write_hf_dir(tmp_path / "base", config.data.vocab)
  config.init.hf_dir = base_dir
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  predictor = Predictor(workdir)
  ids, types_, mask = _inputs(64)
  batch = {"input_ids": ids, "token_type_ids": types_, "attention_mask": mask}
  expected = np.asarray(predictor._forward(predictor.params, batch)["logits"])
  hf.export_finetuned(workdir, str(tmp_path / "adapter"), export_format="peft")
  hf.export_finetuned(workdir, str(tmp_path / "merged"))
  peft_model = PeftModel.from_pretrained(
    BertForSequenceClassification.from_pretrained(base_dir, num_labels=2), str(tmp_path / "adapter")
  )
  merged = BertForSequenceClassification.from_pretrained(str(tmp_path / "merged"))
  assert_close(theirs(peft_model, "classification", 64), expected, "classification", 64)
  assert_close(theirs(merged, "classification", 64), expected, "classification", 64)
  # Training moved B off zero: the adapter is not the base, in its tensors and in the
  # logits (beyond the tolerance that calls two outputs equal above).
  from safetensors.numpy import load_file

  adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
  assert max(np.abs(v).max() for k, v in adapter.items() if "lora_B" in k) > 1e-3
  base_only = BertForSequenceClassification.from_pretrained(base_dir, num_labels=2)
  base_only.classifier.load_state_dict(merged.classifier.state_dict())
  assert np.abs(theirs(base_only, "classification", 64) - expected).max() > TOLERANCE

"""Fine-tuning dynamics equal transformers + torch.optim.AdamW step for step.

The forward pass is tested against transformers elsewhere; this checks the rest
of a training run: each head and its loss (sequence classification, token
classification with labels on first sub-tokens only, span QA), AdamW with
decoupled decay off biases and LayerNorm, eps 1e-6, global-norm clipping,
warmup then linear decay, so a score gap to PyTorch cannot come from the recipe.
With dropout off, and with dropout on where torch applies the masks our train
step draws (benchmarks/torch_dropout.py): dropout in the same places, scaled
alike.
"""

import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from helpers import finetune as ff
from helpers import tiny_hf_config

from benchmarks import torch_dropout
from train import loop, warm_start
from train import mesh as mesh_lib
from train.state import create_train_state
from train.tasks import build_task

STEPS, WARMUP = 6, 2
DROPOUT = {"off": 0.0, "our masks": 0.1}

# task -> (our config, transformers class, the head's attribute name)
TASKS = {
  "sequence": (ff.classification_config, "BertForSequenceClassification", "classifier"),
  "token": (ff.ner_config, "BertForTokenClassification", "classifier"),
  "span": (ff.squad_config, "BertForQuestionAnswering", "qa_outputs"),
}


def torch_labels(kind: str, batch: dict) -> dict:
  """Our batch's targets as transformers' forward takes them."""
  as_long = lambda key: torch.from_numpy(np.asarray(batch[key], np.int64))
  if kind == "sequence":
    return {"labels": as_long("label")}
  if kind == "token":
    return {
      "labels": torch.where(torch.from_numpy(batch["label_weights"] > 0), as_long("labels"), -100)
    }
  return {"start_positions": as_long("start_positions"), "end_positions": as_long("end_positions")}


@pytest.mark.slow
@pytest.mark.parametrize("dropout", sorted(DROPOUT))
@pytest.mark.parametrize("kind", sorted(TASKS))
def test_loss_and_weights_follow_torch_adamw_step_for_step(tmp_path, kind, dropout):
  import transformers
  from transformers import BertModel, get_linear_schedule_with_warmup

  make_config, torch_class, head_name = TASKS[kind]
  rate = DROPOUT[dropout]
  config = make_config(
    tmp_path,
    **{
      "model.hidden_dropout_prob": rate,
      "model.attention_probs_dropout_prob": rate,
      "optimizer.total_steps": STEPS,
      "optimizer.warmup_steps": WARMUP,
      "optimizer.lr": 1e-3,
      "log_every_steps": 1,
      "eval_every_steps": STEPS,
    },
  )
  torch.manual_seed(0)
  hf_dir = tmp_path / "hf"
  BertModel(tiny_hf_config(**ff.TINY)).save_pretrained(str(hf_dir))
  shutil.copy(config.data.vocab, hf_dir / "vocab.txt")
  config.init.hf_dir = str(hf_dir)

  # Our initial head, copied into torch so both start from the same weights.
  task = build_task(config, str(tmp_path))
  mesh = mesh_lib.make_mesh(config.mesh.shape)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  graphdef, state, frozen, _ = create_train_state(
    task.model_factory, optax.identity(), mesh, rules, config.seed
  )
  state, _ = warm_start.initialise(state, frozen, config.init, task.model_config, optax.identity())
  head = jax.device_get(nnx.to_pure_dict(state.params)[head_name])
  read_masks = torch_dropout.mask_reader(
    task.objective, graphdef, frozen, task.model_config, mesh, rules
  )

  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    ours = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]

  extra = {} if kind == "span" else {"num_labels": len(task.labels)}
  # Eager attention: SDPA would draw its attention-probability masks inside the kernel.
  model = getattr(transformers, torch_class).from_pretrained(
    str(hf_dir),
    hidden_dropout_prob=rate,
    attention_probs_dropout_prob=rate,
    attn_implementation="eager",
    **extra,
  )
  torch_head = getattr(model, head_name)
  with torch.no_grad():
    torch_head.weight.copy_(torch.from_numpy(np.asarray(head["kernel"]).T.copy()))
    torch_head.bias.copy_(torch.from_numpy(np.array(head["bias"])))
  no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name
  optimizer = torch.optim.AdamW(
    [
      {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": 0.01},
      {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
    ],
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-6,
  )
  # transformers' schedule is lr * step / warmup from step 0, as ours.
  schedule = get_linear_schedule_with_warmup(optimizer, WARMUP, STEPS)
  theirs = []
  model.train()
  for step in range(STEPS):
    batch = task.train_data.batch(step)
    inputs = {
      k: torch.from_numpy(np.asarray(batch[k], np.int64))
      for k in ("input_ids", "token_type_ids", "attention_mask")
    }
    masks = read_masks(state.params, batch, state.rng, step)
    assert len(masks) == (0 if rate == 0 else 1 + 3 * 2 + (kind != "span"))
    with torch_dropout.torch_applies(masks):
      loss = model(**inputs, **torch_labels(kind, batch)).loss
      loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    theirs.append(loss.item())
  np.testing.assert_allclose(ours, theirs, rtol=1e-4)

  # The weights after the last step: the query kernel of layer 1 and the head.
  from train.checkpoint import read_on_host

  params = read_on_host(os.path.join(workdir, "checkpoints"))[0]["params"]
  query = params["bert"]["encoder"]["layers"]["attention"]["query"]["kernel"][1]
  torch_query = model.bert.encoder.layer[1].attention.self.query.weight.detach().numpy().T
  initial = BertModel.from_pretrained(str(hf_dir)).encoder.layer[1].attention.self.query.weight
  assert np.abs(torch_query - initial.detach().numpy().T).max() > 1e-3  # the steps moved it
  np.testing.assert_allclose(query.reshape(32, 32), torch_query, atol=2e-5)
  np.testing.assert_allclose(
    params[head_name]["kernel"], torch_head.weight.detach().numpy().T, atol=2e-5
  )

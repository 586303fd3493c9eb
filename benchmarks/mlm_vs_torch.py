"""Does our pretraining learn as fast as transformers' BERT? The same batches, both sides.

Our job (configs/pretrain/scratch.py, MLM alone) runs as users run it. transformers'
BertForMaskedLM of the same shape then trains on that job's own batches, step by step
(the same masks, rows and order), with the same recipe (AdamW 0.9 / 0.999 / 1e-6, weight
decay 0.01 off biases and LayerNorm, the job's warmup and linear decay, clip 1.0, no
dropout, fp32) and is scored on the job's held-out batches. The two start from different
random values (each framework's own initialiser, both normal(0.02)), so the curves agree
to the noise of an initialisation, not bitwise. A curve well below transformers' would
be a bug in our model, loss or optimizer that the forward parity tests cannot see.

  python -m benchmarks.mlm_vs_torch --corpus=/tmp/payoff/corpus.txt --recipe=tiny,3M \\
      --flags=--config.batch_size=64
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import shlex
import sys
import tempfile

import ml_collections
import numpy as np
from absl import app, flags

from benchmarks.shared import heldout_evals, run_job
from train.run import build_run

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "corpus", None, "BERT-format text (e.g. what benchmarks.scratch_payoff writes)."
)
flags.DEFINE_string("recipe", "tiny,3M", "configs/pretrain/scratch.py's argument: SIZE,TOKENS.")
flags.DEFINE_list("flags", [], "More --config.KEY=VALUE flags for our job, comma-separated.")
flags.DEFINE_string("workdir", "", "Our job's workdir; empty: a fresh /tmp/mlm_vs_torch_* one.")


def torch_curve(config, workdir: str, steps: int, eval_steps: list[int]) -> dict[int, tuple]:
  """{step: (held-out MLM loss, accuracy)} of BertForMaskedLM trained on the job's batches."""
  import torch
  import transformers

  config.data.vocab = os.path.join(workdir, "vocab")  # the job's own vocab and data
  run = build_run(config, tempfile.mkdtemp(prefix="mlm_vs_torch_data_"))
  task, opt = run.task, config.optimizer
  # The job's own architecture, initializer range and dropout (the recipe has none).
  model = transformers.BertForMaskedLM(transformers.BertConfig(**run.model_config.to_hf_dict()))
  no_decay = lambda name: name.endswith("bias") or "LayerNorm" in name
  params = list(model.named_parameters())
  groups = [
    {"params": [p for n, p in params if not no_decay(n)], "weight_decay": opt.weight_decay},
    {"params": [p for n, p in params if no_decay(n)], "weight_decay": 0.0},
  ]
  optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=(opt.b1, opt.b2), eps=opt.eps)
  schedule = transformers.get_linear_schedule_with_warmup(optimizer, run.warmup_steps, steps)

  def inputs(batch: dict) -> dict:
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    rows, slots = np.nonzero(batch["masked_weights"] > 0)
    labels[rows, batch["masked_positions"][rows, slots]] = batch["masked_ids"][rows, slots]
    tensor = lambda key: torch.from_numpy(np.asarray(batch[key], np.int64))
    keys = ("input_ids", "token_type_ids", "attention_mask")
    return {**{k: tensor(k) for k in keys}, "labels": torch.from_numpy(labels)}

  def evaluate() -> tuple[float, float]:
    model.eval()
    loss = correct = count = 0.0
    with torch.no_grad():
      for batch in task.eval_batches:
        kwargs = inputs(batch)
        labels = kwargs.pop("labels")
        logits = model(**kwargs).logits[labels != -100]
        gold = labels[labels != -100]
        loss += torch.nn.functional.cross_entropy(logits, gold, reduction="sum").item()
        correct += (logits.argmax(-1) == gold).sum().item()
        count += len(gold)
    model.train()
    return loss / count, correct / count

  curve = {}
  for step in range(steps):
    model(**inputs(task.train_data.batch(step))).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.clip_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    if step + 1 in eval_steps:
      curve[step + 1] = evaluate()
      print(f"torch step {step + 1}: held-out MLM loss / accuracy {curve[step + 1]}", flush=True)
  return curve


def main(argv):
  del argv
  workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="mlm_vs_torch_")
  args = [
    "-m",
    "train.main",
    f"--config=configs/pretrain/scratch.py:{FLAGS.recipe}",
    f"--workdir={workdir}",
    f"--config.data.paths={FLAGS.corpus}",
    "--config.data.prepare_in_workdir=False",
    *FLAGS.flags,
  ]
  run_job(args, workdir)
  ours = {r["step"]: (r["mlm_loss"], r["mlm_accuracy"]) for r in heldout_evals(workdir)}
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  steps = max(ours)
  theirs = torch_curve(config, workdir, steps, sorted(ours))
  lines = [
    f"Held-out MLM loss / accuracy, {FLAGS.recipe} ({steps} steps of {config.batch_size}), "
    "the same batches on both sides:",
    "",
    "| step | ours loss | transformers loss | ours accuracy | transformers accuracy |",
    "|---:|---:|---:|---:|---:|",
    *(
      f"| {s} | {ours[s][0]:.4f} | {theirs[s][0]:.4f} | {ours[s][1]:.4f} | {theirs[s][1]:.4f} |"
      for s in sorted(ours)
    ),
    "",
    f"Command: `python {shlex.join(sys.argv)}`",
    f"Our job: `python {shlex.join(args)}`",
  ]
  print("\n".join(lines))


if __name__ == "__main__":
  flags.mark_flags_as_required(["corpus"])
  app.run(main)

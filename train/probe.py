"""A linear probe during pretraining: is the encoder's text representation getting better?

Held-out MLM accuracy says how well the model fills blanks, not whether its
sentence representation is any use downstream. With `probe.train_path` set, every
evaluation also embeds a small labelled set with the current encoder, frozen
(the mean of the last layer over each row's real tokens), fits a ridge-regression
classifier on the train rows in closed form, and reports its accuracy on the
eval rows as `probe_accuracy`. Closed form: no training loop, no learning rate,
the same answer for the same features; a few milliseconds on the host.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from data import classification
from data.finetune import eval_batches


@dataclasses.dataclass
class ProbeSet:
  """The probe's encoded rows, batched as evaluation batches, and their labels."""

  train_batches: list[dict]
  eval_batches: list[dict]
  train_labels: np.ndarray
  eval_labels: np.ndarray
  num_labels: int
  l2: float


def build_probe(probe, tokenizer, max_seq_length: int, batch_size: int) -> ProbeSet | None:
  """The probe config's labelled files, encoded; None when probe.train_path is empty."""
  if not probe or not probe.get("train_path"):
    return None
  if not probe.get("eval_path"):
    raise ValueError("probe.train_path is set but probe.eval_path is empty: give both")
  examples = {}
  for split in ("train", "eval"):
    read = classification.read_examples(
      probe[f"{split}_path"], probe.text_columns, probe.label_column, has_header=True
    )
    examples[split] = read[: probe.max_examples] if probe.max_examples else read
  labels = classification.resolve_labels((), examples["train"])
  arrays = {
    split: classification.encode_examples(rows, tokenizer, max_seq_length, labels)[0]
    for split, rows in examples.items()
  }
  logging.info(
    "linear probe: %d train / %d eval rows, labels %s",
    len(arrays["train"]["label"]),
    len(arrays["eval"]["label"]),
    labels,
  )
  return ProbeSet(
    train_batches=eval_batches(arrays["train"], batch_size),
    eval_batches=eval_batches(arrays["eval"], batch_size),
    train_labels=arrays["train"]["label"],
    eval_labels=arrays["eval"]["label"],
    num_labels=len(labels),
    l2=float(probe.l2),
  )


def ridge_accuracy(train_x, train_y, eval_x, eval_y, num_labels: int, l2: float) -> float:
  """Accuracy on (eval_x, eval_y) of a ridge-regression classifier fit on the train rows:
  standardised features, one-hot targets, W = (X'X + l2 I)^-1 X'Y, class = argmax XW."""
  train_x, eval_x = np.asarray(train_x, np.float64), np.asarray(eval_x, np.float64)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  x, x_eval = (train_x - mean) / std, (eval_x - mean) / std
  y = np.eye(num_labels)[np.asarray(train_y)]
  y_mean = y.mean(0)
  weights = np.linalg.solve(x.T @ x + l2 * np.eye(x.shape[1]), x.T @ (y - y_mean))
  predicted = (x_eval @ weights + y_mean).argmax(-1)
  return float(np.mean(predicted == np.asarray(eval_y)))


class FeatureObjective:
  """Sentence features for the probe, through the eval step: no loss, no sums; the outputs
  are the mean of the encoder's last layer over each row's real tokens."""

  token_outputs: tuple[str, ...] = ()
  metric_names: tuple[str, ...] = ()

  def normalizers(self, batch) -> dict:
    return {}

  def outputs(self, model, batch, dropout_rng) -> dict:
    sequence, _ = model.bert(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    mask = batch["attention_mask"][..., None].astype(jnp.float32)
    summed = jnp.sum(sequence.astype(jnp.float32) * mask, axis=1)
    return {"features": summed / jnp.maximum(jnp.sum(mask, axis=1), 1.0)}

  def loss_and_sums(self, outputs, batch, norm):
    return jnp.zeros((), jnp.float32), {}

  @staticmethod
  def finalize(sums) -> dict:
    return {}


def make_probe(probe_set: ProbeSet, graphdef, mesh, rules):
  """(params, frozen) -> {'probe_accuracy': ...}: features of both splits from the current
  weights, then the ridge fit."""
  from train import loop
  from train import step as step_lib

  objective = FeatureObjective()
  feature_step = jax.jit(step_lib.make_eval_step(graphdef, objective, with_outputs=True))

  def features(params, frozen, batches, split) -> np.ndarray:
    found = {}

    def score(split_name, outputs):
      found["x"] = outputs["features"]
      return {}

    loop.evaluate(feature_step, params, frozen, batches, mesh, rules, objective, score, split)
    return found["x"]

  def probe(params, frozen) -> dict:
    train_x = features(params, frozen, probe_set.train_batches, "probe train")
    eval_x = features(params, frozen, probe_set.eval_batches, "probe eval")
    accuracy = ridge_accuracy(
      train_x[: len(probe_set.train_labels)],
      probe_set.train_labels,
      eval_x[: len(probe_set.eval_labels)],
      probe_set.eval_labels,
      probe_set.num_labels,
      probe_set.l2,
    )
    return {"probe_accuracy": accuracy}

  return probe

"""Objectives: what a task computes from a model and a batch.

An objective returns *sums* plus the batch-wide denominators it was told,
never per-micro-batch means, so that gradient accumulation over m micro-batches
gives exactly the update of one batch m times larger, and eval metrics add up
across batches.

Fine-tuning objectives split the work in two, `outputs` (the forward pass)
and `loss_and_sums` (what is scored), so the eval step can return the model
outputs that task metrics (F1, MCC, seqeval, SQuAD) need from the same pass.
Their batches carry a per-example `weight`: 1 for real examples, 0 for the
rows that pad the last eval batch, so padding changes no sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from data.packing import PACKED_KEYS

Batch = Mapping[str, jax.Array]


def _token_xent_sum(logits, labels, weights):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return jnp.sum(losses * weights)


class PretrainingObjective:
  """Masked-LM + next-sentence prediction, as in the BERT paper; masked-LM alone without
  `next_sentence` (RoBERTa; the NSP head then gets no gradient and its labels are unread).

  loss = mean MLM cross-entropy over the masked tokens of the whole batch
       + mean NSP cross-entropy over its sequences.
  """

  token_outputs: tuple[str, ...] = ()  # its eval step returns sums only

  def __init__(self, next_sentence: bool = True):
    self.next_sentence = next_sentence
    self.metric_names = ("loss", "mlm_loss", "mlm_accuracy") + (
      ("nsp_loss", "nsp_accuracy") if next_sentence else ()
    )

  def normalizers(self, batch: Batch) -> dict[str, jax.Array]:
    return {
      "mlm": jnp.maximum(jnp.sum(batch["masked_weights"]), 1.0),
      "nsp": jnp.asarray(batch["next_sentence_label"].shape[0], jnp.float32),
    }

  def __call__(self, model, batch: Batch, dropout_rng, norm) -> tuple[jax.Array, dict]:
    # Packed rows (data.packing) add segment and position ids.
    packed = {key: batch[key] for key in PACKED_KEYS if key in batch}
    out = model(
      batch["input_ids"],
      batch["token_type_ids"],
      batch["attention_mask"],
      masked_positions=batch["masked_positions"],
      dropout_rng=dropout_rng,
      **packed,
    )
    weights = batch["masked_weights"].astype(jnp.float32)
    mlm_sum = _token_xent_sum(out["mlm_logits"], batch["masked_ids"], weights)
    sums = {
      "mlm_loss": mlm_sum,
      "mlm_correct": jnp.sum((out["mlm_logits"].argmax(-1) == batch["masked_ids"]) * weights),
      "mlm_count": jnp.sum(weights),
    }
    if not self.next_sentence:
      return mlm_sum / norm["mlm"], sums
    nsp_labels = batch["next_sentence_label"]
    nsp_sum = _token_xent_sum(out["nsp_logits"], nsp_labels, jnp.ones_like(nsp_labels, jnp.float32))
    sums.update(
      nsp_loss=nsp_sum,
      nsp_correct=jnp.sum(out["nsp_logits"].argmax(-1) == nsp_labels).astype(jnp.float32),
      nsp_count=jnp.asarray(nsp_labels.shape[0], jnp.float32),
    )
    return mlm_sum / norm["mlm"] + nsp_sum / norm["nsp"], sums

  @staticmethod
  def finalize(sums: Mapping[str, Any]) -> dict[str, float]:
    """Summed counts (from one batch or many) -> the reported means."""
    mlm_n = max(float(sums["mlm_count"]), 1.0)
    mlm_loss = float(sums["mlm_loss"]) / mlm_n
    metrics = {
      "loss": mlm_loss,
      "mlm_loss": mlm_loss,
      "mlm_accuracy": float(sums["mlm_correct"]) / mlm_n,
    }
    if "nsp_count" in sums:
      nsp_n = max(float(sums["nsp_count"]), 1.0)
      metrics["nsp_loss"] = float(sums["nsp_loss"]) / nsp_n
      metrics["nsp_accuracy"] = float(sums["nsp_correct"]) / nsp_n
      metrics["loss"] += metrics["nsp_loss"]
    return metrics


class _FinetuneObjective:
  """`__call__` = `loss_and_sums(outputs(...))`, the protocol the train step uses.

  `token_outputs` names the outputs with a token axis (axis 1), which a
  bucketed batch has at its own length.
  """

  token_outputs: tuple[str, ...] = ()
  soft_target_normalizer = "examples"  # the normalizer distillation's soft loss shares

  def normalizers(self, batch: Batch) -> dict[str, jax.Array]:
    return {"examples": jnp.maximum(jnp.sum(batch["weight"]), 1.0)}

  def soft_targets(self, batch: Batch) -> tuple[tuple[str, jax.Array], ...]:
    """(output, weight of each of its rows) pairs that distillation (train/distill.py)
    matches to the teacher's: the rows and weights of the task loss."""
    return (("logits", batch["weight"].astype(jnp.float32)),)

  def __call__(self, model, batch: Batch, dropout_rng, norm) -> tuple[jax.Array, dict]:
    return self.loss_and_sums(self.outputs(model, batch, dropout_rng), batch, norm)

  @staticmethod
  def _forward(model, batch, dropout_rng):
    # Packed rows (data/packing.py) add these; label and weight are then [rows, slots].
    packed = {key: batch[key] for key in PACKED_KEYS if key in batch}
    return model(
      batch["input_ids"],
      batch["token_type_ids"],
      batch["attention_mask"],
      dropout_rng=dropout_rng,
      **packed,
    )


class ClassificationObjective(_FinetuneObjective):
  """Cross-entropy over the classes; squared error when num_labels == 1 (STS-B).

  Both are means over the real examples of the whole batch, as transformers'
  BertForSequenceClassification computes them.
  """

  def __init__(self, num_labels: int):
    self.regression = num_labels == 1
    self.metric_names = ("loss",) if self.regression else ("loss", "accuracy")

  def outputs(self, model, batch: Batch, dropout_rng) -> dict:
    return {"logits": self._forward(model, batch, dropout_rng)}

  def loss_and_sums(self, outputs, batch: Batch, norm) -> tuple[jax.Array, dict]:
    logits, weight = outputs["logits"], batch["weight"].astype(jnp.float32)
    if self.regression:
      errors = jnp.square(logits[..., 0] - batch["label"].astype(jnp.float32))
      loss_sum = jnp.sum(errors * weight)
      correct = jnp.zeros((), jnp.float32)
    else:
      loss_sum = _token_xent_sum(logits, batch["label"], weight)
      correct = jnp.sum((logits.argmax(-1) == batch["label"]) * weight)
    sums = {"loss": loss_sum, "correct": correct, "count": jnp.sum(weight)}
    return loss_sum / norm["examples"], sums

  def finalize(self, sums: Mapping[str, Any]) -> dict[str, float]:
    n = max(float(sums["count"]), 1.0)
    out = {"loss": float(sums["loss"]) / n}
    if not self.regression:
      out["accuracy"] = float(sums["correct"]) / n
    return out


class TokenClassificationObjective(_FinetuneObjective):
  """Cross-entropy per labelled token (a word's first sub-token), mean over the batch's.

  `label_weights` [batch, length] is 1 where a token carries its word's tag
  and 0 on later sub-tokens, special tokens and padding.
  """

  metric_names = ("loss", "token_accuracy")
  token_outputs = ("logits",)
  soft_target_normalizer = "tokens"

  def normalizers(self, batch: Batch) -> dict[str, jax.Array]:
    return {"tokens": jnp.maximum(jnp.sum(self._weights(batch)), 1.0)}

  def soft_targets(self, batch: Batch) -> tuple[tuple[str, jax.Array], ...]:
    return (("logits", self._weights(batch)),)

  @staticmethod
  def _weights(batch):
    weight = batch["weight"].astype(jnp.float32)
    if "segment_ids" in batch:  # packed: each token takes its example's weight ([rows, slots])
      segments = batch["segment_ids"]
      token_weight = jnp.take_along_axis(weight, jnp.maximum(segments - 1, 0), axis=1)
      weight = jnp.where(segments > 0, token_weight, 0.0)
    else:
      weight = weight[:, None]
    return batch["label_weights"].astype(jnp.float32) * weight

  def outputs(self, model, batch: Batch, dropout_rng) -> dict:
    return {"logits": self._forward(model, batch, dropout_rng)}

  def loss_and_sums(self, outputs, batch: Batch, norm) -> tuple[jax.Array, dict]:
    logits, weights = outputs["logits"], self._weights(batch)
    loss_sum = _token_xent_sum(logits, batch["labels"], weights)
    sums = {
      "loss": loss_sum,
      "correct": jnp.sum((logits.argmax(-1) == batch["labels"]) * weights),
      "count": jnp.sum(weights),
    }
    return loss_sum / norm["tokens"], sums

  @staticmethod
  def finalize(sums: Mapping[str, Any]) -> dict[str, float]:
    n = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss"]) / n, "token_accuracy": float(sums["correct"]) / n}


class SpanObjective(_FinetuneObjective):
  """Extractive QA: (cross-entropy of the start + of the end position) / 2, per window.

  A window that does not contain the answer points both at [CLS] (position 0),
  as in the BERT paper's SQuAD code.
  """

  metric_names = ("loss", "span_accuracy")
  token_outputs = ("start_logits", "end_logits")

  def soft_targets(self, batch: Batch) -> tuple[tuple[str, jax.Array], ...]:
    half = batch["weight"].astype(jnp.float32) / 2  # the mean of both ends, as the loss
    return (("start_logits", half), ("end_logits", half))

  def outputs(self, model, batch: Batch, dropout_rng) -> dict:
    start, end = self._forward(model, batch, dropout_rng)
    if "segment_ids" in batch:  # packed: each example's scores over its own tokens alone
      start, end = (self._per_slot(x, batch) for x in (start, end))
    return {"start_logits": start, "end_logits": end}

  @staticmethod
  def _per_slot(logits, batch):
    """[rows, length] -> [rows, slots, length]: slot s keeps the tokens of segment s + 1,
    the others at the float32 minimum (softmax weight 0); positions stay the row's."""
    slots = batch["weight"].shape[1]
    own = batch["segment_ids"][:, None, :] == jnp.arange(1, slots + 1)[None, :, None]
    return jnp.where(own, logits[:, None, :], jnp.finfo(jnp.float32).min)

  def loss_and_sums(self, outputs, batch: Batch, norm) -> tuple[jax.Array, dict]:
    weight = batch["weight"].astype(jnp.float32)
    start_sum = _token_xent_sum(outputs["start_logits"], batch["start_positions"], weight)
    end_sum = _token_xent_sum(outputs["end_logits"], batch["end_positions"], weight)
    loss_sum = (start_sum + end_sum) / 2
    exact = (outputs["start_logits"].argmax(-1) == batch["start_positions"]) & (
      outputs["end_logits"].argmax(-1) == batch["end_positions"]
    )
    sums = {"loss": loss_sum, "correct": jnp.sum(exact * weight), "count": jnp.sum(weight)}
    return loss_sum / norm["examples"], sums

  @staticmethod
  def finalize(sums: Mapping[str, Any]) -> dict[str, float]:
    n = max(float(sums["count"]), 1.0)
    return {"loss": float(sums["loss"]) / n, "span_accuracy": float(sums["correct"]) / n}


class ClozeObjective(ClassificationObjective):
  """PET-style cloze: the masked-LM logits at each example's [MASK], read at the
  verbalizer's token ids, are the class logits.

  The pretrained MLM head is the classifier, so no parameter starts fresh and
  the model scores classes before any training (zero-shot). Loss and accuracy
  are ClassificationObjective's; the NSP head is unused.
  """

  def __init__(self, verbalizer_ids):
    if len(verbalizer_ids) < 2:
      raise ValueError(
        f"verbalizer_ids={list(verbalizer_ids)}: a cloze task needs a word for "
        "each of at least 2 labels"
      )
    super().__init__(len(verbalizer_ids))
    self.verbalizer_ids = tuple(int(i) for i in verbalizer_ids)

  def outputs(self, model, batch: Batch, dropout_rng) -> dict:
    out = model(
      batch["input_ids"],
      batch["token_type_ids"],
      batch["attention_mask"],
      masked_positions=batch["mask_position"][:, None],
      dropout_rng=dropout_rng,
    )
    word_logits = out["mlm_logits"][:, 0, :]  # [batch, vocab] at the one [MASK]
    return {"logits": jnp.take(word_logits, jnp.asarray(self.verbalizer_ids), axis=1)}

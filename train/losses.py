"""Objectives: what a task computes from a model and a batch.

An objective returns *sums* plus the batch-wide denominators it was told,
never per-micro-batch means, so that gradient accumulation over m micro-batches
gives exactly the update of one batch m times larger, and eval metrics add up
across batches.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

Batch = Mapping[str, jax.Array]


def _token_xent_sum(logits, labels, weights):
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  return jnp.sum(losses * weights)


class PretrainingObjective:
  """Masked-LM + next-sentence prediction, as in the BERT paper.

  loss = mean MLM cross-entropy over the masked tokens of the whole batch
       + mean NSP cross-entropy over its sequences.
  """

  metric_names = ("loss", "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")

  def normalizers(self, batch: Batch) -> dict[str, jax.Array]:
    return {"mlm": jnp.maximum(jnp.sum(batch["masked_weights"]), 1.0),
            "nsp": jnp.asarray(batch["next_sentence_label"].shape[0], jnp.float32)}

  def __call__(self, model, batch: Batch, dropout_rng, norm) -> tuple[jax.Array, dict]:
    out = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                masked_positions=batch["masked_positions"], dropout_rng=dropout_rng)
    weights = batch["masked_weights"].astype(jnp.float32)
    mlm_sum = _token_xent_sum(out["mlm_logits"], batch["masked_ids"], weights)
    nsp_labels = batch["next_sentence_label"]
    nsp_sum = _token_xent_sum(out["nsp_logits"], nsp_labels, jnp.ones_like(nsp_labels, jnp.float32))
    loss = mlm_sum / norm["mlm"] + nsp_sum / norm["nsp"]
    sums = {
        "mlm_loss": mlm_sum,
        "mlm_correct": jnp.sum((out["mlm_logits"].argmax(-1) == batch["masked_ids"]) * weights),
        "mlm_count": jnp.sum(weights),
        "nsp_loss": nsp_sum,
        "nsp_correct": jnp.sum(out["nsp_logits"].argmax(-1) == nsp_labels).astype(jnp.float32),
        "nsp_count": jnp.asarray(nsp_labels.shape[0], jnp.float32),
    }
    return loss, sums

  @staticmethod
  def finalize(sums: Mapping[str, Any]) -> dict[str, float]:
    """Summed counts (from one batch or many) -> the reported means."""
    mlm_n = max(float(sums["mlm_count"]), 1.0)
    nsp_n = max(float(sums["nsp_count"]), 1.0)
    mlm_loss, nsp_loss = float(sums["mlm_loss"]) / mlm_n, float(sums["nsp_loss"]) / nsp_n
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss,
            "mlm_accuracy": float(sums["mlm_correct"]) / mlm_n,
            "nsp_loss": nsp_loss, "nsp_accuracy": float(sums["nsp_correct"]) / nsp_n}


Objective = Callable[..., tuple[jax.Array, dict]]

"""Task heads on top of `BertModel`.

`BertForPreTraining` is BERT's pretraining model: the masked-LM head (a dense +
LayerNorm transform, then a decoder tied to the word embeddings with its own
bias) and the next-sentence head on the pooled output.

The fine-tuning models (sequence / token classification, span QA) keep the
encoder under the same name, `bert`, so an encoder tree from a pretraining
checkpoint or from `model/convert.hf_to_params` loads into every one of them;
their heads start fresh. Head outputs are float32 whatever the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model.bert import NO_PEFT, BertModel, Dense, LayerNorm, activation, constrain, dropout, param
from model.config import BertConfig
from model.peft import PeftConfig


class MaskedLMHead(nnx.Module):
  def __init__(self, config: BertConfig, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.transform = Dense(
      "...d,de->...e",
      (c.hidden_size, c.hidden_size),
      ("embed", None),
      (None,),
      rngs,
      c.initializer_range,
    )
    self.norm = LayerNorm(c.hidden_size, c.layer_norm_eps, rngs, axis_name=None)
    self.bias = param(rngs, (c.vocab_size,), ("vocab",), "zeros")
    if not c.tie_word_embeddings:
      self.decoder = param(
        rngs, (c.vocab_size, c.hidden_size), ("vocab", "embed"), std=c.initializer_range
      )

  def __call__(self, hidden, word_embeddings):
    """Logits over the vocabulary (float32) for each hidden vector given.

    Callers pass only the masked positions during pretraining: projecting every
    token onto a 30k vocabulary would dominate the step. `word_embeddings` are the
    decoder unless the config unties it.
    """
    h = activation(self.config.hidden_act)(self.transform(hidden))
    h = self.norm(h)
    decoder = word_embeddings if self.config.tie_word_embeddings else self.decoder[...]
    logits = jnp.einsum(
      "...d,vd->...v", h, decoder.astype(h.dtype), preferred_element_type=jnp.float32
    )
    return logits + self.bias[...]


class BertForPreTraining(nnx.Module):
  """BERT with masked-LM and next-sentence-prediction heads."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT):
    self.config = config
    self.bert = BertModel(config, rngs, peft)
    self.mlm = MaskedLMHead(config, rngs)
    self.nsp = Dense(
      "bd,dc->bc", (config.hidden_size, 2), ("embed", None), (None,), rngs, config.initializer_range
    )

  def __call__(
    self,
    input_ids,
    token_type_ids=None,
    attention_mask=None,
    *,
    masked_positions=None,
    segment_ids=None,
    position_ids=None,
    dropout_rng=None,
  ):
    """Returns a dict with sequence/pooled outputs, MLM logits and NSP logits.

    With `masked_positions` [batch, predictions] the MLM logits are computed at
    those positions only, shape [batch, predictions, vocab]; without, at every
    position, [batch, length, vocab]. Packed rows (data.packing) give segment_ids and
    position_ids: each example attends to itself only (the pooled output is then the
    first example's, unused: packing is for MLM alone).
    """
    sequence, pooled = self.bert(
      input_ids,
      token_type_ids,
      attention_mask,
      position_ids=position_ids,
      segment_ids=segment_ids,
      dropout_rng=dropout_rng,
    )
    hidden = sequence
    if masked_positions is not None:
      hidden = jnp.take_along_axis(sequence, masked_positions[..., None], axis=1)
    mlm_logits = self.mlm(hidden, self.bert.embeddings.word[...])
    mlm_logits = constrain(mlm_logits, ("batch", "length", "act_vocab"))
    nsp_logits = self.nsp(pooled).astype(jnp.float32)
    return {
      "sequence_output": sequence,
      "pooled_output": pooled,
      "mlm_logits": mlm_logits,
      "nsp_logits": nsp_logits,
    }


class BertForSequenceClassification(nnx.Module):
  """Pooled [CLS] vector -> dropout -> Dense: class logits, or a score when num_labels=1.

  Dropout rate is hidden_dropout_prob, as transformers uses when
  classifier_dropout is unset.
  """

  def __init__(
    self, config: BertConfig, num_labels: int, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT
  ):
    if num_labels < 1:
      raise ValueError(f"num_labels={num_labels}: need at least 1 (1 means regression)")
    self.config = config
    self.bert = BertModel(config, rngs, peft)
    self.classifier = Dense(
      "bd,dc->bc",
      (config.hidden_size, num_labels),
      ("embed", None),
      (None,),
      rngs,
      config.initializer_range,
    )

  def __call__(
    self,
    input_ids,
    token_type_ids=None,
    attention_mask=None,
    *,
    dropout_rng=None,
    segment_ids=None,
    position_ids=None,
    cls_positions=None,
  ):
    """Returns logits [batch, num_labels] (float32); of packed rows (segment_ids, and each
    example's [CLS] at cls_positions [batch, slots]), logits [batch, slots, num_labels]."""
    rng_bert, rng_head = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    sequence, pooled = self.bert(
      input_ids,
      token_type_ids,
      attention_mask,
      position_ids=position_ids,
      segment_ids=segment_ids,
      dropout_rng=rng_bert,
    )
    if cls_positions is not None:
      pooled = self.bert.pooler(sequence, cls_positions)
    pooled = dropout(pooled, self.config.hidden_dropout_prob, rng_head)
    logits = self.classifier(pooled.reshape(-1, pooled.shape[-1])).astype(jnp.float32)
    return logits.reshape(pooled.shape[:-1] + (-1,))


class BertForTokenClassification(nnx.Module):
  """Every token's vector -> dropout -> Dense: per-token tag logits (NER)."""

  def __init__(
    self, config: BertConfig, num_labels: int, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT
  ):
    if num_labels < 2:
      raise ValueError(f"num_labels={num_labels}: token classification needs at least 2 tags")
    self.config = config
    self.bert = BertModel(config, rngs, peft)
    self.classifier = Dense(
      "btd,dc->btc",
      (config.hidden_size, num_labels),
      ("embed", None),
      (None,),
      rngs,
      config.initializer_range,
    )

  def __call__(
    self,
    input_ids,
    token_type_ids=None,
    attention_mask=None,
    *,
    dropout_rng=None,
    segment_ids=None,
    position_ids=None,
    cls_positions=None,
  ):
    """Returns logits [batch, length, num_labels] (float32). Packed rows (segment_ids,
    position_ids) score every token as its own example's; cls_positions are not needed."""
    del cls_positions
    rng_bert, rng_head = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    sequence, _ = self.bert(
      input_ids,
      token_type_ids,
      attention_mask,
      position_ids=position_ids,
      segment_ids=segment_ids,
      dropout_rng=rng_bert,
    )
    sequence = dropout(sequence, self.config.hidden_dropout_prob, rng_head)
    return self.classifier(sequence).astype(jnp.float32)


class BertForQuestionAnswering(nnx.Module):
  """Every token's vector -> Dense to 2: where the answer span starts and ends.

  No dropout before the span head, as in the BERT paper's SQuAD model and
  transformers' BertForQuestionAnswering.
  """

  def __init__(self, config: BertConfig, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT):
    self.config = config
    self.bert = BertModel(config, rngs, peft)
    self.qa_outputs = Dense(
      "btd,dc->btc",
      (config.hidden_size, 2),
      ("embed", None),
      (None,),
      rngs,
      config.initializer_range,
    )

  def __call__(
    self,
    input_ids,
    token_type_ids=None,
    attention_mask=None,
    *,
    dropout_rng=None,
    segment_ids=None,
    position_ids=None,
    cls_positions=None,
  ):
    """Returns (start_logits, end_logits), each [batch, length] (float32). Packed rows
    (segment_ids, position_ids) score every token; the objective reads each example's own."""
    del cls_positions  # spans are read per token, not from [CLS]
    sequence, _ = self.bert(
      input_ids,
      token_type_ids,
      attention_mask,
      position_ids=position_ids,
      segment_ids=segment_ids,
      dropout_rng=dropout_rng,
    )
    logits = self.qa_outputs(sequence).astype(jnp.float32)
    return logits[..., 0], logits[..., 1]

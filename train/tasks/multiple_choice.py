"""Multiple choice (SWAG): every (context, ending) pair gets a score; the best is the answer.

The model is transformers' BertForMultipleChoice: the choices of an example
run through the encoder as rows of their own, each pooled [CLS] vector goes
through dropout and a Dense to one score, and the scores of an example's
choices are its class logits. Loss, accuracy and the exported `classifier`
head are those of classification over the choices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data import multiple_choice
from data.classification import parse_columns
from model.bert import NO_PEFT, BertModel, Dense, dropout
from model.config import BertConfig
from model.peft import PeftConfig
from train import metrics
from train.losses import ClassificationObjective
from train.tasks import common
from train.tasks.base import TaskSpec

DATA_DEFAULTS = dict(
  context_column="sent1",  # the first segment of every choice
  start_column="sent2",  # put before each ending in the second segment; '' = none
  ending_columns="ending0,ending1,ending2,ending3",
  label_column="label",  # the index of the right ending
  metrics=("accuracy",),
)


class BertForMultipleChoice(nnx.Module):
  """[batch, choices, length] token ids -> [batch, choices] scores (float32)."""

  def __init__(self, config: BertConfig, rngs: nnx.Rngs, peft: PeftConfig = NO_PEFT):
    self.config = config
    self.bert = BertModel(config, rngs, peft)
    self.classifier = Dense(
      "bd,dc->bc", (config.hidden_size, 1), ("embed", None), (None,), rngs, config.initializer_range
    )

  def __call__(self, input_ids, token_type_ids=None, attention_mask=None, *, dropout_rng=None):
    batch, choices, length = input_ids.shape
    flat = lambda x: None if x is None else x.reshape(batch * choices, length)
    rng_bert, rng_head = (None, None) if dropout_rng is None else jax.random.split(dropout_rng)
    _, pooled = self.bert(
      flat(input_ids), flat(token_type_ids), flat(attention_mask), dropout_rng=rng_bert
    )
    pooled = dropout(pooled, self.config.hidden_dropout_prob, rng_head)
    return self.classifier(pooled).astype(jnp.float32).reshape(batch, choices)


def read_examples(data, source: str) -> list[multiple_choice.ChoiceExample]:
  if data.source != "files":
    raise ValueError(
      f"data.source={data.source!r}: multiple_choice reads SWAG-format CSV files "
      "(data.source='files', data.train_path / eval_path / test_path)"
    )
  return multiple_choice.read_swag_csv(
    source, data.context_column, data.start_column, data.ending_columns, data.label_column
  )


def build(config, workdir: str):
  data = config.data
  model_config = common.model_config_of(config)
  tokenizer = common.finetune_tokenizer(config, model_config)
  arrays, stats, gold, num_choices = {}, {}, {}, set()
  for split in common.SPLITS:
    source = common.split_source(data, split)
    if source is None:
      continue
    examples = read_examples(data, source)
    if split == "train":
      examples = common.first_train_rows(data, {"train": examples})["train"]
      common.check_unknown(tokenizer, (e.context for e in examples), data)
    if any(e.label is None for e in examples):
      raise ValueError(f"{source}: no {data.label_column!r} column; {split} data needs labels")
    arrays[split], stats[split] = multiple_choice.encode_choices(
      examples, tokenizer, data.max_seq_length
    )
    gold[split] = arrays[split]["label"]
    num_choices.add(stats[split]["choices"])
  if len(num_choices) > 1:
    raise ValueError(f"the splits have different numbers of endings: {sorted(num_choices)}")
  labels = [str(i) for i in range(num_choices.pop())] if num_choices else []

  def score(split: str, outputs: dict) -> dict:
    predictions = outputs["logits"][: len(gold[split])].argmax(-1)
    return metrics.classification_scores(list(data.metrics), predictions, gold[split])

  summary = {"splits": stats, "labels": labels}
  return common.finetune_task(SPEC, config, model_config, arrays, score, tokenizer, labels, summary)


def predict(predictor, inputs: list[tuple[str, ...]]) -> list[dict]:
  """Per (context, ending 0, ending 1, ...): the index and text of the likeliest ending."""
  from train.tasks.classification import softmax

  examples = []
  for i, row in enumerate(inputs):
    if len(row) != len(predictor.labels) + 1 or not all(field.strip() for field in row):
      raise ValueError(
        f"input {i + 1}: a multiple-choice input is a context and "
        f"{len(predictor.labels)} non-empty endings"
      )
    examples.append(multiple_choice.ChoiceExample(row[0], tuple(row[1:]), None, f"input {i + 1}"))
  arrays, _ = multiple_choice.encode_choices(
    examples, predictor.tokenizer, predictor.config.data.max_seq_length
  )
  probabilities = softmax(predictor.outputs(arrays)["logits"])
  return [
    {
      "context": e.context,
      "choice": int(p.argmax()),
      "ending": e.endings[int(p.argmax())],
      "probability": float(p.max()),
    }
    for e, p in zip(examples, probabilities)
  ]


def example_shapes(config):
  choices = len(parse_columns(config.data.ending_columns))
  shapes = dict(
    common.token_shapes(config.data.max_seq_length, (choices,)),
    label=((), np.int32),
    weight=((), np.float32),
  )
  return [str(i) for i in range(choices)], shapes


SPEC = TaskSpec(
  name="multiple_choice",
  build=build,
  example_shapes=example_shapes,
  data_defaults=DATA_DEFAULTS,
  model_factory=lambda config, model_config, labels, peft: (
    lambda rngs: BertForMultipleChoice(model_config, rngs, peft)
  ),
  objective=lambda config, labels: ClassificationObjective(len(labels)),
  predict=predict,
  head="classifier",
  hf_architecture="BertForMultipleChoice",
  peft_task_type=None,  # HF PEFT has no multiple-choice task type: merged export only
  hf_labels=lambda config, labels: {},
  hf_pooler=True,
  hf_model=lambda model_config, num_labels, rngs: BertForMultipleChoice(model_config, rngs),
  outputs=("logits",),
)

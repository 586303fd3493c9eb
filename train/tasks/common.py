"""What every fine-tuning task shares: its model config, tokenizer, splits and batches."""

from __future__ import annotations

import jax
import numpy as np
from absl import logging

from data import finetune, packing
from data import tokenizer as tokenizer_lib
from model.config import BertConfig
from model.peft import PeftConfig, check_sequence_fits
from train import warm_start
from train.errors import UserError
from train.tasks.base import Task

SPLITS = ("train", "eval", "test")


def model_config_of(config) -> BertConfig:
  """config.model, checked against data.max_seq_length."""
  model_config = BertConfig.from_dict(config.model)
  if config.data.max_seq_length > model_config.max_position_embeddings:
    raise ValueError(
      f"data.max_seq_length={config.data.max_seq_length} exceeds "
      f"model.max_position_embeddings={model_config.max_position_embeddings}"
    )
  return model_config


def check_unknown(tokenizer, texts, data, where: str = "") -> None:
  """tokenizer.check_unknown_rate on a sample of the training text, named by its source."""
  tokenizer_lib.check_unknown_rate(
    tokenizer,
    texts,
    where or data.get("train_path") or data.get("tfds_name") or data.source,
    data.get("max_unknown_fraction", tokenizer_lib.MAX_UNKNOWN_FRACTION),
  )


def finetune_tokenizer(config, model_config: BertConfig):
  """data.vocab, or else the vocab that came with init.checkpoint / init.hf_dir."""
  vocab = config.data.vocab or warm_start.init_vocab(config.init)
  if not vocab:
    raise ValueError(
      "data.vocab is empty and init gives no vocab.txt: set data.vocab to "
      "the vocab the encoder was trained with"
    )
  tokenizer = tokenizer_lib.load_tokenizer(vocab, lowercase=config.data.lowercase)
  tokenizer_lib.check_vocab_fits(tokenizer, model_config.vocab_size)
  return tokenizer


def split_source(data, split: str) -> str | None:
  """The file path or TFDS split name of a split; None when the config has none."""
  if data.source == "files":
    path = {"train": data.train_path, "eval": data.eval_path, "test": data.test_path}[split]
    return path or None
  if data.source == "tfds":
    if not data.tfds_name:
      raise ValueError("data.tfds_name is empty: give a TFDS name for data.source='tfds'")
    name = {
      "train": data.tfds_train_split,
      "eval": data.tfds_eval_split,
      "test": data.tfds_test_split,
    }[split]
    return name or None
  raise ValueError(f"data.source={data.source!r}: expected 'files' or 'tfds'")


def peft_config(config) -> PeftConfig:
  """The config's `peft` section, checked against the model and sequence length."""
  peft = PeftConfig.from_dict(config.peft.to_dict() if config.get("peft") else None)
  check_sequence_fits(peft, config.data.max_seq_length, config.model.max_position_embeddings)
  return peft


def finetune_task(spec, config, model_config, arrays: dict, score, tokenizer, labels, summary):
  """The Task of a fine-tuning spec: batches for every split present; train and eval required."""
  for split in ("train", "eval"):
    if split not in arrays:
      raise ValueError(f"no {split} data: set data.{split}_path (or the TFDS split)")
  peft = peft_config(config)
  buckets = buckets_of(spec, config)
  packed = bool(config.data.get("packing"))
  if packed:
    check_packable(spec, config)
  train_data = finetune.FinetuneData(
    arrays["train"], config.batch_size, config.seed, buckets, packed
  )
  if packed:
    train_data.packed_shape = packed_shape_of(config, arrays["train"], train_data)
  logging.info("fine-tuning data: %s", summary)
  return Task(
    model_config=model_config,
    model_factory=spec.model_factory(config, model_config, labels, peft),
    objective=spec.objective(config, labels),
    train_data=train_data,
    eval_batches=finetune.eval_batches(arrays["eval"], config.batch_size, buckets),
    test_batches=finetune.eval_batches(arrays["test"], config.batch_size, buckets)
    if "test" in arrays
    else [],
    score=score,
    labels=labels,
    tokenizer=tokenizer,
    vocab_file=getattr(tokenizer, "vocab_file", None),
    summary=summary,
    steps_per_epoch=train_data.steps_per_epoch,
    peft=peft,
  )


def check_packable(spec, config) -> None:
  """Refuses data.packing, by name, for what cannot pack; before any data is read."""
  if not spec.packs:
    from train import tasks

    packing_tasks = [name for name in tasks.MODULES if tasks.get(name).packs]
    raise UserError(
      f"data.packing=True: task={spec.name!r} cannot pack yet (only {packing_tasks}); "
      "set data.packing=False (length buckets, data.bucket_lengths, still apply)"
    )
  if config.peft.method in ("prompt", "prefix"):
    raise UserError(f"data.packing=True does not combine with peft.method={config.peft.method!r}")


def packed_shape_of(config, train: dict, train_data) -> packing.PackedShape:
  """The one shape of the run's packed training batches: every step of the schedule fits."""
  steps = config.optimizer.total_steps or config.epochs * train_data.steps_per_epoch
  multiple = jax.device_count() * config.optimizer.get("grad_accum_steps", 1)
  lengths = train["attention_mask"].sum(-1)
  shape, efficiency = packing.plan_shape(
    lengths, train_data.sampler, steps, config.data.max_seq_length, multiple
  )
  logging.info(
    "packing: %d examples a step in %d rows of %d tokens (up to %d a row); real tokens %.1f%% "
    "of the %d steps' positions (unpacked: %.1f%%)",
    config.batch_size,
    shape.rows,
    shape.length,
    shape.slots,
    100 * efficiency,
    steps,
    100 * lengths.mean() / config.data.max_seq_length,
  )
  return shape


def token_shapes(length: int, prefix: tuple = ()) -> dict:
  """The three token arrays of an encoded row (or of `prefix` rows per example)."""
  keys = ("input_ids", "token_type_ids", "attention_mask")
  return {key: (prefix + (length,), np.int32) for key in keys}


def first_train_rows(data, rows: dict[str, list]) -> dict[str, list]:
  """The first data.max_train_examples training rows (examples, sentences), when it is > 0."""
  limit = data.get("max_train_examples", 0)
  if limit and "train" in rows and len(rows["train"]) > limit:
    logging.info("data.max_train_examples=%d of %d training rows", limit, len(rows["train"]))
    rows = dict(rows, train=rows["train"][:limit])
  return rows


def configured_labels(config, default: int = 2) -> list[str]:
  """data.labels, or `default` placeholder names: what a run's labels are before data is read."""
  labels = [str(label) for label in config.data.get("labels", ())]
  return labels or [str(i) for i in range(default)]


def buckets_of(spec, config) -> finetune.Buckets | None:
  """The task's batch bucketing from data.bucket_lengths; None when it gives one length."""
  max_seq_length = config.data.max_seq_length
  lengths = finetune.bucket_lengths(config.data.get("bucket_lengths", "none"), max_seq_length)
  if len(lengths) == 1:
    return None
  _, shapes = spec.example_shapes(config)
  keys = tuple(k for k, (shape, _) in shapes.items() if shape and shape[-1] == max_seq_length)
  return finetune.Buckets(lengths, keys)


def label_fields(labels) -> dict:
  """transformers' config.json fields of a classifier over `labels`."""
  return {
    "num_labels": len(labels),
    "id2label": {str(i): label for i, label in enumerate(labels)},
    "label2id": {label: i for i, label in enumerate(labels)},
  }

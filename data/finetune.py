"""What every fine-tuning task's data shares: reading files, labels, packing, batches.

  read_lines        a text file's lines, a bad byte reported as file:line
  label_ids         label strings -> ids, an unknown label reported where it was read
  pack_segments     [CLS] A [SEP] (B [SEP]) padded, ids from a tokenizer
  FinetuneData      training batches as a pure function of (seed, step)
  eval_batches      fixed eval batches, the last one padded with weight-0 rows

Encoders (classification.py, ner.py, squad.py) turn their files into a dict of
numpy arrays with one row per example (a window, for SQuAD) and a float32
`weight` column; these two classes batch any such dict.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data.sampling import EpochSampler, host_share


def read_lines(path: str) -> list[tuple[int, str]]:
  """(line number, text without the newline) for each line of a UTF-8 file.

  Decoded line by line, so a bad byte stops the run naming the file and line.
  A byte-order mark on the first line is dropped.
  """
  lines = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        text = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(
          f"{path}:{number}: not valid UTF-8 ({e.reason} at byte {e.start} of the line)"
        ) from None
      if number == 1:
        text = text.lstrip("\ufeff")
      lines.append((number, text.rstrip("\r\n")))
  return lines


def label_ids(labels: Sequence[str], names: Sequence[str], origins: Sequence[str]) -> np.ndarray:
  """Class ids of `labels` in the label list `names`; `origins` say where each was read."""
  index = {name: i for i, name in enumerate(names)}
  ids = np.empty(len(labels), np.int32)
  for row, (label, origin) in enumerate(zip(labels, origins)):
    if label not in index:
      raise ValueError(
        f"{origin}: unknown label {label!r}; the labels are {list(names)} "
        "(set data.labels to name every label)"
      )
    ids[row] = index[label]
  return ids


def pack_segments(
  ids_a: list[int], ids_b: list[int] | None, max_seq_length: int, tokenizer
) -> tuple[dict[str, np.ndarray], bool]:
  """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`, padded; and whether it was truncated.

  Too long input loses tokens from the end of the longer segment, one at a
  time (google-research/bert's run_classifier.py): the start of a text
  usually says the most.
  """
  ids_a, ids_b = list(ids_a), (None if ids_b is None else list(ids_b))
  room = max_seq_length - (3 if ids_b is not None else 2)
  truncated = len(ids_a) + len(ids_b or ()) > room
  while len(ids_a) + len(ids_b or ()) > room:
    longer = ids_a if ids_b is None or len(ids_a) > len(ids_b) else ids_b
    longer.pop()
  ids = [tokenizer.cls_token_id, *ids_a, tokenizer.sep_token_id]
  types = [0] * len(ids)
  if ids_b is not None:
    ids += [*ids_b, tokenizer.sep_token_id]
    types += [1] * (len(ids_b) + 1)
  input_ids = np.full(max_seq_length, tokenizer.pad_token_id, np.int32)
  input_ids[: len(ids)] = ids
  token_type_ids = np.zeros(max_seq_length, np.int32)
  token_type_ids[: len(types)] = types
  attention_mask = np.zeros(max_seq_length, np.int32)
  attention_mask[: len(ids)] = 1
  return {
    "input_ids": input_ids,
    "token_type_ids": token_type_ids,
    "attention_mask": attention_mask,
  }, truncated


def _num_rows(arrays: dict[str, np.ndarray]) -> int:
  sizes = {key: len(value) for key, value in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"arrays disagree on the number of rows: {sizes}")
  return next(iter(sizes.values()))


class FinetuneData:
  """Training batches as a pure function of (seed, step), like PretrainingData.

  Epoch e visits the rows in permutation(default_rng((seed, e))) order and
  drops the last N % batch_size of them (different ones each epoch). Resuming
  needs only the step number.
  """

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int):
    self.sampler = EpochSampler(_num_rows(arrays), batch_size, seed, "training examples")
    self.arrays = arrays
    self.num_examples = self.sampler.num_examples
    self.steps_per_epoch = self.sampler.steps_per_epoch

  def example_indices(self, step: int) -> np.ndarray:
    return self.sampler.indices(step)

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    rows = self.example_indices(step)
    batch = {key: value[rows] for key, value in self.arrays.items()}
    return host_share(batch, process_index, process_count)


def eval_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict]:
  """Every row once, in order; the last batch filled with copies of row 0 at weight 0.

  Copies rather than zeros keep every row a well-formed input (a row with no
  attended token can make fused attention kernels return NaN).
  """
  n = _num_rows(arrays)
  if n == 0:
    return []
  padded = -n % batch_size
  if padded:
    arrays = {
      key: np.concatenate([value, np.repeat(value[:1], padded, axis=0)])
      for key, value in arrays.items()
    }
    arrays["weight"] = arrays["weight"].copy()
    arrays["weight"][n:] = 0.0
  return [
    {key: value[start : start + batch_size] for key, value in arrays.items()}
    for start in range(0, n + padded, batch_size)
  ]


def tfds_source(name: str, split: str, data_dir: str | None = None):
  """(random-access source, features) of a TFDS dataset, without TensorFlow.

  `tfds.data_source` reads prepared ArrayRecord files; builders such as glue,
  imdb_reviews, conll2003 and squad register only when their package
  (tensorflow_datasets.text / .question_answering) is imported.
  """
  import tensorflow_datasets as tfds
  import tensorflow_datasets.question_answering  # noqa: F401  (squad)
  import tensorflow_datasets.text  # noqa: F401  (glue, imdb_reviews, conll2003)

  source = tfds.data_source(name, split=split, data_dir=data_dir or None)
  features = tfds.builder(name, data_dir=data_dir or None).info.features
  return source, features


def as_text(value) -> str:
  """TFDS text features come back as bytes or numpy strings."""
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)

"""What every fine-tuning task's data shares: reading files, labels, packing, batches.

  read_lines        a text file's lines, a bad byte reported as file:line
  label_ids         label strings -> ids, an unknown label reported where it was read
  pack_segments     [CLS] A [SEP] (B [SEP]) padded, ids from a tokenizer
  FinetuneData      training batches as a pure function of (seed, step)
  eval_batches      fixed eval batches, the last one padded with weight-0 rows
  Buckets           a batch cut to the shortest bucket length that holds its rows
  gather_outputs    eval outputs back in row order and at one length

Encoders (classification.py, ner.py, squad.py) turn their files into a dict of
numpy arrays with one row per example (a window, for SQuAD) and a float32
`weight` column; these two classes batch any such dict.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from data import packing
from data.sampling import EpochSampler, LengthBalancedSampler, host_share


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


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
  """Each text's WordPiece ids, without [CLS] / [SEP]: the pieces a reader lays out itself."""
  return tokenizer(
    texts,
    add_special_tokens=False,
    return_attention_mask=False,
    return_token_type_ids=False,
    verbose=False,
  )["input_ids"]


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


def bucket_lengths(setting: str, max_seq_length: int) -> tuple[int, ...]:
  """The lengths batches are padded to, from `data.bucket_lengths`.

  'auto': 16, 24, 32, 48, 64, 96, ... (powers of two and the midpoints 1.5x them) below
    max_seq_length, then max_seq_length. A batch carries at most 1.5x its longest row
    (on SST-2's training batches 1.19x on average, against 1.44x for powers of two alone)
    for about twice the compiles of powers of two;
  'none': max_seq_length alone (every batch padded to it, one shape);
  '32,64,128': those (max_seq_length is added when missing).
  """
  setting = str(setting).strip().lower()
  if setting == "none":
    return (max_seq_length,)
  if setting == "auto":
    lengths, length = [], 16
    while length < max_seq_length:
      lengths += [n for n in (length, length * 3 // 2) if n < max_seq_length]
      length *= 2
    return (*lengths, max_seq_length)
  try:
    lengths = sorted({int(x) for x in setting.split(",") if x.strip()})
  except ValueError:
    raise ValueError(
      f"data.bucket_lengths={setting!r}: expected 'auto', 'none' or lengths like '32,64,128'"
    ) from None
  if not lengths or lengths[0] < 1 or lengths[-1] > max_seq_length:
    raise ValueError(
      f"data.bucket_lengths={setting!r}: lengths must lie in 1..max_seq_length={max_seq_length}"
    )
  return tuple(lengths) if lengths[-1] == max_seq_length else (*lengths, max_seq_length)


@dataclasses.dataclass(frozen=True)
class Buckets:
  """Pads a batch to the shortest bucket length that holds its longest row.

  Rows are padded at the end, so the longest row is the longest run of
  attention_mask; `length_keys` are the arrays whose last axis is the token
  axis, cut to the bucket. The choice depends on the batch's rows only, so a
  batch stays a pure function of (seed, step), and every host of a global
  batch picks the same length.
  """

  lengths: tuple[int, ...]
  length_keys: tuple[str, ...]

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    mask = batch["attention_mask"]
    longest = int(mask.reshape(-1, mask.shape[-1]).sum(-1).max()) if mask.size else 1
    length = next(n for n in self.lengths if n >= longest)
    if length == mask.shape[-1]:
      return batch
    return {k: v[..., :length] if k in self.length_keys else v for k, v in batch.items()}


class FinetuneData:
  """Training batches as a pure function of (seed, step), like PretrainingData.

  Epoch e visits the rows in permutation(default_rng((seed, e))) order and
  drops the last N % batch_size of them (different ones each epoch). Resuming
  needs only the step number. With `buckets`, each global batch is padded to
  its bucket length before this host takes its share. `packed`: the steps of
  each window of an epoch share out its examples by length
  (LengthBalancedSampler), and once `packed_shape` is set (planned from that
  sampler), each batch is packed into rows of that shape (data/packing.py).
  """

  def __init__(
    self,
    arrays: dict[str, np.ndarray],
    batch_size: int,
    seed: int,
    buckets: Buckets | None = None,
    packed: bool = False,
  ):
    if packed:  # each step near the mean tokens, so the run's one packed shape wastes little
      lengths = arrays["attention_mask"].sum(-1)
      self.sampler = LengthBalancedSampler(lengths, batch_size, seed, "training examples")
    else:
      self.sampler = EpochSampler(_num_rows(arrays), batch_size, seed, "training examples")
    self.arrays = arrays
    self.buckets = buckets
    self.packed_shape = None  # data/packing.PackedShape: packed rows instead of buckets
    self.num_examples = self.sampler.num_examples
    self.steps_per_epoch = self.sampler.steps_per_epoch

  def example_indices(self, step: int) -> np.ndarray:
    return self.sampler.indices(step)

  def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> dict:
    rows = self.example_indices(step)
    batch = {key: value[rows] for key, value in self.arrays.items()}
    if self.packed_shape is not None:
      batch = packing.pack(batch, self.packed_shape)
    elif self.buckets is not None:
      batch = self.buckets(batch)
    return host_share(batch, process_index, process_count)


def eval_batches(
  arrays: dict[str, np.ndarray], batch_size: int, buckets: Buckets | None = None
) -> list[dict]:
  """Every row once; the last batch filled with copies of a row at weight 0.

  Copies rather than zeros keep every row a well-formed input (a row with no
  attended token can make fused attention kernels return NaN). With
  `buckets`, rows are taken shortest first, so that each batch is padded to a
  bucket close to its rows' length. `row` in each batch is the index of each
  row in `arrays` (padding rows count on from the end): `gather_outputs` puts
  the model outputs back in the arrays' order.
  """
  n = _num_rows(arrays)
  if n == 0:
    return []
  order = np.arange(n)
  if buckets is not None:
    mask = arrays["attention_mask"]
    lengths = mask.reshape(n, -1, mask.shape[-1]).sum(-1).max(-1)
    order = np.argsort(lengths, kind="stable")
  padded = -n % batch_size
  rows = np.concatenate([order, np.repeat(order[:1], padded)])
  arrays = {key: value[rows] for key, value in arrays.items()}
  arrays["row"] = np.concatenate([order, np.arange(n, n + padded)]).astype(np.int32)
  if padded:
    arrays["weight"] = arrays["weight"].copy()
    arrays["weight"][n:] = 0.0
  batches = [
    {key: value[start : start + batch_size] for key, value in arrays.items()}
    for start in range(0, n + padded, batch_size)
  ]
  return [buckets(b) for b in batches] if buckets is not None else batches


def pad_token_axis(outputs: dict, keys, max_seq_length: int, fill: float = -1e9) -> dict:
  """Model outputs of a bucketed batch back at max_seq_length, so batches concatenate.

  `keys` are the outputs with a token axis (axis 1: the objective's
  `token_outputs`); the added positions hold `fill`, below any logit, so no
  tag or span is read there.
  """
  out = dict(outputs)
  for key in keys:
    value = np.asarray(out[key])
    if value.shape[1] < max_seq_length:
      widths = [(0, 0), (0, max_seq_length - value.shape[1])] + [(0, 0)] * (value.ndim - 2)
      out[key] = np.pad(value, widths, constant_values=fill)
  return out


def gather_outputs(batches: list[dict], outputs: list[dict], token_outputs) -> dict:
  """Per-batch model outputs of `eval_batches` as one array per key, rows in the order of
  the arrays the batches came from (padding rows last); outputs with a token axis
  (bucketed batches have their own lengths) are first padded to the longest batch."""
  if token_outputs:
    longest = max(np.shape(o[key])[1] for o in outputs for key in token_outputs)
    outputs = [pad_token_axis(o, token_outputs, longest) for o in outputs]
  joined = {key: np.concatenate([np.asarray(o[key]) for o in outputs]) for key in outputs[0]}
  if "row" not in batches[0]:
    return joined
  order = np.argsort(np.concatenate([np.asarray(b["row"]) for b in batches]))
  return {key: value[order] for key, value in joined.items()}


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


def read_json_lines(path: str):
  """(origin "path:line", object) for each non-blank line of a JSON-lines file (CLUE's layout);
  a line that is not one JSON object is named by file and line."""
  for number, text in read_lines(path):
    if not text.strip():
      continue
    origin = f"{path}:{number}"
    try:
      record = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f"{origin}: not a JSON object ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
      raise ValueError(f"{origin}: a line is one JSON object; got {type(record).__name__}")
    yield origin, record


def as_text(value) -> str:
  """TFDS text features come back as bytes or numpy strings."""
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)

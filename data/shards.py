"""Prepared pretraining instances on disk: ArrayRecord shards, a manifest, read by index.

A prepared directory (written once by data/prepare.py) holds

  train-00000-of-00016.array_record ...  unmasked NSP instances, one record each
  heldout-00000-of-00016.array_record ...
  vocab/vocab.txt                        the vocab the ids are in
  manifest.json                          the options that made them, and every shard's count
  stats.json                             documents, sentences, tokens, instances per split

A record is one `[CLS] A [SEP] B [SEP]` row without its padding: int32 [length, length of
`[CLS] A [SEP]`, next_sentence_label], then `length` int32 ids, then (whole-word layout)
the row's word starts as packed bits. Padding, segment ids and the attention mask follow
from the lengths, so `decode` gives back exactly the arrays data/pretraining.py builds in
memory, and a row costs 4 bytes a token on disk instead of 12 a position.

Rows are read by global index (shards in manifest order, records in file order), so the
batch of step s stays a pure function of (seed, s) and a resume needs only s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np
from etils import epath

MANIFEST = "manifest.json"
STATS = "stats.json"
VOCAB = os.path.join("vocab", "vocab.txt")
LAYOUT = "nsp-pairs-v1"  # bump when the record format changes
SPLITS = ("train", "heldout")
# Options a run must share with the preparation, named by their config key.
CHECKED_FIELDS = (
  "max_seq_length",
  "whole_word",
  "segmenter",
  "lowercase",
  "next_sentence",
  "packing",
  "sentence_order",
)
# For manifests written before a field existed.
FIELD_DEFAULTS = {"next_sentence": True, "packing": False, "sentence_order": False}


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def vocab_sha256(tokenizer) -> str:
  """A hash of the id -> token table: equal hashes, equal ids."""
  vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
  return hashlib.sha256("\n".join(token for token, _ in vocab).encode()).hexdigest()


def encode(arrays: dict[str, np.ndarray], row: int) -> bytes:
  """One row of build_pretraining_data's arrays as a record."""
  length = int(arrays["attention_mask"][row].sum())
  length_a = length - int(arrays["token_type_ids"][row].sum())
  header = np.array([length, length_a, arrays["next_sentence_label"][row]], np.int32)
  record = header.tobytes() + arrays["input_ids"][row, :length].astype(np.int32).tobytes()
  if "word_start" in arrays:
    record += np.packbits(arrays["word_start"][row, :length]).tobytes()
  return record


def decode(records: Sequence[bytes], max_seq_length: int, pad_id: int, whole_word: bool) -> dict:
  """Records -> the padded arrays [len(records), max_seq_length] the batch function takes."""
  n = len(records)
  input_ids = np.full((n, max_seq_length), pad_id, np.int32)
  positions = np.arange(max_seq_length)
  lengths = np.empty(n, np.int32)
  lengths_a = np.empty(n, np.int32)
  labels = np.empty(n, np.int32)
  word_start = np.ones((n, max_seq_length), bool) if whole_word else None
  for i, record in enumerate(records):
    length, length_a, labels[i] = np.frombuffer(record, np.int32, 3)
    lengths[i], lengths_a[i] = length, length_a
    input_ids[i, :length] = np.frombuffer(record, np.int32, length, offset=12)
    if whole_word:
      bits = np.frombuffer(record, np.uint8, offset=12 + 4 * length)
      word_start[i, :length] = np.unpackbits(bits, count=length).astype(bool)
  inside = positions < lengths[:, None]
  arrays = {
    "input_ids": input_ids,
    "token_type_ids": (inside & (positions >= lengths_a[:, None])).astype(np.int32),
    "attention_mask": inside.astype(np.int32),
    "next_sentence_label": labels,
  }
  if whole_word:
    arrays["word_start"] = word_start
  return arrays


def write_shard(path: str, arrays: dict[str, np.ndarray]) -> int:
  """Writes every row of `arrays` to one ArrayRecord file (local, or copied to a bucket)."""
  from array_record.python.array_record_module import ArrayRecordWriter

  local = path if "://" not in path else os.path.join("/tmp", os.path.basename(path))
  partial = local + ".partial"
  # group_size 1: any record is read without decoding its neighbours (random access).
  writer = ArrayRecordWriter(partial, "group_size:1")
  count = len(arrays["input_ids"])
  for row in range(count):
    writer.write(encode(arrays, row))
  writer.close()
  if local == path:
    os.replace(partial, path)
  else:
    epath.Path(partial).copy(epath.Path(path), overwrite=True)
    os.remove(partial)
  return count


def read_manifest(directory: str) -> dict:
  path = epath.Path(directory) / MANIFEST
  if not path.exists():
    raise ValueError(
      f"{path} does not exist: make the prepared data with "
      f"`python -m data.prepare --config=... --out={directory}`"
    )
  return json.loads(path.read_text())


def check_manifest(manifest: dict, data, vocab_hash: str, directory: str) -> None:
  """Refuses prepared data made with other options than this run's, naming the field."""
  where = os.path.join(directory, MANIFEST)
  if manifest.get("layout") != LAYOUT:
    raise ValueError(f"{where}: layout {manifest.get('layout')!r}, this code reads {LAYOUT!r}")
  for field in CHECKED_FIELDS:
    prepared = manifest["options"].get(field, FIELD_DEFAULTS.get(field))
    if prepared != data.get(field, FIELD_DEFAULTS.get(field)):
      raise ValueError(
        f"{where}: prepared with data.{field}={prepared!r}, "
        f"this run has data.{field}={data.get(field)!r}; prepare again or match the config"
      )
  if manifest["vocab_sha256"] != vocab_hash:
    raise ValueError(
      f"{where}: prepared with another vocab ({manifest['options']['vocab']!r}) than this "
      f"run's data.vocab={data.vocab!r}; prepare again or use data.vocab='train' (the "
      "prepared vocab)"
    )


class PreparedRows:
  """Rows of one split of a prepared directory, read by global index.

  Holds only the open files and the shard boundaries: memory does not grow with the corpus.
  """

  def __init__(self, directory: str, split: str, manifest: dict, pad_id: int):
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    self.shards = manifest["splits"][split]
    self.max_seq_length = manifest["options"]["max_seq_length"]
    self.whole_word = manifest["options"]["whole_word"]
    self.pad_id = pad_id
    self._sources = []
    for shard in self.shards:
      path = os.fspath(epath.Path(directory) / shard["file"])
      try:
        source = ArrayRecordDataSource([path])
        found = len(source)
      except Exception as error:  # array_record raises RuntimeError/ValueError by build
        raise ValueError(f"{path}: cannot be read as ArrayRecord ({error})") from None
      if found != shard["count"]:
        raise ValueError(
          f"{path}: {found} records, the manifest says {shard['count']} (a truncated or "
          "replaced shard); prepare the data again"
        )
      self._sources.append(source)
    self._starts = np.cumsum([0] + [shard["count"] for shard in self.shards])
    self.num_rows = int(self._starts[-1])

  def __len__(self) -> int:
    return self.num_rows

  def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The padded arrays of rows `indices` (any order), as build_pretraining_data has them."""
    indices = np.asarray(indices)
    shard_of = np.searchsorted(self._starts, indices, side="right") - 1
    records: list[bytes] = [b""] * len(indices)
    for shard in np.unique(shard_of):
      where = np.flatnonzero(shard_of == shard)
      keys = (indices[where] - self._starts[shard]).tolist()
      for i, record in zip(where, self._sources[shard].__getitems__(keys)):
        records[i] = record
    return decode(records, self.max_seq_length, self.pad_id, self.whole_word)

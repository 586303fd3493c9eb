"""Packed rows: a step's fine-tuning examples share rows of max_seq_length, one static shape.

A step trains on `batch_size` examples as without packing, with the same loss
weighting per example, laid out differently: longest first, each into the
first row with room (first-fit decreasing, ties by position, so a batch is
still a pure function of (seed, step)). Which examples share a step is
balanced by length within windows of an epoch (data/sampling.LengthBalancedSampler),
so that one shape fits every step with little padding. Each row says
which example a token belongs to (`segment_ids` 1, 2, ...; 0 is padding), where
each example's positions restart (`position_ids`) and where each example's
[CLS] is (`cls_positions`, one slot per example); per-example arrays (label,
weight) become [rows, slots], weight 0 in empty slots, and an answer span's positions
are moved to where its example sits in the row.

The shape is fixed for the run: enough rows and slots for every batch of the
schedule, found by packing them all once at the start (`plan_shape`, about a
second for 10,000 steps), the rows rounded up to a multiple of the devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from data.sampling import EpochSampler

# Arrays a packed batch adds (model/heads.py reads them; train/losses.PACKED_KEYS).
PACKED_KEYS = ("segment_ids", "position_ids", "cls_positions")
# Per-example token positions (extractive QA's answer span): packed, they index the row.
POSITION_KEYS = ("start_positions", "end_positions")


@dataclasses.dataclass(frozen=True)
class PackedShape:
  rows: int
  slots: int  # examples a row holds at most
  length: int


def first_fit(lengths: Sequence[int], row_length: int) -> list[list[int]]:
  """Indices into `lengths`, per row: longest first, each into the first row it fits."""
  order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
  rows, room = [], []
  for i in order:
    n = int(lengths[i])
    if n > row_length:
      raise ValueError(f"an example of {n} tokens is longer than a row ({row_length})")
    for r, free in enumerate(room):
      if n <= free:
        rows[r].append(i)
        room[r] -= n
        break
    else:
      rows.append([i])
      room.append(row_length - n)
  return rows


def plan_shape(
  lengths: np.ndarray, sampler: EpochSampler, steps: int, row_length: int, multiple: int = 1
) -> tuple[PackedShape, float]:
  """The rows and slots that hold every batch of steps 0 .. steps-1, and the real-token share
  of those batches at that shape (the packing efficiency the run will see)."""
  most_rows, most_slots, real = 1, 1, 0
  for step in range(max(steps, 1)):
    batch_lengths = lengths[sampler.indices(step)]
    rows = first_fit(batch_lengths, row_length)
    most_rows = max(most_rows, len(rows))
    most_slots = max(most_slots, max(len(row) for row in rows))
    real += int(batch_lengths.sum())
  rows = -(-most_rows // multiple) * multiple
  return PackedShape(rows, most_slots, row_length), real / (max(steps, 1) * rows * row_length)


def pack(batch: dict[str, np.ndarray], shape: PackedShape) -> dict[str, np.ndarray]:
  """One step's examples (token arrays [n, length] padded at the end, per-example arrays [n])
  as packed rows of `shape`. A batch that needs more rows than the shape gets them."""
  mask = batch["attention_mask"]
  lengths = mask.sum(-1)
  layout = first_fit(lengths, shape.length)
  rows = max(shape.rows, len(layout))
  slots = max(shape.slots, max((len(row) for row in layout), default=1))
  token_keys = [k for k, v in batch.items() if v.ndim == 2 and v.shape[1] == mask.shape[1]]
  example_keys = [k for k, v in batch.items() if v.ndim == 1]
  unknown = sorted(set(batch) - set(token_keys) - set(example_keys))
  if unknown:
    raise ValueError(f"packing handles token and per-example arrays only; not {unknown}")
  out = {k: np.zeros((rows, shape.length), batch[k].dtype) for k in token_keys}
  out.update({k: np.zeros((rows, slots), batch[k].dtype) for k in example_keys})
  out["segment_ids"] = np.zeros((rows, shape.length), np.int32)
  out["position_ids"] = np.zeros((rows, shape.length), np.int32)
  out["cls_positions"] = np.zeros((rows, slots), np.int32)
  for r, members in enumerate(layout):
    start = 0
    for slot, i in enumerate(members):
      n = int(lengths[i])
      for key in token_keys:
        out[key][r, start : start + n] = batch[key][i, :n]
      for key in example_keys:
        out[key][r, slot] = batch[key][i] + (start if key in POSITION_KEYS else 0)
      out["segment_ids"][r, start : start + n] = slot + 1
      out["position_ids"][r, start : start + n] = np.arange(n)
      out["cls_positions"][r, slot] = start
      start += n
  return out

"""Host cost of dynamic masking: one generator for the batch against one per row.

Per-row draws (data/masking.RowGenerators) let each host of a pod mask only its own
rows and still draw what one process would; this prints what they cost on one host.

  python -m benchmarks.masking_cost --batch_size=256 --seq_len=128 --repeats=20
"""

from __future__ import annotations

import time

import numpy as np
from absl import app, flags

from data.masking import RowGenerators, mask_tokens

flags.DEFINE_integer("batch_size", 256, "Rows a batch.")
flags.DEFINE_integer("seq_len", 128, "Tokens a row.")
flags.DEFINE_integer("repeats", 20, "Batches timed per cell; the mean is printed.")
FLAGS = flags.FLAGS
SETTINGS = dict(vocab_size=30522, mask_id=103, special_ids=[0, 100, 101, 102, 103])


def main(argv):
  del argv
  b, t = FLAGS.batch_size, FLAGS.seq_len
  ids = np.random.default_rng(0).integers(1000, 30522, (b, t)).astype(np.int32)
  generators = {
    "one for the batch": lambda step: np.random.default_rng((0, step, 7)),
    "one per row": lambda step: RowGenerators((0, step, 7, row) for row in range(b)),
  }
  print(f"| generators | whole words | ms per {b} x {t} batch |")
  print("|---|---|---:|")
  for name, make in generators.items():
    for word_start in (None, np.ones_like(ids, bool)):
      start = time.perf_counter()
      for step in range(FLAGS.repeats):
        mask_tokens(ids, make(step), word_start=word_start, max_predictions=20, **SETTINGS)
      ms = (time.perf_counter() - start) / FLAGS.repeats * 1e3
      print(f"| {name} | {'yes' if word_start is not None else 'no'} | {ms:.1f} |")


if __name__ == "__main__":
  app.run(main)

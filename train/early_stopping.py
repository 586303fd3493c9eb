"""Early stopping: the best evaluation by one metric, and when patience has run out.

Its state goes into every checkpoint's meta, so a resumed run knows the best
so far and how many evaluations have passed without it.
"""

from __future__ import annotations

import math

import numpy as np


def is_number(value) -> bool:
  """A metric value (not a report, a confusion matrix or a bool)."""
  return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def numeric(results: dict) -> dict:
  """The numbers of an evaluation's results, as floats."""
  return {k: float(v) for k, v in results.items() if is_number(v)}


class EarlyStopping:
  """Tracks the best evaluation by one metric; says when patience has run out.

  `to_meta` is what a checkpoint keeps of it; `saved` gives it back on resume.
  """

  def __init__(self, metric: str, mode: str = "max", patience: int = 0, saved: dict | None = None):
    if mode not in ("max", "min"):
      raise ValueError(f"early_stopping.mode={mode!r}: expected 'max' or 'min'")
    if patience < 0:
      raise ValueError(f"early_stopping.patience={patience}: must be >= 0 (0: never stop)")
    self.metric, self.mode, self.patience = metric, mode, patience
    saved = saved or {}
    self.best_step: int | None = saved.get("best_step")
    self.best_value: float | None = saved.get("best_value")
    self.best_metrics: dict = saved.get("best_metrics", {})
    self.evals_since_best: int = saved.get("evals_since_best", 0)

  def update(self, step: int, results: dict) -> bool:
    """Records an evaluation; True when it is the best so far."""
    if self.metric not in results:
      raise ValueError(
        f"early_stopping.metric={self.metric!r} is not among the evaluation "
        f"metrics {sorted(k for k, v in results.items() if is_number(v))}"
      )
    value = float(results[self.metric])
    better = self.best_value is None or (
      value > self.best_value if self.mode == "max" else value < self.best_value
    )
    if better and math.isfinite(value):
      self.best_step, self.best_value, self.evals_since_best = step, value, 0
      self.best_metrics = numeric(results)
      return True
    self.evals_since_best += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.evals_since_best >= self.patience

  def to_meta(self) -> dict:
    return {
      "best_step": self.best_step,
      "best_value": self.best_value,
      "best_metrics": self.best_metrics,
      "evals_since_best": self.evals_since_best,
    }

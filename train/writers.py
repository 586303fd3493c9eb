"""What a person watching a run sees: TensorBoard scalars, a JSONL log, loss curves, a progress bar.

Every scalar goes two ways: to TensorBoard event files under <workdir>/tensorboard
(tensorboardX, so no TensorFlow is needed), tagged '<split>/<name>', and as one
JSON line in <workdir>/metrics.jsonl, which scripts and `plot_loss_curves` read
without any TensorBoard code. Only process 0 of a multi-host job writes.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import tqdm
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "loss_curves.png"


def _as_float(value) -> float:
  """A Python float from a jax / numpy scalar (this is where the host sync happens)."""
  return float(np.asarray(value))


class MetricWriter:
  """Scalars to TensorBoard and metrics.jsonl; a no-op when `enabled` is False."""

  def __init__(self, workdir, enabled: bool = True):
    self.workdir = str(workdir)
    self.enabled = enabled
    self._tensorboard = None
    self._jsonl = None
    if enabled:
      os.makedirs(self.workdir, exist_ok=True)
      self._tensorboard = SummaryWriter(logdir=os.path.join(self.workdir, "tensorboard"),
                                        flush_secs=10)
      self._jsonl = open(os.path.join(self.workdir, METRICS_FILE), "a", encoding="utf-8")

  def write(self, step: int, scalars: dict, split: str = "train") -> None:
    if not self.enabled:
      return
    step = int(step)
    values = {name: _as_float(value) for name, value in scalars.items()}
    for name, value in values.items():
      self._tensorboard.add_scalar(f"{split}/{name}", value, step)
    # NaN and inf are written as JSON's NaN / Infinity, which json.loads reads back.
    self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")

  def flush(self) -> None:
    """metrics.jsonl is on disk after this; TensorBoard within ~10 s.

    tensorboardX queues events for a writer thread that its own flush does not
    wait for, so only `close` guarantees the event file is complete.
    """
    if self.enabled:
      self._tensorboard.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled and self._jsonl is not None:
      self._tensorboard.close()
      self._jsonl.close()
      self._jsonl = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(workdir) -> list[dict]:
  """Every record of <workdir>/metrics.jsonl, in the order written."""
  path = os.path.join(str(workdir), METRICS_FILE)
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _series(records, key: str, split: str):
  points = sorted((r["step"], r[key]) for r in records
                  if r.get("split") == split and key in r and math.isfinite(r[key]))
  return [s for s, _ in points], [v for _, v in points]


def plot_loss_curves(workdir, out_png=None, keys=("loss",)) -> str:
  """One subplot per key found, train and eval against step; returns the PNG's path.

  Uses the Agg canvas directly rather than pyplot, so it neither needs a display
  nor changes the matplotlib backend of whoever imports this module.
  """
  records = read_metrics(workdir)
  present = [k for k in keys if any(k in r for r in records)]
  if not present:
    raise ValueError(f"none of the keys {list(keys)} appear in {workdir}/{METRICS_FILE}")
  out_png = str(out_png or os.path.join(str(workdir), CURVES_FILE))
  fig = Figure(figsize=(6.4, 3.6 * len(present)), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(present), 1, squeeze=False)[:, 0]
  for ax, key in zip(axes, present):
    for split, style in (("train", "-"), ("eval", "o-")):
      steps, values = _series(records, key, split)
      if steps:
        ax.plot(steps, values, style, label=f"{split} {key}", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{key} by step")
    ax.grid(True, alpha=0.3)
    ax.legend()
  fig.savefig(out_png)
  return out_png


def progress(total: int, initial: int = 0, desc: str = "train", enabled: bool = True):
  """A tqdm bar with rate and ETA; in a log file (no TTY) it prints every ~5 s.

  Call `.update(n)` per step and `.close()` at the end; `enabled=False` (other
  hosts) gives a bar that prints nothing.
  """
  interactive = sys.stderr.isatty()
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step",
                   file=sys.stderr, disable=not enabled, dynamic_ncols=interactive,
                   mininterval=0.5 if interactive else 5.0, ascii=not interactive,
                   smoothing=0.1)

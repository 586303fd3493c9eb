"""How fast a run goes: model FLOPs, utilisation, and jax.profiler traces.

The loop logs, per logging interval, the host's data wait apart from the step
time, the model TFLOP/s from the analytic count below and, where the chip's
peak is known, MFU (model FLOPs utilisation, as in PaLM's appendix B).
`profile_steps > 0` traces that many steps into <workdir>/profile for
TensorBoard's profile tab.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from model.config import BertConfig

# Dense bfloat16 peak FLOP/s per device, by the device_kind jax reports.
PEAK_FLOPS = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5": 459e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100 80GB HBM3": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
}


def train_flops_per_step(model: BertConfig, batch: int, length: int, predictions: int) -> float:
  """Model FLOPs of one training step (forward + backward = 3 x forward), attention included.

  Per token and layer: Q, K, V, O projections 8H^2, feed-forward 4HI, scores and
  context 4TH. Per masked position (pretraining; 0 for fine-tuning): MLM
  transform 2H^2 and decoder 2HV. Per sequence: pooler 2H^2. XLA's own count
  sees a scanned layer only once, so MFU is computed from this.
  """
  h, i, v, layers = (
    model.hidden_size,
    model.intermediate_size,
    model.vocab_size,
    model.num_hidden_layers,
  )
  encoder = batch * length * layers * (8 * h * h + 4 * h * i + 4 * length * h)
  heads = batch * predictions * (2 * h * h + 2 * h * v) + batch * 2 * h * h
  return 3.0 * (encoder + heads)


def peak_flops(devices=None) -> float | None:
  """Summed peak FLOP/s of the devices, or None when their kind is not in PEAK_FLOPS."""
  devices = devices or jax.devices()
  peak = PEAK_FLOPS.get(devices[0].device_kind)
  return None if peak is None else peak * len(devices)


class StepProfiler:
  """Traces steps [first, first + count) of this invocation with jax.profiler."""

  def __init__(self, workdir: str, start_step: int, count: int, skip: int = 2):
    self.directory = os.path.join(workdir, "profile")
    self.first = start_step + skip  # the first steps compile; trace steady state
    self.last = self.first + count
    self.count = count
    self.active = False

  def before(self, step: int) -> None:
    if self.count > 0 and step == self.first:
      jax.profiler.start_trace(self.directory)
      self.active = True

  def after(self, step: int, outputs) -> None:
    if self.active and step + 1 == self.last:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
      logging.info(
        "profile of steps %d-%d in %s (TensorBoard's profile tab)",
        self.first,
        self.last - 1,
        self.directory,
      )

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False

"""Which rows make up global batch `step`, and which of them this host takes.

Shared by pretraining and fine-tuning data: the order is a pure function of
(seed, step), so a resumed run needs only the step number and no iterator
state goes into checkpoints.
"""

from __future__ import annotations

import numpy as np


class EpochSampler:
  """Epoch e visits rows in permutation(default_rng((seed, e))) order.

  Each epoch drops the last num_examples % batch_size rows of its order (a
  different few each epoch), so every batch is full.
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int, what: str = "examples"):
    if num_examples < batch_size:
      raise ValueError(
        f"{num_examples} {what} cannot fill one batch of batch_size={batch_size}; "
        "use more data or a smaller batch"
      )
    self.num_examples = num_examples
    self.batch_size = batch_size
    self.seed = seed
    self.steps_per_epoch = num_examples // batch_size
    self._cached_order: tuple[int, np.ndarray] | None = None  # speed only

  def indices(self, step: int) -> np.ndarray:
    """Rows of global batch `step`."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    if self._cached_order is None or self._cached_order[0] != epoch:
      order = np.random.default_rng((self.seed, epoch)).permutation(self.num_examples)
      self._cached_order = (epoch, order)
    start = step_in_epoch * self.batch_size
    return self._cached_order[1][start : start + self.batch_size]


def host_slice(size: int, process_index: int, process_count: int) -> slice:
  """This process's contiguous rows of a global batch of `size` rows."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  if size % process_count:
    raise ValueError(f"global batch of {size} does not split over {process_count} processes")
  share = size // process_count
  return slice(process_index * share, (process_index + 1) * share)


def host_share(batch: dict, process_index: int, process_count: int) -> dict:
  """This process's contiguous slice of a global batch."""
  size = len(next(iter(batch.values())))
  mine = host_slice(size, process_index, process_count)
  return {key: value[mine] for key, value in batch.items()}


class Prefetcher:
  """Builds batch(step) for the next `depth` steps in a background thread.

  A batch is a pure function of the step, so building it early changes nothing but
  when the host does the work: reading shards and masking overlap the device step.
  """

  def __init__(self, batch_fn, steps: range, depth: int = 2):
    from concurrent.futures import ThreadPoolExecutor

    self._batch_fn = batch_fn
    self._steps = iter(steps)
    self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
    self._pending = []
    for _ in range(max(1, depth)):
      self._submit()

  def _submit(self) -> None:
    step = next(self._steps, None)
    if step is not None:
      self._pending.append((step, self._pool.submit(self._batch_fn, step)))

  def get(self, step: int):
    """The batch of `step`, the next step in order; errors raised building it surface here."""
    expected, future = self._pending.pop(0)
    if expected != step:
      raise RuntimeError(f"prefetcher asked for step {step}, holds step {expected}")
    self._submit()
    return future.result()

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)

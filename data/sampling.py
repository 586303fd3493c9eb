"""Which rows make up global batch `step`, and which of them this host takes.

Shared by pretraining and fine-tuning data: the order is a pure function of
(seed, step), so a resumed run needs only the step number and no iterator
state goes into checkpoints.
"""

from __future__ import annotations

import heapq

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


class LengthBalancedSampler(EpochSampler):
  """EpochSampler's examples, regrouped so that each step holds about the same tokens.

  Packed rows (data/packing.py) have one shape for the run, sized for the step
  that needs the most rows. Random batches of short sentences vary in total
  length (SST-2, batch 32: 3 to 5 rows of 128), so most steps would carry a row
  of padding. Here each window of `window_steps` consecutive steps of an epoch
  keeps its examples (the same `batch_size` a step, every example once an
  epoch) but deals them out longest first, each to the step with the fewest
  tokens so far that still has room (ties to the earlier step). Every step of
  the window then gets one of its longest examples, one of the next, and so on,
  and totals within a few tokens of each other. Still a pure function of
  (seed, step).
  """

  def __init__(
    self,
    lengths: np.ndarray,
    batch_size: int,
    seed: int,
    what: str = "examples",
    window_steps: int = 16,
  ):
    super().__init__(len(lengths), batch_size, seed, what)
    self.lengths = np.asarray(lengths, np.int64)
    self.window_steps = window_steps
    self._cached_window: tuple[tuple[int, int], list[np.ndarray]] | None = None  # speed only

  def indices(self, step: int) -> np.ndarray:
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
    window, offset = divmod(step_in_epoch, self.window_steps)
    if self._cached_window is None or self._cached_window[0] != (epoch, window):
      first = epoch * self.steps_per_epoch + window * self.window_steps
      last = min(first + self.window_steps, (epoch + 1) * self.steps_per_epoch)
      members = np.concatenate(
        [super(LengthBalancedSampler, self).indices(s) for s in range(first, last)]
      )
      self._cached_window = ((epoch, window), self._deal(members, last - first))
    return self._cached_window[1][offset]

  def _deal(self, members: np.ndarray, steps: int) -> list[np.ndarray]:
    """`members` into `steps` batches of batch_size, longest first to the lightest batch."""
    order = members[np.lexsort((members, -self.lengths[members]))]
    open_steps = [(0, s) for s in range(steps)]  # (tokens so far, step): a heap
    batches: list[list[int]] = [[] for _ in range(steps)]
    for i in order:
      tokens, s = heapq.heappop(open_steps)
      batches[s].append(int(i))
      if len(batches[s]) < self.batch_size:
        heapq.heappush(open_steps, (tokens + int(self.lengths[i]), s))
    return [np.asarray(b, np.int64) for b in batches]


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

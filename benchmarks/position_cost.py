"""What a position costs: encoder forward + backward, ours against PyTorch, at equal shapes.

all-MiniLM-L6-v2 in training mode (dropout 0.1), float32, on rows of given
shapes: `ROWSxLENGTH` padded rows (every position real), `ROWSxLENGTH/K`
packed rows of K examples each (ours: segment ids; PyTorch: the same
block-diagonal mask, additive, as a [rows, 1, length, length] attention mask). The loss is
a sum over the sequence and pooled outputs; no optimizer. The frameworks
alternate, each shape `--repeats` times, and the table gives medians, so a
busy machine slows both alike.

  python -m benchmarks.position_cost --shapes=4x128/8,8x64/4,32x40,4x128

Fine-tuning packs SST-2's 32 examples a step into 4 rows of 128 where
PyTorch's dynamic padding computes about 32 rows of 40: 2.5x fewer positions.
Whether that is 2.5x less time depends on what a position costs at each
length, which this measures.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from benchmarks.shared import minilm_dir

flags.DEFINE_list("shapes", ["4x128/8", "8x64/4", "32x40", "4x128"], "ROWSxLENGTH[/EXAMPLES].")
flags.DEFINE_integer("repeats", 5, "Timed calls per framework and shape (median taken).")
FLAGS = flags.FLAGS


def parse(shape: str) -> tuple[int, int, int]:
  size, _, examples = shape.partition("/")
  rows, length = (int(n) for n in size.split("x"))
  examples = int(examples or 1)
  if length % examples:
    raise app.UsageError(f"--shapes: {shape}: {examples} examples do not split {length}")
  return rows, length, examples


def rows_of(rows: int, length: int, examples: int) -> dict[str, np.ndarray]:
  """Token ids, and for packed rows segment ids 1..K and positions restarting at each."""
  each = length // examples
  ids = np.random.default_rng(0).integers(1000, 2000, (rows, length)).astype(np.int32)
  segments = np.repeat(np.arange(1, examples + 1), each)[None].repeat(rows, 0).astype(np.int32)
  positions = np.tile(np.arange(each), examples)[None].repeat(rows, 0).astype(np.int32)
  return dict(ids=ids, segments=segments, positions=positions, examples=examples)


def ours(model_dir: str):
  from train import api

  encoder = api.load(model_dir, head="none")[0].module.bert
  graphdef, state = nnx.split(encoder)
  state = jax.device_put(state)

  def timer(batch):
    packed = batch["examples"] > 1
    ids = batch["ids"]

    def loss(params, key):
      out, pooled = nnx.merge(graphdef, params)(
        ids,
        np.zeros_like(ids),
        np.ones_like(ids),
        segment_ids=batch["segments"] if packed else None,
        position_ids=batch["positions"] if packed else None,
        dropout_rng=key,
      )
      return jnp.sum(out) + jnp.sum(pooled)

    step = jax.jit(jax.value_and_grad(loss))
    key = jax.random.key(0)
    jax.block_until_ready(step(state, key))

    def call(i):
      start = time.perf_counter()
      jax.block_until_ready(step(state, jax.random.fold_in(key, i)))
      return time.perf_counter() - start

    return call

  return timer


def torch_side(model_dir: str):
  import torch
  from transformers import BertModel

  model = BertModel.from_pretrained(model_dir, attn_implementation="eager").train()

  def timer(batch):
    ids = torch.from_numpy(batch["ids"]).long()
    segments = torch.from_numpy(batch["segments"])
    same = segments[:, None, :, None] == segments[:, None, None, :]  # [rows, 1, q, k]
    mask = torch.zeros(same.shape).masked_fill(~same, torch.finfo(torch.float32).min)
    kwargs = dict(input_ids=ids)
    if batch["examples"] > 1:
      kwargs.update(attention_mask=mask, position_ids=torch.from_numpy(batch["positions"]).long())

    def call(_):
      start = time.perf_counter()
      out = model(**kwargs)
      (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
      model.zero_grad(set_to_none=True)
      return time.perf_counter() - start

    call(0)
    return call

  return timer


def main(argv):
  del argv
  shapes = [parse(s) for s in FLAGS.shapes]
  frameworks = {"ours": ours(minilm_dir()), "PyTorch": torch_side(minilm_dir())}
  print(
    "| rows x length / examples a row | positions | ours ms | PyTorch ms | ours / PyTorch "
    "| ours ms a position | PyTorch ms a position |"
  )
  print("|---|---:|---:|---:|---:|---:|---:|")
  for (rows, length, examples), text in zip(shapes, FLAGS.shapes, strict=True):
    batch = rows_of(rows, length, examples)
    calls = {name: make(batch) for name, make in frameworks.items()}
    times = {name: [] for name in calls}
    for i in range(FLAGS.repeats):
      for name, call in calls.items():
        times[name].append(call(i))
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    positions = rows * length
    print(
      f"| {text} | {positions} | {ms['ours']:.1f} | {ms['PyTorch']:.1f} | "
      f"{ms['ours'] / ms['PyTorch']:.2f} | {ms['ours'] / positions:.3f} | "
      f"{ms['PyTorch'] / positions:.3f} |",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)

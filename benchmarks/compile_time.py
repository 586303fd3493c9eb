"""How long XLA takes to compile BERT-base's training gradient on CPU, unrolled vs scanned.

Unrolled, the program holds one copy of the layer per layer; with
`scan_layers` it holds one copy in a loop, which should cut compile time
(paid at every job start and every preemption restart). Parameters and batch
are abstract (`nnx.eval_shape`, `jax.ShapeDtypeStruct`), so nothing of the
110M parameters is ever allocated: only tracing, lowering and compiling are
timed.

  python -m benchmarks.compile_time --batch_size=8 --seq_len=128
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import shlex
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx

from configs import sizes
from model.config import BertConfig
from model.heads import BertForPreTraining
from train.losses import PretrainingObjective
from train.state import abstract_model

FLAGS = flags.FLAGS
flags.DEFINE_string("size", "base", "BERT size from configs/sizes.py.")
flags.DEFINE_integer("batch_size", 8, "Sequences in the abstract batch.")
flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
flags.DEFINE_integer("predictions", 20, "Masked positions per sequence.")
flags.DEFINE_string("out", "/tmp/compile_time.md", "Markdown file the table is also written to.")

VARIANTS = (
  ("scan_layers=False", dict(scan_layers=False)),
  ("scan_layers=True", dict(scan_layers=True)),
  ("scan_layers=True, remat_policy='full'", dict(scan_layers=True, remat_policy="full")),
)


def abstract_batch(batch_size: int, seq_len: int, predictions: int) -> dict:
  """A pretraining batch as shapes only, the keys PretrainingObjective reads."""

  def spec(*shape, dtype=jnp.int32):
    return jax.ShapeDtypeStruct(shape, dtype)

  b, t, k = batch_size, seq_len, predictions
  return {
    "input_ids": spec(b, t),
    "token_type_ids": spec(b, t),
    "attention_mask": spec(b, t),
    "masked_positions": spec(b, k),
    "masked_ids": spec(b, k),
    "masked_weights": spec(b, k, dtype=jnp.float32),
    "next_sentence_label": spec(b),
  }


def gradient_fn(graphdef, objective):
  """jit(value_and_grad(loss)) over the parameters, dropout on: the train step's costly part."""

  def loss(params, batch, rng):
    model = nnx.merge(graphdef, params)
    value, _ = objective(model, batch, rng, objective.normalizers(batch))
    return value

  return jax.jit(jax.value_and_grad(loss))


def measure(size: str, compute: dict, batch: dict) -> dict:
  """Seconds to trace+lower and to compile, the StableHLO size, and XLA's temp buffer."""
  config = BertConfig.from_dict(sizes.bert(size, **compute))
  graphdef, params = abstract_model(lambda rngs: BertForPreTraining(config, rngs))
  rng = jax.eval_shape(lambda: jax.random.key(0))
  fn = gradient_fn(graphdef, PretrainingObjective())
  start = time.perf_counter()
  lowered = fn.lower(params, batch, rng)
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  return {
    "lower": lowered_at - start,
    "compile": compiled_at - lowered_at,
    "hlo_lines": lowered.as_text().count("\n"),
    "temp_mib": temp / 2**20 if temp is not None else None,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
  print(f"Command: {command}", flush=True)
  batch = abstract_batch(FLAGS.batch_size, FLAGS.seq_len, FLAGS.predictions)
  # JAX and XLA initialise once per process; a throwaway compile keeps that off row one.
  measure("tiny", {}, abstract_batch(2, 16, 4))

  rows = []
  for name, compute in VARIANTS:
    result = measure(FLAGS.size, compute, batch)
    print(f"{name}: {result}", flush=True)
    rows.append((name, result))

  layers = sizes.SIZES[FLAGS.size][0]
  lines = [
    f"Command: `{command}`",
    "",
    f"bert-{FLAGS.size} ({layers} layers) `jit(value_and_grad(loss))`, PretrainingObjective "
    f"(MLM at {FLAGS.predictions} masked positions + NSP), batch {FLAGS.batch_size} × "
    f"{FLAGS.seq_len}, fp32, dropout on, CPU ({os.cpu_count()} cores, "
    f"jax {jax.__version__}).",
    "",
    "| config | lower s | compile s | StableHLO lines | XLA temp MiB |",
    "|---|---:|---:|---:|---:|",
  ]
  for name, r in rows:
    temp = f"{r['temp_mib']:,.0f}" if r["temp_mib"] is not None else "–"
    lines.append(
      f"| {name} | {r['lower']:.2f} | {r['compile']:.2f} | {r['hlo_lines']:,} | {temp} |"
    )
  lines += [
    "",
    "lower = trace + lower to StableHLO (Python side); compile = XLA's CPU compile. "
    "One measurement each, in one process, after a throwaway compile of bert-tiny; "
    f"1-min load average {os.getloadavg()[0]:.1f} at the end (the machine is shared).",
  ]
  table = "\n".join(lines) + "\n"
  print("\n" + table, flush=True)
  with open(FLAGS.out, "w", encoding="utf-8") as f:
    f.write(table)


if __name__ == "__main__":
  app.run(main)

"""Compile the sharded train step for a TPU topology on any machine, ahead of time.

With the `libtpu` package installed (`pip install -e '.[tpu]'`) a CPU machine can
compile for a TPU slice it does not have: this checks the sharding, the
per-chip memory and the FLOPs of a config before a pod is ever booked.

  python -m train.aot --config=configs/pretrain/bert_base.py:phase1 --topology=v5e:4x4

Exits non-zero when the step would not fit the chip's HBM.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from absl import flags, logging
from ml_collections import config_flags

from model.config import BertConfig
from model.heads import BertForPreTraining
from train import mesh as mesh_lib
from train import optim
from train import step as step_lib
from train.losses import PretrainingObjective
from train.profiling import train_flops_per_step
from train.state import abstract_train_state

# HBM per chip, GiB, by the device_kind jax reports.
HBM_GIB = {
  "TPU v4": 32,
  "TPU v5 lite": 16,
  "TPU v5": 95,
  "TPU v5p": 95,
  "TPU v6 lite": 32,
  "TPU v6e": 32,
}


@dataclasses.dataclass
class CompileReport:
  topology: str
  device_kind: str
  num_devices: int
  mesh: dict
  bytes_per_chip: int
  hbm_bytes: int
  model_flops_per_chip: float
  xla_flops_per_chip: float
  compile_seconds: float
  compiler_error: str = ""  # set when the TPU compiler itself refused (out of HBM)

  @property
  def fits(self) -> bool:
    return not self.compiler_error and self.bytes_per_chip <= self.hbm_bytes

  def summary(self) -> str:
    gib = 2**30
    if self.compiler_error:
      return (
        f"{self.topology} ({self.num_devices} x {self.device_kind}), mesh {self.mesh}: "
        f"DOES NOT FIT: {self.compiler_error}"
      )
    return (
      f"{self.topology} ({self.num_devices} x {self.device_kind}), mesh {self.mesh}: "
      f"{self.bytes_per_chip / gib:.2f} GiB per chip of {self.hbm_bytes / gib:.0f} GiB HBM "
      f"({'fits' if self.fits else 'DOES NOT FIT'}); "
      f"{self.model_flops_per_chip / 1e12:.2f} model TFLOP per step per chip "
      f"(XLA counts {self.xla_flops_per_chip / 1e12:.2f}; it sees a scanned layer once); "
      f"compiled in {self.compile_seconds:.1f} s"
    )


def pretraining_batch_shapes(config, mesh, rules) -> dict:
  """Abstract global batch of the pretraining step, with the batch sharding."""
  b, t, p = config.batch_size, config.data.max_seq_length, config.data.max_predictions
  sharding = mesh_lib.batch_sharding(mesh, rules)
  shapes = {
    "input_ids": (b, t),
    "token_type_ids": (b, t),
    "attention_mask": (b, t),
    "masked_positions": (b, p),
    "masked_ids": (b, p),
    "next_sentence_label": (b,),
  }
  batch = {k: jax.ShapeDtypeStruct(s, jnp.int32, sharding=sharding) for k, s in shapes.items()}
  batch["masked_weights"] = jax.ShapeDtypeStruct((b, p), jnp.float32, sharding=sharding)
  return batch


def compile_for_topology(config, topology: str) -> CompileReport:
  import time

  from jax.experimental import topologies

  # Compiling needs no TPU, so libtpu's one-process-per-host lock only gets in the way.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # v4 and v5p chips hold two TensorCores run as one device ("megacore").
  megacore = {"chip_config_name": "megacore"} if topology.startswith(("v4", "v5p")) else {}
  devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **megacore).devices
  mesh = mesh_lib.make_mesh(config.mesh.shape, devices)
  rules = mesh_lib.rules_from_config(config.mesh.rules)
  model_config = BertConfig.from_dict(config.model)
  factory = lambda rngs: BertForPreTraining(model_config, rngs)
  tx = optim.make_optimizer(config.optimizer)
  graphdef, state, frozen, shardings = abstract_train_state(factory, tx, mesh, rules)
  jitted = step_lib.jit_train_step(
    graphdef, tx, PretrainingObjective(), config.optimizer, shardings
  )
  kind = devices[0].device_kind
  if kind not in HBM_GIB:
    raise ValueError(f"unknown TPU kind {kind!r}: add its HBM to train/aot.py HBM_GIB")
  start = time.perf_counter()
  try:
    with mesh_lib.activate(mesh, rules):
      compiled = jitted.lower(
        state, frozen, pretraining_batch_shapes(config, mesh, rules)
      ).compile()
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    # The TPU compiler refuses programs that cannot fit: report, do not crash.
    logging.warning("%s", str(error).splitlines()[0])
    return CompileReport(
      topology,
      kind,
      len(devices),
      dict(mesh.shape),
      -1,
      HBM_GIB[kind] * 2**30,
      0.0,
      0.0,
      time.perf_counter() - start,
      str(error).splitlines()[0],
    )
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  per_chip = (
    memory.argument_size_in_bytes
    + memory.output_size_in_bytes
    + memory.temp_size_in_bytes
    - memory.alias_size_in_bytes
  )
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  model_flops = train_flops_per_step(
    model_config, config.batch_size, config.data.max_seq_length, config.data.max_predictions
  )
  return CompileReport(
    topology,
    kind,
    len(devices),
    dict(mesh.shape),
    int(per_chip),
    HBM_GIB[kind] * 2**30,
    model_flops / len(devices),
    float(cost.get("flops", 0.0)),
    seconds,
  )


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "config file", lock_config=True)
flags.DEFINE_string("topology", "v5e:4x4", "TPU topology, e.g. v5e:4x4, v4:2x2x1, v5p:2x2x1")


def main(argv):
  del argv
  report = compile_for_topology(FLAGS.config, FLAGS.topology)
  print(report.summary())
  if not report.fits:
    raise SystemExit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  logging.set_verbosity(logging.WARNING)
  from train import cli

  cli.run(main)

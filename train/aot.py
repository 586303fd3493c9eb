"""Compile the sharded train step for a TPU topology on any machine, ahead of time.

With the `libtpu` package installed (`pip install -e '.[tpu]'`) a CPU machine can
compile for a TPU slice it does not have: this checks the sharding, the
per-chip memory and the FLOPs of a config before a pod is ever booked.

  python -m train.aot --config=configs/pretrain/bert_base.py:phase1 --topology=v5e:4x4
  python -m train.aot --config=configs/finetune/sst2.py --topology=v5e:4x4 \
      --config.peft.method=lora --effort=-1   # a quicker compile, memory slightly overstated

Any task's config compiles, with its PEFT method and EWC penalty, from the
config alone (train/run.build_run(abstract=True): no data is read); a
continual config compiles each of its stages.

Exits non-zero when the step would not fit the chip's HBM.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import flags, logging
from ml_collections import config_flags

from train import mesh as mesh_lib
from train.profiling import train_flops_per_step
from train.run import build_run

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


def compile_for_topology(config, topology: str) -> CompileReport:
  """Lowers and compiles `config`'s train step (any task, PEFT and EWC wrappers included)."""
  import time

  from jax.experimental import topologies

  # Compiling needs no TPU, so libtpu's one-process-per-host lock only gets in the way.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # v4 and v5p chips hold two TensorCores run as one device ("megacore").
  megacore = {"chip_config_name": "megacore"} if topology.startswith(("v4", "v5p")) else {}
  devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **megacore).devices
  run = build_run(config, devices=devices, abstract=True)
  mesh, rules = run.mesh, run.rules
  kind = devices[0].device_kind
  if kind not in HBM_GIB:
    raise ValueError(f"unknown TPU kind {kind!r}: add its HBM to train/aot.py HBM_GIB")
  start = time.perf_counter()
  try:
    with mesh_lib.activate(mesh, rules):
      compiled = run.train_step.lower(
        run.state, run.frozen, run.batch_shapes, run.teacher
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
  length = config.data.max_seq_length
  model_flops = train_flops_per_step(
    run.model_config, run.tokens_per_step // length, length, run.mlm_predictions
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
flags.DEFINE_float(
  "effort",
  0.0,
  "The TPU compiler's execution-time optimization effort, -1 to 1. -1 compiles bert-base about "
  "4x faster for a quick check, its memory estimate some 5 percent higher; 0 (XLA's default) "
  "gives the numbers the real run will have.",
)


def compiled_configs(config) -> list[tuple[str, object]]:
  """[(name, config)] to compile: the config itself, or each stage of a continual config
  as train.continual runs it (EWC's anchor and Fisher in the optimizer state after the first)."""
  if "stages" not in config:
    return [(config.task, config)]
  from train import continual

  weight = config.ewc_weight if config.method == "ewc" else 0.0
  return [
    (
      name,
      continual.prepare(
        stage,
        i,
        None if i == 0 else "(stage before)",
        config.init,
        stage.data.vocab,
        "(fisher)",
        weight,
      ),
    )
    for i, (name, stage) in enumerate(continual.stage_configs(config))
  ]


def main(argv):
  del argv
  fits = True
  jax.config.update("jax_exec_time_optimization_effort", FLAGS.effort)
  for name, config in compiled_configs(FLAGS.config):
    report = compile_for_topology(config, FLAGS.topology)
    print(f"{name}: {report.summary()}")
    fits = fits and report.fits
  if not fits:
    raise SystemExit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  logging.set_verbosity(logging.WARNING)
  from train import cli

  cli.run(main)

"""Entry point of every job.

  python -m train.main --config=configs/pretrain/bert_tiny.py --workdir=/tmp/run \
      [--config.optimizer.lr=3e-4 ...]
  python -m train.main --config=configs/finetune/sst2.py --show_config   # every field, commented

Running it again with the same workdir resumes from the newest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Path to a config file (configs/...).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and plots go (local or gs://).")
flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0 for a multi-process job outside TPU/SLURM "
  "(e.g. several CPU or GPU processes); on a TPU pod leave it unset and "
  "set config.distributed=True",
)
flags.DEFINE_integer("num_processes", None, "with --coordinator_address")
flags.DEFINE_integer("process_id", None, "with --coordinator_address")
flags.DEFINE_bool(
  "show_config",
  False,
  "Print every field of --config (overrides applied) with its value and the comment written "
  "beside it in configs/, then exit. --workdir is not needed.",
)
flags.mark_flags_as_required(["config"])


def initialize_distributed(config) -> None:
  """Joins the job's processes before any device is touched."""
  import jax

  if FLAGS.coordinator_address:
    # Only the CPU backend reads this: its cross-process collectives need gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )
  elif config.get("distributed", False):
    jax.distributed.initialize()  # coordinator and ids from the TPU / SLURM environment


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.show_config:
    from train.describe_config import describe

    print(describe(FLAGS.config, config_flags.get_config_filename(FLAGS["config"])))
    return
  if not FLAGS.workdir:
    raise app.UsageError("--workdir is required: where checkpoints, logs and plots go")
  import jax

  from train import loop

  initialize_distributed(FLAGS.config)
  logging.info(
    "JAX %s on %d %s devices, process %d of %d",
    jax.__version__,
    jax.device_count(),
    jax.devices()[0].platform,
    jax.process_index(),
    jax.process_count(),
  )
  logging.info("config:\n%s", FLAGS.config)
  final = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  logging.info("final eval: %s", final)


if __name__ == "__main__":
  from train import cli

  cli.run(main)

"""Entry point of every job.

  python -m train.main --config=configs/pretrain/bert_tiny.py --workdir=/tmp/run \
      [--config.optimizer.lr=3e-4 ...]

Running it again with the same workdir resumes from the newest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/...).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and plots go (local or gs://).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """Drops INFO chatter of Orbax (dozens of lines per save); warnings still show."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax
  from train import loop
  if FLAGS.config.get("distributed", False):
    jax.distributed.initialize()  # coordinator and process ids from the TPU/SLURM environment
  logging.info("JAX %s on %d %s devices, process %d of %d", jax.__version__, jax.device_count(),
               jax.devices()[0].platform, jax.process_index(), jax.process_count())
  logging.info("config:\n%s", FLAGS.config)
  final = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  logging.info("final eval: %s", final)


if __name__ == "__main__":
  app.run(main)

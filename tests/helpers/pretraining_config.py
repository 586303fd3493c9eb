"""tiny_config as a config file, for runs in a subprocess (paths given as flags)."""

import pathlib
import tempfile

from helpers.pretraining import tiny_config


def get_config():
  c = tiny_config(pathlib.Path(tempfile.mkdtemp()))
  c.optimizer.total_steps = 60
  c.checkpoint.every_steps = 5
  return c

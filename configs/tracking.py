"""Experiment tracking beside TensorBoard: the `wandb` section every run config has.

Off by default. `--config.wandb.enabled=True` sends the config, every scalar
the run logs, its plots and its final metrics to Weights & Biases. With no API
key (neither WANDB_API_KEY nor `wandb login`) the run is recorded offline under
<workdir>/wandb, to upload later with `wandb sync <workdir>/wandb/offline-run-*`.
"""

import ml_collections


def wandb() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      enabled=False,
      project="bert-flax",
      entity="",  # a W&B team; '' is your default entity
      name="",  # the run's display name; '' names it after the workdir
      tags=(),
      # '' chooses: online with an API key, else offline. Or 'online' / 'offline' /
      # 'disabled'; a WANDB_MODE environment variable wins over either.
      mode="",
    )
  )

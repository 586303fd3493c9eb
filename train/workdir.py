"""A run's workdir: where it is, spelled the one way every tool agrees on.

Orbax refuses relative checkpoint paths, and it says so only when the first
save runs, in a background thread, minutes into a job. So every path that
reaches a checkpointer goes through `resolve` first: a local path becomes
absolute (against the current directory, `~` expanded), and a bucket URL
(gs://, s3://, ...) stays as it is.
"""

from __future__ import annotations

import os

from train.writers import is_remote


def resolve(path) -> str:
  """`path` as an absolute local path, or the URL itself for a bucket workdir."""
  path = str(path)
  if not path:
    raise ValueError("an empty workdir: pass --workdir=DIR")
  if is_remote(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))

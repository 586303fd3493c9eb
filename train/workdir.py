"""A run's workdir: where it is, spelled the one way every tool agrees on.

Orbax refuses relative checkpoint paths, and it says so only when the first
save runs, in a background thread, minutes into a job. So every path that
reaches a checkpointer goes through `resolve` first: a local path becomes
absolute (against the current directory, `~` expanded), and a bucket URL
(gs://, s3://, ...) stays as it is.

`WorkdirLock` keeps a second job off a workdir in use.
"""

from __future__ import annotations

import json
import os
import socket
import time

from absl import logging
from etils import epath

from train.errors import UserError
from train.writers import is_remote


def resolve(path) -> str:
  """`path` as an absolute local path, or the URL itself for a bucket workdir."""
  path = str(path)
  if not path:
    raise ValueError("an empty workdir: pass --workdir=DIR")
  if is_remote(path):
    return path.rstrip("/")
  return os.path.abspath(os.path.expanduser(path))


LOCK_FILE = "lock.json"
LEASE_SECONDS = 900  # a lock not refreshed for this long belongs to a dead job
REFRESH_SECONDS = 60


def _describe(holder: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  age = time.time() - holder.get("refreshed", 0)
  return (
    f"pid {holder.get('pid')} on {holder.get('host')}, started {started}, last seen {age:.0f} s ago"
  )


def _alive(holder: dict) -> bool:
  """Whether the job that wrote `holder` may still run."""
  if holder.get("host") == socket.gethostname():
    try:
      os.kill(int(holder["pid"]), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
      return False
    except (PermissionError, KeyError, ValueError, TypeError):
      pass
    else:
      return True
  return time.time() - holder.get("refreshed", 0) < LEASE_SECONDS


class WorkdirLock:
  """One job per workdir: a lease file, <workdir>/lock.json, held while the job runs.

  The file names the holder (host, pid, start) and is refreshed at every log
  step and checkpoint. A second job on a live workdir stops at once, naming
  the first. A lock left by a killed job does not block: on its own host a
  dead pid frees it at once, from another host (a pod, a bucket workdir) a
  lease not refreshed for LEASE_SECONDS does. In a multi-process job only
  process 0 holds it.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = epath.Path(resolve(workdir)) / LOCK_FILE
    self.enabled = enabled
    self._record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    self._refreshed = 0.0

  def acquire(self) -> WorkdirLock:
    if not self.enabled:
      return self
    self.path.parent.mkdir(parents=True, exist_ok=True)
    holder = self._read()
    if holder is not None and holder.get("token") != self._token():
      if _alive(holder):
        raise UserError(
          f"{self.path.parent} is in use by another job ({_describe(holder)}). Wait for it, "
          f"stop it, or use another --workdir. If that job is gone, delete {self.path}."
        )
      logging.warning("Taking over the lock of a job that is gone (%s)", _describe(holder))
    self.refresh(force=True)
    if (self._read() or {}).get("token") != self._token():  # lost a race to another start
      raise UserError(
        f"{self.path.parent} was just taken by another job: {_describe(self._read() or {})}"
      )
    return self

  def refresh(self, force: bool = False) -> None:
    """Renews the lease; at most once every REFRESH_SECONDS unless `force` (a bucket
    write per log step would cost more than the step on a small model)."""
    if self.enabled and (force or time.time() - self._refreshed >= REFRESH_SECONDS):
      self._refreshed = time.time()
      record = dict(self._record, refreshed=time.time(), token=self._token())
      tmp = self.path.parent / f".{LOCK_FILE}.{self._token()}"
      tmp.write_text(json.dumps(record))
      tmp.replace(self.path)  # atomic on a local disk: a reader never sees half a file

  def release(self) -> None:
    if self.enabled and (self._read() or {}).get("token") == self._token():
      self.path.unlink(missing_ok=True)

  def _token(self) -> str:
    return f"{self._record['host']}:{self._record['pid']}:{self._record['started']:.6f}"

  def _read(self) -> dict | None:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except ValueError:  # a torn or foreign file: treat it as a lock of a dead job
      return {}

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()

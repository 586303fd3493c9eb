"""What a person watching a run sees: TensorBoard scalars, a JSONL log, loss curves, a progress bar.

Every scalar goes two ways: to TensorBoard event files under <workdir>/tensorboard
(tensorboardX, so no TensorFlow is needed), tagged '<split>/<name>', and as one
JSON line in <workdir>/metrics.jsonl, which scripts and `plot_loss_curves` read
without any TensorBoard code. Only process 0 of a multi-host job writes.

A workdir may be a bucket (gs://, s3://): every file goes through
`etils.epath` (gcsfs / s3fs underneath, as for Orbax's metadata). Object
stores cannot append, so for such a workdir metrics.jsonl is rewritten whole
and the TensorBoard events, written to a local staging folder, are copied up
at each `flush` (the loop flushes at every evaluation and checkpoint).
"""

from __future__ import annotations

import io
import json
import math
import netrc
import os
import sys
import tempfile
import uuid

import numpy as np
import tqdm
from absl import logging
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboardX import SummaryWriter

from train.errors import UserError

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "loss_curves.png"


def is_remote(path) -> bool:
  """True for object-store URLs (gs://bucket/...), where files cannot be appended to."""
  return "://" in str(path)


def write_text(path, text: str) -> None:
  """Writes (replaces) a text file, local or in a bucket."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def copy_dir(local_dir: str, dest) -> None:
  """Copies the files under `local_dir` to `dest` (local or a bucket), replacing them."""
  dest = epath.Path(dest)
  for root, _, files in os.walk(local_dir):
    for name in files:
      source = os.path.join(root, name)
      target = dest / os.path.relpath(source, local_dir)
      target.parent.mkdir(parents=True, exist_ok=True)
      with open(source, "rb") as f:
        target.write_bytes(f.read())


def _as_float(value) -> float:
  """A Python float from a jax / numpy scalar (this is where the host sync happens)."""
  return float(np.asarray(value))


def _rows_up_to(lines: list[str], step: int | None) -> list[str]:
  """The metrics.jsonl lines logged at or before `step` (all of them for None)."""
  if step is None:
    return lines
  return [line for line in lines if line.strip() and json.loads(line)["step"] <= step]


def _drop_rows_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = _rows_up_to(lines, step)
  if len(kept) != len(lines):
    logging.info(
      "metrics.jsonl: dropped %d rows logged after step %d", len(lines) - len(kept), step
    )
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write("".join(kept))
    os.replace(path + ".tmp", path)  # a crash here leaves the old file whole


class MetricWriter:
  """Scalars to TensorBoard and metrics.jsonl; a no-op when `enabled` is False.

  `resume_step`: the step a resumed run restarts from. Rows a killed or
  stopped run logged past it are dropped from metrics.jsonl, and TensorBoard
  is told to hide its events past it (purge_step), so each step appears once.
  """

  def __init__(
    self,
    workdir,
    enabled: bool = True,
    resume_step: int | None = None,
    wandb: WandbRun | None = None,
  ):
    self.workdir = str(workdir)
    self.enabled = enabled
    self.wandb = wandb if enabled else None
    self._tensorboard = None
    self._jsonl = None
    self._remote = is_remote(workdir)
    if enabled:
      epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)
      tensorboard_dir = os.path.join(self.workdir, "tensorboard")
      if self._remote:
        self._staging = tempfile.mkdtemp(prefix="tensorboard_")
        tensorboard_dir = self._staging
        metrics = epath.Path(self.workdir) / METRICS_FILE
        self._lines = metrics.read_text().splitlines(keepends=True) if metrics.exists() else []
        self._lines = _rows_up_to(self._lines, resume_step)
      elif resume_step is not None:
        _drop_rows_after(os.path.join(self.workdir, METRICS_FILE), resume_step)
      # A unique suffix: event files are named by the second, and a bucket copy would replace
      # an earlier writer's file of the same name.
      self._tensorboard = SummaryWriter(
        logdir=tensorboard_dir,
        flush_secs=10,
        filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}",
        purge_step=None if resume_step is None else resume_step + 1,
      )
      self._jsonl = (
        io.StringIO()
        if self._remote
        else open(os.path.join(self.workdir, METRICS_FILE), "a", encoding="utf-8")
      )

  def write(self, step: int, scalars: dict, split: str = "train") -> None:
    if not self.enabled:
      return
    step = int(step)
    values = {name: _as_float(value) for name, value in scalars.items()}
    for name, value in values.items():
      self._tensorboard.add_scalar(f"{split}/{name}", value, step)
    # NaN and inf are written as JSON's NaN / Infinity, which json.loads reads back.
    self._jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
    if self.wandb:
      self.wandb.log(step, {f"{split}/{name}": value for name, value in values.items()})

  def flush(self) -> None:
    """metrics.jsonl is on disk after this; TensorBoard within ~10 s.

    tensorboardX queues events for a writer thread that its own flush does not
    wait for, so only `close` guarantees the event file is complete.
    """
    if self.enabled:
      self._tensorboard.flush()
      self._jsonl.flush()
      if self._remote:
        self._upload()

  def _upload(self) -> None:
    self._lines.append(self._jsonl.getvalue())
    self._jsonl.seek(0)
    self._jsonl.truncate()
    write_text(epath.Path(self.workdir) / METRICS_FILE, "".join(self._lines))
    copy_dir(self._staging, epath.Path(self.workdir) / "tensorboard")

  def close(self) -> None:
    """Closes the files; a W&B run stays open for `finish` (the run's plots and final metrics)."""
    if self.enabled and self._jsonl is not None:
      self._tensorboard.close()
      if self._remote:
        self._upload()
      self._jsonl.close()
      self._jsonl = None

  def finish(self, summary: dict | None = None, images: dict | None = None) -> None:
    """Closes the files and ends the W&B run, with the final metrics as its summary and
    the plots (name -> PNG path) as images."""
    self.close()
    if self.wandb:
      self.wandb.finish(summary or {}, images or {})
      self.wandb = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


WANDB_ID_FILE = "wandb_run_id"


def wandb_mode(configured: str = "") -> str:
  """WANDB_MODE if set, else the config's mode, else online with an API key and offline without."""
  if os.environ.get("WANDB_MODE"):
    return os.environ["WANDB_MODE"]
  if configured:
    return configured
  if os.environ.get("WANDB_API_KEY"):
    return "online"
  try:
    logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None  # `wandb login`
  except (OSError, netrc.NetrcParseError):
    logged_in = False
  return "online" if logged_in else "offline"


class WandbRun:
  """One Weights & Biases run per workdir, the second writer beside TensorBoard.

  Its id is kept in <workdir>/wandb_run_id, so a resumed run continues the same
  W&B run; W&B keeps the rows it already has for steps before the resume. An
  offline run is written under <workdir>/wandb (a local staging folder for a
  bucket workdir) for `wandb sync` to upload.
  """

  def __init__(self, settings, workdir, run_config: dict):
    try:
      import wandb
    except ImportError as e:
      raise UserError(
        "config.wandb.enabled=True needs the wandb package: pip install 'bert-flax[wandb]'"
      ) from e
    self._wandb = wandb
    workdir = str(workdir)
    local = tempfile.mkdtemp(prefix="wandb_") if is_remote(workdir) else workdir
    os.makedirs(local, exist_ok=True)
    id_file = epath.Path(workdir) / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
    write_text(id_file, run_id)
    self.mode = wandb_mode(settings.mode)
    self._run = wandb.init(
      project=settings.project,
      entity=settings.entity or None,
      name=settings.name or os.path.basename(os.path.normpath(workdir)),
      tags=list(settings.tags),
      config=run_config,
      dir=local,
      id=run_id,
      resume="allow",
      mode=self.mode,
      settings=wandb.Settings(console="off"),  # absl and tqdm keep the terminal
    )
    self.dir = self._run.dir
    self._step = -1

  def log(self, step: int, values: dict) -> None:
    # W&B refuses steps that go back (the test split, scored at the best step, does);
    # those values reach the run through its summary.
    if step >= self._step:
      self._run.log(values, step=step)
      self._step = step

  def finish(self, summary: dict, images: dict) -> None:
    shown = {name: self._wandb.Image(path) for name, path in images.items() if os.path.exists(path)}
    if shown:
      self._run.log(shown, step=max(self._step, 0))
    self._run.summary.update(summary)
    self._run.finish()


def read_metrics(workdir) -> list[dict]:
  """Every record of <workdir>/metrics.jsonl, in the order written."""
  text = (epath.Path(workdir) / METRICS_FILE).read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def _series(records, key: str, split: str):
  points = sorted(
    (r["step"], r[key])
    for r in records
    if r.get("split") == split and key in r and math.isfinite(r[key])
  )
  return [s for s, _ in points], [v for _, v in points]


def new_figure(width: float, height: float) -> Figure:
  """A figure on the Agg canvas directly rather than pyplot: it needs no display and leaves
  the matplotlib backend of whoever imports this module alone."""
  fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def save_png(fig: Figure, out_png) -> str:
  """`fig` as a PNG at `out_png`, a local path or a bucket's (etils.epath)."""
  png = io.BytesIO()
  fig.savefig(png, format="png")
  epath.Path(out_png).write_bytes(png.getvalue())
  return str(out_png)


def plot_loss_curves(workdir, out_png=None, keys=("loss",)) -> str:
  """One subplot per key found, train and eval against step; returns the PNG's path."""
  records = read_metrics(workdir)
  present = [k for k in keys if any(k in r for r in records)]
  if not present:
    raise ValueError(f"none of the keys {list(keys)} appear in {workdir}/{METRICS_FILE}")
  out_png = str(out_png or os.path.join(str(workdir), CURVES_FILE))
  fig = new_figure(6.4, 3.6 * len(present))
  axes = fig.subplots(len(present), 1, squeeze=False)[:, 0]
  for ax, key in zip(axes, present):
    for split, style in (("train", "-"), ("eval", "o-")):
      steps, values = _series(records, key, split)
      if steps:
        ax.plot(steps, values, style, label=f"{split} {key}", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(f"{key} by step")
    ax.grid(True, alpha=0.3)
    ax.legend()
  return save_png(fig, out_png)


def plot_confusion(counts, labels, out_png, title: str) -> str:
  """A confusion matrix as a heatmap: rows gold, columns predicted, each row in % of its gold."""
  counts = np.asarray(counts, np.float64)
  share = 100 * counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  size = 1.6 + 0.55 * len(labels)
  fig = new_figure(size + 1.2, size)
  ax = fig.subplots()
  image = ax.imshow(share, cmap="Blues", vmin=0, vmax=100)
  ax.set_xticks(range(len(labels)), [str(x) for x in labels], rotation=45, ha="right")
  ax.set_yticks(range(len(labels)), [str(x) for x in labels])
  ax.set_xlabel("predicted")
  ax.set_ylabel("gold")
  ax.set_title(title)
  for i in range(len(labels)):
    for j in range(len(labels)):
      ax.text(
        j,
        i,
        f"{int(counts[i, j])}",
        ha="center",
        va="center",
        fontsize=7,
        color="white" if share[i, j] > 60 else "black",
      )
  fig.colorbar(image, ax=ax, label="% of the gold row")
  return save_png(fig, out_png)


def progress(
  total: int, initial: int = 0, desc: str = "train", enabled: bool = True, unit: str = "step"
):
  """A tqdm bar with rate and ETA; in a log file (no TTY) it prints every ~5 s.

  Call `.update(n)` per step and `.close()` at the end; `enabled=False` (other
  hosts) gives a bar that prints nothing.
  """
  interactive = sys.stderr.isatty()
  return tqdm.tqdm(
    total=total,
    initial=initial,
    desc=desc,
    unit=unit,
    file=sys.stderr,
    disable=not enabled,
    dynamic_ncols=interactive,
    mininterval=0.5 if interactive else 5.0,
    ascii=not interactive,
    smoothing=0.1,
  )

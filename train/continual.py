"""Continual learning: one encoder fine-tuned on a list of tasks in turn, forgetting measured.

Task k is an ordinary fine-tuning run (train.loop) in WORKDIR/<k>_<name>: its
encoder starts from task k-1's final encoder (task 0's from config.init), its
head starts fresh. After every task, each task seen so far is scored on its
dev set with the current encoder and that task's own head (kept from its
run):

  R[k][j] = task j's dev metric after training task k
  forgetting of j = max over k < K of R[k][j] - R[K][j]   (Chaudhry et al. 2018)

method='naive' does nothing else (the baseline that forgets); method='ewc'
pulls the encoder towards its previous values, weighted by the earlier tasks'
Fisher (train/ewc.py). WORKDIR/forgetting.json and forgetting.md hold R and
the forgetting; forgetting.png plots it. A rerun skips the finished tasks and
resumes an unfinished one from its checkpoint.

  python -m train.continual --config=configs/continual/sst2_conll.py:DATA_DIR --workdir=/tmp/cl
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from train import ewc, loop, warm_start, writers
from train import mesh as mesh_lib
from train.checkpoint import read_on_host
from train.run import build_run
from train.state import load_params
from train.workdir import resolve as resolve_workdir

METHODS = ("naive", "ewc")


def stage_configs(config) -> list[tuple[str, object]]:
  """[(name, fine-tuning config)] in training order, each checked and wired to its source."""
  if config.method not in METHODS:
    raise ValueError(f"method={config.method!r}: known methods are {METHODS}")
  if config.method == "ewc" and not config.ewc_weight > 0:
    raise ValueError(f"method='ewc' needs ewc_weight > 0 (got {config.ewc_weight})")
  if len(config.order) < 2:
    raise ValueError(f"order={tuple(config.order)}: continual learning needs two tasks or more")
  missing = [name for name in config.order if name not in config.stages]
  if missing:
    raise ValueError(
      f"order names {missing}, which stages does not define (stages: {sorted(config.stages)})"
    )
  first_model = config.stages[config.order[0]].model.to_dict()
  stages = []
  for name in config.order:
    stage = config.stages[name]
    if stage.model.to_dict() != first_model:
      raise ValueError(
        f"stages.{name}.model differs from stages.{config.order[0]}.model: "
        "one encoder runs through every task"
      )
    if stage.peft.method != "none":
      raise ValueError(
        f"stages.{name}.peft.method={stage.peft.method!r}: continual learning "
        "trains the whole encoder ('none')"
      )
    stages.append((name, stage))
  return stages


def stage_dir(workdir: str, index: int, name: str) -> str:
  return os.path.join(workdir, f"{index}_{name}")


def prepare(
  stage, index: int, previous: str | None, init, vocab: str, ewc_path: str, weight: float
):
  """The stage's config: where its encoder comes from, the shared vocab, EWC on or off."""
  stage = stage.copy_and_resolve_references()
  stage.data.vocab = vocab
  if previous is None:
    stage.init.update(hf_dir=init.hf_dir, checkpoint=init.checkpoint)
  else:
    stage.init.update(hf_dir="", checkpoint=previous)
  use_ewc = index > 0 and weight > 0
  stage.ewc.update(weight=weight if use_ewc else 0.0, path=ewc_path if use_ewc else "")
  return stage


def final_params(workdir: str) -> dict:
  """The pure parameter tree of a run's last checkpoint (its end of training)."""
  parts, _, _ = read_on_host(os.path.join(workdir, "checkpoints"))
  return parts["params"]


class StageModel:
  """A stage's task, built once (data tokenised, model sharded, eval step compiled).

  Scoring a task after each later one and estimating its Fisher only load
  other parameters into it.
  """

  def __init__(self, stage, workdir: str):
    run = build_run(stage, workdir)
    self.task, self.mesh, self.rules, self.tx = run.task, run.mesh, run.rules, run.tx
    self.graphdef, self.state, self.frozen = run.graphdef, run.state, run.frozen
    self.eval_step = run.eval_step

  def load(self, params: dict) -> None:
    self.state, self.frozen = load_params(self.state, self.frozen, params, self.tx)

  def score(self) -> dict:
    """Dev metrics with the loaded parameters."""
    with mesh_lib.activate(self.mesh, self.rules):
      return loop.evaluate(
        self.eval_step,
        self.state.params,
        self.frozen,
        self.task.eval_batches,
        self.mesh,
        self.rules,
        self.task.objective,
        self.task.score,
        "eval",
      )

  def fisher(self, examples: int) -> dict:
    """The normalised diagonal Fisher of the encoder, from >= `examples` training examples."""
    batches, seen, step = [], 0, 0
    while seen < examples:
      batches.append(self.task.train_data.batch(step, 0, 1))
      seen += int(np.sum(batches[-1]["weight"]))
      step += 1
    return ewc.normalised(
      ewc.fisher_diagonal(
        self.graphdef,
        self.state.params,
        self.frozen,
        self.task.objective,
        batches,
        self.mesh,
        self.rules,
      )
    )


def forgetting(matrix: list[list[float | None]]) -> list[float | None]:
  """Per task: best earlier score minus the final one (None for the last task)."""
  final = matrix[-1]
  out = []
  for j in range(len(final)):
    earlier = [row[j] for row in matrix[:-1] if row[j] is not None]
    out.append(max(earlier) - final[j] if earlier else None)
  return out


def table(names: list[str], metrics: list[str], matrix, method: str) -> str:
  cells = lambda v: "–" if v is None else f"{100 * v:.2f}"  # noqa: E731
  head = ["after training"] + [f"{n} ({m})" for n, m in zip(names, metrics)]
  lines = [
    f"Dev scores, method {method}",
    "",
    "| " + " | ".join(head) + " |",
    "|" + "---|" * len(head),
  ]
  for name, row in zip(names, matrix):
    lines.append("| " + " | ".join([name] + [cells(v) for v in row]) + " |")
  lines.append("| **forgetting** | " + " | ".join(cells(v) for v in forgetting(matrix)) + " |")
  return "\n".join(lines) + "\n"


def plot(names: list[str], matrix, path: str, method: str) -> None:
  fig = writers.new_figure(4.5, 4)
  ax = fig.subplots()
  for j, name in enumerate(names):
    xs = [k for k, row in enumerate(matrix) if row[j] is not None]
    ax.plot(xs, [100 * matrix[k][j] for k in xs], marker="o", label=name)
  ax.set_xticks(range(len(matrix)), [f"after {n}" for n in names[: len(matrix)]])
  ax.set_ylabel("dev metric (%)")
  ax.set_title(f"continual learning: {method}")
  ax.legend()
  writers.save_png(fig, path)


def run(config, workdir: str) -> dict:
  """Trains the stages in order; returns {'tasks', 'metrics', 'matrix', 'forgetting'}."""
  stages = stage_configs(config)
  workdir = resolve_workdir(workdir)
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  vocab = config.stages[config.order[0]].data.vocab or warm_start.init_vocab(config.init)
  weight = config.ewc_weight if config.method == "ewc" else 0.0
  ewc_path = os.path.join(workdir, "ewc.npz")
  names = [name for name, _ in stages]
  metrics = [stage.early_stopping.metric for _, stage in stages]
  results_path = os.path.join(workdir, "forgetting.json")
  matrix: list[list[float | None]] = []
  if epath.Path(results_path).exists():
    matrix = json.loads(epath.Path(results_path).read_text())["matrix"]
  previous, heads, models = None, {}, {}
  fisher_sum: dict | None = None
  for index, (name, stage) in enumerate(stages):
    stage = prepare(stage, index, previous, config.init, vocab, ewc_path, weight)
    wd = stage_dir(workdir, index, name)
    if index >= len(matrix):
      logging.info("continual: task %d/%d, %s (%s)", index + 1, len(stages), name, wd)
      loop.train_and_evaluate(stage, wd)
    params = final_params(wd)
    heads[name] = {k: v for k, v in params.items() if k != "bert"}
    encoder = params["bert"]
    if index >= len(matrix):
      row = [None] * len(stages)
      for j, (earlier, earlier_stage) in enumerate(stages[: index + 1]):
        if earlier not in models:
          models[earlier] = StageModel(
            prepare(earlier_stage, j, None, config.init, vocab, "", 0.0),
            stage_dir(workdir, j, earlier),
          )
        models[earlier].load(dict(heads[earlier], bert=encoder))
        row[j] = float(models[earlier].score()[metrics[j]])
        logging.info("continual: after %s, %s %s = %.4f", name, earlier, metrics[j], row[j])
      matrix.append(row)
      epath.Path(results_path).write_text(
        json.dumps(
          {"tasks": names, "metrics": metrics, "method": config.method, "matrix": matrix}, indent=2
        )
      )
    if weight and index < len(stages) - 1:
      fisher_path = os.path.join(wd, "fisher.npz")
      if not epath.Path(fisher_path).exists():
        if name not in models:
          models[name] = StageModel(stage, wd)
        models[name].load(params)
        ewc.save(fisher_path, encoder, models[name].fisher(config.fisher_examples))
      anchor, fisher = ewc.load(fisher_path)
      fisher_sum = fisher if fisher_sum is None else jax.tree.map(np.add, fisher_sum, fisher)
      ewc.save(ewc_path, anchor, fisher_sum)  # online EWC: the latest anchor, Fishers summed
    previous = wd
  result = {
    "tasks": names,
    "metrics": metrics,
    "method": config.method,
    "matrix": matrix,
    "forgetting": forgetting(matrix),
  }
  epath.Path(results_path).write_text(json.dumps(result, indent=2))
  text = table(names, metrics, matrix, config.method)
  epath.Path(os.path.join(workdir, "forgetting.md")).write_text(text)
  plot(names, matrix, os.path.join(workdir, "forgetting.png"), config.method)
  logging.info("continual learning:\n%s", text)
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  # Defined here, not on import: tests import this module beside train.main's flags.
  config_flags.DEFINE_config_file("config", None, "A configs/continual/*.py file.")
  flags.DEFINE_string("workdir", None, "Where every task's run and the forgetting table go.")
  flags.mark_flags_as_required(["config", "workdir"])
  from train import cli

  cli.run(main)

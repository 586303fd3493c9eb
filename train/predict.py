"""Label text with a fine-tuned workdir: a class, entities with spans, an answer, a choice.

  python -m train.predict --workdir=/tmp/sst2 --text="a gripping, funny film"
  python -m train.predict --workdir=/tmp/mrpc --text="He left." --text_pair="He went away."
  python -m train.predict --workdir=/tmp/sst2 --input_file=reviews.txt \
      --output_file=labels.jsonl   # a text per line (pairs: TAB between), streamed
  python -m train.predict --workdir=/tmp/conll --text="Angela Merkel visited Paris."
  python -m train.predict --workdir=/tmp/squad --question="Who?" --context="..."
  python -m train.predict --workdir=/tmp/swag --text="She opens the door." \
      --choice="and walks in." --choice="and the sky sings."

Prints (or writes to --output_file) one JSON object per input; what an input is
and what its result holds is the task's `predict` (train/tasks). An --input_file
of any size streams through in chunks of rows, each sorted into length buckets
and batches, with a progress bar and a closing throughput line on stderr. In a
notebook: `Predictor(workdir)(inputs)`, or `Predictor(workdir).stream(rows)`.
The model is rebuilt from the workdir's config.json, labels.json and
tokenizer/ (written by the train loop), with the best checkpoint's parameters
(<workdir>/best), or the newest when there is none. Inputs are encoded by the
same functions as the training data, so a prediction means what an evaluation
measured.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from flax import nnx

from data import finetune
from data.tokenizer import load_tokenizer
from model.bert import unstack_layers
from train import finetuned, tasks, writers
from train.state import abstract_model
from train.tasks.common import buckets_of


class Predictor:
  """A fine-tuned model from its workdir, on the default device, no mesh needed.

  `predictor(inputs)` labels a list of inputs as the run's task reads them: a
  text or (text, pair) for classification, a text for NER, (question, context)
  for question answering, (context, ending, ending, ...) for multiple choice.
  """

  def __init__(
    self, workdir: str, checkpoint: str = "best", batch_size: int = 32, step: int | None = None
  ):
    run = finetuned.read_run(workdir, checkpoint, step)
    self.config, self.labels, self.step, self.spec = run.config, run.labels, run.step, run.spec
    self.tokenizer = load_tokenizer(
      os.path.join(workdir, "tokenizer"), lowercase=self.config.data.lowercase
    )
    self.batch_size = batch_size
    # Unrolled, no remat: no gradients here, and the layers' weights are split once
    # (unstack_layers) instead of sliced out of their stack at every call.
    model_config = dataclasses.replace(run.model_config, scan_layers=False, remat_policy="none")
    factory = tasks.model_factory(self.config, model_config, self.labels)
    graphdef, abstract = abstract_model(factory)
    nnx.replace_by_pure_dict(abstract, finetuned.full_params(run))
    self.params = jax.device_put(unstack_layers(abstract))
    objective = self.objective = self.spec.objective(self.config, self.labels)
    self.buckets = buckets_of(self.spec, self.config)
    self._forward = jax.jit(
      lambda params, batch: objective.outputs(nnx.merge(graphdef, params), batch, None)
    )
    self.batch_shapes: set[tuple[int, ...]] = set()  # one compile each

  def outputs(self, arrays: dict) -> dict[str, np.ndarray]:
    """Model outputs of every row of `arrays`, batched and padded as in evaluation."""
    n = len(arrays["weight"])
    batches = finetune.eval_batches(arrays, self.batch_size, self.buckets)
    self.batch_shapes.update(np.shape(batch["input_ids"]) for batch in batches)
    outputs = [self._forward(self.params, dict(batch)) for batch in batches]
    outputs = finetune.gather_outputs(batches, outputs, self.objective.token_outputs)
    return {key: value[:n] for key, value in outputs.items()}

  def __call__(self, inputs) -> list[dict]:
    """One result per input; an input is a string or a tuple of strings."""
    rows = [(row,) if isinstance(row, str) else tuple(row) for row in inputs]
    if not rows:
      raise ValueError("no inputs to predict")
    return self.spec.predict(self, rows)

  def stream(self, inputs: Iterable, chunk_size: int = 4096) -> Iterator[dict]:
    """`self(inputs)`, a chunk of `chunk_size` inputs at a time: results come in input order
    while the rest is still read, so an input of any length takes flat memory. Within a
    chunk, rows are batched shortest first (buckets) as in evaluation."""
    inputs, offset = iter(inputs), 0
    while chunk := list(itertools.islice(inputs, chunk_size)):
      try:
        results = self(chunk)
      except ValueError as e:  # "input 3" of a chunk is input offset + 3 of the stream
        renumbered = re.sub(r"^input (\d+)", lambda m, o=offset: f"input {int(m[1]) + o}", str(e))
        raise ValueError(renumbered) from e
      yield from results
      offset += len(chunk)


def iter_inputs(path: str) -> Iterator[tuple[str, ...]]:
  """The inputs of a file, read lazily: one per non-blank line, its fields separated by TABs."""
  width = None
  for number, line in finetune.read_lines(path):
    if not line.strip():
      continue
    row = tuple(line.split("\t"))
    if width is not None and len(row) != width:
      raise ValueError(f"{path}:{number}: {len(row)} tab-separated fields; earlier lines: {width}")
    width = len(row)
    yield row


def read_inputs(path: str) -> list[tuple[str, ...]]:
  """Every input of a file (`iter_inputs`), as a list."""
  return list(iter_inputs(path))


def count_inputs(path: str) -> int:
  """The number of inputs in a file (its non-blank lines), for the progress bar's total."""
  return sum(1 for _, line in finetune.read_lines(path) if line.strip())


def is_json_lines(path: str) -> bool:
  return path.endswith((".json", ".jsonl"))


def iter_records(path: str) -> Iterator[dict]:
  """The JSON objects of a JSON-lines file (a CLUE test file), each with its "_origin"."""
  for origin, record in finetune.read_json_lines(path):
    yield {**record, "_origin": origin}


def clue_input(config, record: dict) -> tuple[str, ...]:
  """A CLUE test line's text(s), by the keys the run trained on (NER: CLUENER's 'text')."""
  spec = tasks.get(config.task)
  if spec.clue_keys is None:
    readers = [name for name in tasks.finetuned_names() if tasks.get(name).clue_keys]
    raise ValueError(
      f"{record['_origin']}: JSON-lines input (CLUE's test files) is read for {readers} "
      f"workdirs, not {config.task!r}; give a text per line"
    )
  keys = spec.clue_keys(config)
  missing = [key for key in keys if key not in record]
  if missing:
    raise ValueError(f"{record['_origin']}: no key {missing[0]!r}; the line has {sorted(record)}")
  return tuple(str(record[key]) for key in keys)


def clue_submission(config, record: dict, result: dict) -> dict:
  """CLUE's submission line: {"id", "label"}, the label as the task writes it."""
  return {"id": record.get("id"), "label": tasks.get(config.task).clue_label(result)}


def predict_file(
  predictor: Predictor, input_file: str, out, chunk_size: int = 4096, show_progress: bool = True
) -> dict:
  """Streams `input_file` through `predictor`, one JSON line per input to `out`; returns
  the throughput (inputs, seconds, inputs/s, compiled batch shapes), also printed to stderr.

  A .json / .jsonl input is a CLUE test file: its lines' texts are read by the run's keys and
  each output line is CLUE's submission format, {"id": ..., "label": ...}."""
  bar = writers.progress(
    count_inputs(input_file), desc="predict", enabled=show_progress, unit="input"
  )
  start, count = time.perf_counter(), 0
  if is_json_lines(input_file):
    records = iter_records(input_file)
    head, tail = itertools.tee(records)
    inputs = (clue_input(predictor.config, record) for record in head)
    lines = (
      clue_submission(predictor.config, record, result)
      for record, result in zip(tail, predictor.stream(inputs, chunk_size))
    )
  else:
    lines = predictor.stream(iter_inputs(input_file), chunk_size)
  for line in lines:
    out.write(json.dumps(line, ensure_ascii=False) + "\n")
    count += 1
    bar.update(1)
  bar.close()
  seconds = time.perf_counter() - start
  speed = {
    "inputs": count,
    "seconds": seconds,
    "inputs_per_second": count / seconds if seconds else float("nan"),
    "batch_size": predictor.batch_size,
    "compiled_batch_shapes": len(predictor.batch_shapes),
  }
  sys.stderr.write(
    f"predicted {count} inputs in {seconds:.1f} s: {speed['inputs_per_second']:.1f} inputs/s "
    f"at batch {predictor.batch_size}, {speed['compiled_batch_shapes']} compiled batch shapes\n"
  )
  return speed


def inputs_from_flags(texts=None, text_pairs=None, choices=None, question=None, context=None):
  """The command line's inputs as rows: --text [--text_pair | --choice], or --question/--context."""
  if question is not None or context is not None:
    if not (question and context):
      raise ValueError("give both --question and --context")
    return [(question, context)]
  if not texts:
    raise ValueError("give --text, --input_file or --question/--context")
  texts = list(texts)
  if choices:
    if len(texts) != 1:
      raise ValueError(f"--choice belongs to one --text; got {len(texts)}")
    return [(texts[0], *choices)]
  if text_pairs:
    if len(text_pairs) != len(texts):
      raise ValueError(f"{len(texts)} --text but {len(text_pairs)} --text_pair")
    return list(zip(texts, text_pairs))
  return [(text,) for text in texts]


def predict(
  workdir: str,
  texts=None,
  text_pairs=None,
  input_file=None,
  question=None,
  context=None,
  checkpoint: str = "best",
  batch_size: int = 32,
  step: int | None = None,
  choices=None,
) -> list[dict]:
  """What the command prints, as a list: one result per input."""
  rows = (
    read_inputs(input_file)
    if input_file
    else inputs_from_flags(texts, text_pairs, choices, question, context)
  )
  return Predictor(workdir, checkpoint, batch_size, step)(rows)


def main(argv):
  from absl import flags, logging

  FLAGS = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # stdout carries the JSON; keep stderr quiet too
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.output_file and not FLAGS.input_file:
    raise ValueError("--output_file goes with --input_file")
  if FLAGS.input_file:
    if FLAGS.output_file and os.path.exists(FLAGS.output_file):
      raise ValueError(f"--output_file={FLAGS.output_file} exists; remove it or pick another")
    predictor = Predictor(FLAGS.workdir, FLAGS.checkpoint, FLAGS.batch_size, FLAGS.step)
    if not FLAGS.output_file:
      predict_file(predictor, FLAGS.input_file, sys.stdout)
      return
    partial = FLAGS.output_file + ".partial"  # the named file appears only when complete
    with open(partial, "w", encoding="utf-8") as out:
      predict_file(predictor, FLAGS.input_file, out)
    os.replace(partial, FLAGS.output_file)
    return
  results = predict(
    FLAGS.workdir,
    FLAGS.text,
    FLAGS.text_pair,
    FLAGS.input_file,
    FLAGS.question,
    FLAGS.context,
    FLAGS.checkpoint,
    FLAGS.batch_size,
    FLAGS.step,
    FLAGS.choice,
  )
  for result in results:
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
  from absl import flags

  flags.DEFINE_string("workdir", None, "A fine-tuning workdir (train/main.py's --workdir).")
  flags.DEFINE_multi_string("text", None, "Text to label (repeatable).")
  flags.DEFINE_multi_string("text_pair", None, "Second sentence of each --text, for pair tasks.")
  flags.DEFINE_string(
    "input_file",
    None,
    "UTF-8 file, a text (or 'a<TAB>b' pair) per line; a .json / .jsonl CLUE test file gives "
    "CLUE's submission lines",
  )
  flags.DEFINE_string("output_file", None, "JSON lines go here instead of stdout (--input_file).")
  flags.DEFINE_multi_string("choice", None, "An ending of --text, for a multiple-choice workdir.")
  flags.DEFINE_string("question", None, "Question, for a question-answering workdir.")
  flags.DEFINE_string("context", None, "Context the answer is taken from.")
  flags.DEFINE_string("checkpoint", "best", "'best' (falls back to the newest) or 'latest'.")
  flags.DEFINE_integer("step", None, "A step of <workdir>/checkpoints to use instead.")
  flags.DEFINE_integer("batch_size", 32, "Inputs per forward pass.")
  flags.mark_flags_as_required(["workdir"])
  from train import cli

  cli.run(main)

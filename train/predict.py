"""Label text with a fine-tuned workdir: a class, entities with spans, an answer, a choice.

  python -m train.predict --workdir=/tmp/sst2 --text="a gripping, funny film"
  python -m train.predict --workdir=/tmp/mrpc --text="He left." --text_pair="He went away."
  python -m train.predict --workdir=/tmp/sst2 --input_file=reviews.txt   # a text per line;
                                                                          # pairs: TAB between
  python -m train.predict --workdir=/tmp/conll --text="Angela Merkel visited Paris."
  python -m train.predict --workdir=/tmp/squad --question="Who?" --context="..."
  python -m train.predict --workdir=/tmp/swag --text="She opens the door." \
      --choice="and walks in." --choice="and the sky sings."

Prints one JSON object per input; what an input is and what its result holds
is the task's `predict` (train/tasks). In a notebook: `Predictor(workdir)(inputs)`.
The model is rebuilt from the workdir's config.json, labels.json and
tokenizer/ (written by the train loop), with the best checkpoint's parameters
(<workdir>/best), or the newest when there is none. Inputs are encoded by the
same functions as the training data, so a prediction means what an evaluation
measured.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from flax import nnx

from data import finetune
from data.tokenizer import load_tokenizer
from train import finetuned, tasks
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
    factory = tasks.model_factory(self.config, run.model_config, self.labels)
    graphdef, abstract = abstract_model(factory)
    nnx.replace_by_pure_dict(abstract, finetuned.full_params(run))
    self.params = jax.device_put(abstract)
    objective = self.objective = self.spec.objective(self.config, self.labels)
    self.buckets = buckets_of(self.spec, self.config)
    self._forward = jax.jit(
      lambda params, batch: objective.outputs(nnx.merge(graphdef, params), batch, None)
    )

  def outputs(self, arrays: dict) -> dict[str, np.ndarray]:
    """Model outputs of every row of `arrays`, batched and padded as in evaluation."""
    n = len(arrays["weight"])
    batches = finetune.eval_batches(arrays, self.batch_size, self.buckets)
    outputs = [self._forward(self.params, dict(batch)) for batch in batches]
    outputs = finetune.gather_outputs(batches, outputs, self.objective.token_outputs)
    return {key: value[:n] for key, value in outputs.items()}

  def __call__(self, inputs) -> list[dict]:
    """One result per input; an input is a string or a tuple of strings."""
    rows = [(row,) if isinstance(row, str) else tuple(row) for row in inputs]
    if not rows:
      raise ValueError("no inputs to predict")
    return self.spec.predict(self, rows)


def read_inputs(path: str) -> list[tuple[str, ...]]:
  """The inputs of a file, one per non-blank line, its fields separated by TABs."""
  rows, widths = [], set()
  for number, line in finetune.read_lines(path):
    if not line.strip():
      continue
    rows.append(tuple(line.split("\t")))
    widths.add(len(rows[-1]))
    if len(widths) > 1:
      raise ValueError(
        f"{path}:{number}: {len(rows[-1])} tab-separated fields; earlier lines have {len(rows[0])}"
      )
  return rows


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
  flags.DEFINE_string("input_file", None, "UTF-8 file, a text (or 'a<TAB>b' pair) per line.")
  flags.DEFINE_multi_string("choice", None, "An ending of --text, for a multiple-choice workdir.")
  flags.DEFINE_string("question", None, "Question, for a question-answering workdir.")
  flags.DEFINE_string("context", None, "Context the answer is taken from.")
  flags.DEFINE_string("checkpoint", "best", "'best' (falls back to the newest) or 'latest'.")
  flags.DEFINE_integer("step", None, "A step of <workdir>/checkpoints to use instead.")
  flags.DEFINE_integer("batch_size", 32, "Inputs per forward pass.")
  flags.mark_flags_as_required(["workdir"])
  from train import cli

  cli.run(main)

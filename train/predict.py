"""Label text with a fine-tuned workdir: a class, entities with character spans, an answer.

  python -m train.predict --workdir=/tmp/sst2 --text="a gripping, funny film"
  python -m train.predict --workdir=/tmp/mrpc --text="He left." --text_pair="He went away."
  python -m train.predict --workdir=/tmp/sst2 --input_file=reviews.txt   # a text per line;
                                                                          # pairs: TAB between
  python -m train.predict --workdir=/tmp/conll --text="Angela Merkel visited Paris."
  python -m train.predict --workdir=/tmp/squad --question="Who?" --context="..."

Prints one JSON object per input. The model is rebuilt from the workdir's
config.json, labels.json and tokenizer/ (written by the train loop), with the
best checkpoint's parameters (<workdir>/best), or the newest when there is
none. Inputs are encoded by the same functions as the training data, so a
prediction means what an evaluation measured.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
from flax import nnx

from data import classification, finetune, ner, squad
from data.tokenizer import load_tokenizer
from train import finetuned, tasks
from train.state import abstract_model


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  return shifted / shifted.sum(-1, keepdims=True)


class Predictor:
  """A fine-tuned model from its workdir, on the default device, no mesh needed."""

  def __init__(
    self, workdir: str, checkpoint: str = "best", batch_size: int = 32, step: int | None = None
  ):
    run = finetuned.read_run(workdir, checkpoint, step)
    self.config, self.labels, self.step = run.config, run.labels, run.step
    self.tokenizer = load_tokenizer(
      os.path.join(workdir, "tokenizer"), lowercase=self.config.data.lowercase
    )
    self.batch_size = batch_size
    factory = tasks.finetune_model_factory(self.config, run.model_config, self.labels)
    graphdef, abstract = abstract_model(factory)
    nnx.replace_by_pure_dict(abstract, finetuned.full_params(run))
    self.params = jax.device_put(abstract)
    objective = tasks.finetune_objective(self.config, self.labels)
    self._forward = jax.jit(
      lambda params, batch: objective.outputs(nnx.merge(graphdef, params), batch, None)
    )

  def _outputs(self, arrays: dict) -> dict[str, np.ndarray]:
    """Model outputs of every row of `arrays`, batched and padded as in evaluation."""
    n = len(arrays["weight"])
    outputs = [
      self._forward(self.params, {k: v for k, v in batch.items()})
      for batch in finetune.eval_batches(arrays, self.batch_size)
    ]
    return {key: np.concatenate([np.asarray(o[key]) for o in outputs])[:n] for key in outputs[0]}

  def classify(self, texts: list[str], pairs: list[str] | None = None) -> list[dict]:
    """{'label', 'probability'} per text (or {'score'} for a regression task)."""
    data = self.config.data
    examples = [
      classification.TextExample(t, None if pairs is None else pairs[i], None, f"input {i + 1}")
      for i, t in enumerate(texts)
    ]
    for example in examples:
      if not example.text_a.strip() or (pairs is not None and not example.text_b.strip()):
        raise ValueError(f"{example.origin}: empty text")
    if data.entity_markers:
      examples = classification.mark_relation_examples(examples, data.entity_markers)
    arrays, _ = classification.encode_examples(
      examples, self.tokenizer, data.max_seq_length, None if data.regression else self.labels
    )
    logits = self._outputs(arrays)["logits"]
    if data.regression:
      return [{"text": t, "score": float(row[0])} for t, row in zip(texts, logits)]
    probabilities = softmax(logits)
    return [
      {"text": t, "label": self.labels[int(p.argmax())], "probability": float(p.max())}
      for t, p in zip(texts, probabilities)
    ]

  def tag(self, texts: list[str]) -> list[dict]:
    """Entities per text: type, character start/end, and text[start:end]."""
    words = [ner.split_words(text, self.tokenizer) for text in texts]
    for i, text_words in enumerate(words):
      if not text_words:
        raise ValueError(f"input {i + 1}: empty text")
    sentences = [
      ner.TaggedSentence(tuple(w for w, _, _ in ws), None, f"input {i + 1}")
      for i, ws in enumerate(words)
    ]
    arrays, positions, _ = ner.encode_sentences(
      sentences, self.tokenizer, self.config.data.max_seq_length, self.labels
    )
    predicted = self._outputs(arrays)["logits"].argmax(-1)
    results = []
    for i, text in enumerate(texts):
      tags = ner.word_tags(predicted[i], positions[i], self.labels)
      results.append({"text": text, "entities": ner.entities_in_text(text, words[i], tags)})
    return results

  def answer(self, question: str, context: str) -> dict:
    """The best span of `context`: its text and character start/end."""
    if not question.strip() or not context.strip():
      raise ValueError("--question and --context must both be non-empty")
    data = self.config.data
    example = squad.QAExample("0", question, context, (), "--question/--context")
    arrays, windows, _ = squad.encode_windows(
      [example], self.tokenizer, data.max_seq_length, data.doc_stride, data.max_query_length
    )
    outputs = self._outputs(arrays)
    best = squad.best_answer(
      context,
      outputs["start_logits"],
      outputs["end_logits"],
      windows.offsets,
      windows.max_context,
      data.n_best_size,
      data.max_answer_length,
    )
    return {
      "question": question,
      "answer": best["text"],
      "start": best["start"],
      "end": best["end"],
      "score": best["score"],
    }


def read_inputs(path: str) -> tuple[list[str], list[str] | None]:
  """Texts of a file, one per non-blank line; 'a<TAB>b' lines make pairs."""
  texts, pairs = [], []
  for number, line in finetune.read_lines(path):
    if not line.strip():
      continue
    fields = line.split("\t")
    if len(fields) > 2:
      raise ValueError(
        f"{path}:{number}: {len(fields)} tab-separated fields; give a text or a pair"
      )
    texts.append(fields[0])
    pairs.append(fields[1] if len(fields) == 2 else None)
  if any(p is not None for p in pairs) and any(p is None for p in pairs):
    raise ValueError(f"{path}: some lines are pairs (a TAB) and some are not")
  return texts, (pairs if pairs and pairs[0] is not None else None)


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
) -> list[dict]:
  """What the command prints, as a list: one result per input."""
  predictor = Predictor(workdir, checkpoint, batch_size, step)
  task = predictor.config.task
  if task == "question_answering":
    if not (question and context):
      raise ValueError("a question-answering workdir needs --question and --context")
    return [predictor.answer(question, context)]
  if input_file:
    texts, text_pairs = read_inputs(input_file)
  elif not texts:
    raise ValueError("give --text or --input_file")
  texts = list(texts)
  if text_pairs is not None and len(text_pairs) != len(texts):
    raise ValueError(f"{len(texts)} --text but {len(text_pairs)} --text_pair")
  if task == "classification":
    return predictor.classify(texts, None if text_pairs is None else list(text_pairs))
  return predictor.tag(texts)


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
  )
  for result in results:
    sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
  from absl import flags

  flags.DEFINE_string("workdir", None, "A fine-tuning workdir (train/main.py's --workdir).")
  flags.DEFINE_multi_string("text", None, "Text to label (repeatable).")
  flags.DEFINE_multi_string("text_pair", None, "Second sentence of each --text, for pair tasks.")
  flags.DEFINE_string("input_file", None, "UTF-8 file, a text (or 'a<TAB>b' pair) per line.")
  flags.DEFINE_string("question", None, "Question, for a question-answering workdir.")
  flags.DEFINE_string("context", None, "Context the answer is taken from.")
  flags.DEFINE_string("checkpoint", "best", "'best' (falls back to the newest) or 'latest'.")
  flags.DEFINE_integer("step", None, "A step of <workdir>/checkpoints to use instead.")
  flags.DEFINE_integer("batch_size", 32, "Inputs per forward pass.")
  flags.mark_flags_as_required(["workdir"])
  from train import cli

  cli.run(main)

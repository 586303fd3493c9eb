"""Extractive question answering: SQuAD v1.1 JSON or TFDS squad, scored by EM / F1.

CMRC 2018 (Chinese, SQuAD's layout) reads the same way; answers are character
spans through the tokenizer's offsets, and data.answer_scoring='cmrc2018'
scores them as its official script does (configs/finetune/cmrc2018.py).

Long contexts become overlapping windows (data.doc_stride); the best span over
a question's windows is its answer (transformers' BertForQuestionAnswering).
"""

from __future__ import annotations

import numpy as np

from data import squad
from model.heads import BertForQuestionAnswering
from train import metrics
from train.errors import UserError
from train.losses import SpanObjective
from train.tasks import common
from train.tasks.base import TaskSpec

DATA_DEFAULTS = dict(
  doc_stride=128,  # context tokens between the starts of two windows
  max_query_length=64,
  n_best_size=20,
  max_answer_length=30,
  # 'squad': evaluate-v1.1.py (English normalisation, bag-of-words F1); 'cmrc2018':
  # cmrc2018_evaluate.py (Chinese characters one by one, longest-common-substring F1)
  answer_scoring="squad",
)


def build(config, workdir: str):
  data = config.data
  if data.answer_scoring not in metrics.ANSWER_SCORERS:
    raise UserError(
      f"data.answer_scoring={data.answer_scoring!r}; known: {sorted(metrics.ANSWER_SCORERS)}"
    )
  model_config = common.model_config_of(config)
  tokenizer = common.finetune_tokenizer(config, model_config)
  examples, arrays, windows, stats = {}, {}, {}, {}
  for split in common.SPLITS:
    source = common.split_source(data, split)
    if source is None:
      continue
    examples[split] = (
      squad.read_squad(source)
      if data.source == "files"
      else squad.tfds_qa_examples(data.tfds_name, source, data.tfds_data_dir or None)
    )
    examples = common.first_train_rows(data, examples) if split == "train" else examples
    if split == "train":
      common.check_unknown(tokenizer, (e.context for e in examples[split]), data)
    arrays[split], windows[split], stats[split] = squad.encode_windows(
      examples[split], tokenizer, data.max_seq_length, data.doc_stride, data.max_query_length
    )

  def score(split: str, outputs: dict) -> dict:
    n = len(windows[split].example)
    answers = squad.predict_answers(
      examples[split],
      windows[split],
      np.asarray(outputs["start_logits"][:n]),
      np.asarray(outputs["end_logits"][:n]),
      data.n_best_size,
      data.max_answer_length,
    )
    predictions = {qid: answer["text"] for qid, answer in answers.items()}
    gold = {e.qid: [text for text, _ in e.answers] for e in examples[split] if e.answers}
    return metrics.squad_scores(predictions, gold, data.answer_scoring)

  summary = {"splits": stats}
  return common.finetune_task(SPEC, config, model_config, arrays, score, tokenizer, None, summary)


def predict(predictor, inputs: list[tuple[str, ...]]) -> list[dict]:
  """The best span of each (question, context): its text, character start/end and score."""
  data = predictor.config.data
  results = []
  for row in inputs:
    if len(row) != 2 or not row[0].strip() or not row[1].strip():
      raise ValueError("a question-answering input is a non-empty question and context")
    question, context = row
    example = squad.QAExample("0", question, context, (), "--question/--context")
    arrays, windows, _ = squad.encode_windows(
      [example], predictor.tokenizer, data.max_seq_length, data.doc_stride, data.max_query_length
    )
    outputs = predictor.outputs(arrays)
    best = squad.best_answer(
      context,
      outputs["start_logits"],
      outputs["end_logits"],
      windows.offsets,
      windows.max_context,
      data.n_best_size,
      data.max_answer_length,
    )
    results.append(
      {
        "question": question,
        "answer": best["text"],
        "start": best["start"],
        "end": best["end"],
        "score": best["score"],
      }
    )
  return results


def example_shapes(config):
  shapes = dict(
    common.token_shapes(config.data.max_seq_length),
    start_positions=((), np.int32),
    end_positions=((), np.int32),
    weight=((), np.float32),
  )
  return None, shapes


SPEC = TaskSpec(
  name="question_answering",
  build=build,
  example_shapes=example_shapes,
  data_defaults=DATA_DEFAULTS,
  model_factory=lambda config, model_config, labels, peft: (
    lambda rngs: BertForQuestionAnswering(model_config, rngs, peft)
  ),
  objective=lambda config, labels: SpanObjective(),
  predict=predict,
  packs=True,
  head="qa_outputs",
  hf_architecture="BertForQuestionAnswering",
  peft_task_type="QUESTION_ANS",
  hf_labels=lambda config, labels: {},
  hf_model=lambda model_config, num_labels, rngs: BertForQuestionAnswering(model_config, rngs),
  outputs=("start_logits", "end_logits"),
  distills=True,
)

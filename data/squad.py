"""Extractive QA data (SQuAD v1.1): questions over contexts -> windows -> answer spans.

  SQuAD JSON --read_squad--> / TFDS squad --tfds_qa_examples-->
      QAExample(qid, question, context, answers, origin)
  --encode_windows--> arrays {input_ids, ..., start_positions, end_positions, weight}
                      + Windows (each window's example and token character offsets)
  model start/end logits --best_answer--> the answer as a span of the context

Long contexts are cut into windows as in google-research/bert's run_squad.py:
each holds [CLS] question [SEP] context tokens [SEP], and consecutive windows
start `doc_stride` context tokens apart. A window without the (first) answer
points both positions at [CLS]. A context token seen by several windows may
start an answer only in the window where it has the most context on both
sides (run_squad.py's "max context" rule), so a span is never picked at a
window's edge when another window sees it from the middle. Answers are read
back through the tokenizer's character offsets, so a predicted answer is an
exact substring of the context.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np

from data.finetune import as_text, tfds_source


@dataclasses.dataclass(frozen=True)
class QAExample:
  qid: str
  question: str
  context: str
  answers: tuple[tuple[str, int], ...]  # (text, character start in context)
  origin: str


def _line_of(text: str, needle: str) -> int:
  position = text.find(needle)
  return text.count("\n", 0, position) + 1 if position >= 0 else 1


def read_squad(path: str) -> list[QAExample]:
  """Every question of a SQuAD v1.1 JSON file, answer offsets checked against the text.

  Errors name the file and line, plus the JSON path of the offending entry
  (the official files are one line long, so the path is what finds it).
  """
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8").lstrip("\ufeff")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    raise ValueError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise ValueError(f"{path}: expected SQuAD JSON, an object with a 'data' list")
  examples = []
  for i, article in enumerate(data["data"]):
    for j, paragraph in enumerate(article.get("paragraphs", [])):
      where = f"data[{i}].paragraphs[{j}]"
      context = paragraph.get("context")
      if not isinstance(context, str) or not context.strip():
        raise ValueError(f"{path}: {where} has no context text")
      for k, qa in enumerate(paragraph.get("qas", [])):
        qid = str(qa.get("id", f"{i}.{j}.{k}"))
        origin = f"{path}:{_line_of(text, json.dumps(qid))}: question {qid!r} ({where}.qas[{k}])"
        question = qa.get("question")
        if not isinstance(question, str) or not question.strip():
          raise ValueError(f"{origin}: empty question")
        answers = []
        for a, answer in enumerate(qa.get("answers", [])):
          answer_text, start = answer.get("text"), answer.get("answer_start")
          if not isinstance(answer_text, str) or not answer_text or not isinstance(start, int):
            raise ValueError(
              f"{origin}: answers[{a}] needs a non-empty 'text' and an integer 'answer_start'"
            )
          found = context[start : start + len(answer_text)]
          if found != answer_text:
            raise ValueError(
              f"{origin}: answers[{a}] answer_start {start} gives {found!r}, "
              f"not the answer text {answer_text!r}"
            )
          answers.append((answer_text, start))
        examples.append(QAExample(qid, question, context, tuple(answers), origin))
  if not examples:
    raise ValueError(f"{path}: no questions")
  return examples


def tfds_qa_examples(name: str, split: str, data_dir: str | None = None) -> list[QAExample]:
  """Questions of a TFDS SQuAD-format dataset ('squad/v1.1')."""
  source, _ = tfds_source(name, split, data_dir)
  examples = []
  for index in range(len(source)):
    record = source[index]
    origin = f"tfds {name}[{split}] #{index}"
    context, question = as_text(record["context"]), as_text(record["question"])
    texts = [as_text(t) for t in np.asarray(record["answers"]["text"]).reshape(-1)]
    starts = [int(s) for s in np.asarray(record["answers"]["answer_start"]).reshape(-1)]
    for text, start in zip(texts, starts):
      if context[start : start + len(text)] != text:
        raise ValueError(
          f"{origin}: answer_start {start} gives "
          f"{context[start : start + len(text)]!r}, not {text!r}"
        )
    examples.append(
      QAExample(as_text(record["id"]), question, context, tuple(zip(texts, starts)), origin)
    )
  return examples


@dataclasses.dataclass
class Windows:
  """Host-side facts about each window, row-aligned with the encoded arrays."""

  example: np.ndarray  # [W] index of the window's example
  offsets: np.ndarray  # [W, T, 2] character span of each context token; -1 elsewhere
  max_context: np.ndarray  # [W, T] the token has its most context in this window


def _token_offsets(tokenizer, texts: list[str], max_length: int | None = None):
  encoded = tokenizer(
    texts,
    add_special_tokens=False,
    return_offsets_mapping=True,
    return_attention_mask=False,
    return_token_type_ids=False,
    truncation=max_length is not None,
    max_length=max_length,
    verbose=False,
  )
  return encoded["input_ids"], encoded["offset_mapping"]


def _answer_tokens(offsets, start_char: int, end_char: int, origin: str) -> tuple[int, int]:
  """First and last context token overlapping [start_char, end_char)."""
  inside = [i for i, (s, e) in enumerate(offsets) if e > start_char and s < end_char]
  if not inside:
    raise ValueError(
      f"{origin}: the answer at characters {start_char}..{end_char} covers no token of the context"
    )
  return inside[0], inside[-1]


def max_context_windows(spans: list[tuple[int, int]], doc_length: int) -> np.ndarray:
  """For each context token, the window (index into `spans`) where it has the most context.

  `spans` are (first token, length) of one example's windows. A token's score
  in a window is min(tokens left of it, tokens right of it) + 0.01 * length;
  the first window wins ties (run_squad.py's _check_is_max_context).
  """
  best = np.full(doc_length, -1, np.int32)
  best_score = np.full(doc_length, -np.inf)
  for index, (start, length) in enumerate(spans):
    position = np.arange(start, start + length)
    score = np.minimum(position - start, start + length - 1 - position) + 0.01 * length
    better = score > best_score[position]
    best[position[better]] = index
    best_score[position[better]] = score[better]
  return best


def encode_windows(
  examples: list[QAExample],
  tokenizer,
  max_seq_length: int,
  doc_stride: int,
  max_query_length: int = 64,
) -> tuple[dict[str, np.ndarray], Windows, dict]:
  """Windows over every example's context; start/end positions from its first answer."""
  if max_query_length + 3 >= max_seq_length:
    raise ValueError(
      f"data.max_query_length={max_query_length} leaves no room for context "
      f"in max_seq_length={max_seq_length}"
    )
  questions, _ = _token_offsets(tokenizer, [e.question for e in examples], max_query_length)
  untruncated, _ = _token_offsets(tokenizer, [e.question for e in examples])
  contexts = sorted({e.context for e in examples})
  context_ids, context_offsets = _token_offsets(tokenizer, contexts)
  context_index = {c: i for i, c in enumerate(contexts)}
  cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
  rows, owners, offsets_rows, max_context_rows = [], [], [], []
  for index, example in enumerate(examples):
    query = questions[index]
    if not query:
      raise ValueError(f"{example.origin}: the question has no tokens")
    c = context_index[example.context]
    doc_ids, doc_offsets = context_ids[c], context_offsets[c]
    if not doc_ids:
      raise ValueError(f"{example.origin}: the context has no tokens")
    answer = None
    if example.answers:
      text, start = example.answers[0]
      answer = _answer_tokens(doc_offsets, start, start + len(text), example.origin)
    room = max_seq_length - len(query) - 3
    first_doc = len(query) + 2
    window_start, spans = 0, []
    while True:
      length = min(len(doc_ids) - window_start, room)
      ids = [cls, *query, sep, *doc_ids[window_start : window_start + length], sep]
      spans.append((window_start, length))
      row = np.full(max_seq_length, pad, np.int32)
      row[: len(ids)] = ids
      types = np.zeros(max_seq_length, np.int32)
      types[first_doc : len(ids)] = 1
      offsets = np.full((max_seq_length, 2), -1, np.int32)
      offsets[first_doc : first_doc + length] = doc_offsets[window_start : window_start + length]
      start_position = end_position = 0
      if answer and window_start <= answer[0] and answer[1] < window_start + length:
        start_position = first_doc + answer[0] - window_start
        end_position = first_doc + answer[1] - window_start
      rows.append(
        {
          "input_ids": row,
          "token_type_ids": types,
          "attention_mask": (np.arange(max_seq_length) < len(ids)).astype(np.int32),
          "start_positions": np.int32(start_position),
          "end_positions": np.int32(end_position),
        }
      )
      owners.append(index)
      offsets_rows.append(offsets)
      if window_start + length >= len(doc_ids):
        break
      window_start += min(length, doc_stride)
    best_window = max_context_windows(spans, len(doc_ids))
    for window, (start, length) in enumerate(spans):
      mask = np.zeros(max_seq_length, bool)
      mask[first_doc : first_doc + length] = best_window[start : start + length] == window
      max_context_rows.append(mask)
  arrays = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
  arrays["weight"] = np.ones(len(rows), np.float32)
  truncated = sum(len(u) > len(q) for u, q in zip(untruncated, questions))
  if truncated:
    logging.warning(
      "%d of %d questions are longer than max_query_length=%d tokens and were truncated",
      truncated,
      len(examples),
      max_query_length,
    )
  stats = {"examples": len(examples), "windows": len(rows), "truncated_questions": truncated}
  windows = Windows(
    np.asarray(owners, np.int32), np.stack(offsets_rows), np.stack(max_context_rows)
  )
  return arrays, windows, stats


def best_answer(
  context: str,
  start_logits,
  end_logits,
  offsets,
  max_context,
  n_best: int = 20,
  max_answer_length: int = 30,
) -> dict:
  """The highest start+end logit span over an example's windows, as context text.

  Candidates are the n_best starts and ends of each window that lie on
  context tokens, start where the window gives its token the most context
  (`max_context`), end >= start and at most max_answer_length tokens long
  (run_squad.py's rules). Returns {'text', 'start', 'end', 'score'} with
  text == context[start:end]; an empty answer when no span qualifies.
  """
  best = {"text": "", "start": 0, "end": 0, "score": float("-inf")}
  for starts, ends, window_offsets, window_max_context in zip(
    start_logits, end_logits, offsets, max_context
  ):
    starts, ends = np.asarray(starts), np.asarray(ends)
    on_context = window_offsets[:, 0] >= 0
    top_starts = [i for i in np.argsort(-starts)[:n_best] if window_max_context[i]]
    top_ends = [i for i in np.argsort(-ends)[:n_best] if on_context[i]]
    for s in top_starts:
      for e in top_ends:
        if e < s or e - s + 1 > max_answer_length:
          continue
        score = float(starts[s] + ends[e])
        if score > best["score"]:
          start_char, end_char = int(window_offsets[s, 0]), int(window_offsets[e, 1])
          best = {
            "text": context[start_char:end_char],
            "start": start_char,
            "end": end_char,
            "score": score,
          }
  return best


def predict_answers(
  examples: list[QAExample],
  windows: Windows,
  start_logits,
  end_logits,
  n_best: int = 20,
  max_answer_length: int = 30,
) -> dict[str, dict]:
  """qid -> best_answer, for model logits of every window (rows as in `windows`)."""
  by_example: dict[int, list[int]] = {}
  for row, owner in enumerate(windows.example):
    by_example.setdefault(int(owner), []).append(row)
  answers = {}
  for index, rows in by_example.items():
    example = examples[index]
    answers[example.qid] = best_answer(
      example.context,
      start_logits[rows],
      end_logits[rows],
      windows.offsets[rows],
      windows.max_context[rows],
      n_best,
      max_answer_length,
    )
  return answers

"""Multiple-choice examples (SWAG): a context and N endings, one of them right.

  read_swag_csv(path) -> [ChoiceExample(context, endings, label, origin)]
  --encode_choices--> {input_ids [n, choices, length], token_type_ids,
                       attention_mask, label [n], weight [n]}

SWAG's CSV (Zellers et al. 2018) has `sent1` (the context), `sent2` (the
start of the next sentence), `ending0..3` and `label`. Each choice is encoded
as the pair (sent1, sent2 + " " + ending), as transformers' run_swag.py does,
and scored on its own by the model; the label is the index of the right one.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence

import numpy as np

from data.classification import TextExample, encode_examples, parse_columns
from data.finetune import read_lines


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
  context: str
  endings: tuple[str, ...]  # the whole second segment of each choice
  label: int | None  # index of the right ending; None: unlabelled (predict)
  origin: str


def read_swag_csv(
  path: str,
  context_column: str = "sent1",
  start_column: str = "sent2",
  ending_columns: Sequence[str] = ("ending0", "ending1", "ending2", "ending3"),
  label_column: str = "label",
) -> list[ChoiceExample]:
  """Every row of a SWAG-format CSV with a header; `start_column` '' when there is none.

  A row with a missing field or a label that is not an ending's index stops the
  read, naming the file and line. A test file without `label_column` gives
  unlabelled examples.
  """
  lines = read_lines(path)
  rows = csv.reader(line for _, line in lines)
  header = next(rows, None)
  if header is None:
    raise ValueError(f"{path}: empty file (expected a CSV header)")
  endings = list(parse_columns(ending_columns))
  needed = [context_column, *([start_column] if start_column else []), *endings]
  missing = [name for name in needed if name not in header]
  if missing:
    raise ValueError(f"{path}:1: no column {missing[0]!r} in the header {header}")
  if len(endings) < 2:
    raise ValueError(f"{path}: ending_columns={endings}: a choice needs 2 endings or more")
  label_index = header.index(label_column) if label_column in header else None
  examples = []
  for fields in rows:
    number = lines[rows.line_num - 1][0]
    if not any(field.strip() for field in fields):
      continue
    origin = f"{path}:{number}"
    if len(fields) != len(header):
      raise ValueError(f"{origin}: {len(fields)} fields, the header has {len(header)}")
    row = dict(zip(header, fields))
    start = row[start_column].strip() if start_column else ""
    choices = tuple(f"{start} {row[name].strip()}".strip() for name in endings)
    label = None
    if label_index is not None and fields[label_index].strip():
      raw = fields[label_index].strip()
      if not raw.isdigit() or int(raw) >= len(endings):
        raise ValueError(
          f"{origin}: label {raw!r} is not the index of one of the {len(endings)} endings"
        )
      label = int(raw)
    examples.append(ChoiceExample(row[context_column].strip(), choices, label, origin))
  return examples


def encode_choices(
  examples: list[ChoiceExample], tokenizer, max_seq_length: int
) -> tuple[dict[str, np.ndarray], dict]:
  """[n, choices, length] token arrays (each choice packed as a pair), labels and weights."""
  if not examples:
    return {}, {"examples": 0, "truncated": 0}
  num_choices = len(examples[0].endings)
  for example in examples:
    if len(example.endings) != num_choices:
      raise ValueError(
        f"{example.origin}: {len(example.endings)} endings, the first example has {num_choices}"
      )
  pairs = [
    TextExample(e.context, ending, None, f"{e.origin} (ending {i})")
    for e in examples
    for i, ending in enumerate(e.endings)
  ]
  flat, stats = encode_examples(pairs, tokenizer, max_seq_length, ())
  n = len(examples)
  arrays = {
    key: flat[key].reshape(n, num_choices, max_seq_length)
    for key in ("input_ids", "token_type_ids", "attention_mask")
  }
  labelled = examples[0].label is not None
  for example in examples:
    if (example.label is not None) != labelled:
      raise ValueError(f"{example.origin}: some examples have a label and some do not")
  arrays["label"] = np.asarray([e.label or 0 for e in examples], np.int32)
  arrays["weight"] = np.ones(n, np.float32)
  return arrays, {"examples": n, "choices": num_choices, "truncated_choices": stats["truncated"]}

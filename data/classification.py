"""Sequence classification data: sentences, sentence pairs, scores, relations.

  GLUE-style TSV, CSV (columns by header name or 0-based index) --read_tsv-->
  JSON lines (CLUE's layout: text and label by key)                --read_jsonl-->
  TFDS by name (glue/sst2, glue/mnli, imdb_reviews, ...) --tfds_examples-->
      TextExample(text_a, text_b, label, origin)
  --encode_examples--> {input_ids, token_type_ids, attention_mask, label, weight}

A regression task (STS-B) keeps float labels; a classification task maps
label strings through the label list. Relation extraction is classification
of a sentence whose two entities are tagged <e1>...</e1> and <e2>...</e2>
(SemEval-2010 task 8's format): `mark_entities` swaps the tags for marker
tokens the vocab already has (R-BERT: '$' around e1, '#' around e2), so no
embedding row is added.

Errors name the file and line (or the TFDS example) they come from.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import re
from collections.abc import Sequence

import numpy as np

from data.finetune import (
  as_text,
  label_ids,
  pack_segments,
  read_json_lines,
  read_lines,
  tfds_source,
  token_ids,
)


@dataclasses.dataclass(frozen=True)
class TextExample:
  text_a: str
  text_b: str | None
  label: str | float | None
  origin: str  # "path:line" or "tfds name[split] #index"


def parse_columns(spec) -> list[str | int]:
  """'sentence1,sentence2' -> names; '3,4' -> 0-based indices; a list passes through."""
  if isinstance(spec, (list, tuple)):
    items = list(spec)
  else:
    items = [item.strip() for item in str(spec).split(",") if item.strip()]
  return [int(item) if isinstance(item, str) and item.isdigit() else item for item in items]


def _column_index(column, header: list[str] | None, path: str) -> int:
  if isinstance(column, int):
    return column
  if header is None:
    raise ValueError(
      f"{path}: column {column!r} is a name but data.has_header is False; "
      "give 0-based column numbers"
    )
  if column not in header:
    raise ValueError(
      f"{path}:1: no column {column!r} in the header {header}; if that row is data, the file "
      "has no header: data.has_header=False and columns by number (data.text_columns=0 "
      "data.label_column=1)"
    )
  return header.index(column)


def file_format(path: str, configured: str = "auto") -> str:
  """'tsv', 'csv' or 'jsonl': data.file_format, or 'auto' by the file's extension (TSV else)."""
  if configured not in ("auto", "tsv", "csv", "jsonl"):
    raise ValueError(f"data.file_format={configured!r}: expected auto, tsv, csv or jsonl")
  if configured != "auto":
    return configured
  extension = os.path.splitext(path)[1].lower()
  return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}.get(
    extension, "tsv"
  )


def _split_fields(text: str, fmt: str) -> list[str]:
  # TSV as GLUE writes it: no quoting (its sentences hold bare quotes). CSV: quoted fields.
  return text.split("\t") if fmt == "tsv" else next(csv.reader([text]))


def _looks_like_header(first: list[str], rows: list[list[str]], label_index: int | None) -> bool:
  """With columns given by number: the first row is a header when its label field is not
  one of the labels below it (which repeat: classes) or is not a number where they are."""
  if label_index is None or not rows:
    return False
  below = [fields[label_index] for fields in rows[:1000] if len(fields) > label_index]
  if label_index >= len(first) or not below:
    return False
  if all(_is_number(value) for value in below):
    return not _is_number(first[label_index])
  return len(set(below)) <= max(20, len(below) // 2) and first[label_index] not in below


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def read_examples(
  path: str,
  text_columns,
  label_column,
  has_header: bool | str = True,
  bad_rows: str = "error",
  fmt: str = "auto",
) -> list[TextExample]:
  """Examples from a TSV, CSV or JSON-lines file (`file_format`)."""
  fmt = file_format(path, fmt)
  if fmt == "jsonl":
    return read_jsonl(path, text_columns, label_column)
  return read_tsv(path, text_columns, label_column, has_header, bad_rows, fmt)


def read_jsonl(path: str, text_keys, label_key) -> list[TextExample]:
  """Examples from JSON lines, one object per line; text and label by key (CLUE's layout).

  A numeric label stays a number for regression and becomes its text for classes.
  """
  keys = parse_columns(text_keys)
  if not 1 <= len(keys) <= 2 or any(isinstance(k, int) for k in keys):
    raise ValueError(
      f"data.text_columns={text_keys!r}: JSON lines name one or two keys, like 'sentence' "
      "or 'sentence1,sentence2'"
    )
  examples = []
  for origin, record in read_json_lines(path):
    for key in keys + ([label_key] if label_key not in (None, "") else []):
      if key not in record:
        raise ValueError(f"{origin}: no key {key!r}; the line has {sorted(record)}")
    texts = [as_text(record[key]).strip() for key in keys]
    for key, value in zip(keys, texts):
      if not value:
        raise ValueError(f"{origin}: empty text in {key!r}")
    label = None if label_key in (None, "") else record[label_key]
    if isinstance(label, bool) or not isinstance(label, (int, float, type(None))):
      label = as_text(label)  # a number stays one (regression); encode reads classes as text
    examples.append(TextExample(texts[0], texts[1] if len(texts) > 1 else None, label, origin))
  if not examples:
    raise ValueError(f"{path}: no rows")
  return examples


def read_tsv(
  path: str,
  text_columns,
  label_column,
  has_header: bool | str = True,
  bad_rows: str = "error",
  fmt: str = "tsv",
) -> list[TextExample]:
  """Examples from a tab-separated file (GLUE's train.tsv / dev.tsv layout), or a CSV one.

  Every row must have as many fields as the header (or, without one, as the
  first row). `bad_rows='skip'` drops rows that do not, and logs how many and
  where (QQP's train.tsv has a few); 'error' (the default) stops at the
  first. Blank lines are skipped. `label_column` None: unlabelled (predict).
  `has_header='auto'`: a header when a column is given by name, else when the
  first row's label does not look like the labels below it (logged).
  """
  if bad_rows not in ("error", "skip"):
    raise ValueError(f"data.bad_rows={bad_rows!r}: expected 'error' or 'skip'")
  lines = [(n, text) for n, text in read_lines(path) if text.strip()]
  if not lines:
    raise ValueError(f"{path}: no rows")
  if has_header == "auto":
    labels = parse_columns(label_column) if label_column not in (None, "") else []
    named = any(isinstance(c, str) for c in parse_columns(text_columns) + labels)
    first = _split_fields(lines[0][1], fmt)
    below = [_split_fields(t, fmt) for _, t in lines[1:1001]]
    label_index = labels[0] if labels and isinstance(labels[0], int) else None
    has_header = named or _looks_like_header(first, below, label_index)
    logging.info("%s: the first row %s %s", path, first, "is a header" if has_header else "is data")
  header = _split_fields(lines[0][1], fmt) if has_header else None
  rows = lines[1:] if has_header else lines
  if not rows:
    raise ValueError(f"{path}: a header and no rows")
  width, width_line = (
    (len(header), 1) if header else (len(_split_fields(rows[0][1], fmt)), rows[0][0])
  )
  text_index = [_column_index(c, header, path) for c in parse_columns(text_columns)]
  if not 1 <= len(text_index) <= 2:
    raise ValueError(f"data.text_columns={text_columns!r}: give one column or two (a pair)")
  label_index = (
    None
    if label_column in (None, "")
    else _column_index(parse_columns(label_column)[0], header, path)
  )
  for index in text_index + ([label_index] if label_index is not None else []):
    if index >= width:
      raise ValueError(
        f"{path}:{width_line}: column {index} asked for, but rows have {width} fields"
      )
  examples, skipped = [], []
  for number, text in rows:
    fields = _split_fields(text, fmt)
    origin = f"{path}:{number}"
    if len(fields) != width:
      if bad_rows == "skip":
        skipped.append(number)
        continue
      raise ValueError(
        f"{origin}: {len(fields)} {'tab' if fmt == 'tsv' else 'comma'}-separated fields, "
        f"expected {width} as on "
        f"line {width_line} (data.bad_rows='skip' drops such rows)"
      )
    texts = [fields[i].strip() for i in text_index]
    for column, value in zip(text_index, texts):
      if not value:
        raise ValueError(f"{origin}: empty text in column {column}")
    label = None if label_index is None else fields[label_index].strip()
    examples.append(TextExample(texts[0], texts[1] if len(texts) > 1 else None, label, origin))
  if skipped:
    logging.warning(
      "%s: skipped %d malformed rows (lines %s%s)",
      path,
      len(skipped),
      skipped[:10],
      " ..." if len(skipped) > 10 else "",
    )
  return examples


def tfds_examples(
  name: str, split: str, text_keys, label_key: str = "label", data_dir: str | None = None
) -> tuple[list[TextExample], list[str] | None]:
  """Examples of a TFDS text dataset, and its label names (None for a float label).

  An example whose label is -1 (the GLUE test splits) is an error: it has no
  gold label to train or score on.
  """
  source, features = tfds_source(name, split, data_dir)
  keys = parse_columns(text_keys)
  label_names = getattr(features[label_key], "names", None) if label_key in features else None
  examples = []
  for index in range(len(source)):
    record = source[index]
    origin = f"tfds {name}[{split}] #{index}"
    for key in keys + [label_key]:
      if key not in record:
        raise ValueError(f"{origin}: no key {key!r}; keys are {sorted(record)}")
    texts = [as_text(record[key]).strip() for key in keys]
    for key, text in zip(keys, texts):
      if not text:
        raise ValueError(f"{origin}: empty text in {key!r}")
    raw_label = np.asarray(record[label_key]).item()
    if label_names is not None:
      if raw_label < 0:
        raise ValueError(f"{origin}: label {raw_label} (unlabelled split)")
      label = label_names[int(raw_label)]
    else:
      label = float(raw_label)
    examples.append(TextExample(texts[0], texts[1] if len(texts) > 1 else None, label, origin))
  if not examples:
    raise ValueError(f"tfds {name}[{split}] has no examples")
  return examples, label_names


_ENTITY_TAGS = ("<e1>", "</e1>", "<e2>", "</e2>")


def mark_entities(text: str, markers: Sequence[str], origin: str = "text") -> str:
  """'<e1>x</e1> ... <e2>y</e2>' -> '$ x $ ... # y #' with markers ($, $, #, #)."""
  if len(markers) != 4:
    raise ValueError(
      f"data.entity_markers={list(markers)}: give 4 (e1 open, e1 close, e2 open, e2 close)"
    )
  counts = {tag: text.count(tag) for tag in _ENTITY_TAGS}
  if any(count != 1 for count in counts.values()):
    raise ValueError(f"{origin}: each of {list(_ENTITY_TAGS)} must occur once, found {counts}")
  for tag, opening in (("e1", "<e1>"), ("e2", "<e2>")):
    if text.index(opening) > text.index(f"</{tag}>"):
      raise ValueError(f"{origin}: </{tag}> comes before <{tag}>")
  for tag, marker in zip(_ENTITY_TAGS, markers):
    text = text.replace(tag, f" {marker} ")
  return re.sub(r"\s+", " ", text).strip()


def mark_relation_examples(examples: list[TextExample], markers) -> list[TextExample]:
  return [
    dataclasses.replace(e, text_a=mark_entities(e.text_a, markers, e.origin)) for e in examples
  ]


def name_labels(
  examples: dict[str, list[TextExample]], values: Sequence[str], names: Sequence[str]
) -> dict[str, list[TextExample]]:
  """Examples whose label is values[i] get names[i] instead ('0' -> 'negative'); a label
  that is none of `values` stays as it is, for `encode_examples` to name as unknown."""
  if len(names) != len(values):
    raise ValueError(
      f"data.label_names has {len(names)} names for {len(values)} labels {list(values)}"
    )
  rename = dict(zip(map(str, values), map(str, names)))
  return {
    split: [dataclasses.replace(e, label=rename.get(str(e.label), e.label)) for e in split_examples]
    for split, split_examples in examples.items()
  }


def resolve_labels(configured: Sequence[str], train: list[TextExample]) -> list[str]:
  """The configured label list, or the sorted labels of the training set."""
  if configured:
    return [str(label) for label in configured]
  labels = sorted({str(e.label) for e in train})
  logging.info("labels taken from the training data: %s", labels)
  return labels


def first_k_per_class(examples: list, labels: Sequence[str], k: int, seed: int) -> list:
  """k-shot training set: the first k examples of each label after a shuffle by `seed`."""
  label_ids([str(e.label) for e in examples], labels, [e.origin for e in examples])  # all known
  order = np.random.default_rng(seed).permutation(len(examples))
  taken = {str(label): 0 for label in labels}
  chosen = []
  for index in order:
    label = str(examples[index].label)
    if taken[label] < k:
      taken[label] += 1
      chosen.append(examples[index])
  short = {label: n for label, n in taken.items() if n < k}
  if short:
    raise ValueError(
      f"data.train_examples_per_class={k}, but the training data has only "
      f"{short} examples of these labels"
    )
  return chosen


def encode_examples(
  examples: list[TextExample], tokenizer, max_seq_length: int, labels: Sequence[str] | None
) -> tuple[dict[str, np.ndarray], dict]:
  """Token ids and labels of every example; `labels` None: a regression task.

  Text longer than max_seq_length is truncated (see pack_segments); the stats
  and the log say how many examples were.
  """
  if not examples:
    return {}, {"examples": 0, "truncated": 0}
  ids_a = token_ids(tokenizer, [e.text_a for e in examples])
  pairs = examples[0].text_b is not None
  ids_b = token_ids(tokenizer, [e.text_b or "" for e in examples]) if pairs else None
  rows, truncated = [], 0
  for i, example in enumerate(examples):
    if not ids_a[i] or (pairs and not ids_b[i]):
      raise ValueError(
        f"{example.origin}: the text has no tokens (only spaces or control characters)"
      )
    packed, cut = pack_segments(ids_a[i], ids_b[i] if pairs else None, max_seq_length, tokenizer)
    rows.append(packed)
    truncated += cut
  arrays = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
  origins = [e.origin for e in examples]
  if examples[0].label is None:  # unlabelled text (predict)
    arrays["label"] = np.zeros(len(examples), np.float32 if labels is None else np.int32)
  elif labels is None:
    arrays["label"] = _float_labels(examples)
  else:
    arrays["label"] = label_ids([str(e.label) for e in examples], labels, origins)
  arrays["weight"] = np.ones(len(examples), np.float32)
  if truncated:
    logging.warning(
      "%d of %d examples (from %s) are longer than max_seq_length=%d and were truncated",
      truncated,
      len(examples),
      examples[0].origin.split(":")[0],
      max_seq_length,
    )
  return arrays, {"examples": len(examples), "truncated": truncated}


def _float_labels(examples: list[TextExample]) -> np.ndarray:
  values = np.empty(len(examples), np.float32)
  for row, example in enumerate(examples):
    try:
      values[row] = float(example.label)
    except (TypeError, ValueError):
      raise ValueError(
        f"{example.origin}: label {example.label!r} is not a number (data.regression is True)"
      ) from None
  return values

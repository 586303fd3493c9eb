"""CLUE's formats as distributed: CLUENER2020 entity spans <-> character BIO tags.

CLUENER2020 is JSON lines, one text each, its entities by type and surface
string with inclusive character spans:

  {"text": "浙商银行企业信贷部叶老桂博士则...", "label": {"name": {"叶老桂": [[9, 11]]},
   "company": {"浙商银行": [[0, 3]]}}}

Each character is a word for the token-classification task (BERT tokenizes
CJK text one character per token); tags are BIO over characters, so the round
trip spans -> tags -> spans is exact. Test files have no "label": their
sentences carry no tags.
"""

from __future__ import annotations

from data.finetune import read_json_lines
from data.ner import TaggedSentence, entity_spans


def read_cluener(path: str) -> list[TaggedSentence]:
  """CLUENER2020 JSON lines as character-tagged sentences; a bad line is named by file:line."""
  sentences = []
  for where, record in read_json_lines(path):
    if not isinstance(record.get("text"), str):
      raise ValueError(f"{where}: a CLUENER line needs a 'text' string")
    text = record["text"]
    label = record.get("label")
    tags = None if label is None else tuple(bio_tags(text, label, where))
    sentences.append(TaggedSentence(tuple(text), tags, where))
  if not sentences:
    raise ValueError(f"{path} holds no CLUENER lines")
  return sentences


def bio_tags(text: str, label, where: str) -> list[str]:
  """BIO tags per character from a CLUENER `label` (type -> entity -> [[start, end], ...])."""
  if not isinstance(label, dict):
    raise ValueError(f"{where}: 'label' must map entity types to entities")
  tags = ["O"] * len(text)
  for kind, entities in label.items():
    if not isinstance(entities, dict):
      raise ValueError(f"{where}: label[{kind!r}] must map entity strings to spans")
    for entity, spans in entities.items():
      for span in spans:
        pair = isinstance(span, list) and len(span) == 2
        if not (pair and all(isinstance(i, int) for i in span)):
          raise ValueError(f"{where}: {kind} {entity!r}: span {span!r} is not [start, end]")
        start, end = span
        if not 0 <= start <= end < len(text):
          raise ValueError(
            f"{where}: {kind} {entity!r}: span [{start}, {end}] lies outside the text "
            f"({len(text)} characters)"
          )
        if text[start : end + 1] != entity:
          raise ValueError(
            f"{where}: {kind} {entity!r}: span [{start}, {end}] holds "
            f"{text[start : end + 1]!r}, not the entity"
          )
        if any(tag != "O" for tag in tags[start : end + 1]):
          raise ValueError(f"{where}: {kind} {entity!r}: span [{start}, {end}] overlaps another")
        tags[start : end + 1] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start)
  return tags


def cluener_label(text: str, tags) -> dict:
  """The CLUENER `label` of character BIO tags: type -> entity string -> [[start, end], ...]."""
  label: dict[str, dict[str, list[list[int]]]] = {}
  for kind, start, end in entity_spans(list(tags)):
    label.setdefault(kind, {}).setdefault(text[start : end + 1], []).append([start, end])
  return label

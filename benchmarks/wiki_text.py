"""SQuAD v1.1's Wikipedia paragraphs as a pretraining corpus in the BERT text format.

No WikiText copy can be had on these machines; the SQuAD articles are real
encyclopaedic prose, so they stand in for it in CPU benchmarks. One article is
one document (NSP pairs need document boundaries), each paragraph is split with
`data.corpus.split_sentences`, the same splitter every other source uses.

  python -m benchmarks.wiki_text --squad_json=/work/shared/data/squad_v1/train-subset-v1.1.json \
      --out=/tmp/squad_wiki.txt
"""

from __future__ import annotations

import json
import os

from data.corpus import split_sentences

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SQUAD_JSON = os.path.join(
  REPO, "..", "shared", "data", "squad_v1", "train-subset-v1.1.json"
)
DEFAULT_OUT = "/tmp/squad_wiki.txt"


def squad_documents(squad_json: str) -> list[list[str]]:
  """One list of sentences per article, in file order; empty articles dropped."""
  with open(squad_json, encoding="utf-8") as f:
    articles = json.load(f)["data"]
  documents = []
  for article in articles:
    sentences = [
      sentence
      for paragraph in article["paragraphs"]
      for sentence in split_sentences(paragraph["context"])
    ]
    if sentences:
      documents.append(sentences)
  return documents


def write_wiki_text(squad_json: str = DEFAULT_SQUAD_JSON, out: str = DEFAULT_OUT) -> str:
  """Writes one sentence per line, a blank line between articles; returns `out`.

  The data stays outside the repo: it is read from `squad_json` and written
  under /tmp (or wherever `out` says) at run time.
  """
  documents = squad_documents(squad_json)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w", encoding="utf-8") as f:
    f.write("\n\n".join("\n".join(document) for document in documents) + "\n")
  sentences = sum(len(d) for d in documents)
  words = sum(len(s.split()) for d in documents for s in d)
  print(f"wiki text: {len(documents)} articles, {sentences:,} sentences, {words:,} words -> {out}")
  return out


if __name__ == "__main__":
  from absl import app, flags

  flags.DEFINE_string("squad_json", DEFAULT_SQUAD_JSON, "SQuAD v1.1 JSON to read.")
  flags.DEFINE_string("out", DEFAULT_OUT, "Text file to write.")
  app.run(lambda argv: write_wiki_text(flags.FLAGS.squad_json, flags.FLAGS.out) and None)

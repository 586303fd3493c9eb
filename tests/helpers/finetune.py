"""Small data sets, a vocab and tiny configs that the fine-tuning tests make for themselves.

Each task is learnable from a handful of words: a sentence is positive when it
says 'good', a capitalised name is a person or a place, the answer to 'where
did X go' is the place in the context.
"""

import json

import numpy as np

from configs.finetune import common
from helpers import set_keys

PEOPLE = ["alice", "bob", "carol", "dave"]
PLACES = ["paris", "rome", "london", "berlin"]
FILLER = "the cat dog sat ran on under a big small red house tree river and then saw".split()
SENTIMENT = ["good", "bad"]
QUESTION = ["where", "did", "go", "?", "to", "went", "new", "york"]
PIECES = ["##s", "##ing", "$", "#", ".", ","]


def write_vocab(path):
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  words = sorted(set(PEOPLE + PLACES + FILLER + SENTIMENT + QUESTION))
  path.write_text("\n".join(specials + words + PIECES) + "\n", encoding="utf-8")
  return str(path)


def sentiment_rows(n, seed):
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(n):
    label = int(rng.integers(2))
    words = list(rng.choice(FILLER, rng.integers(3, 8)))
    words.insert(int(rng.integers(len(words) + 1)), SENTIMENT[1 - label])
    rows.append((" ".join(words).capitalize() + ".", str(label)))
  return rows


def write_tsv(path, rows, header=("sentence", "label")):
  lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return str(path)


def ner_sentences(n, seed):
  """(words, BIO tags) with people, places and the two-word place 'new york'."""
  rng = np.random.default_rng(seed)
  sentences = []
  for _ in range(n):
    words, tags = [], []
    for _ in range(rng.integers(4, 9)):
      kind = rng.integers(5)
      if kind == 0:
        words.append(str(rng.choice(PEOPLE)).capitalize())
        tags.append("B-PER")
      elif kind == 1:
        words.append(str(rng.choice(PLACES)).capitalize())
        tags.append("B-LOC")
      elif kind == 2 and (not tags or tags[-1] != "B-LOC"):
        words += ["New", "York"]
        tags += ["B-LOC", "I-LOC"]
      else:
        words.append(str(rng.choice(FILLER)))
        tags.append("O")
    sentences.append((words + ["."], tags + ["O"]))
  return sentences


def to_iob1(tags):
  """BIO -> IOB1: B- only where an entity touches one of the same type."""
  out = []
  for i, tag in enumerate(tags):
    if tag.startswith("B-") and not (i and tags[i - 1][2:] == tag[2:] and tags[i - 1] != "O"):
      out.append("I-" + tag[2:])
    else:
      out.append(tag)
  return out


def write_conll(path, sentences, iob1=False):
  """CoNLL-2003 layout: word POS chunk NER, -DOCSTART- first."""
  lines = ["-DOCSTART- -X- -X- O", ""]
  for words, tags in sentences:
    for word, tag in zip(words, to_iob1(tags) if iob1 else tags):
      lines.append(f"{word} NN I-NP {tag}")
    lines.append("")
  path.write_text("\n".join(lines), encoding="utf-8")
  return str(path)


def squad_data(n, seed):
  rng = np.random.default_rng(seed)
  articles = []
  for i in range(n):
    person, place = str(rng.choice(PEOPLE)).capitalize(), str(rng.choice(PLACES)).capitalize()
    before = " ".join(rng.choice(FILLER, rng.integers(2, 12)))
    after = " ".join(rng.choice(FILLER, rng.integers(2, 12)))
    context = f"{before.capitalize()}. {person} went to {place} and then sat. {after}."
    start = context.index(f"to {place}") + 3
    qas = [
      {
        "id": f"q{i}",
        "question": f"Where did {person} go?",
        "answers": [{"text": place, "answer_start": start}],
      }
    ]
    articles.append({"title": f"t{i}", "paragraphs": [{"context": context, "qas": qas}]})
  return {"version": "1.1", "data": articles}


def write_squad(path, data):
  path.write_text(json.dumps(data, indent=1), encoding="utf-8")
  return str(path)


# The encoder of every tiny config here (transformers' BertConfig keys).
TINY = dict(
  vocab_size=64,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
  max_position_embeddings=64,
)


def tiny_config(task, tmp_path, **overrides):
  c = common.get_config(task, "tiny")
  c.model.update(TINY)
  c.data.update(vocab=write_vocab(tmp_path / "vocab.txt"), max_seq_length=32)
  c.init.hf_dir = ""
  c.batch_size = 8
  c.epochs = 3
  c.optimizer.update(lr=3e-3)
  c.checkpoint.update(async_save=False)
  c.log_every_steps = 2
  c.mesh.shape = dict(data=-1, fsdp=1, tensor=1)
  return set_keys(c, overrides)


def classification_config(tmp_path, n_train=64, n_eval=20, **overrides):
  c = tiny_config("classification", tmp_path)
  c.data.update(
    train_path=write_tsv(tmp_path / "train.tsv", sentiment_rows(n_train, 0)),
    eval_path=write_tsv(tmp_path / "dev.tsv", sentiment_rows(n_eval, 1)),
    labels=("0", "1"),
    metrics=("accuracy", "f1", "mcc"),
  )
  return set_keys(c, overrides)


def ner_config(tmp_path, **overrides):
  c = tiny_config("token_classification", tmp_path)
  c.data.update(
    train_path=write_conll(tmp_path / "train.conll", ner_sentences(64, 0), iob1=True),
    eval_path=write_conll(tmp_path / "dev.conll", ner_sentences(20, 1)),
  )
  c.early_stopping.update(metric="f1")
  return set_keys(c, overrides)


def squad_config(tmp_path, **overrides):
  c = tiny_config("question_answering", tmp_path)
  c.data.update(
    train_path=write_squad(tmp_path / "train.json", squad_data(48, 0)),
    eval_path=write_squad(tmp_path / "dev.json", squad_data(12, 1)),
    max_seq_length=32,
    doc_stride=8,
    max_query_length=8,
  )
  c.early_stopping.update(metric="f1")
  return set_keys(c, overrides)


def write_hf_dir(path, vocab_file, **overrides):
  """A random tiny transformers BertModel saved as an HF directory with the tests' vocab:
  (directory, its tensors, the torch model)."""
  import shutil

  import torch
  from transformers import BertModel

  from helpers import tiny_hf_config

  torch.manual_seed(0)
  model = BertModel(tiny_hf_config(**dict(TINY, **overrides))).eval()
  model.save_pretrained(str(path))
  shutil.copy(vocab_file, path / "vocab.txt")
  return str(path), {k: v.detach().numpy() for k, v in model.state_dict().items()}, model

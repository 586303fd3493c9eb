"""Document sources: BERT text files, TFDS by name, the embedded corpus."""

import pytest

from data.corpus import embedded_corpus, read_bert_text_files, split_sentences, tfds_documents

# ---------------------------------------------------------------- sentences


def test_split_sentences_splits_at_end_punctuation_before_a_capital():
  text = 'It rained. Then it stopped! Did it? "Yes," he said. 3 days later.'
  assert split_sentences(text) == [
    "It rained.",
    "Then it stopped!",
    "Did it?",
    '"Yes," he said.',
    "3 days later.",
  ]


def test_split_sentences_keeps_decimals_lowercase_continuations_and_wrapped_lines():
  text = "Pi is 3.14 or so. Call os.path.join() first.\nThis line\nwraps.\n\nNew paragraph"
  assert split_sentences(text) == [
    "Pi is 3.14 or so.",
    "Call os.path.join() first.",
    "This line wraps.",
    "New paragraph",
  ]


# ---------------------------------------------------------------- text files


def write(path, text):
  path.write_text(text, encoding="utf-8")
  return str(path)


def test_bert_text_files_split_documents_at_blank_lines(tmp_path):
  path = write(tmp_path / "a.txt", "One.\nTwo.\n\n\nThree.\n  \nFour.\nFive.\n")
  assert read_bert_text_files([path]) == [["One.", "Two."], ["Three."], ["Four.", "Five."]]


def test_single_sentence_documents_are_kept(tmp_path):
  path = write(tmp_path / "a.txt", "Alone.\n\nAlso alone.\n")
  assert read_bert_text_files([path]) == [["Alone."], ["Also alone."]]


def test_glob_patterns_expand_in_sorted_order_and_files_end_documents(tmp_path):
  write(tmp_path / "b.txt", "Bee.")
  write(tmp_path / "a.txt", "Ay.\nAy two.")
  assert read_bert_text_files([str(tmp_path / "*.txt")]) == [["Ay.", "Ay two."], ["Bee."]]


def test_missing_file_names_the_pattern(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    read_bert_text_files([str(tmp_path / "nope.txt")])
  with pytest.raises(FileNotFoundError, match=r"shard-\*"):
    read_bert_text_files([str(tmp_path / "shard-*")])


def test_non_utf8_bytes_are_reported_as_file_and_line(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_bytes(b"Fine.\n\nStill fine.\nBad \xff byte.\n")  # 0xff never occurs in UTF-8
  with pytest.raises(ValueError, match=r"bad\.txt:4: not valid UTF-8"):
    read_bert_text_files([str(path)])


def test_corpus_without_documents_is_refused(tmp_path):
  path = write(tmp_path / "blank.txt", "\n  \n\n")
  with pytest.raises(ValueError, match="no documents.*blank.txt"):
    read_bert_text_files([path])


def test_utf8_byte_order_mark_is_not_text(tmp_path):
  path = tmp_path / "bom.txt"
  path.write_bytes(b"\xef\xbb\xbfFirst.\n")
  assert read_bert_text_files([str(path)]) == [["First."]]


# ---------------------------------------------------------------- embedded corpus


@pytest.fixture(scope="module")
def stdlib_documents():
  return embedded_corpus()


def test_embedded_corpus_is_big_enough_to_pretrain_a_small_model(stdlib_documents):
  assert len(stdlib_documents) >= 200
  characters = sum(len(s) for document in stdlib_documents for s in document)
  assert characters > 1_000_000
  assert all(isinstance(s, str) and s for document in stdlib_documents for s in document)


def test_embedded_corpus_is_deterministic(stdlib_documents):
  assert embedded_corpus() == stdlib_documents


def test_embedded_corpus_has_prose_sentences_only(stdlib_documents):
  sentences = [s for document in stdlib_documents for s in document]
  assert min(len(s.split()) for s in sentences) >= 3
  assert not any(s.startswith((">>>", "...")) for s in sentences)
  assert not any(s.startswith(("===", "+--", "|")) for s in sentences)  # rules, tables
  assert sum(len(document) >= 2 for document in stdlib_documents) > 0.9 * len(stdlib_documents)


def test_embedded_corpus_refuses_fewer_documents_than_asked():
  with pytest.raises(RuntimeError, match="min_documents=100000"):
    embedded_corpus(min_documents=100_000)


# ---------------------------------------------------------------- TFDS (mocked, offline)


@pytest.mark.parametrize("name", ["wikipedia/20230601.en", "c4/en", "lm1b"])
def test_tfds_documents_reads_text_datasets_by_name(name):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    documents = tfds_documents(name, split="train")
  assert len(documents) == 5
  assert all(isinstance(s, str) and s for document in documents for s in document)


def test_tfds_documents_stops_at_max_documents():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    assert len(tfds_documents("lm1b", split="train", max_documents=2)) == 2


def test_tfds_documents_names_a_missing_text_key():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match=r"no key 'body'; keys are \['text', 'title'\]"):
      tfds_documents("wikipedia/20230601.en", split="train", text_key="body")

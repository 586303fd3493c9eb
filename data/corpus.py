"""Sources of pretraining documents: local text files, TFDS, and a built-in one.

A document is a list of sentence strings, in order. Next-sentence prediction
needs the order and the document boundaries, so every source keeps both.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import os
import re
import warnings
from collections.abc import Sequence

# Paragraphs end at blank lines; single newlines inside one are line wrapping.
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A sentence ends at . ! or ? (maybe closed by a quote or bracket), followed by
# whitespace and something that can open a sentence: a capital, digit or quote.
_SENTENCE_BREAK = re.compile(
  r"(?:(?<=[.!?])|(?<=[.!?][\"')\]\u201d\u2019]))\s+(?=[\"'(\[\u201c\u2018]?[A-Z0-9])"
)


def split_sentences(text: str) -> list[str]:
  """Paragraphs at blank lines, then sentences at [.!?] + space + capital.

  Simple on purpose: NSP only needs sentence boundaries that are mostly
  right, and a regex behaves the same on every machine. It splits after
  abbreviations such as "Dr. Smith"; that costs little for pretraining.
  """
  sentences = []
  for paragraph in _PARAGRAPH_BREAK.split(text):
    paragraph = " ".join(paragraph.split())
    if paragraph:
      sentences.extend(s for s in _SENTENCE_BREAK.split(paragraph) if s)
  return sentences


# --------------------------------------------------------------------------
# google-research/bert text files


def read_bert_text_files(paths: Sequence[str]) -> list[list[str]]:
  """Documents from files in the google-research/bert pretraining format.

  One sentence per line, a blank line between documents; a file's end also
  ends a document. `paths` may hold glob patterns. Documents of a single
  sentence are kept: they cannot give an IsNext pair, but they still serve
  as the "A" segment of a pair whose B is drawn from another document, and
  as the source of random-next B segments.
  """
  if isinstance(paths, str):
    paths = [paths]
  documents: list[list[str]] = []
  for path in expand_patterns(paths):
    documents.extend(_read_one_file(path))
  if not documents:
    raise ValueError(f"no documents (no non-blank lines) in {list(paths)}")
  return documents


def read_table_documents(paths: Sequence[str], text_columns) -> list[list[str]]:
  """Documents from the text columns of TSV / CSV / JSON-lines tables: one row, one document.

  For continued pretraining on a task's own unlabeled sentences (Gururangan et al.
  2020): the fine-tuning files serve as they are, read as the fine-tuning task reads
  them (a header names the columns; a pair's two texts are one document's sentences).
  """
  from data import classification

  if isinstance(paths, str):
    paths = [paths]
  documents = []
  for path in expand_patterns(paths):
    for example in classification.read_examples(path, text_columns, None, has_header=True):
      texts = [example.text_a] + ([example.text_b] if example.text_b else [])
      documents.append([s for text in texts for s in split_sentences(text)])
  return [document for document in documents if document]


def expand_patterns(patterns: Sequence[str]) -> list[str]:
  """Files matching comma-free glob patterns, local or gs:// (magic in the last part only)."""
  files = []
  for pattern in patterns:
    if "://" in pattern:
      from etils import epath

      parent, name = pattern.rsplit("/", 1)
      matches = sorted(os.fspath(p) for p in epath.Path(parent).glob(name))
    else:
      matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
      matches = [m for m in matches if os.path.isfile(m)]
    if not matches:
      raise FileNotFoundError(f"no file matches {pattern}")
    files.extend(matches)
  return files


def _read_one_file(path: str) -> list[list[str]]:
  """Decode line by line so a bad byte is reported as file:line."""
  documents, current = [], []
  with open(path, "rb") as f:
    for line_number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(
          f"{path}:{line_number}: not valid UTF-8 ({e.reason} at byte {e.start})"
        ) from None
      if line_number == 1:
        line = line.lstrip("\ufeff")
      line = line.strip()
      if line:
        current.append(line)
      elif current:
        documents.append(current)
        current = []
  if current:
    documents.append(current)
  return documents


# --------------------------------------------------------------------------
# TensorFlow Datasets


def tfds_source(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source` of a text dataset: random access by example index, no TensorFlow."""
  import tensorflow_datasets as tfds
  import tensorflow_datasets.text  # noqa: F401  (registers wikipedia, c4, ...)

  return tfds.data_source(name, split=split, data_dir=data_dir or None)


def tfds_document(example: dict, text_key: str, where: str) -> list[str]:
  """One TFDS example as a document: its `text_key` text split into sentences."""
  if text_key not in example:
    raise ValueError(f"{where} has no key {text_key!r}; keys are {sorted(example)}")
  text = example[text_key]
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  return split_sentences(str(text))


def tfds_documents(
  name: str,
  split: str,
  text_key: str = "text",
  data_dir: str | None = None,
  max_documents: int | None = None,
) -> list[list[str]]:
  """Documents from a TFDS text dataset ('wikipedia/20230601.en', 'c4/en', 'lm1b').

  Uses `tfds.data_source` (random access over ArrayRecord files), the one
  TFDS reader that works without TensorFlow. One example is one document;
  for lm1b, whose examples are single shuffled sentences, that means no
  IsNext pairs at all, so prefer wikipedia or c4 for NSP. Text builders
  (wikipedia, c4) are registered only by importing tensorflow_datasets.text.
  """
  source = tfds_source(name, split, data_dir)
  count = len(source) if max_documents is None else min(len(source), max_documents)
  documents = []
  for index in range(count):
    sentences = tfds_document(source[index], text_key, f"{name}[{split}] example {index}")
    if sentences:
      documents.append(sentences)
  if not documents:
    raise ValueError(f"{name}[{split}] gave no documents with text in {text_key!r}")
  return documents


# --------------------------------------------------------------------------
# The embedded corpus: standard-library docstrings

# Standard-library modules found in CPython >= 3.10 on every platform and
# importable without side effects or deprecation warnings (optional ones such
# as ssl and sqlite3 are skipped where missing). Sorted, so the corpus order is
# fixed.
STDLIB_MODULES = tuple(
  sorted(
    """
_collections_abc _pydecimal _pyio abc argparse array ast asyncio.base_events
asyncio.events asyncio.futures asyncio.locks asyncio.protocols asyncio.queues
asyncio.runners asyncio.streams asyncio.subprocess asyncio.tasks asyncio.transports
base64 bdb binascii builtins bz2 calendar cmath cmd code codecs codeop collections
colorsys compileall concurrent.futures concurrent.futures._base
concurrent.futures.process concurrent.futures.thread configparser contextlib copy
copyreg csv dataclasses datetime decimal difflib dis doctest
email._header_value_parser email._policybase email.charset email.contentmanager
email.encoders email.feedparser email.generator email.header email.headerregistry
email.iterators email.message email.mime.base email.mime.multipart email.mime.text
email.parser email.policy email.utils enum filecmp fileinput fnmatch fractions
ftplib functools gc getopt gettext glob graphlib gzip hashlib heapq hmac html
html.parser http http.client http.cookiejar http.cookies http.server imaplib
importlib importlib.abc importlib.machinery importlib.metadata importlib.util
inspect io ipaddress itertools json json.decoder json.encoder keyword linecache
locale logging logging.config logging.handlers lzma mailbox math mimetypes
modulefinder multiprocessing.connection multiprocessing.context
multiprocessing.managers multiprocessing.pool multiprocessing.queues
multiprocessing.synchronize netrc ntpath numbers operator optparse os pathlib pdb
pickle pickletools pkgutil platform plistlib poplib posixpath pprint profile pstats
py_compile pyclbr pydoc queue quopri random re reprlib runpy sched secrets select
selectors shelve shlex shutil smtplib socket socketserver sqlite3 ssl statistics
string struct subprocess symtable sys sysconfig tabnanny tarfile tempfile textwrap
threading time timeit tokenize trace traceback tracemalloc types typing unicodedata
unittest.case unittest.loader unittest.main unittest.mock unittest.result
unittest.runner unittest.suite urllib.error urllib.parse urllib.request
urllib.response uuid warnings wave weakref webbrowser wsgiref.handlers
wsgiref.headers wsgiref.simple_server wsgiref.util wsgiref.validate xml.dom.minidom
xml.dom.pulldom xml.etree.ElementTree xml.sax.handler xml.sax.saxutils
xml.sax.xmlreader xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib
""".split()
  )
)

_MIN_WORDS_PER_SENTENCE = 3


def embedded_corpus(min_documents: int = 100) -> list[list[str]]:
  """Standard-library documentation as a corpus that needs no download.

  One module is one document: its own docstring, then those of its public
  classes, methods and functions, in sorted name order. After the modules
  come the topics of `help()` (pydoc_data.topics: the language reference as
  prose), one topic per document; docstrings alone give only ~1 MB. Doctest
  lines and sentences under three words are dropped.

  On CPython 3.11.x (measured): 286 documents (207 modules, 79 help
  topics), 16,202 sentences, 224,000 words, 1.41 MB of text, built in
  ~0.2 s. Other versions differ a little because
  their docstrings do. Raises RuntimeError when fewer than `min_documents`
  documents come out (a stripped-down Python).
  """
  texts_per_document = [_module_docstrings(module) for module in _import_stdlib_modules()]
  texts_per_document += [[text] for text in _help_topics()]
  documents = []
  for texts in texts_per_document:
    sentences = [
      sentence
      for text in texts
      for sentence in split_sentences(_drop_non_prose_lines(text))
      if len(sentence.split()) >= _MIN_WORDS_PER_SENTENCE
    ]
    if sentences:
      documents.append(sentences)
  if len(documents) < min_documents:
    raise RuntimeError(
      f"embedded corpus has {len(documents)} documents, fewer than "
      f"min_documents={min_documents}; is the standard library complete?"
    )
  return documents


def _import_stdlib_modules() -> list:
  modules = []
  for name in STDLIB_MODULES:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      try:
        modules.append(importlib.import_module(name))
      except ImportError:
        continue
  return modules


def _help_topics() -> list[str]:
  try:
    from pydoc_data.topics import topics
  except ImportError:
    return []
  return [topics[key] for key in sorted(topics)]


def _module_docstrings(module) -> list[str]:
  """Docstrings written in this module, not inherited or re-exported ones."""
  docs = [module.__doc__ or ""]
  for name, obj in sorted(vars(module).items()):
    if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
      continue
    if inspect.isclass(obj):
      docs.append(vars(obj).get("__doc__") or "")
      docs.extend(_own_method_docstrings(obj))
    elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
      docs.append(obj.__doc__ or "")
  return [inspect.cleandoc(doc) for doc in docs if isinstance(doc, str) and doc]


def _own_method_docstrings(cls) -> list[str]:
  docs = []
  for name, member in sorted(vars(cls).items()):
    if name.startswith("_"):
      continue
    if isinstance(member, (staticmethod, classmethod)):
      member = member.__func__
    if (
      inspect.isfunction(member)
      or inspect.ismethoddescriptor(member)
      or isinstance(member, property)
    ):
      docs.append(member.__doc__ or "")
  return docs


# Heading underlines and table rules ("-----", "==== ====", "+---+---+"), and
# grid-table rows ("| a | b |").
_RULE_OR_TABLE_LINE = re.compile(r"^\s*(?:[-=*~^#+:| ]{3,}|\|.*)$")


def _drop_non_prose_lines(doc: str) -> str:
  """Doctest lines are code; rules and tables would glue onto sentences."""
  return "\n".join(
    line
    for line in doc.splitlines()
    if not line.lstrip().startswith((">>>", "...")) and not _RULE_OR_TABLE_LINE.match(line)
  )

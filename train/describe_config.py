"""Every field of a config with its value and the comment written beside it in configs/.

`python -m train.main --config=configs/finetune/sst2.py --show_config` prints
this and exits: `--helpfull` lists flags, and a config's fields are not flags.
Comments are read from the config file and the modules of configs/ it imported
(a field's own line, or the comment lines just above it), keyed by the field's
dotted path as the file writes it (`c.data.vocab = ...`, or `vocab=...` inside
`c.data = ConfigDict(dict(...))`); a field written outside such a section (a
function that builds one) by its own name.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tokenize

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
_ATTRIBUTE = re.compile(r"^\s*(?:c|config)\.([\w.]+)\s*=[^=]")  # c.data.vocab = ...
_SECTION = re.compile(r"^\s*(?:c|config)\.([\w.]+)\s*=\s*(?:ml_collections\.)?ConfigDict\(")
_KEYWORD = re.compile(r"^(\s*)(\w+)\s*=[^=]")  # vocab=... inside dict(...)
_NESTED = re.compile(r"^(\s*)(\w+)\s*=\s*(?:dict|ml_collections\.ConfigDict)\(")


def _comments_by_line(source: str) -> dict[int, str]:
  comments = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comments[token.start[0]] = token.string.lstrip("#").strip()
  return comments


def file_comments(path: str) -> dict[str, str]:
  """{dotted field path: comment} of one config module."""
  with open(path) as f:
    source = f.read()
  comments = _comments_by_line(source)
  found, pending, sections = {}, [], []  # sections: (indent, dotted prefix)
  for number, line in enumerate(source.splitlines(), 1):
    code = line.split("#", 1)[0] if number in comments else line
    if not code.strip():
      if number in comments:
        pending.append(comments[number])  # a comment line: for the field below it
      else:
        pending = []
      continue
    indent = len(code) - len(code.lstrip())
    while sections and indent <= sections[-1][0]:
      sections.pop()
    key = None
    if m := _SECTION.match(code):
      sections.append((indent, m[1]))
      key = m[1]
    elif m := _ATTRIBUTE.match(code):
      key = m[1]
    elif sections and (m := _NESTED.match(code)):
      key = f"{sections[-1][1]}.{m[2]}"
      sections.append((indent, key))
    elif m := _KEYWORD.match(code):  # outside a known section (a function building one): bare
      key = f"{sections[-1][1]}.{m[2]}" if sections else m[2]
    text = " ".join([*pending, comments.get(number, "")]).strip()
    pending = []
    if key and text:
      found.setdefault(key, text)
  return found


def all_comments(config_file: str) -> dict[str, str]:
  """The config file's comments first, then those of the configs/ modules it imported."""
  found = file_comments(config_file) if os.path.isfile(config_file) else {}
  imported = sorted(
    {
      os.path.abspath(module.__file__)
      for module in list(sys.modules.values())
      if getattr(module, "__file__", None)
      and os.path.abspath(module.__file__).startswith(CONFIGS + os.sep)
    }
  )
  for path in imported:
    if path != os.path.abspath(config_file):
      for key, text in file_comments(path).items():
        found.setdefault(key, text)
  return found


def _leaves(config, prefix: str = ""):
  for key in sorted(config.keys()):
    value = config[key]
    if hasattr(value, "items") and not isinstance(value, (str, bytes)):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def describe(config, config_file: str) -> str:
  """One line per field: `key = value  # comment`, sorted by key."""
  comments = all_comments(config_file.partition(":")[0])
  lines = []
  for key, value in _leaves(config):
    comment = comments.get(key) or comments.get(key.rsplit(".", 1)[-1], "")
    lines.append(f"{key} = {value!r}" + (f"  # {comment}" if comment else ""))
  return "\n".join(lines)

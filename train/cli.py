"""What every entry point shares: errors a user can fix print as one message.

`run(main)` replaces `absl.app.run(main)`. A `UserError`, or a ValueError,
FileNotFoundError, FileExistsError or KeyError raised by this project's own code (the innermost
frame lies in configs/, model/, train/ or data/), prints as `error: ...` with
exit status 1. An unknown `--config.a.b=...` key is named with the closest
existing keys. Anything else is a bug and keeps its traceback; `--verbose`
(or BERT_FLAX_VERBOSE=1) keeps the traceback of every error.

Every entry point also keeps XLA's compilations in a persistent cache
(`--compilation_cache_dir`), so the second run of a config (a rerun, a resume,
the next seed or learning rate of a sweep) reads its executables from disk
instead of compiling them again.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
import traceback

from absl import app, flags

from train.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = tuple(
  os.path.join(ROOT, name) + os.sep for name in ("configs", "model", "train", "data")
)
VERBOSE_ENV = "BERT_FLAX_VERBOSE"

flags.DEFINE_bool("verbose", False, "Show the full traceback of every error.")
DEFAULT_CACHE = os.path.join("~", ".cache", "bert-flax", "xla")
flags.DEFINE_string(
  "compilation_cache_dir",
  None,
  "XLA's persistent compilation cache (local or gs://); 'none' turns it off. "
  f"Default: $JAX_COMPILATION_CACHE_DIR if set, else {DEFAULT_CACHE}.",
)


def compilation_cache_dir(flag: str | None, environ=os.environ) -> str | None:
  """Where compiled programs are kept: the flag, then JAX's own variable, then the
  default under ~/.cache; None when the flag says 'none'."""
  path = flag or environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_CACHE
  if path.lower() == "none":
    return None
  return path if "://" in path else os.path.expanduser(path)


def enable_compilation_cache(flag: str | None) -> str | None:
  """Points JAX at the cache before anything compiles; returns the folder, or None when off.

  Through JAX's own variable, which it reads when imported, so a tool that never imports
  JAX (data.prepare) does not pay for it, and the processes a job starts inherit it. A
  local folder that cannot be made turns the cache off with one warning, where JAX
  would warn at every compile.
  """
  from absl import logging

  path = compilation_cache_dir(flag)
  if path is not None and "://" not in path:
    try:
      os.makedirs(path, exist_ok=True)
    except OSError as error:
      logging.warning("compilation cache off: cannot make %s (%s)", path, error.strerror)
      path = None
  if path is None:
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
  else:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
  if "jax" in sys.modules:  # imported already: its config has read the variable
    sys.modules["jax"].config.update("jax_compilation_cache_dir", path)
  return path


def _verbose(argv) -> bool:
  return "--verbose" in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _raised_by_us(error: BaseException) -> bool:
  frames = traceback.extract_tb(error.__traceback__)
  return bool(frames) and os.path.abspath(frames[-1].filename).startswith(PACKAGES)


def _flat_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for key, value in config.items():
    dotted = f"{prefix}{key}"
    keys.append(dotted)
    if hasattr(value, "items") and not isinstance(value, (str, bytes)):
      keys += _flat_keys(value, dotted + ".")
  return keys


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_for_errors", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _similarity(wanted: str, candidate: str) -> float:
  """How alike two leaf names are; 'learning_rate' and 'lr' (its initials) count as equal."""
  initials = "".join(word[0] for word in wanted.split("_") if word)
  if len(initials) > 1 and initials == candidate:
    return 1.0
  return difflib.SequenceMatcher(None, wanted, candidate).ratio()


def closest_keys(key: str, known: list[str], n: int = 3) -> list[str]:
  """Existing dotted keys nearest to `key`: same section first, then anywhere."""
  parent, _, leaf = key.rpartition(".")
  prefix = parent + "." if parent else ""
  siblings = [k for k in known if k.startswith(prefix) and "." not in k[len(prefix) :]]
  scored = sorted(siblings, key=lambda k: -_similarity(leaf, k[len(prefix) :]))
  near = [k for k in scored if _similarity(leaf, k[len(prefix) :]) >= 0.5]
  near += difflib.get_close_matches(key, known, n=n, cutoff=0.6)
  return list(dict.fromkeys(near))[:n]


def unknown_config_keys(argv, flag: str = "config") -> str | None:
  """A message naming each --config.KEY=... override the config lacks, with near keys."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
  overrides = [a[len(flag) + 3 :].split("=", 1)[0] for a in argv if a.startswith(f"--{flag}.")]
  if spec is None or not overrides:
    return None
  try:
    config = _load_config(spec)
  except Exception:  # the config file itself is broken: its own traceback says more
    return None
  known = _flat_keys(config)
  problems = []
  for key in overrides:
    if key in known:
      continue
    near = closest_keys(key, known)
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    problems.append(f"--{flag}.{key}: {spec.partition(':')[0]} has no key {key!r}{hint}")
  return "\n".join(problems) or None


def user_message(error: BaseException, argv) -> str | None:
  """The one-line report of a user-fixable error; None for a bug."""
  if isinstance(error, (AttributeError, KeyError)):
    message = unknown_config_keys(argv)
    if message:
      return message
  if isinstance(error, UserError):
    return str(error)
  ours = (ValueError, FileNotFoundError, FileExistsError, KeyError)
  if isinstance(error, ours) and _raised_by_us(error):
    return str(error).strip("'\"")
  return None


class QuietLibraries:
  """Drops INFO chatter of Orbax (dozens of lines per save); warnings still show."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or "orbax" not in record.pathname


def run(main) -> None:
  """`app.run(main)`, with user errors as one message and exit status 1, Orbax's
  INFO lines left out of every tool's log, and the compilation cache on."""
  argv = list(sys.argv)

  def quiet_main(args):
    from absl import logging

    logging.get_absl_handler().addFilter(QuietLibraries())
    cache = enable_compilation_cache(flags.FLAGS.compilation_cache_dir)
    logging.info("compilation cache: %s", cache or "off")
    return main(args)

  try:
    app.run(quiet_main)
  except Exception as error:
    message = user_message(error, argv)
    if message is None or _verbose(argv):
      raise
    print(f"error: {message}", file=sys.stderr)
    if not isinstance(error, (UserError, AttributeError)):
      print(f"(a {type(error).__name__}; --verbose shows where)", file=sys.stderr)
    sys.exit(1)

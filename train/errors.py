"""Errors the user can fix: bad input, a bad config, a run that went wrong.

Entry points (train.main, train.predict, train.hf, train.continual) print a
`UserError` as its message alone, with no traceback; every other exception is a
bug and keeps its traceback. `--verbose` (or BERT_FLAX_VERBOSE=1) shows the
traceback of a UserError too. A UserError is a ValueError, so callers that
catch ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
  """Input or config the user can fix; the message names the key, file or line."""


class NonFiniteError(UserError):
  """The loss, gradient norm or state went NaN / inf; nothing non-finite was saved."""

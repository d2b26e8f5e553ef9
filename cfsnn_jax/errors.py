"""The one error type for user mistakes, and the one way to say "unknown name".

Contract: ``UserError`` (a ``ValueError``) means the user's input (a config value, a flag, a
file or a workdir) is wrong; its message is one line that names the value and what was
expected. ``cfsnn_jax.main`` prints it as ``error: <message>`` and exits non-zero; every other
exception keeps its traceback (it is a bug). ``unknown_choice`` builds the message for a name
that is not in a registry, listing the valid names in order.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
  """A user mistake; the message is one line naming the value and what was expected."""


def unknown_choice(what: str, value: object, choices: Iterable[str]) -> UserError:
  """``UserError("unknown <what> 'x'; valid choices: a, b, c")``, to be raised by the caller."""
  names = ", ".join(str(c) for c in choices)
  return UserError(f"unknown {what} {value!r}; valid choices: {names}")

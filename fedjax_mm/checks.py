"""Argument checks that fail with one line naming the field, the rule and the value.

Every check raises ``ValueError`` with a message of the form
``"<name>: must be <rule>, got <value!r>"``, so an error read in a log says
which field was wrong, what it allows and what it was given, e.g.::

  convention: must be one of ('reddi', 'flower'), got 'pytorch'
  spec.alpha: must be a finite number > 0, got -1.0
  spec.quantity.min_size: must be an integer >= 0, got 1.5

Callers that add context (a config path) wrap the message rather than
rewording it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import numpy as np


def one_of(name: str, value: Any, allowed: Sequence) -> None:
  """Checks that ``value`` is one of ``allowed``.

  Args:
    name: the field, as the user spells it (e.g. ``"spec.kind"``).
    value: the given value.
    allowed: the allowed values; the message shows them as a tuple.

  Raises:
    ValueError: ``"<name>: must be one of <allowed>, got <value!r>"``.
  """
  allowed = tuple(allowed)
  try:
    ok = value in allowed
  except (TypeError, ValueError):  # e.g. an array (ambiguous truth value)
    ok = False
  if not ok:
    raise ValueError(f"{name}: must be one of {allowed}, got {value!r}")


def is_number(value: Any, *, integer: bool = False) -> bool:
  """Whether ``value`` is a real (or, with ``integer``, an integral) number.

  Python and NumPy scalars count; ``bool`` does not, although Python treats
  it as an integer (``True`` is almost always a mistake for a count or a
  rate).

  Args:
    value: anything.
    integer: require an integral type (``2.0`` is not an integer here).

  Returns:
    True for an accepted number.
  """
  if isinstance(value, (bool, np.bool_)):
    return False
  return isinstance(value, numbers.Integral if integer else numbers.Real)


# Integers beyond int64 overflow when they reach NumPy or JAX.
_MAX_INT = 2**63 - 1


def _representable(value: Any) -> bool:
  """Finite (no inf/NaN), and an integer within int64."""
  if isinstance(value, numbers.Integral):
    return -_MAX_INT <= value <= _MAX_INT
  return math.isfinite(value)


def number(name: str, value: Any, ok: Callable[[float], bool], rule: str, *,
           integer: bool = False) -> None:
  """Checks that ``value`` is a number (not a bool) satisfying ``ok``.

  Args:
    name: the field, as the user spells it.
    value: the given value.
    ok: the range predicate, called only on a finite number (inf and NaN,
      and integers beyond int64, are rejected before it: ``v > 0`` alone
      would let ``inf`` through).
    rule: the range in words for the message, e.g. ``"> 0"`` or
      ``"in [0, 1)"``.
    integer: require an integral type.

  Raises:
    ValueError: ``"<name>: must be a finite number <rule>, got <value!r>"`` (``an
      integer`` with ``integer=True``).
  """
  if not (is_number(value, integer=integer) and _representable(value) and ok(value)):
    kind = "an integer" if integer else "a finite number"
    raise ValueError(f"{name}: must be {kind} {rule}, got {value!r}")

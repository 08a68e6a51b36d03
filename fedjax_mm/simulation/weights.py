"""Custom aggregation weights: a ``.npy`` file of ``[K]`` per-client weights.

The round multiplies each client's update by its weight in float32 and divides
the weighted sum by the cohort's weight sum (``aggregation/mean.py``, with a
floor of ``1e-30`` on the divisor). A file that the round cannot use as it is
would not fail there: a NaN weight makes its client's rounds skip silently, an
infinite one makes the model NaN, all zeros make the model never move, and a
float64 value beyond float32's range becomes inf on the cast. The loader
therefore refuses, with one line naming the path and the problem, any file
whose weights are not, *after* the cast to float32:

* of shape ``[K]``, real numbers (bool, integer or float dtypes);
* finite and non-negative, with a positive one somewhere;
* within ``[MIN_POSITIVE, MAX_WEIGHT]`` where positive: below the floor the
  round's divisor floor would shrink a cohort's mean; above the cap a weight
  times an ordinary update (or the sum over a population) overflows float32.
  Only the ratios of the weights matter, so any usable file can be rescaled
  into this range.
"""

from __future__ import annotations

import os

import numpy as np

# Positive weights must lie in [MIN_POSITIVE, MAX_WEIGHT] (see the docstring):
# 1e-30 is the round's floor on a cohort's weight sum; 1e30 leaves a factor
# 3e8 of float32 range (max 3.4e38) for the updates and the population sum.
MIN_POSITIVE = 1e-30
MAX_WEIGHT = 1e30


def _problem(raw: np.ndarray, num_clients: int) -> str | None:
  """What makes ``raw`` unusable as ``[num_clients]`` weights (None when usable)."""
  if raw.dtype.kind not in "biuf":
    return f"must hold real numbers, got dtype {raw.dtype}"
  if raw.shape != (num_clients,):
    return f"must hold one weight per client, shape ({num_clients},), got shape {raw.shape}"
  bad = np.flatnonzero(~np.isfinite(raw))
  if bad.size:
    return f"must be finite, got {raw[bad[0]]} at client {bad[0]} ({bad.size} non-finite)"
  with np.errstate(over="ignore", under="ignore"):
    weights = raw.astype(np.float32)
  negative = np.flatnonzero(raw < 0)   # before the cast: -1e-50 would become -0.0
  if negative.size:
    i = negative[0]
    return f"must be >= 0, got {raw[i]} at client {i} ({negative.size} negative)"
  overflow = np.flatnonzero(weights > MAX_WEIGHT)
  if overflow.size:
    i = overflow[0]
    what = "overflows float32" if np.isinf(weights[i]) else f"is above {MAX_WEIGHT:g}"
    return (f"must be <= {MAX_WEIGHT:g} (only ratios matter: rescale), got {raw[i]} at "
            f"client {i}, which {what}")
  tiny = np.flatnonzero((raw > 0) & (weights < MIN_POSITIVE))
  if tiny.size:
    i = tiny[0]
    return (f"positive weights must be >= {MIN_POSITIVE:g} in float32 (only ratios matter: "
            f"rescale), got {raw[i]} at client {i}")
  if not np.any(weights > 0):
    return "must not all be zero (the model would never move)"
  return None


def load_custom_weights(path: str | os.PathLike, num_clients: int) -> np.ndarray:
  """Loads and checks ``[num_clients]`` float32 aggregation weights from a ``.npy``.

  Args:
    path: the ``.npy`` file (``config.aggregation.custom_weights_path``).
    num_clients: K, the population size.

  Returns:
    The weights as float32, shape ``[num_clients]``.

  Raises:
    ValueError: ``"<path>: weights must be <rule>, got <value>"`` (one line)
      for an unreadable file or unusable weights (see the module docstring).

  Example:
    >>> np.save("/tmp/w.npy", np.array([1.0, 0.0, 2.0]))
    >>> load_custom_weights("/tmp/w.npy", 3)
    array([1., 0., 2.], dtype=float32)
  """
  try:
    raw = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"{path}: must be a readable .npy array, got {first}") from None
  raw = np.asarray(raw)
  problem = _problem(raw, num_clients)
  if problem:
    raise ValueError(f"{path}: weights {problem}")
  return raw.astype(np.float32)

"""Coordinate-wise robust statistics: median and beta-trimmed mean.

Inputs follow the stacked-cohort convention of ``stacked.py``: updates
``[C, ...]``, weights ``[C]``, mask ``[C]``; masked rows have no influence,
n is traced, and the result is all zeros when no client is valid.

References:
  Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML 2018; arXiv:1803.01498.
  (Coordinate-wise median and coordinate-wise beta-trimmed mean.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_mm import checks
from fedjax_mm.aggregation.base import CohortAggregator, stateless
from fedjax_mm.registry import Part
from fedjax_mm.aggregation.stacked import (flatten_clients,
                                           sorted_with_invalid_last)
from fedjax_mm.data.federated import fraction_count
from fedjax_mm.types import PyTree


def coordinate_median(updates: PyTree, weights: jax.Array,
                      mask: jax.Array) -> PyTree:
  """Coordinate-wise median of the valid clients' updates (Yin et al. 2018).

  The median is unweighted, as in the paper: ``weights`` is accepted only so
  that every aggregator shares one signature, and is otherwise ignored. A
  client takes part iff its ``mask`` entry is True (fold ``weights > 0`` into
  the mask to drop zero-weight clients). For an even number n of valid
  clients the result is the mean of the two middle values, like
  ``numpy.median``.

  Args:
    updates: pytree of ``[C, ...]`` per-client updates.
    weights: ``[C]`` aggregation weights (unused).
    mask: ``[C]`` bool, True for valid clients.

  Returns:
    A pytree shaped like one client's update; all zeros if no client is valid.
  """
  return _coordinate_median(updates, weights, mask)


@jax.jit
def _coordinate_median(updates: PyTree, weights: jax.Array,
                       mask: jax.Array) -> PyTree:
  x, _, mask, n, unravel = flatten_clients(updates, weights, mask)
  ordered = sorted_with_invalid_last(x, mask)
  # Middle positions (n-1)//2 and n//2 coincide for odd n. Clamped at 0 so
  # that n = 0 still indexes in bounds (the result is then replaced by 0).
  low = lax.dynamic_index_in_dim(ordered, jnp.maximum((n - 1) // 2, 0),
                                 axis=0, keepdims=False)
  high = lax.dynamic_index_in_dim(ordered, n // 2, axis=0, keepdims=False)
  # 0.5*a + 0.5*b cannot overflow for finite a, b, and equals a when a == b.
  median = 0.5 * low + 0.5 * high
  median = jnp.where(n > 0, median, jnp.zeros((), x.dtype))
  return unravel(median)


def _trim_count(trim_fraction: float, n: int) -> int:
  """``floor(trim_fraction * n)`` (``fraction_count``), capped so the median remains."""
  # fraction_count rounds the product first: a plain float floor gives
  # floor(0.29 * 100) = 28. (n - 1) // 2 per side leaves 1 element (odd n) or
  # the 2 middle elements (even n); with trim_fraction < 0.5 it binds only
  # when the rounding lifts beta * n to n / 2 (beta within 5e-10 / n of 0.5).
  return min(int(fraction_count(trim_fraction, n)), max((n - 1) // 2, 0))


def trimmed_mean(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                 trim_fraction: float) -> PyTree:
  """Coordinate-wise beta-trimmed mean of the valid clients (Yin et al. 2018).

  Per coordinate, the ``k = floor(trim_fraction * n)`` smallest and the k
  largest of the n valid values are dropped (the product rounded to 9
  decimals first, :func:`fedjax_mm.data.federated.fraction_count`: 0.29 * 100
  gives 29) and the remaining ``n - 2k`` are averaged (unweighted, as in the
  paper; ``weights`` is unused). With ``trim_fraction = 0`` this is the plain
  mean of the valid clients. Since
  ``trim_fraction < 0.5``, at least one value always remains; k is in any case
  capped at ``(n - 1) // 2`` so that the median element(s) are kept.

  Args:
    updates: pytree of ``[C, ...]`` per-client updates.
    weights: ``[C]`` aggregation weights (unused).
    mask: ``[C]`` bool, True for valid clients.
    trim_fraction: beta in ``[0, 0.5)``.

  Returns:
    A pytree shaped like one client's update; all zeros if no client is valid.

  Raises:
    ValueError: if ``trim_fraction`` is not in ``[0, 0.5)``.
  """
  checks.number("trim_fraction", trim_fraction, lambda v: 0.0 <= v < 0.5,
                "in [0, 0.5)")
  return _trimmed_mean(updates, weights, mask,
                       trim_fraction=float(trim_fraction))


@functools.partial(jax.jit, static_argnames="trim_fraction")
def _trimmed_mean(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                  trim_fraction: float) -> PyTree:
  x, _, mask, n, unravel = flatten_clients(updates, weights, mask)
  num_clients = x.shape[0]
  ordered = sorted_with_invalid_last(x, mask)
  # n is traced but bounded by the static C, so k(n) is tabulated in Python
  # (fraction_count's rule, no float32 rounding of beta * n) and looked up.
  k_table = jnp.asarray(
      [_trim_count(trim_fraction, m) for m in range(num_clients + 1)],
      jnp.int32)
  k = k_table[n]
  position = jnp.arange(num_clients)[:, None]
  keep = (position >= k) & (position < n - k)
  # where before the sum: the +inf of invalid rows must not reach it.
  total = jnp.sum(jnp.where(keep, ordered, jnp.zeros((), x.dtype)), axis=0)
  kept = jnp.maximum(n - 2 * k, 1).astype(x.dtype)
  return unravel(total / kept)


def median_aggregator() -> CohortAggregator:
  """The coordinate-wise median as a round's aggregator."""
  return stateless("median", lambda d, w, m: (coordinate_median(d, w, m), {}))


def trimmed_mean_aggregator(trim_fraction: float = 0.1) -> CohortAggregator:
  """The coordinate-wise β-trimmed mean (β = ``trim_fraction`` in [0, 0.5))."""
  checks.number("trim_fraction", trim_fraction, lambda v: 0.0 <= v < 0.5, "in [0, 0.5)")
  return stateless("trimmed_mean", lambda d, w, m: (
      trimmed_mean(d, w, m, trim_fraction=trim_fraction), {}))


MEDIAN = Part("median", median_aggregator, "median",
              "coordinate-wise median (Yin et al., ICML 2018)")
TRIMMED_MEAN = Part("trimmed_mean", trimmed_mean_aggregator, "trimmed mean",
                    "coordinate-wise beta-trimmed mean (Yin et al., ICML 2018)")

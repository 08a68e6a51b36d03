"""Krum and Multi-Krum: select the clients closest to their neighbours.

Inputs follow the stacked-cohort convention of ``stacked.py``: updates
``[C, ...]``, weights ``[C]``, mask ``[C]``; masked rows have no influence,
n is traced, and the aggregate is all zeros when no client is valid.

Krum's guarantee needs ``C >= 2 f + 3`` clients: the functions refuse an
``f`` that breaks it for the stack's C rows, and a round should check it on
the cohort size (:func:`check_num_byzantine`; a padded stack is larger).
At run time the number n of valid rows is traced and may be smaller (excluded
or padding clients); then the paper's ``n - f - 2`` neighbours are clamped to
``[1, n - 1]`` and a selection is still made, without the guarantee.

References:
  Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
  (Krum and Multi-Krum.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_mm import checks
from fedjax_mm.aggregation.base import CohortAggregator, stateless
from fedjax_mm.aggregation.stacked import (flatten_clients, normalized_weights,
                                           sorted_with_invalid_last)
from fedjax_mm.registry import Part
from fedjax_mm.types import PyTree


def check_num_byzantine(num_byzantine, cohort_size: int) -> None:
  """Checks Krum's bound ``C >= 2 f + 3`` (Blanchard et al. 2017, Prop. 1).

  Args:
    num_byzantine: f, the number of Byzantine clients tolerated.
    cohort_size: C, the clients per round (padding slots excluded).

  Raises:
    ValueError: ``num_byzantine: must be an integer in [0, (C - 3) // 2 = ..]
      ...`` if f is not an integer or ``C < 2 f + 3``.
  """
  limit = (cohort_size - 3) // 2
  checks.number("num_byzantine", num_byzantine, lambda v: 0 <= v <= limit,
                f"in [0, (C - 3) // 2 = {limit}] (Krum needs C >= 2 f + 3; "
                f"cohort size C = {cohort_size})", integer=True)


def _check_on_stack(num_byzantine, mask) -> None:
  """The bound on the stack's C rows (a mask that is not ``[C]``: flatten_clients says why)."""
  shape = jnp.shape(mask)
  if len(shape) == 1:
    check_num_byzantine(num_byzantine, shape[0])


def _centred(x: jax.Array, mask: jax.Array) -> jax.Array:
  """``x`` minus the valid rows' coordinate-wise median (invalid rows stay 0)."""
  # Distances are shift-invariant, but ||a||^2 + ||b||^2 - 2 a.b in float32
  # is not: a common offset D cancels to ~eps D^2 absolute. Centring on the
  # median removes it (x_i - median is exact when both are within a factor 2,
  # Sterbenz), and, unlike the mean, the median stays inside the honest
  # majority however far the attackers are, so honest-to-honest distances
  # (the ones Krum ranks) keep full relative precision.
  n = jnp.sum(mask, dtype=jnp.int32)
  ordered = sorted_with_invalid_last(x, mask)
  median = lax.dynamic_index_in_dim(ordered, jnp.maximum((n - 1) // 2, 0),
                                    axis=0, keepdims=False)
  median = jnp.where(n > 0, median, jnp.zeros((), x.dtype))
  return jnp.where(mask[:, None], x - median[None, :], jnp.zeros((), x.dtype))


def pairwise_distances(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Squared distances between the valid rows of ``x [C, P]`` (``+inf`` elsewhere and on the diagonal)."""
  num_clients = x.shape[0]
  x = _centred(x, mask)
  # ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b from the Gram matrix: O(C^2 + C*P)
  # memory instead of the O(C^2 * P) of broadcasting differences. HIGHEST
  # precision so that accelerators do not use reduced-precision (e.g. TF32)
  # matmuls, whose error would swamp small distances; the clamp removes tiny
  # negative values left by cancellation.
  squared_norms = jnp.sum(x * x, axis=1)
  gram = jnp.matmul(x, x.T, precision=lax.Precision.HIGHEST)
  distances = jnp.maximum(
      squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram, 0.0)
  is_neighbour = mask[:, None] & mask[None, :] & ~jnp.eye(num_clients, dtype=bool)
  return jnp.where(is_neighbour, distances, jnp.inf)


def scores_from_distances(distances: jax.Array, mask: jax.Array, n: jax.Array,
                          num_byzantine: int) -> jax.Array:
  """Krum scores among the rows in ``mask`` (``n`` of them), from :func:`pairwise_distances`."""
  num_clients = distances.shape[0]
  distances = jnp.where(mask[:, None] & mask[None, :], distances, jnp.inf)
  # Each row ascending: its n - 1 valid neighbours first, then +inf.
  distances = jnp.sort(distances, axis=1)
  # Paper: n - f - 2 closest neighbours. That is < 1 when n <= f + 2; we then
  # still count 1 neighbour, but never more than the n - 1 that exist (so a
  # lone valid client scores 0).
  num_neighbours = jnp.minimum(jnp.maximum(n - num_byzantine - 2, 1), n - 1)
  counted = jnp.arange(num_clients)[None, :] < num_neighbours
  scores = jnp.sum(jnp.where(counted, distances, 0.0), axis=1)
  return jnp.where(mask, scores, jnp.inf)


def _krum_scores_flat(x: jax.Array, mask: jax.Array, n: jax.Array,
                      num_byzantine: int) -> jax.Array:
  return scores_from_distances(pairwise_distances(x, mask), mask, n, num_byzantine)


def krum_scores(updates: PyTree, mask: jax.Array, *,
                num_byzantine: int) -> jax.Array:
  """Krum scores of the clients (Blanchard et al. 2017).

  The score of a valid client i is the sum of squared Euclidean distances
  from its update to its ``n - f - 2`` closest other valid updates, where
  ``n = sum(mask)`` and ``f = num_byzantine``. If ``n - f - 2 < 1`` the
  single closest neighbour is used; a lone valid client (no neighbour) scores
  0. Invalid clients score ``+inf``.

  Args:
    updates: pytree of ``[C, ...]`` per-client updates.
    mask: ``[C]`` bool, True for valid clients.
    num_byzantine: f, the number of Byzantine clients tolerated (>= 0).

  Returns:
    ``[C]`` scores (lower is more central).

  Raises:
    ValueError: if ``num_byzantine`` is not an integer with
      ``C >= 2 f + 3`` (C = ``mask.shape[0]``, the stack's rows).
  """
  _check_on_stack(num_byzantine, mask)
  return _krum_scores(updates, mask, num_byzantine=int(num_byzantine))


@functools.partial(jax.jit, static_argnames="num_byzantine")
def _krum_scores(updates: PyTree, mask: jax.Array, *,
                 num_byzantine: int) -> jax.Array:
  mask = jnp.asarray(mask, bool)
  dummy_weights = jnp.zeros(mask.shape, jnp.float32)
  x, _, mask, n, _ = flatten_clients(updates, dummy_weights, mask)
  return _krum_scores_flat(x, mask, n, num_byzantine)


def krum(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
         num_byzantine: int,
         num_selected: int = 1) -> tuple[PyTree, jax.Array]:
  """Krum (``num_selected = 1``) and Multi-Krum (Blanchard et al. 2017).

  Selects the ``m = num_selected`` valid clients with the lowest Krum scores
  (all valid clients if fewer than m are valid); ties are broken by the lowest
  client index, so the selection is deterministic. Krum returns the selected
  client's update itself (weights unused). Multi-Krum returns the
  ``weights``-weighted average of the selected updates; if their weights sum
  to 0, their unweighted average.

  Args:
    updates: pytree of ``[C, ...]`` per-client updates.
    weights: ``[C]`` non-negative aggregation weights.
    mask: ``[C]`` bool, True for valid clients.
    num_byzantine: f, the number of Byzantine clients tolerated (>= 0).
    num_selected: m, the number of clients averaged (>= 1).

  Returns:
    ``(aggregate, selected)``: a pytree shaped like one client's update (all
    zeros if no client is valid) and a ``[C]`` bool mask of the selected
    clients.

  Raises:
    ValueError: if ``num_selected < 1`` or ``num_byzantine`` is not an integer
      with ``C >= 2 f + 3`` (C = ``mask.shape[0]``, the stack's rows).
  """
  _check_on_stack(num_byzantine, mask)
  checks.number("num_selected", num_selected, lambda v: v >= 1, ">= 1",
                integer=True)
  return _krum(updates, weights, mask, num_byzantine=int(num_byzantine),
               num_selected=int(num_selected))


@functools.partial(jax.jit, static_argnames=("num_byzantine", "num_selected"))
def _krum(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
          num_byzantine: int, num_selected: int) -> tuple[PyTree, jax.Array]:
  x, weights, mask, n, unravel = flatten_clients(updates, weights, mask)
  num_clients = x.shape[0]
  scores = _krum_scores_flat(x, mask, n, num_byzantine)
  # A stable sort keeps equal scores in index order: lowest index wins ties.
  order = jnp.argsort(scores, stable=True)
  rank = jnp.zeros(num_clients, jnp.int32).at[order].set(
      jnp.arange(num_clients, dtype=jnp.int32))
  # Invalid clients score +inf and rank after every valid one; the mask also
  # guards against a selection of fewer than m valid clients.
  selected = mask & (rank < num_selected)
  if num_selected == 1:
    # Exactly the chosen row (w * x / w could differ from x in the last bit).
    coefficients = selected.astype(x.dtype)
  else:
    count = jnp.sum(selected, dtype=jnp.int32)
    coefficients = normalized_weights(
        jnp.where(selected, weights, 0.0), selected, count)
  # Elementwise product and sum rather than a matmul: exact one-hot pick and
  # no reduced-precision matmul on accelerators.
  aggregate = jnp.sum(coefficients[:, None] * x, axis=0)
  return unravel(aggregate), selected


def _krum_reducer(num_byzantine: int, num_selected: int):
  def reduce(d, w, mask):
    result, selected = krum(d, w, mask, num_byzantine=num_byzantine,
                            num_selected=num_selected)
    return result, {"num_selected": jnp.sum(selected).astype(jnp.float32)}
  return reduce


def krum_aggregator(num_byzantine: int = 0, *, cohort_size: int) -> CohortAggregator:
  """Krum over cohorts of ``cohort_size`` clients tolerating ``num_byzantine``."""
  check_num_byzantine(num_byzantine, cohort_size)
  return stateless("krum", _krum_reducer(num_byzantine, 1))


def multi_krum_aggregator(num_byzantine: int = 0, num_selected: int = 0, *,
                          cohort_size: int) -> CohortAggregator:
  """Multi-Krum: the mean of the ``num_selected`` best (0: ``C - f``)."""
  check_num_byzantine(num_byzantine, cohort_size)
  checks.number("num_selected", num_selected, lambda v: 0 <= v <= cohort_size,
                f"in [0, clients_per_round = {cohort_size}] (0 = clients_per_round - "
                "num_byzantine)", integer=True)
  return stateless("multi_krum",
                   _krum_reducer(num_byzantine, num_selected or cohort_size - num_byzantine))


_COHORT = ("cohort_size",)
KRUM = Part("krum", krum_aggregator, "Krum",
            "the update closest to its n - f - 2 neighbours (Blanchard et al., NeurIPS 2017)",
            context=_COHORT)
MULTI_KRUM = Part("multi_krum", multi_krum_aggregator, "Multi-Krum",
                  "mean of the m best Krum scores (Blanchard et al., NeurIPS 2017)",
                  context=_COHORT)

"""Bulyan: Krum selection, then a coordinate-wise trimmed mean around the median.

From the paper (El Mhamdi, Guerraoui, Rouault, ICML 2018, Section 4), for n
updates of which at most f are Byzantine, with ``n >= 4 f + 3``:

1. selection: ``θ = n − 2f`` times, apply Krum to the remaining set R (each
   update scored by its squared distances to its ``|R| − f − 2`` nearest
   others in R), move the chosen update from R to the selection S;
2. aggregation: per coordinate j, keep the ``β = θ − 2f`` values of S closest
   to their median (``β`` nearest to ``median_{i∈S} x_i[j]``) and average
   them.

Our choices, where the paper is silent:

* the median of an even-sized S is the mean of its two middle values (as
  ``numpy.median`` and our coordinate-wise median);
* ties (equal Krum scores, equal distances to the median) go to the lowest
  client index (stable sorts), so the result is deterministic;
* unweighted, as in the paper (the weights are accepted and unused);
* at run time the number n of valid rows is traced and may be below
  ``4f + 3`` (excluded or padding clients): then ``θ = max(n − 2f, 1)`` and
  ``β = max(θ − 2f, 1)``, and Krum's neighbour count is clamped to
  ``[1, |R| − 1]`` as in ``krum.py`` — a result is still produced, without
  the guarantee. The factory refuses a *cohort* below ``4f + 3``.

Krum's distances come from ``krum.pairwise_distances`` (rows centred on the
median first, so a large common component does not cancel), computed once:
each selection step only re-ranks within R.

Reference:
  El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
  Learning in Byzantium", ICML 2018 (arXiv:1802.07927).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_mm import checks
from fedjax_mm.aggregation.base import CohortAggregator, stateless
from fedjax_mm.aggregation.krum import pairwise_distances, scores_from_distances
from fedjax_mm.aggregation.stacked import flatten_clients, sorted_with_invalid_last
from fedjax_mm.registry import Part
from fedjax_mm.types import PyTree


def check_num_byzantine(num_byzantine, cohort_size: int) -> None:
  """Bulyan's bound ``C >= 4 f + 3`` on the cohort size C.

  Raises:
    ValueError: ``"num_byzantine: must be an integer in [0, (C - 3) // 4 = ..] ..."``.
  """
  limit = (cohort_size - 3) // 4
  checks.number("num_byzantine", num_byzantine, lambda v: 0 <= v <= limit,
                f"in [0, (C - 3) // 4 = {limit}] (Bulyan needs C >= 4 f + 3; "
                f"cohort size C = {cohort_size})", integer=True)


def bulyan(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
           num_byzantine: int) -> tuple[PyTree, jax.Array]:
  """Bulyan over the valid rows of a stacked cohort (module doc).

  Args:
    updates: pytree of ``[C, ...]`` per-client updates.
    weights: ``[C]`` aggregation weights (unused: Bulyan is unweighted).
    mask: ``[C]`` bool, True for valid clients.
    num_byzantine: f (>= 0), with ``C >= 4 f + 3`` for the stack's C rows.

  Returns:
    ``(aggregate, selected)``: a pytree shaped like one client's update (all
    zeros if no client is valid) and the ``[C]`` bool selection S.
  """
  check_num_byzantine(num_byzantine, jnp.shape(mask)[0] if jnp.ndim(mask) == 1 else 0)
  return _bulyan(updates, weights, mask, num_byzantine=int(num_byzantine))


@functools.partial(jax.jit, static_argnames="num_byzantine")
def _bulyan(updates, weights, mask, *, num_byzantine: int):
  x, _, mask, n, unravel = flatten_clients(updates, weights, mask)
  num_clients = x.shape[0]
  f = num_byzantine
  theta = jnp.maximum(n - 2 * f, 1)
  beta = jnp.maximum(theta - 2 * f, 1)
  distances = pairwise_distances(x, mask)

  def select_one(i, carry):
    remaining, selected = carry
    scores = scores_from_distances(distances, remaining, jnp.sum(remaining), f)
    pick = jnp.argmin(scores)          # the first minimum: lowest index on ties
    take = (i < theta) & remaining[pick]
    one_hot = jnp.arange(num_clients) == pick
    return remaining & ~(one_hot & take), selected | (one_hot & take)

  _, selected = lax.fori_loop(0, num_clients, select_one,
                              (mask, jnp.zeros_like(mask)))
  # Coordinate-wise: the median of S, then the β values of S closest to it.
  count = jnp.sum(selected, dtype=jnp.int32)
  ordered = sorted_with_invalid_last(x, selected)
  low = lax.dynamic_index_in_dim(ordered, jnp.maximum((count - 1) // 2, 0), 0, False)
  high = lax.dynamic_index_in_dim(ordered, count // 2, 0, False)
  median = 0.5 * low + 0.5 * high
  gap = jnp.where(selected[:, None], jnp.abs(x - median[None, :]), jnp.inf)
  order = jnp.argsort(gap, axis=0, stable=True)
  rank = jnp.zeros_like(order).at[order, jnp.arange(x.shape[1])[None, :]].set(
      jnp.arange(num_clients)[:, None])
  kept = selected[:, None] & (rank < beta)
  mean = jnp.sum(jnp.where(kept, x, 0.0), axis=0) / jnp.maximum(
      jnp.sum(kept, axis=0), 1).astype(x.dtype)
  return unravel(jnp.where(count > 0, mean, jnp.zeros((), x.dtype))), selected


def bulyan_aggregator(num_byzantine: int = 0, *, cohort_size: int) -> CohortAggregator:
  """Bulyan over cohorts of ``cohort_size`` clients tolerating ``num_byzantine``."""
  check_num_byzantine(num_byzantine, cohort_size)

  def reduce(d, w, mask):
    result, selected = bulyan(d, w, mask, num_byzantine=num_byzantine)
    return result, {"num_selected": jnp.sum(selected).astype(jnp.float32)}

  return stateless("bulyan", reduce)


PART = Part("bulyan", bulyan_aggregator, "Bulyan",
            "iterated Krum, then a trimmed mean around the median (El Mhamdi et al., 2018)",
            context=("cohort_size",))

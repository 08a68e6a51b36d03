"""Robust whole-cohort aggregators: median, trimmed mean, Krum, RFA.

Unlike the weighted mean (``mean.py``), these statistics need every client's
update at once, so each function takes the full stack of updates. All of them
are pure functions with the same inputs:

  updates: a pytree whose leaves have a leading clients axis ``[C, ...]``.
  weights: ``[C]`` non-negative aggregation weights (e.g. example counts).
  mask: ``[C]`` bool; False marks a padding or excluded client.

A masked-out client has no influence at all: its rows are replaced by zeros
(with ``jnp.where``, so even inf/NaN garbage cannot leak through a product)
before any arithmetic, and then excluded from every order statistic, distance
and sum. The number of valid clients ``n = sum(mask)`` is a traced value, so a
single compilation serves every mask of a given cohort size C; the order
statistics therefore use sorting plus dynamic indices instead of Python-level
slicing. When no client is valid, every function returns an all-zero
aggregate (never NaN).

Internally the pytree is flattened per client to a ``[C, P]`` matrix; the
aggregate is unflattened back into the structure of one client's update.

References:
  Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
  Towards Optimal Statistical Rates", ICML 2018; arXiv:1803.01498.
  (Coordinate-wise median and coordinate-wise beta-trimmed mean.)

  Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
  (Krum and Multi-Krum.)

  Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
  IEEE Transactions on Signal Processing 70, 2022; arXiv:1912.13445.
  (RFA: geometric median by the smoothed Weiszfeld algorithm.)
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from fedjax_mm.types import PyTree

# ------------------------------------------------------------------ helpers


def _check_int(name: str, value, minimum: int) -> None:
  # bool is an Integral in Python, but True as a count is almost surely a bug.
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum):
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _is_real(value) -> bool:
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def _flatten_clients(
    updates: PyTree, weights, mask,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array,
           Callable[[jax.Array], PyTree]]:
  """Returns ``(x [C, P], weights [C], mask [C], n, unravel)``.

  Rows of masked-out clients of ``x`` are zero and their weights are zero.
  """
  leaves = jax.tree.leaves(updates)
  if not leaves:
    raise ValueError("updates must have at least one leaf")
  mask = jnp.asarray(mask, bool)
  weights = jnp.asarray(weights)
  num_clients = mask.shape[0] if mask.ndim == 1 else None
  if num_clients is None or weights.shape != (num_clients,) or any(
      leaf.ndim < 1 or leaf.shape[0] != num_clients for leaf in leaves):
    raise ValueError(
        "mask and weights must have shape [C] and every leaf of updates a "
        f"leading axis C; got mask {mask.shape}, weights {weights.shape}, "
        f"leaves {[leaf.shape for leaf in leaves]}")
  _, unravel = ravel_pytree(jax.tree.map(lambda leaf: leaf[0], updates))
  x = jax.vmap(lambda u: ravel_pytree(u)[0])(updates)
  # jnp.where rather than a product: 0 * inf or 0 * NaN would still be NaN.
  x = jnp.where(mask[:, None], x, jnp.zeros((), x.dtype))
  weights = jnp.where(mask, weights.astype(x.dtype), jnp.zeros((), x.dtype))
  n = jnp.sum(mask, dtype=jnp.int32)
  return x, weights, mask, n, unravel


def _normalized_weights(weights: jax.Array, mask: jax.Array,
                        n: jax.Array) -> jax.Array:
  """``weights / sum(weights)`` over valid clients (masked weights are 0).

  If the valid clients' weights sum to 0 (but some client is valid), falls
  back to uniform weights over the valid clients, so a cohort of zero-weight
  clients still yields a statistic of its updates rather than 0/0. With no
  valid client every weight is 0.
  """
  total = jnp.sum(weights)
  safe_total = jnp.where(total > 0, total, 1.0)
  uniform = mask.astype(weights.dtype) / jnp.maximum(n, 1).astype(weights.dtype)
  return jnp.where(total > 0, weights / safe_total, uniform)


def _sorted_with_invalid_last(x: jax.Array, mask: jax.Array) -> jax.Array:
  # +inf sorts after every finite value, so per coordinate the n valid values
  # occupy sorted positions 0..n-1 whatever n is.
  return jnp.sort(jnp.where(mask[:, None], x, jnp.inf), axis=0)


# ------------------------------------------------- coordinate-wise statistics


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


# Each public function validates its static options eagerly, then calls a
# jitted body: eager callers then get one compiled program per cohort shape
# (and option values) instead of op-by-op dispatch and a recompiled
# while_loop per call; under an outer jit the inner one is simply inlined.
@jax.jit
def _coordinate_median(updates: PyTree, weights: jax.Array,
                       mask: jax.Array) -> PyTree:
  x, _, mask, n, unravel = _flatten_clients(updates, weights, mask)
  ordered = _sorted_with_invalid_last(x, mask)
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
  """``floor(trim_fraction * n)``, capped so the median element(s) remain."""
  # (n - 1) // 2 per side leaves 1 element (odd n) or the 2 middle elements
  # (even n). With trim_fraction < 0.5 the cap never binds, because
  # floor(beta * n) <= beta * n < n / 2; it only documents the guarantee.
  return min(math.floor(trim_fraction * n), max((n - 1) // 2, 0))


def trimmed_mean(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                 trim_fraction: float) -> PyTree:
  """Coordinate-wise beta-trimmed mean of the valid clients (Yin et al. 2018).

  Per coordinate, the ``k = floor(trim_fraction * n)`` smallest and the k
  largest of the n valid values are dropped and the remaining ``n - 2k`` are
  averaged (unweighted, as in the paper; ``weights`` is unused). With
  ``trim_fraction = 0`` this is the plain mean of the valid clients. Since
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
  if not (_is_real(trim_fraction) and 0.0 <= trim_fraction < 0.5):
    raise ValueError(
        f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
  return _trimmed_mean(updates, weights, mask,
                       trim_fraction=float(trim_fraction))


@functools.partial(jax.jit, static_argnames="trim_fraction")
def _trimmed_mean(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                  trim_fraction: float) -> PyTree:
  x, _, mask, n, unravel = _flatten_clients(updates, weights, mask)
  num_clients = x.shape[0]
  ordered = _sorted_with_invalid_last(x, mask)
  # n is traced but bounded by the static C, so k(n) is tabulated in Python
  # (exact float64 floor, no float32 rounding of beta * n) and looked up.
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


# ------------------------------------------------------------- Krum family


def _krum_scores_flat(x: jax.Array, mask: jax.Array, n: jax.Array,
                      num_byzantine: int) -> jax.Array:
  num_clients = x.shape[0]
  # ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b from the Gram matrix: O(C^2 + C*P)
  # memory instead of the O(C^2 * P) of broadcasting differences. HIGHEST
  # precision so that accelerators do not use reduced-precision (e.g. TF32)
  # matmuls, whose error would swamp small distances; the clamp removes tiny
  # negative values left by cancellation.
  squared_norms = jnp.sum(x * x, axis=1)
  gram = jnp.matmul(x, x.T, precision=lax.Precision.HIGHEST)
  distances = jnp.maximum(
      squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram, 0.0)
  is_neighbour = mask[None, :] & ~jnp.eye(num_clients, dtype=bool)
  distances = jnp.where(is_neighbour, distances, jnp.inf)
  # Each row ascending: its n - 1 valid neighbours first, then +inf.
  distances = jnp.sort(distances, axis=1)
  # Paper: n - f - 2 closest neighbours. That is < 1 when n <= f + 2; we then
  # still count 1 neighbour, but never more than the n - 1 that exist (so a
  # lone valid client scores 0).
  num_neighbours = jnp.minimum(jnp.maximum(n - num_byzantine - 2, 1), n - 1)
  counted = jnp.arange(num_clients)[None, :] < num_neighbours
  scores = jnp.sum(jnp.where(counted, distances, 0.0), axis=1)
  return jnp.where(mask, scores, jnp.inf)


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
    ValueError: if ``num_byzantine`` is not an integer >= 0.
  """
  _check_int("num_byzantine", num_byzantine, 0)
  return _krum_scores(updates, mask, num_byzantine=int(num_byzantine))


@functools.partial(jax.jit, static_argnames="num_byzantine")
def _krum_scores(updates: PyTree, mask: jax.Array, *,
                 num_byzantine: int) -> jax.Array:
  mask = jnp.asarray(mask, bool)
  dummy_weights = jnp.zeros(mask.shape, jnp.float32)
  x, _, mask, n, _ = _flatten_clients(updates, dummy_weights, mask)
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
    ValueError: if ``num_byzantine`` or ``num_selected`` is out of range.
  """
  _check_int("num_byzantine", num_byzantine, 0)
  _check_int("num_selected", num_selected, 1)
  return _krum(updates, weights, mask, num_byzantine=int(num_byzantine),
               num_selected=int(num_selected))


@functools.partial(jax.jit, static_argnames=("num_byzantine", "num_selected"))
def _krum(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
          num_byzantine: int, num_selected: int) -> tuple[PyTree, jax.Array]:
  x, weights, mask, n, unravel = _flatten_clients(updates, weights, mask)
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
    coefficients = _normalized_weights(
        jnp.where(selected, weights, 0.0), selected, count)
  # Elementwise product and sum rather than a matmul: exact one-hot pick and
  # no reduced-precision matmul on accelerators.
  aggregate = jnp.sum(coefficients[:, None] * x, axis=0)
  return unravel(aggregate), selected


# --------------------------------------------------------- geometric median


def geometric_median(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                     smoothing: float = 1e-6, max_iters: int = 100,
                     tolerance: float = 1e-7) -> tuple[PyTree, jax.Array]:
  """Weighted geometric median by smoothed Weiszfeld iterations (RFA).

  Approximately minimizes ``g(v) = sum_i alpha_i ||v - x_i||`` over the valid
  clients, with ``alpha_i`` their weights normalized to sum to 1 (uniform if
  they sum to 0). Starting from the weighted mean, each iteration sets::

    beta_i = alpha_i / max(smoothing, ||v - x_i||)
    v      = sum_i beta_i x_i / sum_i beta_i

  where ``smoothing`` (nu in Pillutla et al.) keeps the step finite when v
  lands on a client's update. Iteration stops once the relative change of the
  objective, ``|g(v_old) - g(v_new)| / g(v_new)``, is at most ``tolerance``
  (an objective of exactly 0 counts as converged), or after ``max_iters``
  iterations. Note that g is flat at its minimum: in float32 it stops
  resolving changes once v is within about ``sqrt(eps) * spread`` of the
  optimum, so the objective is then near-optimal (relative error ~1e-7) while
  v itself is accurate only to ~1e-3 relative to the clients' spread.

  Args:
    updates: pytree of ``[C, ...]`` per-client updates.
    weights: ``[C]`` non-negative aggregation weights.
    mask: ``[C]`` bool, True for valid clients.
    smoothing: nu > 0, the floor on distances.
    max_iters: maximum number of Weiszfeld iterations (>= 1).
    tolerance: relative objective change at which to stop (>= 0).

  Returns:
    ``(aggregate, num_iterations)``: a pytree shaped like one client's update
    (all zeros, after 0 iterations, if no client is valid) and the int32
    number of Weiszfeld iterations performed.

  Raises:
    ValueError: if an option is out of range.
  """
  if not (_is_real(smoothing) and smoothing > 0):
    raise ValueError(
        f"smoothing must be a finite number > 0, got {smoothing!r}")
  _check_int("max_iters", max_iters, 1)
  if not (_is_real(tolerance) and tolerance >= 0):
    raise ValueError(
        f"tolerance must be a finite number >= 0, got {tolerance!r}")
  return _geometric_median(updates, weights, mask, smoothing=float(smoothing),
                           max_iters=int(max_iters), tolerance=float(tolerance))


@functools.partial(jax.jit,
                   static_argnames=("smoothing", "max_iters", "tolerance"))
def _geometric_median(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                      smoothing: float, max_iters: int,
                      tolerance: float) -> tuple[PyTree, jax.Array]:
  x, weights, mask, n, unravel = _flatten_clients(updates, weights, mask)
  alpha = _normalized_weights(weights, mask, n)

  def distances_to(v):
    # Invalid rows are zero and have alpha = 0, so their (finite) distances
    # contribute nothing to beta or to the objective.
    return jnp.sqrt(jnp.sum(jnp.square(x - v[None, :]), axis=1))

  def cond(state):
    iteration, _, _, _, done = state
    return (iteration < max_iters) & ~done

  def body(state):
    iteration, v, distances, objective, _ = state
    beta = alpha / jnp.maximum(distances, smoothing)
    beta_sum = jnp.sum(beta)
    # beta_sum > 0 whenever a client is valid (the loop does not run
    # otherwise); the guard only keeps the traced division finite.
    new_v = jnp.sum(beta[:, None] * x, axis=0) / jnp.where(
        beta_sum > 0, beta_sum, 1.0)
    new_distances = distances_to(new_v)
    new_objective = jnp.sum(alpha * new_distances)
    done = jnp.abs(objective - new_objective) <= tolerance * new_objective
    return iteration + 1, new_v, new_distances, new_objective, done

  v0 = jnp.sum(alpha[:, None] * x, axis=0)
  distances0 = distances_to(v0)
  init = (jnp.zeros((), jnp.int32), v0, distances0,
          jnp.sum(alpha * distances0), n == 0)
  iterations, v, _, _, _ = lax.while_loop(cond, body, init)
  return unravel(v), iterations

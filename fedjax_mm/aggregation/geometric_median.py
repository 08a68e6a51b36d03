"""Geometric median by the smoothed Weiszfeld algorithm (RFA).

Inputs follow the stacked-cohort convention of ``stacked.py``: updates
``[C, ...]``, weights ``[C]``, mask ``[C]``; masked rows have no influence,
n is traced, and the aggregate is all zeros when no client is valid.

References:
  Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
  IEEE Transactions on Signal Processing 70, 2022; arXiv:1912.13445.
  (RFA: geometric median by the smoothed Weiszfeld algorithm.)
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from fedjax_mm import checks
from fedjax_mm.aggregation.base import CohortAggregator, stateless
from fedjax_mm.registry import Part
from fedjax_mm.aggregation.stacked import flatten_clients, normalized_weights
from fedjax_mm.types import PyTree


def geometric_median(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                     smoothing: float = 1e-6, max_iters: int = 100,
                     tolerance: float = 1e-5) -> tuple[PyTree, jax.Array]:
  """Weighted geometric median by smoothed Weiszfeld iterations (RFA).

  Approximately minimizes ``g(v) = sum_i alpha_i ||v - x_i||`` over the valid
  clients, with ``alpha_i`` their weights normalized to sum to 1 (uniform if
  they sum to 0). Starting from the weighted mean, each iteration sets::

    beta_i = alpha_i / max(smoothing, ||v - x_i||)
    v      = sum_i beta_i x_i / sum_i beta_i

  where ``smoothing`` (nu in Pillutla et al.) keeps the step finite when v
  lands on a client's update. Iteration stops once the estimate moves by at
  most ``tolerance * s``, with ``s`` the median distance of the valid clients
  to the new estimate (a robust scale of the honest updates), or once the
  move is at the rounding level of v (``4 eps32 ||v||``: further iterations
  cannot resolve it), or after ``max_iters`` iterations.

  Why the movement and not the objective: far outliers dominate ``g`` (two
  clients at 1e12 out of ten make ``g ~ 2e11``), so a relative change of
  ``g`` near float32 epsilon is reached while v is still thousands of honest
  spreads from the median; the median distance ``s`` ignores up to half of
  the clients, however far they are. Weiszfeld converges linearly near the
  median (rate ``rho < 1``), so stopping on a move of ``tolerance * s``
  leaves v about ``tolerance * s * rho / (1 - rho)`` from it.

  Args:
    updates: pytree of ``[C, ...]`` per-client updates.
    weights: ``[C]`` non-negative aggregation weights.
    mask: ``[C]`` bool, True for valid clients.
    smoothing: nu > 0, the floor on distances.
    max_iters: maximum number of Weiszfeld iterations (>= 1).
    tolerance: the move, relative to the median distance, at which to stop
      (>= 0; 0 runs ``max_iters`` iterations unless v stops changing).

  Returns:
    ``(aggregate, num_iterations)``: a pytree shaped like one client's update
    (all zeros, after 0 iterations, if no client is valid) and the int32
    number of Weiszfeld iterations performed.

  Raises:
    ValueError: if an option is out of range.
  """
  checks.number("smoothing", smoothing,
                lambda v: math.isfinite(v) and v > 0, "> 0 (finite)")
  checks.number("max_iters", max_iters, lambda v: v >= 1, ">= 1", integer=True)
  checks.number("tolerance", tolerance,
                lambda v: math.isfinite(v) and v >= 0, ">= 0 (finite)")
  return _geometric_median(updates, weights, mask, smoothing=float(smoothing),
                           max_iters=int(max_iters), tolerance=float(tolerance))


def _median_distance(distances: jax.Array, mask: jax.Array,
                     n: jax.Array) -> jax.Array:
  """Lower median of the valid rows' distances (0 when none is valid)."""
  ordered = jnp.sort(jnp.where(mask, distances, jnp.inf))
  middle = lax.dynamic_index_in_dim(ordered, jnp.maximum((n - 1) // 2, 0),
                                    keepdims=False)
  return jnp.where(n > 0, middle, 0.0)


@functools.partial(jax.jit,
                   static_argnames=("smoothing", "max_iters", "tolerance"))
def _geometric_median(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                      smoothing: float, max_iters: int,
                      tolerance: float) -> tuple[PyTree, jax.Array]:
  x, weights, mask, n, unravel = flatten_clients(updates, weights, mask)
  alpha = normalized_weights(weights, mask, n)
  eps = jnp.finfo(x.dtype).eps

  def distances_to(v):
    # Invalid rows are zero and have alpha = 0, so their (finite) distances
    # contribute nothing to beta; the median distance skips them.
    return jnp.sqrt(jnp.sum(jnp.square(x - v[None, :]), axis=1))

  def cond(state):
    iteration, _, _, done = state
    return (iteration < max_iters) & ~done

  def body(state):
    iteration, v, distances, _ = state
    beta = alpha / jnp.maximum(distances, smoothing)
    beta_sum = jnp.sum(beta)
    # beta_sum > 0 whenever a client is valid (the loop does not run
    # otherwise); the guard only keeps the traced division finite.
    new_v = jnp.sum(beta[:, None] * x, axis=0) / jnp.where(
        beta_sum > 0, beta_sum, 1.0)
    new_distances = distances_to(new_v)
    move = jnp.sqrt(jnp.sum(jnp.square(new_v - v)))
    scale = _median_distance(new_distances, mask, n)
    rounding = 4.0 * eps * jnp.sqrt(jnp.sum(jnp.square(new_v)))
    done = move <= jnp.maximum(tolerance * scale, rounding)
    return iteration + 1, new_v, new_distances, done

  v0 = jnp.sum(alpha[:, None] * x, axis=0)
  init = (jnp.zeros((), jnp.int32), v0, distances_to(v0), n == 0)
  iterations, v, _, _ = lax.while_loop(cond, body, init)
  return unravel(v), iterations


def geometric_median_aggregator(smoothing: float = 1e-6,
                                max_iters: int = 100) -> CohortAggregator:
  """The geometric median (RFA) as a round's aggregator; its iterations as a metric."""
  checks.number("smoothing", smoothing, lambda v: math.isfinite(v) and v > 0, "> 0 (finite)")
  checks.number("max_iters", max_iters, lambda v: v >= 1, ">= 1", integer=True)

  def reduce(d, w, mask):
    result, iterations = geometric_median(d, w, mask, smoothing=smoothing,
                                          max_iters=max_iters)
    return result, {"iterations": jnp.asarray(iterations, jnp.float32)}

  return stateless("geometric_median", reduce)


PART = Part("geometric_median", geometric_median_aggregator, "geometric median",
            "smoothed Weiszfeld geometric median (RFA; Pillutla et al., IEEE TSP 2022)")

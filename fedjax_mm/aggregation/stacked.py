"""Shared helpers for aggregators over a stacked cohort of updates.

Unlike the weighted mean (``mean.py``), the whole-cohort statistics
(``coordinatewise.py``, ``krum.py``, ``geometric_median.py``) need every
client's update at once, so each function takes the full stack of updates.
All of them are pure functions with the same inputs:

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

Each public function validates its static options eagerly, then calls a
jitted body: eager callers then get one compiled program per cohort shape
(and option values) instead of op-by-op dispatch and a recompiled
while_loop per call; under an outer jit the inner one is simply inlined.

Internally the pytree is flattened per client to a ``[C, P]`` matrix
(:func:`flatten_clients`); the aggregate is unflattened back into the
structure of one client's update.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedjax_mm.types import PyTree


def flatten_clients(
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


def normalized_weights(weights: jax.Array, mask: jax.Array,
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


def sorted_with_invalid_last(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Sorts ``x [C, P]`` per coordinate, invalid rows (as +inf) last."""
  # +inf sorts after every finite value, so per coordinate the n valid values
  # occupy sorted positions 0..n-1 whatever n is.
  return jnp.sort(jnp.where(mask[:, None], x, jnp.inf), axis=0)

"""TIES-merging of client updates (a model-merging baseline for Fed-CMP).

From the paper (Yadav et al., NeurIPS 2023, Algorithm 1), with task vectors
τ_k = the client updates ΔW_k (``global - local``; the merged result is the
server's pseudo-gradient):

1. trim: keep each τ_k's top-``density`` fraction of entries by magnitude
   (the paper's top-k%, default 20%), zero the rest -> τ̂_k;
2. elect: γ = sgn(Σ_k τ̂_k) per coordinate (the paper's "total mass");
3. disjoint merge: per coordinate, the mean of τ̂_k over the clients
   A = {k : τ̂_k ≠ 0, sgn(τ̂_k) = γ}; 0 where A is empty;
4. scale: λ τ_m (``scale``). The paper picks λ on validation data (its
   repository searches 0.8-2.5); λ = 1 is the plain disjoint mean, the
   natural server step here (a server learning rate can be layered on top).

Our choices (each reduces to the paper with uniform weights and all clients
valid):

* weights: the election uses the weighted mass ``sgn(Σ_k p_k τ̂_k)`` and the
  disjoint merge the weighted mean ``Σ_A p_k τ̂_k / Σ_A p_k`` with ``p`` the
  normalized aggregation weights (uniform over valid clients if they all
  weigh 0). A client of weight 0 then has no influence.
* trim budget: ``k = max(1, ⌈density · P⌉)`` over the client's ``P``
  entries; kept are the non-zero entries with ``|x| >= t``, ``t`` the k-th
  largest magnitude (so ties at ``t`` are all kept, and an all-zero update
  keeps nothing). ``trim_scope="global"`` trims over the client's whole
  flattened update (the paper), ``"per_tensor"`` per leaf.
* a zero elected sign (mass exactly 0) merges to 0, as Algorithm 1 reads
  (the repository instead assigns such coordinates the majority sign).
* masked clients are zeroed with ``jnp.where`` before any arithmetic and
  excluded from the election and the merge.

Reference:
  Yadav, Tam, Choshen, Raffel, Bansal, "TIES-Merging: Resolving Interference
  When Merging Models", NeurIPS 2023 (arXiv:2306.01708).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from fedjax_mm import checks
from fedjax_mm.aggregation.base import CohortAggregator, stateless
from fedjax_mm.registry import Part
from fedjax_mm.aggregation.stacked import normalized_weights
from fedjax_mm.types import PyTree

TRIM_SCOPES = ("global", "per_tensor")


def check_options(density: float, scale: float) -> None:
  """Validates TIES' static options (shared with KnOTS)."""
  checks.number("density", density, lambda v: 0 < v <= 1, "in (0, 1]")
  checks.number("scale", scale, lambda v: math.isfinite(v) and v > 0, "> 0 (finite)")


def flatten_masked(leaves: list[jax.Array], mask: jax.Array) -> jax.Array:
  """``[C, P]`` float32 concatenation of the leaves, masked rows zeroed."""
  num_clients = mask.shape[0]
  if any(x.ndim < 1 or x.shape[0] != num_clients for x in leaves):
    raise ValueError(f"every leaf must lead with the {num_clients} clients; got "
                     f"{[x.shape for x in leaves]}")
  if not leaves:
    return jnp.zeros((num_clients, 0), jnp.float32)
  x = jnp.concatenate([x.reshape(num_clients, -1).astype(jnp.float32) for x in leaves], axis=1)
  return jnp.where(mask[:, None], x, 0.0)


def unflatten_like(flat: jax.Array, leaves: list[jax.Array]) -> list[jax.Array]:
  """Splits a ``[P]`` vector back into one client's leaves (shapes and dtypes)."""
  out, start = [], 0
  for x in leaves:
    size = math.prod(x.shape[1:])
    out.append(flat[start:start + size].reshape(x.shape[1:]).astype(x.dtype))
    start += size
  return out


def trim(x: jax.Array, density: float, valid: jax.Array | None = None) -> jax.Array:
  """Keeps each row's top-``density`` entries by magnitude (see the module doc).

  Args:
    x: ``[C, P]`` float32.
    density: fraction kept, in (0, 1].
    valid: optional ``[P]`` bool; only these entries count in ``P`` and may be
      kept (KnOTS: the supported singular directions, a traced count).

  Returns:
    ``x`` with the trimmed entries set to 0.
  """
  size = x.shape[1]
  if size == 0:
    return x
  mag = jnp.abs(x)
  if valid is None:
    k = jnp.asarray(max(1, math.ceil(density * size - 1e-6)), jnp.int32)
  else:
    mag = jnp.where(valid[None, :], mag, -1.0)     # sorted below every valid entry
    count = jnp.sum(valid, dtype=jnp.int32)
    k = jnp.maximum(1, jnp.ceil(density * count.astype(jnp.float32) - 1e-6).astype(jnp.int32))
  threshold = jnp.take(jnp.sort(mag, axis=1), size - k, axis=1)   # k-th largest per row
  keep = (mag >= threshold[:, None]) & (x != 0)
  return jnp.where(keep if valid is None else keep & valid[None, :], x, 0.0)


def weighted_sum(p: jax.Array, x: jax.Array) -> jax.Array:
  """``Σ_k p_k x_k`` over ``[C, P]`` rows, elementwise (no reduced-precision matmul)."""
  return jnp.sum(p[:, None] * x, axis=0)


def elect_and_merge(trimmed: jax.Array, p: jax.Array,
                    mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sign election and disjoint mean of ``[C, P]`` trimmed rows.

  Returns:
    ``(merged [P], counts)``: counts of non-zero trimmed entries of valid
    clients (``"nonzero"``) and of those agreeing with the elected sign
    (``"agree"``), for the info scalars.
  """
  trimmed = jnp.where(mask[:, None], trimmed, 0.0)
  elected = jnp.sign(weighted_sum(p, trimmed))
  agree = (jnp.sign(trimmed) == elected[None, :]) & (trimmed != 0) & mask[:, None]
  num = weighted_sum(p, jnp.where(agree, trimmed, 0.0))
  den = weighted_sum(p, agree.astype(jnp.float32))
  merged = jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
  nonzero = jnp.sum((trimmed != 0) & mask[:, None], dtype=jnp.float32)
  return merged, {"nonzero": nonzero, "agree": jnp.sum(agree, dtype=jnp.float32)}


def client_weights(weights: jax.Array, mask: jax.Array) -> jax.Array:
  """Normalized ``[C]`` float32 weights over the valid clients."""
  weights = jnp.asarray(weights)
  if mask.ndim != 1 or weights.shape != mask.shape:
    raise ValueError(f"weights and mask must have shape [C]; got {weights.shape}, {mask.shape}")
  w = jnp.where(mask, weights.astype(jnp.float32), 0.0)
  return normalized_weights(w, mask, jnp.sum(mask, dtype=jnp.int32))


def ties_merge(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
               density: float = 0.2, scale: float = 1.0,
               trim_scope: str = "global") -> tuple[PyTree, dict[str, jax.Array]]:
  """TIES-merges stacked client updates (trim, elect sign, disjoint mean).

  Args:
    updates: pytree of ``[C, ...]`` client updates.
    weights: ``[C]`` non-negative aggregation weights (uniform = the paper).
    mask: ``[C]`` bool, False for padding/excluded clients (no influence).
    density: fraction of each client's entries kept by the trim, in (0, 1]
      (1 = no trim).
    scale: the paper's λ, > 0, multiplying the merged update.
    trim_scope: ``"global"`` (the client's whole update, as the paper) or
      ``"per_tensor"`` (each leaf on its own).

  Returns:
    ``(aggregate, info)``: the aggregate has one client's shapes and dtypes;
    ``info["kept_fraction"]`` is the share of the valid clients' entries the
    trim kept (non-zero), ``info["agreement"]`` the share of those agreeing
    with the elected sign.
  """
  check_options(density, scale)
  checks.one_of("trim_scope", trim_scope, TRIM_SCOPES)
  if not jax.tree.leaves(updates):
    raise ValueError("updates must have at least one leaf")
  return _ties(updates, weights, mask, density=density, scale=scale, trim_scope=trim_scope)


@functools.partial(jax.jit, static_argnames=("density", "scale", "trim_scope"))
def _ties(updates, weights, mask, *, density, scale, trim_scope):
  # Jitted (static options): one program per shape for eager callers;
  # inlined under an outer jit.
  leaves, treedef = jax.tree.flatten(updates)
  mask = jnp.asarray(mask, bool)
  if trim_scope == "global":
    trimmed = trim(flatten_masked(leaves, mask), density)
  else:
    trimmed = jnp.concatenate([trim(flatten_masked([x], mask), density) for x in leaves], axis=1)
  merged, counts = elect_and_merge(trimmed, client_weights(weights, mask), mask)
  total = jnp.sum(mask, dtype=jnp.float32) * trimmed.shape[1]
  info = {"kept_fraction": counts["nonzero"] / jnp.maximum(total, 1.0),
          "agreement": counts["agree"] / jnp.maximum(counts["nonzero"], 1.0)}
  return jax.tree.unflatten(treedef, unflatten_like(scale * merged, leaves)), info


def ties_aggregator(density: float = 0.2, scale: float = 1.0) -> CohortAggregator:
  """TIES-merging of the cohort's updates (``density`` kept per client, λ = ``scale``)."""
  check_options(density, scale)
  return stateless("ties", lambda d, w, m: ties_merge(d, w, m, density=density, scale=scale))


PART = Part("ties", ties_aggregator, "TIES",
            "trim, elect sign, disjoint mean (Yadav et al., NeurIPS 2023)")

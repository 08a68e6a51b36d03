"""Canonical reliability-aware aggregation (Fed-CMP's CRA), a documented reconstruction.

Fed-CMP (Xiong et al., arXiv:2603.26786, 2026) is known to us only from its
abstract: the server builds a *canonical space* in which each client's
projector decomposes into a *shared alignment basis* and *client-specific
coefficients*, and fuses the coefficients with *reliability weights* to
suppress parameter interference. Everything below that sentence is our
reconstruction (after KnOTS, Stoica et al., ICLR 2025), each choice a named
option. Per weight matrix (every leaf with two or more dimensions, flattened
to ``m x n`` over its last axis), over the valid clients k with updates ΔW_k:

0. what is decomposed (option ``decompose``): the updates, ``X_k = ΔW_k``
   (default), or the clients' local projectors, ``X_k = W - ΔW_k`` (the
   abstract speaks of decomposing "client projectors"; ``W`` is the round's
   global model);
1. basis: ``U`` = the top-``r`` left singular vectors of
   ``M = [X_1 | ... | X_K]`` (``m x nK``), computed as the eigenvectors of
   ``G = Σ_k X_k X_kᵀ`` (``m x m``: the same space, and a sum that streams
   chunk by chunk, see ``canonical_streamed.py``);
2. coefficients ``C_k = Uᵀ X_k`` (``r x n``);
3. reliability ``ρ_k`` (option ``reliability``):
   ``"explained"``: ``‖U C_k‖² / ‖X_k‖²``, the share of ``X_k`` the
   shared basis explains (pooled over the matrices); ``"agreement"``: the
   cosine between ``C_k`` and the weighted consensus ``C̄ = Σ p_k C_k``;
   ``"inverse_variance"``: ``1 / (1 + d_k)`` with ``d_k`` the client's
   squared deviation from ``C̄`` measured per basis direction in units of
   that direction's weighted variance over the cohort (a diagonal
   Mahalanobis distance, averaged over directions: a typical client has
   ``d_k ≈ 1``, so ``ρ_k ≈ 0.5``; an outlier ``ρ_k → 0``);
   ``"uniform"``: 0 (plain weights). Option ``score_with``: score against
   this round's basis (``"current"``) or last round's (``"previous"``, what
   a one-pass streamed server can do; round 0 then scores uniformly);
4. fusion weights ``α_k ∝ w_k · exp(ρ_k / τ)`` (softmax over valid clients;
   ``w_k`` the aggregation weights, ``τ`` the temperature);
5. aggregate (option ``fusion``): ``"coefficients"``: ``U Uᵀ Σ_k α_k ΔW_k``
   (``= U Σ_k α_k C_k`` when the updates are decomposed; with the local
   projectors decomposed, the global model's part outside span(U) is kept
   rather than truncated: only the update is projected);
   ``"mean"``: the plain weighted mean ``Σ p_k ΔW_k`` (the basis is still
   computed and handed on: the "momentum only" ablation of Fed-CMP).

Vectors and scalars (biases) are fused by the same ``α`` without a basis.
With full rank the basis spans every update, so ``"explained"`` gives
``ρ_k = 1`` for all and CRA is exactly the weighted mean: the reliability
weighting only matters once the rank is truncated (or with ``"agreement"``).
The round's bases are kept in :class:`CanonicalState`, which the round hands
to the server transform (``aggregator_state=``): Fed-CMP's orthogonality-
preserved momentum (``server/orthogonal_momentum.py``) reads them there.

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
  Stoica et al., "Model Merging with SVD to Tie the KnOTS", ICLR 2025.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_mm import checks
from fedjax_mm.aggregation.base import CohortAggregator
from fedjax_mm.types import PyTree

RELIABILITIES = ("explained", "agreement", "inverse_variance", "uniform")
DECOMPOSITIONS = ("updates", "weights")
FUSIONS = ("coefficients", "mean")
SCORINGS = ("current", "previous")


class CanonicalState(NamedTuple):
  """The last round's shared bases, one ``m x r`` per matrix leaf (leaf order)."""

  bases: tuple[jax.Array, ...]
  has_basis: jax.Array


def basis_rank(rank: int | float | None, m: int) -> int:
  """The basis size for an ``m``-row matrix: None = full, an int (capped), a fraction."""
  if rank is None:
    return m
  if isinstance(rank, numbers.Integral):
    return min(m, int(rank))
  return max(1, min(m, math.ceil(rank * m)))


def check_options(rank, reliability: str, temperature: float, fusion: str = "coefficients",
                  score_with: str = "current", decompose: str = "updates") -> None:
  checks.one_of("reliability", reliability, RELIABILITIES)
  checks.one_of("decompose", decompose, DECOMPOSITIONS)
  checks.one_of("fusion", fusion, FUSIONS)
  checks.one_of("score_with", score_with, SCORINGS)
  checks.number("temperature", temperature, lambda v: math.isfinite(v) and v > 0,
                "> 0 (finite)")
  if rank is not None:
    ok = (lambda v: v >= 1) if isinstance(rank, numbers.Integral) else (lambda v: 0 < v <= 1)
    checks.number("rank", rank, ok, "an int >= 1 or a fraction in (0, 1], or None")


def as_matrix(x: jax.Array, lead: int) -> jax.Array:
  """A leaf as ``[*lead dims, m, n]`` (leading dims after ``lead`` flattened into m)."""
  return x.reshape(x.shape[:lead] + (-1, x.shape[-1]))


def is_matrix(x: jax.Array, lead: int) -> bool:
  return x.ndim >= lead + 2


def init_state(template: PyTree, rank: int | float | None) -> CanonicalState:
  """Zero bases shaped for ``template`` (one client's update)."""
  bases = []
  for x in jax.tree.leaves(template):
    if is_matrix(x, 0):
      m = math.prod(x.shape[:-1])
      bases.append(jnp.zeros((m, basis_rank(rank, m)), jnp.float32))
  return CanonicalState(bases=tuple(bases), has_basis=jnp.zeros((), bool))


def client_gram(x: jax.Array) -> jax.Array:
  """``Σ_k ΔW_k ΔW_kᵀ`` (``m x m``) of stacked matrices ``[C, m, n]``, in full float32
  (no TF32 on GPUs: the basis is read off its eigenvectors)."""
  return jnp.einsum("cmn,cpn->mp", x, x, precision=jax.lax.Precision.HIGHEST)


def descending_eigh(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Eigenvalues and eigenvectors (columns) of a symmetric ``gram``, largest first."""
  values, vectors = jnp.linalg.eigh(gram)       # ascending
  return values[::-1], vectors[:, ::-1]


def top_eigenvectors(gram: jax.Array, r: int) -> jax.Array:
  """Top-``r`` eigenvectors (``m x r``) of a symmetric PSD ``gram``."""
  return descending_eigh(gram)[1][:, :r]


def explained_energy(bases, grams) -> jax.Array:
  """Share of the cohort's update energy ``Σ tr(UᵀGU) / Σ tr(G)`` the bases span."""
  inside = sum((jnp.sum(u * (g @ u)) for u, g in zip(bases, grams)), jnp.zeros(()))
  total = sum((jnp.trace(g) for g in grams), jnp.zeros(()))
  return jnp.where(total > 0, inside / jnp.maximum(total, 1e-30), 1.0)


def reliability_scores(kind: str, mats: list[jax.Array], bases, p: jax.Array) -> jax.Array:
  """``[C]`` reliabilities of the clients' matrices ``[C, m, n]`` under ``bases``.

  ``p`` are the normalized weights (0 for masked clients, whose scores are
  ignored by the caller); see the module doc for each ``kind``.
  """
  if kind == "uniform" or not mats:
    return jnp.zeros_like(p)
  coeffs = [jnp.einsum("mr,cmn->crn", u, x) for u, x in zip(bases, mats)]
  if kind == "explained":   # ‖U C_k‖² = ‖C_k‖² for orthonormal U
    inside = sum(jnp.sum(c**2, axis=(1, 2)) for c in coeffs)
    energy = sum(jnp.sum(x**2, axis=(1, 2)) for x in mats)
    return jnp.where(energy > 0, inside / jnp.maximum(energy, 1e-30), 1.0)
  if kind == "inverse_variance":
    # Per direction (row j of C_k): squared deviation from the weighted
    # consensus over the row's n entries, in units of its weighted variance.
    dev = [c - jnp.einsum("c,crn->rn", p, c) for c in coeffs]
    sq = jnp.concatenate([jnp.sum(d**2, axis=2) for d in dev], axis=1)   # [C, Σ r]
    var = p @ sq
    scale = jnp.max(var)
    normalized = sq / jnp.maximum(var, 1e-12 * scale + 1e-30)   # a direction all agree on: ~0
    return 1.0 / (1.0 + jnp.mean(normalized, axis=1))
  flat = jnp.concatenate([c.reshape(c.shape[0], -1) for c in coeffs], axis=1)
  consensus = p @ flat
  norms = jnp.linalg.norm(flat, axis=1) * jnp.linalg.norm(consensus)
  return (flat @ consensus) / jnp.maximum(norms, 1e-30)


def decomposed(kind: str, deltas: list[jax.Array], globals_: list[jax.Array],
               mask: jax.Array) -> list[jax.Array]:
  """The matrices CRA decomposes: the updates, or the local models ``W - ΔW_k``."""
  if kind == "updates":
    return deltas
  return [jnp.where(mask[:, None, None], g[None] - d, 0.0) for g, d in zip(globals_, deltas)]


def global_matrices(kind: str, params: PyTree | None) -> list[jax.Array]:
  """The global model's matrix leaves ``[m, n]`` in float32 (needed to decompose weights)."""
  if kind == "updates":
    return []
  if params is None:
    raise ValueError("decompose='weights' needs the round's global parameters (params=)")
  return [as_matrix(x, 0).astype(jnp.float32) for x in jax.tree.leaves(params)
          if is_matrix(x, 0)]


def canonical_fusion(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                     rank: int | float | None = None, reliability: str = "explained",
                     temperature: float = 0.1, fusion: str = "coefficients",
                     score_bases: tuple[jax.Array, ...] | None = None,
                     decompose: str = "updates", params: PyTree | None = None
                     ) -> tuple[PyTree, dict]:
  """Fuses stacked client updates in a shared canonical basis (see the module doc).

  Args:
    updates: pytree of ``[C, ...]`` client updates.
    weights: ``[C]`` non-negative aggregation weights.
    mask: ``[C]`` bool, False for padding/excluded clients (no influence).
    rank: basis size per matrix: None = full (``m``), an int ``r`` (capped at
      ``m``), or a float in (0, 1] = that fraction of ``m`` (at least 1).
    reliability: one of ``RELIABILITIES``.
    temperature: τ > 0 of the softmax over reliabilities.
    fusion: one of ``FUSIONS``.
    score_bases: bases to score reliabilities against (default: this round's).
    decompose: one of ``DECOMPOSITIONS``.
    params: the round's global model (one client's structure); needed by
      ``decompose="weights"``.

  Returns:
    ``(aggregate, info)``: ``info["explained"]`` is the share of the cohort's
    matrix-update energy the bases span (1 at full rank), ``info["alpha"]``
    the ``[C]`` fusion weights, ``info["bases"]`` the ``m x r`` bases.
  """
  check_options(rank, reliability, temperature, fusion, decompose=decompose)
  mask = mask.astype(bool)
  w = jnp.where(mask, weights.astype(jnp.float32), 0.0)
  p = w / jnp.maximum(jnp.sum(w), 1e-30)
  leaves, treedef = jax.tree.flatten(updates)
  deltas = [jnp.where(mask[:, None, None], as_matrix(x, 1), 0.0).astype(jnp.float32)
            for x in leaves if is_matrix(x, 1)]
  mats = decomposed(decompose, deltas, global_matrices(decompose, params), mask)
  grams = [client_gram(x) for x in mats]
  bases = tuple(top_eigenvectors(g, basis_rank(rank, g.shape[0])) for g in grams)
  rho = reliability_scores(reliability, mats, bases if score_bases is None else score_bases, p)
  logits = jnp.where(mask, jnp.log(jnp.maximum(w, 1e-30)) + rho / temperature, -jnp.inf)
  alpha = jnp.where(mask & jnp.any(mask), jax.nn.softmax(logits), 0.0)
  mix = p if fusion == "mean" else alpha
  out, it = [], iter(zip(bases, deltas))
  for x in leaves:
    if is_matrix(x, 1):
      u, d = next(it)
      fused = jnp.einsum("c,cmn->mn", mix, d)
      if fusion == "coefficients":   # U Uᵀ Σ α_k ΔW_k (= U Σ α_k C_k for updates)
        fused = u @ (u.T @ fused)
      out.append(fused.reshape(x.shape[1:]).astype(x.dtype))
    else:
      safe = jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
      out.append(jnp.tensordot(mix.astype(x.dtype), safe, axes=1))
  info = {"explained": explained_energy(bases, grams), "alpha": alpha, "bases": bases}
  return jax.tree.unflatten(treedef, out), info


def canonical_aggregator(*, rank: int | float | None = None, reliability: str = "explained",
                         temperature: float = 0.1, fusion: str = "coefficients",
                         score_with: str = "current",
                         decompose: str = "updates") -> CohortAggregator:
  """CRA on the stacked cohort; its state keeps the round's bases (for OPM)."""
  check_options(rank, reliability, temperature, fusion, score_with, decompose)

  def aggregate(state: CanonicalState, deltas, weights, mask, key, params):
    del key
    previous = state.bases if score_with == "previous" else None
    if previous is not None:   # round 0 has no previous basis: score uniformly
      previous = tuple(jnp.where(state.has_basis, u, 0.0) for u in previous)
    result, info = canonical_fusion(deltas, weights, mask, rank=rank, reliability=reliability,
                                    temperature=temperature, fusion=fusion,
                                    score_bases=previous, decompose=decompose,
                                    params=params)
    new_state = CanonicalState(bases=info["bases"], has_basis=jnp.ones((), bool))
    return result, new_state, {"explained": info["explained"]}

  return CohortAggregator(name="canonical", init=lambda t: init_state(t, rank),
                          aggregate=aggregate)

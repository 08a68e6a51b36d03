"""Canonical reliability-aware aggregation (Fed-CMP's CRA), a documented reconstruction.

Fed-CMP (Xiong et al., arXiv:2603.26786, 2026) is known to us only from its
abstract: the server builds a *canonical space* in which each client's
projector decomposes into a *shared alignment basis* and *client-specific
coefficients*, and fuses the coefficients with *reliability weights* to
suppress parameter interference. Everything below that sentence is our
reconstruction (after KnOTS, Stoica et al., ICLR 2025), each choice a named
option. Per weight matrix (every leaf with two or more dimensions, flattened
to ``m x n`` over its last axis), over the valid clients k with updates ΔW_k:

1. basis: ``U`` = the top-``r`` left singular vectors of
   ``M = [ΔW_1 | ... | ΔW_K]`` (``m x nK``), computed as the eigenvectors of
   ``Σ_k ΔW_k ΔW_kᵀ`` (``m x m``: the same space, and a sum that could be
   streamed chunk by chunk);
2. coefficients ``C_k = Uᵀ ΔW_k`` (``r x n``);
3. reliability ``ρ_k`` (option ``reliability``):
   ``"explained"``: ``‖U C_k‖² / ‖ΔW_k‖²``, the share of the update the
   shared basis explains; ``"agreement"``: the cosine between ``C_k`` and the
   weighted consensus ``Σ p_k C_k``; ``"uniform"``: 0 (plain weights);
4. fusion weights ``α_k ∝ w_k · exp(ρ_k / τ)`` (normalized over valid
   clients; ``w_k`` the aggregation weights, ``τ`` the temperature), one per
   client for all matrices (its reliability pooled over their energy);
5. aggregate ``U Σ_k α_k C_k``.

Vectors and scalars (biases) are fused by the same ``α`` without a basis.
With full rank the basis spans every update, so ``"explained"`` gives
``ρ_k = 1`` for all and CRA is exactly the weighted mean: the reliability
weighting only matters once the rank is truncated (or with ``"agreement"``).

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
  Stoica et al., "Model Merging with SVD to Tie the KnOTS", ICLR 2025.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp

from fedjax_mm import checks
from fedjax_mm.types import PyTree

RELIABILITIES = ("explained", "agreement", "uniform")


def _basis(deltas_CxMxN: jax.Array, mask: jax.Array, rank: int) -> jax.Array:
  """Top-``rank`` eigenvectors (``m x rank``) of ``Σ_k ΔW_k ΔW_kᵀ`` over valid k."""
  valid = mask.astype(deltas_CxMxN.dtype)[:, None, None]
  gram = jnp.einsum("cmn,cpn->mp", deltas_CxMxN * valid, deltas_CxMxN * valid)
  _, vectors = jnp.linalg.eigh(gram)            # ascending eigenvalues
  return vectors[:, ::-1][:, :rank]


def _reliability(kind: str, explained: jax.Array, coeffs: jax.Array, p: jax.Array) -> jax.Array:
  if kind == "uniform":
    return jnp.zeros_like(p)
  if kind == "explained":
    return explained
  consensus = jnp.einsum("c,crn->rn", p, coeffs)
  dots = jnp.einsum("crn,rn->c", coeffs, consensus)
  norms = jnp.sqrt(jnp.sum(coeffs**2, axis=(1, 2)) * jnp.sum(consensus**2))
  return dots / jnp.maximum(norms, 1e-30)


def canonical_fusion(updates: PyTree, weights: jax.Array, mask: jax.Array, *,
                     rank: int | float | None = None, reliability: str = "explained",
                     temperature: float = 0.1) -> tuple[PyTree, dict[str, jax.Array]]:
  """Fuses stacked client updates in a shared canonical basis (see the module doc).

  Args:
    updates: pytree of ``[C, ...]`` client updates.
    weights: ``[C]`` non-negative aggregation weights.
    mask: ``[C]`` bool, False for padding/excluded clients (no influence).
    rank: basis size per matrix: None = full (``m``), an int ``r`` (capped at
      ``m``), or a float in (0, 1] = that fraction of ``m`` (at least 1).
    reliability: one of ``RELIABILITIES``.
    temperature: τ > 0 of the softmax over reliabilities.

  Returns:
    ``(aggregate, info)``; ``info["explained"]`` is the weighted mean share
    of the matrices' update energy the bases explain (1 at full rank),
    ``info["alpha"]`` the ``[C]`` fusion weights.
  """
  checks.one_of("reliability", reliability, RELIABILITIES)
  checks.number("temperature", temperature, lambda v: math.isfinite(v) and v > 0,
                "> 0 (finite)")
  if rank is not None:
    ok = (lambda v: v >= 1) if isinstance(rank, numbers.Integral) else (lambda v: 0 < v <= 1)
    checks.number("rank", rank, ok, "an int >= 1 or a fraction in (0, 1], or None")
  mask = mask.astype(bool)
  w = jnp.where(mask, weights.astype(jnp.float32), 0.0)
  p = w / jnp.maximum(jnp.sum(w), 1e-30)
  leaves, treedef = jax.tree.flatten(updates)
  matrices = [x.reshape(x.shape[0], -1, x.shape[-1]) for x in leaves if x.ndim >= 3]
  coeffs, bases, explained = [], [], jnp.zeros(mask.shape, jnp.float32)
  energy = jnp.zeros(mask.shape, jnp.float32)
  for x in matrices:
    x = jnp.where(mask[:, None, None], x, 0.0).astype(jnp.float32)
    m = x.shape[1]
    if rank is None:
      r = m
    elif isinstance(rank, numbers.Integral):
      r = min(m, int(rank))
    else:   # a fraction of the matrix's row space
      r = max(1, min(m, math.ceil(rank * m)))
    u = _basis(x, mask, r)
    c = jnp.einsum("mr,cmn->crn", u, x)
    bases.append(u)
    coeffs.append(c)
    explained = explained + jnp.sum(c**2, axis=(1, 2))   # ‖U C_k‖² = ‖C_k‖² (U orthonormal)
    energy = energy + jnp.sum(x**2, axis=(1, 2))
  share = jnp.where(energy > 0, explained / jnp.maximum(energy, 1e-30), 1.0)
  stacked = (jnp.concatenate([c.reshape(c.shape[0], -1) for c in coeffs], axis=1)
             if coeffs else jnp.zeros(mask.shape + (1, 1), jnp.float32))
  rho = _reliability(reliability, share, stacked.reshape(mask.shape[0], 1, -1), p)
  logits = jnp.where(mask, jnp.log(jnp.maximum(w, 1e-30)) + rho / temperature, -jnp.inf)
  alpha = jnp.where(jnp.any(mask), jax.nn.softmax(logits), 0.0)
  alpha = jnp.where(mask, alpha, 0.0)
  out, it = [], iter(zip(bases, coeffs))
  for x in leaves:
    if x.ndim >= 3:
      u, c = next(it)
      fused = u @ jnp.einsum("c,crn->rn", alpha, c)
      out.append(fused.reshape(x.shape[1:]).astype(x.dtype))
    else:
      safe = jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
      out.append(jnp.tensordot(alpha.astype(x.dtype), safe, axes=1))
  return jax.tree.unflatten(treedef, out), {"explained": jnp.sum(p * share), "alpha": alpha}

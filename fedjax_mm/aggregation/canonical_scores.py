"""CRA's reliabilities: per client or per basis direction, and the softmax fusion weights.

The scoring half of Fed-CMP's canonical reliability-aware aggregation (a
reconstruction; ``canonical.py`` states the equations, steps 3-4). A client's
reliability ``ρ_k`` (``weighting="client"``) or its reliability on basis
direction ``j``, ``ρ_{k,j}`` (``weighting="direction"``), optionally z-scored
over the valid cohort, becomes the fusion weight
``α_k ∝ w_k exp(ρ_k / τ)`` (softmax over the valid clients; per direction
for ``ρ_{k,j}``). The inverse-variance score is a diagonal Mahalanobis
distance (Mahalanobis 1936) per direction; the sign agreement is TIES's
sign consensus (Yadav et al., NeurIPS 2023) read as a score.

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
  Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
  NeurIPS 2023.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

RELIABILITIES = ("explained", "agreement", "inverse_variance", "uniform")
DIRECTION_SCORES = ("sign_agreement", "inverse_variance", "uniform")


def coefficients(bases, mats: list[jax.Array]) -> list[jax.Array]:
  """``C_k = Uᵀ X_k`` (``[C, r, n]``) per matrix."""
  return [jnp.einsum("mr,cmn->crn", u, x) for u, x in zip(bases, mats)]


def _normalized_deviations(coeffs: list[jax.Array], p: jax.Array) -> jax.Array:
  """``z²_{k,j} = ‖C_{k,j} - C̄_j‖² / Σ_l p_l ‖C_{l,j} - C̄_j‖²`` (``[C, Σ r]``)."""
  dev = [c - jnp.einsum("c,crn->rn", p, c) for c in coeffs]
  sq = jnp.concatenate([jnp.sum(d**2, axis=2) for d in dev], axis=1)   # [C, Σ r]
  var = p @ sq
  scale = jnp.max(var)
  return sq / jnp.maximum(var, 1e-12 * scale + 1e-30)   # a direction all agree on: ~0


def reliability_scores(kind: str, mats: list[jax.Array], bases, p: jax.Array) -> jax.Array:
  """``[C]`` reliabilities of the clients' matrices ``[C, m, n]`` under ``bases``.

  ``p`` are the normalized weights (0 for masked clients, whose scores are
  ignored by the caller); see ``canonical.py``'s doc for each ``kind``.
  """
  if kind == "uniform" or not mats:
    return jnp.zeros_like(p)
  coeffs = coefficients(bases, mats)
  if kind == "explained":   # ‖U C_k‖² = ‖C_k‖² for orthonormal U
    inside = sum(jnp.sum(c**2, axis=(1, 2)) for c in coeffs)
    energy = sum(jnp.sum(x**2, axis=(1, 2)) for x in mats)
    return jnp.where(energy > 0, inside / jnp.maximum(energy, 1e-30), 1.0)
  if kind == "inverse_variance":
    return 1.0 / (1.0 + jnp.mean(_normalized_deviations(coeffs, p), axis=1))
  flat = jnp.concatenate([c.reshape(c.shape[0], -1) for c in coeffs], axis=1)
  consensus = p @ flat
  norms = jnp.linalg.norm(flat, axis=1) * jnp.linalg.norm(consensus)
  return (flat @ consensus) / jnp.maximum(norms, 1e-30)


def direction_scores(kind: str, coeffs: list[jax.Array], p: jax.Array) -> jax.Array:
  """``[C, Σ r]`` reliabilities ``ρ_{k,j}`` of each client on each basis direction.

  ``"sign_agreement"``: the share of row ``j`` of ``C_k`` whose entries have
  the strict sign of the consensus ``C̄ = Σ p_k C_k`` (a zero agrees with
  nothing); ``"inverse_variance"``: ``1 / (1 + z²_{k,j})``; ``"uniform"``: 0.
  """
  width = sum(c.shape[1] for c in coeffs)
  if kind == "uniform" or not coeffs:
    return jnp.zeros((p.shape[0], width), jnp.float32)
  if kind == "inverse_variance":
    return 1.0 / (1.0 + _normalized_deviations(coeffs, p))
  agree = [jnp.mean((c * jnp.einsum("c,crn->rn", p, c)[None] > 0).astype(jnp.float32), axis=2)
           for c in coeffs]
  return jnp.concatenate(agree, axis=1)


def standardized(rho: jax.Array, mask: jax.Array) -> jax.Array:
  """``(ρ - mean) / std`` over the valid clients (per column for ``[C, R]``; 0 elsewhere).

  Population statistics, unweighted. A score with std <= 1e-5 carries no
  ranking beyond float32 noise (scores are O(1)), so it maps to 0.
  """
  valid = mask.reshape((-1,) + (1,) * (rho.ndim - 1))
  count = jnp.maximum(jnp.sum(mask), 1)
  mean = jnp.sum(jnp.where(valid, rho, 0.0), axis=0) / count
  std = jnp.sqrt(jnp.sum(jnp.where(valid, (rho - mean) ** 2, 0.0), axis=0) / count)
  return jnp.where(valid & (std > 1e-5), (rho - mean) / jnp.maximum(std, 1e-5), 0.0)


def fusion_weights(rho: jax.Array, w: jax.Array, mask: jax.Array,
                   temperature: float) -> jax.Array:
  """``α ∝ w exp(ρ / τ)``, a softmax over the valid clients (axis 0; per column of ``[C, R]``)."""
  valid = mask.reshape((-1,) + (1,) * (rho.ndim - 1))
  log_w = jnp.log(jnp.maximum(w, 1e-30)).reshape(valid.shape)
  logits = jnp.where(valid, log_w + rho / temperature, -jnp.inf)
  return jnp.where(valid & jnp.any(mask), jax.nn.softmax(logits, axis=0), 0.0)


def effective_clients(alpha: jax.Array) -> jax.Array:
  """``1 / Σ_k α_k²`` (normalized α; the mean over directions for ``[C, R]``; 0 if none)."""
  sq = jnp.sum(alpha**2, axis=0)
  return jnp.mean(jnp.where(sq > 0, 1.0 / jnp.maximum(sq, 1e-30), 0.0))

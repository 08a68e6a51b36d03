"""Stiefel-manifold steps for Fed-CMP's OPM: alignment, tangent projection, retraction.

The orthonormal ``m x r`` bases ``U`` (``UᵀU = I``) form the Stiefel manifold.
These are the pieces :mod:`fedjax_mm.server.orthogonal_momentum` composes
(steps 1-3 of its module doc) into :func:`smoothed_basis`: the round's
observed basis is Procrustes-aligned to the smoothed one kept in state, the
displacement is projected on the tangent space and accumulated in a basis
momentum, and the smoothed basis is retracted back onto the manifold.

References:
  Schönemann, "A generalized solution of the orthogonal Procrustes
  problem", Psychometrika 1966. Absil, Mahony & Sepulchre, "Optimization
  Algorithms on Matrix Manifolds", 2008 (tangent projection, retractions).
  Higham, "Computing the polar decomposition", SIAM J. Sci. Stat. Comput.
  1986 (polar factor = ``P Qᵀ`` of the SVD).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def _sym(a: jax.Array) -> jax.Array:
  return 0.5 * (a + a.T)


def tangent_projection(u: jax.Array, x: jax.Array) -> jax.Array:
  """``P_U(X) = X − U sym(UᵀX)``, the projection on the Stiefel tangent space at U."""
  return x - u @ _sym(u.T @ x)


def polar_factor(a: jax.Array) -> jax.Array:
  """``P Qᵀ`` from ``a = P S Qᵀ``: the orthogonal (Stiefel) factor nearest ``a``."""
  p, _, qt = jnp.linalg.svd(a, full_matrices=False)
  return p @ qt


def qr_retraction(x: jax.Array) -> jax.Array:
  """``qf(X)``: QR's Q with column signs fixed so ``diag(R) > 0`` (unique, continuous)."""
  q, r = jnp.linalg.qr(x)
  signs = jnp.where(jnp.diag(r) < 0, -1.0, 1.0)
  return q * signs[None, :]


def procrustes_align(u_new: jax.Array, u_ref: jax.Array) -> jax.Array:
  """``U_new R`` with ``R = argmax_R orthogonal tr(Rᵀ U_newᵀ U_ref)``."""
  return u_new @ polar_factor(u_new.T @ u_ref)


def smoothed_basis(u_obs: jax.Array, u_prev: jax.Array, b: jax.Array, first: jax.Array, *,
                   procrustes: bool, basis_momentum: float, basis_step: float,
                   retract: Callable[[jax.Array], jax.Array]
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Steps 1-3 of OPM: ``(Ũ, Ũ', B')`` from the observed basis and the state.

  ``Ũ`` is the smoothed basis before the step (the observed one on round 0),
  ``B' = β_B P_Ũ(B) + P_Ũ(U_t R − Ũ)`` the basis momentum (``R`` the
  Procrustes rotation, or ``I`` without alignment) and
  ``Ũ' = retract(Ũ + γ B')`` the new smoothed basis.
  """
  u_prev = jnp.where(first, u_obs, u_prev)
  if procrustes:
    u_obs = procrustes_align(u_obs, u_prev)
  b = basis_momentum * tangent_projection(u_prev, b) + tangent_projection(
      u_prev, u_obs - u_prev)
  return u_prev, retract(u_prev + basis_step * b), b

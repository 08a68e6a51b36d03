"""Fed-CMP's orthogonality-preserved momentum (OPM), a documented reconstruction.

The Fed-CMP abstract (Xiong et al., arXiv:2603.26786, 2026) says only that
the server "applies momentum to the shared basis via orthogonal projection",
preserving its geometric structure, to damp the gradient oscillations of
one-pass collaborative SGD. Everything below is our reconstruction, each
choice a named option. Per weight matrix (leaves with two or more
dimensions, flattened to ``m x n`` over the last axis), given the round's
aggregate Δ and the canonical aggregator's basis ``U_t`` (``m x r``, passed
as the extra argument ``aggregator_state``, a ``CanonicalState``):

``variant="stiefel"`` (the reconstruction):

1. align (``procrustes=True``): SVD bases are defined only up to signs and
   rotations within equal singular values, so ``U_t ← U_t R`` with ``R`` the
   orthogonal Procrustes solution ``argmax tr(Rᵀ U_tᵀ Ũ)``, i.e. the polar
   factor ``P Qᵀ`` of ``U_tᵀ Ũ = P S Qᵀ``, where ``Ũ`` is the smoothed basis
   kept in state (round 0: ``Ũ = U_t``);
2. basis momentum on the Stiefel manifold: with ``P_Ũ(X) = X − Ũ sym(ŨᵀX)``
   the tangent projection at ``Ũ``, ``B ← β_B P_Ũ(B) + P_Ũ(U_t − Ũ)``;
3. retraction: ``Ũ' = polar(Ũ + γ B)`` (``X (XᵀX)^{-1/2}``, the default:
   it commutes with rotations of the basis, ``polar(XQ) = polar(X) Q``, so
   the whole step is blind to the basis's rotation within its span) or
   ``qf`` (``"qr"``: QR with the signs of ``diag(R)`` fixed positive; blind
   to sign flips only), so the basis stays orthonormal to float precision;
4. coefficient momentum in the moving frame: the old momentum ``Ũ M`` is
   carried to the new frame by orthogonal projection, ``M ← β Ũ'ᵀ Ũ M +
   Ũ'ᵀ Δ``;
5. output ``Ũ' M + (Δ − Ũ' Ũ'ᵀ Δ)``: momentum inside the shared subspace,
   the rest of the update passed through (``residual="keep"``) or dropped
   (``"drop"``).

``variant="span"`` (the simpler baseline): heavy-ball restricted to the
current span, ``m ← β U_t U_tᵀ m + Δ``.

Vectors (biases) take plain heavy-ball ``m ← β m + Δ`` in both variants.
Properties (tested): at full rank with Procrustes, ``"stiefel"`` is exactly
FedAvgM (the aligned basis equals the previous one, so ``B = 0``); with
``β = 0`` and ``residual="keep"`` it returns Δ unchanged; the output does not
change when ``U_t``'s columns are flipped or rotated (polar retraction).

It is an optax ``GradientTransformationExtraArgs`` producing a direction
(chain it with ``optax.scale_by_learning_rate``, as the FedOpt optimizers).

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
  Schönemann, "A generalized solution of the orthogonal Procrustes
  problem", Psychometrika 1966. Absil, Mahony & Sepulchre, "Optimization
  Algorithms on Matrix Manifolds", 2008 (tangent projection, retractions).
  Hsu et al., 2019 (FedAvgM, the heavy-ball baseline).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_mm import checks
from fedjax_mm.aggregation import canonical
from fedjax_mm.registry import Part

VARIANTS = ("stiefel", "span")
RETRACTIONS = ("qr", "polar")
RESIDUALS = ("keep", "drop")


class OPMState(NamedTuple):
  count: jax.Array
  basis: tuple[jax.Array, ...]           # Ũ per matrix leaf (m x r)
  basis_momentum: tuple[jax.Array, ...]  # B per matrix leaf (m x r, tangent at Ũ)
  momentum: tuple[jax.Array, ...]        # per leaf: r x n coefficients ("stiefel"),
                                         # m x n ("span") or the leaf's shape (vectors)


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


def orthogonal_momentum(momentum: float = 0.9, *, rank: int | float | None = None,
                        variant: str = "stiefel", basis_momentum: float = 0.5,
                        basis_step: float = 1.0, retraction: str = "polar",
                        procrustes: bool = True,
                        residual: str = "keep") -> optax.GradientTransformationExtraArgs:
  """OPM over the aggregated update (see the module doc for each option).

  Args:
    momentum: β of the coefficient (or span-restricted) heavy-ball, in [0, 1).
    rank: the canonical aggregator's basis size (same meaning as there).
    variant: one of ``VARIANTS``.
    basis_momentum: β_B of the Stiefel basis momentum, in [0, 1).
    basis_step: γ > 0, the basis step before retraction.
    retraction: one of ``RETRACTIONS``.
    procrustes: align each round's basis to the smoothed one.
    residual: one of ``RESIDUALS``.

  Returns:
    A transform whose ``update(Δ, state, params, *, aggregator_state)`` needs
    the round's ``canonical.CanonicalState``.

  Raises:
    ValueError: on a bad option; at trace time if ``aggregator_state`` is not
    a ``CanonicalState`` of the same rank.
  """
  checks.one_of("variant", variant, VARIANTS)
  checks.one_of("retraction", retraction, RETRACTIONS)
  checks.one_of("residual", residual, RESIDUALS)
  if not isinstance(procrustes, bool):
    raise ValueError(f"procrustes: must be True or False, got {procrustes!r}")
  unit = lambda v: 0 <= v < 1
  checks.number("momentum", momentum, unit, "in [0, 1)")
  checks.number("basis_momentum", basis_momentum, unit, "in [0, 1)")
  checks.number("basis_step", basis_step, lambda v: v > 0, "> 0")
  retract = qr_retraction if retraction == "qr" else polar_factor

  def init(params) -> OPMState:
    bases = canonical.init_state(params, rank).bases
    buffers, it = [], iter(bases)
    for x in jax.tree.leaves(params):
      if canonical.is_matrix(x, 0):
        u = next(it)
        rows = u.shape[1] if variant == "stiefel" else u.shape[0]
        buffers.append(jnp.zeros((rows, x.shape[-1]), jnp.float32))
      else:
        buffers.append(jnp.zeros(x.shape, jnp.float32))
    return OPMState(count=jnp.zeros((), jnp.int32), basis=bases,
                    basis_momentum=tuple(jnp.zeros_like(u) for u in bases),
                    momentum=tuple(buffers))

  def stiefel_step(u_obs, u_prev, b, m, delta, first):
    u_prev = jnp.where(first, u_obs, u_prev)
    if procrustes:
      u_obs = procrustes_align(u_obs, u_prev)
    b = basis_momentum * tangent_projection(u_prev, b) + tangent_projection(
        u_prev, u_obs - u_prev)
    u_new = retract(u_prev + basis_step * b)
    # Carry the old momentum U_prev M into the new frame by projection.
    m = momentum * (u_new.T @ (u_prev @ m)) + u_new.T @ delta
    out = u_new @ m
    if residual == "keep":
      out = out + delta - u_new @ (u_new.T @ delta)
    return out, u_new, b, m

  def update(updates, state: OPMState, params=None, *, aggregator_state=None, **extra):
    del params, extra
    if not isinstance(aggregator_state, canonical.CanonicalState):
      raise ValueError("orthogonal_momentum needs the canonical aggregator's state "
                       "(aggregation.kind='canonical') as aggregator_state, got "
                       f"{type(aggregator_state).__name__}")
    observed = aggregator_state.bases
    if tuple(u.shape for u in observed) != tuple(u.shape for u in state.basis):
      raise ValueError(f"orthogonal_momentum: the aggregator's bases have shapes "
                       f"{[u.shape for u in observed]}, the transform was built for "
                       f"{[u.shape for u in state.basis]} (use the same rank)")
    first = state.count == 0
    leaves, treedef = jax.tree.flatten(updates)
    out, bases, bms, moms = [], [], [], []
    it = iter(zip(observed, state.basis, state.basis_momentum))
    for x, m in zip(leaves, state.momentum):
      if not canonical.is_matrix(x, 0):
        m = momentum * m + x.astype(jnp.float32)
        out.append(m.astype(x.dtype))
        moms.append(m)
        continue
      u_obs, u_prev, b = next(it)
      delta = canonical.as_matrix(x, 0).astype(jnp.float32)
      if variant == "span":
        m = momentum * (u_obs @ (u_obs.T @ m)) + delta
        o, u_new = m, u_obs
      else:
        o, u_new, b, m = stiefel_step(u_obs, u_prev, b, m, delta, first)
      out.append(o.reshape(x.shape).astype(x.dtype))
      bases.append(u_new)
      bms.append(b)
      moms.append(m)
    new_state = OPMState(count=optax.safe_increment(state.count), basis=tuple(bases),
                         basis_momentum=tuple(bms), momentum=tuple(moms))
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init, update)


def opm(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, variant: str = "stiefel",
        basis_momentum: float = 0.5, basis_step: float = 1.0, retraction: str = "polar",
        procrustes: bool = True, residual: str = "keep", *, aggregator_kind: str = "canonical",
        aggregator_rank: int | float | None = None) -> optax.GradientTransformationExtraArgs:
  """Fed-CMP's server optimizer: :func:`orthogonal_momentum`, then ``-η``.

  Args:
    learning_rate: server learning rate η (run context), a float or a schedule.
    momentum, variant, basis_momentum, basis_step, retraction, procrustes,
      residual: see :func:`orthogonal_momentum`.
    aggregator_kind: the run's aggregator (context): OPM moves the canonical
      aggregator's shared basis, so it must be ``"canonical"``.
    aggregator_rank: that aggregator's basis size (context; None = full).

  Returns:
    The chained extra-args transform (the round passes ``aggregator_state``).
  """
  if aggregator_kind != "canonical":
    raise ValueError("aggregator_kind: 'opm' moves the canonical aggregator's shared basis, "
                     f"so it needs 'canonical', got {aggregator_kind!r}")
  return optax.chain(
      orthogonal_momentum(momentum, rank=aggregator_rank, variant=variant,
                          basis_momentum=basis_momentum, basis_step=basis_step,
                          retraction=retraction, procrustes=procrustes, residual=residual),
      optax.scale_by_learning_rate(learning_rate))


PART = Part("opm", opm, "OPM",
            "Fed-CMP's orthogonality-preserved momentum on the CRA basis (a reconstruction)",
            context=("learning_rate", "aggregator_kind", "aggregator_rank"))

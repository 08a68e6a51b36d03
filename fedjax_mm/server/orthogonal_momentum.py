"""Fed-CMP's orthogonality-preserved momentum (OPM), a documented reconstruction.

The Fed-CMP abstract (Xiong et al., arXiv:2603.26786, 2026) says only that the
server "applies momentum to the shared basis via orthogonal projection",
preserving its geometric structure, to damp the gradient oscillations of
one-pass collaborative SGD. Everything below is our reconstruction, each
choice a named option. Per weight matrix (leaves with two or more dimensions,
flattened to ``m x n`` over the last axis; with ``side="output"`` everything
applies to the transposed ``n x m`` matrix, whose basis CRA then stores as
``n x r``), given the round's aggregate Δ and the canonical aggregator's
basis ``U_t`` (``m x r``, passed as the extra argument ``aggregator_state``,
a ``CanonicalState``):

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

Step 4 leaks: the part ``(I − Ũ'Ũ'ᵀ) Ũ M`` of the old momentum that leaves
the span is lost, and outside the span there is no momentum at all, so the
step is heavy-ball with a buffer re-projected on a rotating r-dimensional
subspace (FedAvgM only at full rank). Two further variants (ours):

``variant="split"`` (non-leaking): the momentum is ``Ũ M + E``, coefficients
``M`` on the basis plus an out-of-span heavy-ball buffer ``E`` (``ŨᵀE = 0``).
After steps 1-3 the coefficients ride on the moved basis (``Ũ M → Ũ' M``:
Procrustes keeps column j the same direction, moved), the part of ``E`` now
inside the span moves into them, and both parts take a heavy-ball step::

  M̂ = M + Ũ'ᵀ E,   Ê = E − Ũ' Ũ'ᵀ E
  M ← β M̂ + Ũ'ᵀ Δ,   E ← β Ê + (Δ − Ũ' Ũ'ᵀ Δ),   output Ũ' M + E.

Nothing is projected away: the output is ``β (m + (Ũ' − Ũ) M) + Δ`` with
``m = Ũ M + E`` the old buffer, FedAvgM whose in-span momentum turns with the
basis; with a constant basis (any rank) or at full rank ``Ũ' = Ũ``: FedAvgM
(to float32 rounding; tested). ``residual`` must be ``"keep"``.

``variant="motion"``: the basis momentum moves the model. Reading the
abstract's decomposition of the projector itself (``W ≈ U C``, CRA's
``decompose="weights"``), moving the basis from ``Ũ`` to ``Ũ'`` with the
model's coefficients ``C = Ũᵀ W`` kept moves ``W`` by ``(Ũ' − Ũ) C``. The
output is the ``"stiefel"`` one minus that motion, times ``λ``
(``motion_scale``)::

  output = Ũ' M + (Δ − Ũ' Ũ'ᵀ Δ) − λ (Ũ' − Ũ) Ũᵀ W     (0 on round 0),

so the server step ``−η output`` carries the model's in-span part ``Ũ C`` to
``Ũ' C`` exactly when ``η λ = 1``. ``Ũ' − Ũ`` is the aligned (gauge-fixed)
basis's displacement: a constant basis or full rank gives ``"stiefel"``.
It needs ``params`` (the round passes the model).

``variant="span"`` (the simpler baseline): heavy-ball restricted to the
current span, ``m ← β U_t U_tᵀ m + Δ``.

Vectors (biases) take plain heavy-ball ``m ← β m + Δ`` in every variant.
Properties (tested): at full rank with Procrustes, ``"stiefel"`` is exactly
FedAvgM (the aligned basis equals the previous one, so ``B = 0``); with
``β = 0`` and ``residual="keep"`` it returns Δ unchanged; the output does not
change when ``U_t``'s columns are flipped or rotated (polar retraction).

``side``: a basis whose row count is not the side's dimension is refused at
trace time; a square matrix's sides look alike, so that the aggregator and
OPM name the same side is checked on the config, not here. The transform
yields a direction (:func:`opm` chains ``optax.scale_by_learning_rate``).

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
  Schönemann, 1966 (Procrustes); Absil, Mahony & Sepulchre, 2008 (Stiefel
  steps): see :mod:`fedjax_mm.server.stiefel`. Hsu et al., 2019 (FedAvgM,
  the heavy-ball baseline).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_mm import checks
from fedjax_mm.aggregation import canonical
from fedjax_mm.registry import Part
from fedjax_mm.server.stiefel import polar_factor
from fedjax_mm.server.stiefel import qr_retraction
from fedjax_mm.server.stiefel import smoothed_basis

VARIANTS = ("stiefel", "span", "split", "motion")
RETRACTIONS = ("qr", "polar")
RESIDUALS = ("keep", "drop")
SIDES = ("input", "output")


class OPMState(NamedTuple):
  count: jax.Array
  basis: tuple[jax.Array, ...]           # Ũ per matrix leaf (m x r)
  basis_momentum: tuple[jax.Array, ...]  # B per matrix leaf (m x r, tangent at Ũ)
  momentum: tuple   # per leaf: r x n M ("stiefel", "motion"), m x n ("span"),
                    # (M, m x n E) ("split"), the leaf's shape (vectors)


def _oriented_shape(shape: tuple[int, ...], side: str) -> tuple[int, int]:
  """``(m, n)`` of the matrix OPM works on, ``(n, m)`` on the output side."""
  m, n = math.prod(shape[:-1]), shape[-1]
  return (m, n) if side == "input" else (n, m)


def _oriented(x: jax.Array, side: str) -> jax.Array:
  return canonical.as_matrix(x, 0) if side == "input" else canonical.as_matrix(x, 0).T


def _restored(o: jax.Array, x: jax.Array, side: str) -> jax.Array:
  return (o if side == "input" else o.T).reshape(x.shape).astype(x.dtype)


def orthogonal_momentum(momentum: float = 0.9, *, rank: int | float | None = None,
                        variant: str = "stiefel", basis_momentum: float = 0.5,
                        basis_step: float = 1.0, retraction: str = "polar",
                        procrustes: bool = True, residual: str = "keep",
                        side: str = "input",
                        motion_scale: float = 1.0) -> optax.GradientTransformationExtraArgs:
  """OPM over the aggregated update (see the module doc for each option).

  Args:
    momentum: β of the coefficient (or span-restricted) heavy-ball, in [0, 1).
    rank: the canonical aggregator's basis size (same meaning as there).
    variant: one of ``VARIANTS``.
    basis_momentum: β_B of the Stiefel basis momentum, in [0, 1).
    basis_step: γ > 0, the basis step before retraction.
    retraction: one of ``RETRACTIONS``.
    procrustes: align each round's basis to the smoothed one.
    residual: one of ``RESIDUALS`` (``"keep"`` with ``variant="split"``).
    side: one of ``SIDES``: the matrix dimension the basis spans.
    motion_scale: λ >= 0 of ``variant="motion"``'s basis-motion term.

  Returns:
    A transform whose ``update(Δ, state, params, *, aggregator_state)`` needs
    the round's ``canonical.CanonicalState`` (and ``params`` for ``"motion"``).

  Raises:
    ValueError: on a bad option; at trace time if ``aggregator_state`` is not
    a ``CanonicalState`` of the same rank and side, or ``"motion"`` gets no
    ``params``.
  """
  checks.one_of("variant", variant, VARIANTS)
  checks.one_of("retraction", retraction, RETRACTIONS)
  checks.one_of("residual", residual, RESIDUALS)
  checks.one_of("side", side, SIDES)
  if variant == "split" and residual != "keep":
    raise ValueError(f"residual: must be 'keep' with variant='split' (its out-of-span "
                     f"buffer is the residual's momentum), got {residual!r}")
  if not isinstance(procrustes, bool):
    raise ValueError(f"procrustes: must be True or False, got {procrustes!r}")
  unit = lambda v: 0 <= v < 1
  checks.number("momentum", momentum, unit, "in [0, 1)")
  checks.number("basis_momentum", basis_momentum, unit, "in [0, 1)")
  checks.number("basis_step", basis_step, lambda v: v > 0, "> 0")
  checks.number("motion_scale", motion_scale, lambda v: v >= 0, ">= 0")
  retract = qr_retraction if retraction == "qr" else polar_factor

  def init(params) -> OPMState:
    bases, buffers = [], []
    for x in jax.tree.leaves(params):
      if not canonical.is_matrix(x, 0):
        buffers.append(jnp.zeros(x.shape, jnp.float32))
        continue
      rows, cols = _oriented_shape(x.shape, side)
      u = jnp.zeros((rows, canonical.basis_rank(rank, rows)), jnp.float32)
      coefficients = jnp.zeros((u.shape[1], cols), jnp.float32)
      full = jnp.zeros((rows, cols), jnp.float32)
      bases.append(u)
      buffers.append({"span": full, "split": (coefficients, full)}.get(variant, coefficients))
    return OPMState(count=jnp.zeros((), jnp.int32), basis=tuple(bases),
                    basis_momentum=tuple(jnp.zeros_like(u) for u in bases),
                    momentum=tuple(buffers))

  def stiefel_step(u_obs, u_prev, b, m, delta, first, w):
    u_prev, u_new, b = smoothed_basis(u_obs, u_prev, b, first, procrustes=procrustes,
                                      basis_momentum=basis_momentum,
                                      basis_step=basis_step, retract=retract)
    if variant == "split":
      coeffs, rest = m
      inside = u_new.T @ rest               # E's part the moved span now holds
      coeffs = momentum * (coeffs + inside) + u_new.T @ delta
      rest = momentum * (rest - u_new @ inside) + (delta - u_new @ (u_new.T @ delta))
      return u_new @ coeffs + rest, u_new, b, (coeffs, rest)
    # Carry the old momentum U_prev M into the new frame by projection.
    m = momentum * (u_new.T @ (u_prev @ m)) + u_new.T @ delta
    out = u_new @ m
    if residual == "keep":
      out = out + delta - u_new @ (u_new.T @ delta)
    if variant == "motion":   # the model's coefficients ride on the moving basis
      motion = (u_new - u_prev) @ (u_prev.T @ w)
      out = out - jnp.where(first, 0.0, motion_scale) * motion
    return out, u_new, b, m

  def check_bases(leaves, observed, state):
    shapes = [_oriented_shape(x.shape, side) for x in leaves if canonical.is_matrix(x, 0)]
    for (rows, cols), u in zip(shapes, observed):
      if u.shape[0] != rows:
        raise ValueError(
            f"side: {side!r} works on {rows} x {cols} matrices here, so it needs "
            f"{rows}-row bases, but the aggregator's basis has {u.shape[0]} rows (give "
            "the aggregator and OPM the same side)")
    if tuple(u.shape for u in observed) != tuple(u.shape for u in state.basis):
      raise ValueError(f"orthogonal_momentum: the aggregator's bases have shapes "
                       f"{[u.shape for u in observed]}, the transform was built for "
                       f"{[u.shape for u in state.basis]} (use the same rank)")

  def update(updates, state: OPMState, params=None, *, aggregator_state=None, **extra):
    del extra
    if not isinstance(aggregator_state, canonical.CanonicalState):
      raise ValueError("orthogonal_momentum needs the canonical aggregator's state "
                       "(aggregation.kind='canonical') as aggregator_state, got "
                       f"{type(aggregator_state).__name__}")
    if variant == "motion" and params is None:
      raise ValueError("variant: 'motion' moves the model with its basis: pass params=")
    observed = aggregator_state.bases
    leaves, treedef = jax.tree.flatten(updates)
    check_bases(leaves, observed, state)
    weights = jax.tree.leaves(params) if variant == "motion" else [None] * len(leaves)
    first = state.count == 0
    out, bases, bms, moms = [], [], [], []
    it = iter(zip(observed, state.basis, state.basis_momentum))
    for x, m, w in zip(leaves, state.momentum, weights):
      if not canonical.is_matrix(x, 0):
        m = momentum * m + x.astype(jnp.float32)
        out.append(m.astype(x.dtype))
        moms.append(m)
        continue
      u_obs, u_prev, b = next(it)
      delta = _oriented(x, side).astype(jnp.float32)
      if variant == "span":
        m = momentum * (u_obs @ (u_obs.T @ m)) + delta
        o, u_new = m, u_obs
      else:
        w = None if w is None else _oriented(w, side).astype(jnp.float32)
        o, u_new, b, m = stiefel_step(u_obs, u_prev, b, m, delta, first, w)
      out.append(_restored(o, x, side))
      bases.append(u_new)
      bms.append(b)
      moms.append(m)
    new_state = OPMState(count=optax.safe_increment(state.count), basis=tuple(bases),
                         basis_momentum=tuple(bms), momentum=tuple(moms))
    return jax.tree.unflatten(treedef, out), new_state

  return optax.GradientTransformationExtraArgs(init, update)


def opm(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9, variant: str = "stiefel",
        basis_momentum: float = 0.5, basis_step: float = 1.0, retraction: str = "polar",
        procrustes: bool = True, residual: str = "keep", side: str = "input",
        motion_scale: float = 1.0, *, aggregator_kind: str = "canonical",
        aggregator_rank: int | float | None = None) -> optax.GradientTransformationExtraArgs:
  """Fed-CMP's server optimizer: :func:`orthogonal_momentum`, then ``-η``.

  Args:
    learning_rate: server learning rate η (run context), a float or a schedule.
    momentum, variant, basis_momentum, basis_step, retraction, procrustes,
      residual, side, motion_scale: see :func:`orthogonal_momentum`.
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
                          retraction=retraction, procrustes=procrustes, residual=residual,
                          side=side, motion_scale=motion_scale),
      optax.scale_by_learning_rate(learning_rate))


PART = Part("opm", opm, "OPM",
            "Fed-CMP's orthogonality-preserved momentum on the CRA basis (a reconstruction)",
            context=("learning_rate", "aggregator_kind", "aggregator_rank"))

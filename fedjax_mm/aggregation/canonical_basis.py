"""CRA's shared bases: the state across rounds, the Gram eigenbasis and its diagnostics.

The basis half of Fed-CMP's canonical reliability-aware aggregation (a
reconstruction, see ``canonical.py`` for the equations): per weight matrix
(every leaf with two or more dimensions, flattened to ``m x n`` over its
last axis; with ``side="output"`` its transpose, ``n x m``), the top-``r``
eigenvectors of the Gram sum ``G = Σ_k X_k X_kᵀ``, the exponential moving
average of the trace-normalized Gram (``score_with="ema"``), the share of
energy a basis spans and the principal angles between consecutive bases
(Björck & Golub 1973: the cosines are the singular values of ``U_tᵀ U_{t-1}``).

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only).
  Björck & Golub, "Numerical methods for computing angles between linear
  subspaces", Mathematics of Computation 1973.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_mm.types import PyTree

SIDES = ("input", "output")


class CanonicalState(NamedTuple):
  """What CRA carries across rounds, one entry per matrix leaf (leaf order).

  Attributes:
    bases: the round's shared bases, ``m x r`` (``side="input"``) or ``n x r``
      (``side="output"``: over the leaf's last axis). OPM reads these.
    has_basis: False until the first round has run.
    residuals: ``residual="feedback"`` only (else empty): the out-of-span
      residual ``e``, in the leaf's flattened ``m x n`` shape.
    ema_grams: ``score_with="ema"`` only (else empty): the moving average of
      the trace-normalized Gram, ``m x m`` (``n x n`` on the output side).
  """

  bases: tuple[jax.Array, ...]
  has_basis: jax.Array
  residuals: tuple[jax.Array, ...] = ()
  ema_grams: tuple[jax.Array, ...] = ()


def basis_rank(rank: int | float | None, m: int) -> int:
  """The basis size for an ``m``-row matrix: None = full, an int (capped), a fraction."""
  if rank is None:
    return m
  if isinstance(rank, numbers.Integral):
    return min(m, int(rank))
  return max(1, min(m, math.ceil(rank * m)))


def as_matrix(x: jax.Array, lead: int) -> jax.Array:
  """A leaf as ``[*lead dims, m, n]`` (leading dims after ``lead`` flattened into m)."""
  return x.reshape(x.shape[:lead] + (-1, x.shape[-1]))


def is_matrix(x: jax.Array, lead: int) -> bool:
  return x.ndim >= lead + 2


def oriented(x: jax.Array, side: str) -> jax.Array:
  """``x [..., m, n]`` on the decomposed side: itself, or its transpose for ``"output"``."""
  return x if side == "input" else jnp.swapaxes(x, -1, -2)


def init_state(template: PyTree, rank: int | float | None, side: str = "input",
               residual: str = "drop", score_with: str = "current") -> CanonicalState:
  """Zero bases (and residuals, moving Grams where the options keep them) for ``template``."""
  bases, residuals, grams = [], [], []
  for x in jax.tree.leaves(template):
    if is_matrix(x, 0):
      m, n = math.prod(x.shape[:-1]), x.shape[-1]
      d = m if side == "input" else n
      bases.append(jnp.zeros((d, basis_rank(rank, d)), jnp.float32))
      residuals.append(jnp.zeros((m, n), jnp.float32))
      grams.append(jnp.zeros((d, d), jnp.float32))
  return CanonicalState(bases=tuple(bases), has_basis=jnp.zeros((), bool),
                        residuals=tuple(residuals) if residual == "feedback" else (),
                        ema_grams=tuple(grams) if score_with == "ema" else ())


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


def moving_gram(previous: jax.Array, gram: jax.Array, has_previous: jax.Array,
                decay: float) -> jax.Array:
  """``β Ḡ + (1 - β) G / tr(G)`` (round 0: ``G / tr(G)``).

  The trace normalization makes each round count by its decay weight rather
  than by its update energy (which shrinks as training converges).
  """
  normalized = gram / jnp.maximum(jnp.trace(gram), 1e-30)
  return jnp.where(has_previous, decay * previous + (1.0 - decay) * normalized, normalized)


def explained_energy(bases, grams) -> jax.Array:
  """Share of the cohort's update energy ``Σ tr(UᵀGU) / Σ tr(G)`` the bases span."""
  inside = sum((jnp.sum(u * (g @ u)) for u, g in zip(bases, grams)), jnp.zeros(()))
  total = sum((jnp.trace(g) for g in grams), jnp.zeros(()))
  return jnp.where(total > 0, inside / jnp.maximum(total, 1e-30), 1.0)


def weighted_explained(bases, deltas: list[jax.Array], p: jax.Array) -> jax.Array:
  """``Σ_k p_k ‖Uᵀ ΔW_k‖² / Σ_k p_k ‖ΔW_k‖²`` pooled over the matrices (1 if no energy)."""
  inside = sum((p @ jnp.sum(jnp.einsum("mr,cmn->crn", u, d) ** 2, axis=(1, 2))
                for u, d in zip(bases, deltas)), jnp.zeros(()))
  total = sum((p @ jnp.sum(d**2, axis=(1, 2)) for d in deltas), jnp.zeros(()))
  return jnp.where(total > 0, inside / jnp.maximum(total, 1e-30), 1.0)


def basis_drift(bases, previous) -> dict[str, jax.Array]:
  """Principal angles between this round's and the previous bases, pooled over matrices.

  Returns ``{"basis_cos2": Σ ‖U_tᵀ U_{t-1}‖_F² / Σ r`` (the mean squared
  cosine; 1 = same span), ``"basis_max_angle_deg"``: the largest principal
  angle in degrees}. Round 0 compares with the zero basis: 0 and 90°.
  """
  if not bases:
    return {"basis_cos2": jnp.ones(()), "basis_max_angle_deg": jnp.zeros(())}
  overlaps = [u.T @ v for u, v in zip(bases, previous)]
  cos2 = sum(jnp.sum(o**2) for o in overlaps) / sum(u.shape[1] for u in bases)
  smallest = jnp.min(jnp.stack([jnp.min(jnp.linalg.svd(o, compute_uv=False))
                                for o in overlaps]))
  angle = jnp.degrees(jnp.arccos(jnp.clip(smallest, 0.0, 1.0)))
  return {"basis_cos2": cos2, "basis_max_angle_deg": angle}

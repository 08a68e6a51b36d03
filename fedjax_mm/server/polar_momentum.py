"""Orthogonalized server momentum: heavy-ball whose matrix steps are polar factors.

Muon (Jordan et al., 2024) replaces each hidden matrix's momentum by its
orthogonal polar factor, so every singular direction of the step moves by the
same amount: the step's spectrum is flattened, its singular vectors kept. As
a server optimizer over the aggregated pseudo-gradient Δ (our use; it needs
no particular aggregator), per leaf::

  m ← β m + Δ                                   (heavy-ball, as FedAvgM)
  matrices (ndim >= 2, flattened to rows x cols over the last axis):
    m = P S Qᵀ (thin SVD),   O = P 1[S > τ] Qᵀ    (polar factor on m's range)
    "frobenius": step = O ‖m‖_F / ‖O‖_F          (heavy-ball's step length)
    "unit":      step = O sqrt(max(1, rows / cols))   (Muon's scale)
  vectors and scalars (biases): step = m
  x ← x − η step

``O`` is the polar factor (``m (mᵀm)^{-1/2}`` at full rank, ``‖O‖₂ = 1``);
Muon approximates it by a Newton-Schulz iteration, here it is read off the
SVD. Singular values at or below ``τ = max(rows, cols) · eps · S_max`` (the
float32 rank cut-off of NumPy's ``matrix_rank``) count as zero: their
singular vectors are arbitrary, and a unit step along them would be noise
(Newton-Schulz maps them to 0 as well). ``"frobenius"`` keeps heavy-ball's
step length ``‖m‖_F``, so the server learning rate keeps FedAvgM's meaning;
``"unit"`` is Muon's spectral-norm-1 step scaled by ``sqrt(max(1, rows /
cols))`` (rows = the flattened leading dims, the input side of a Dense
kernel here).

References:
  Jordan et al., "Muon: An optimizer for hidden layers in neural networks",
  2024 (kellerjordan.github.io/posts/muon). Higham, "Computing the polar
  decomposition", SIAM J. Sci. Stat. Comput. 1986. Bernstein & Newhouse,
  "Old Optimizer, New Norm: An Anthology", arXiv:2409.20325, 2024 (the
  polar step as steepest descent in the spectral norm). Hsu et al., 2019,
  arXiv:1909.06335 (FedAvgM, the heavy-ball it orthogonalizes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fedjax_mm import checks
from fedjax_mm.registry import Part

SCALES = ("frobenius", "unit")


def polar_on_range(a: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(O, k)``: the polar factor ``P 1[S > τ] Qᵀ`` of ``a`` and its numerical rank ``k``."""
  p, s, qt = jnp.linalg.svd(a, full_matrices=False)
  cut = max(a.shape) * jnp.finfo(a.dtype).eps * s[0]
  keep = (s > cut).astype(a.dtype)
  return (p * keep[None, :]) @ qt, jnp.sum(keep)


def scale_by_polar(scale: str = "frobenius") -> optax.GradientTransformation:
  """Each matrix leaf replaced by its scaled polar factor (vectors pass through).

  Args:
    scale: one of ``SCALES`` (see the module doc).

  Returns:
    A stateless transform.
  """
  checks.one_of("scale", scale, SCALES)

  def step(x: jax.Array) -> jax.Array:
    if x.ndim < 2:
      return x
    a = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    o, k = polar_on_range(a)
    if scale == "frobenius":   # ‖O‖_F = sqrt(k): rescale to heavy-ball's length
      o = o * (jnp.linalg.norm(a) / jnp.sqrt(jnp.maximum(k, 1.0)))
    else:
      o = o * max(1.0, a.shape[0] / a.shape[1]) ** 0.5
    return o.reshape(x.shape).astype(x.dtype)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(step, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def polar_momentum(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
                   scale: str = "frobenius") -> optax.GradientTransformation:
  """Heavy-ball on Δ, each matrix's momentum orthogonalized, then ``-η``.

  Args:
    learning_rate: server learning rate η (run context), a float or a schedule.
    momentum: β of the heavy-ball buffer, in [0, 1).
    scale: one of ``SCALES``.

  Returns:
    ``chain(trace(β), scale_by_polar(scale), scale_by_learning_rate(η))``.

  Example:
    >>> tx = polar_momentum(1.0, momentum=0.0)
    >>> g = {"w": jnp.array([[3.0, 0.0], [0.0, 1.0]])}
    >>> tx.update(g, tx.init(g))[0]["w"].tolist()   # -‖g‖_F / sqrt(2) I
    [[-2.2360680103302, -0.0], [-0.0, -2.2360680103302]]
  """
  checks.number("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)")
  return optax.chain(optax.trace(decay=momentum), scale_by_polar(scale),
                     optax.scale_by_learning_rate(learning_rate))


PART = Part("polar_momentum", polar_momentum, "Polar momentum",
            "heavy-ball with each matrix step orthogonalized (Muon's polar factor, 2024)",
            context=("learning_rate",))

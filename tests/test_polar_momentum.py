"""Orthogonalized server momentum against NumPy's SVD (written from the module doc)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FAST
from fedjax_mm.server.polar_momentum import polar_momentum

EPS = np.finfo(np.float32).eps
# A tall matrix, a wide one, a 3-D leaf (the 6 x 4 matrix) and a bias.
SHAPES = {"tall": (6, 4), "wide": (3, 5), "cube": (2, 3, 4), "bias": (4,)}


def reference(deltas, beta, scale):
  """Heavy-ball in float64, then per matrix ``P 1[S > τ] Qᵀ`` from NumPy's SVD,
  rescaled; also each round's momentum (for the error bound)."""
  m = {k: np.zeros(s) for k, s in SHAPES.items()}
  outs, moms = [], []
  for d in deltas:
    m = {k: beta * m[k] + d[k] for k in m}
    out = {}
    for k, x in m.items():
      if x.ndim < 2:
        out[k] = x
        continue
      a = x.reshape(-1, x.shape[-1])
      p, s, qt = np.linalg.svd(a, full_matrices=False)
      keep = s > max(a.shape) * EPS * s[0]
      o = p[:, keep] @ qt[keep]
      factor = (np.linalg.norm(a) / np.sqrt(keep.sum()) if scale == "frobenius"
                else np.sqrt(max(1.0, a.shape[0] / a.shape[1])))
      out[k] = (factor * o).reshape(x.shape)
    outs.append(out)
    moms.append(m)
  return outs, moms


def _run(tx, deltas):
  stacked = jax.tree.map(lambda *x: jnp.asarray(np.stack(x), jnp.float32), *deltas)
  template = jax.tree.map(lambda x: x[0], stacked)

  def body(state, d):
    out, state = tx.update(d, state, template)
    return state, out

  _, outs = jax.jit(lambda s, x: jax.lax.scan(body, s, x), **FAST)(tx.init(template), stacked)
  return [jax.tree.map(lambda o: np.asarray(o[t]), outs) for t in range(len(deltas))]


@pytest.mark.parametrize("scale", ["frobenius", "unit"])
def test_matches_numpy_svd_and_is_orthogonal(scale):
  rng = np.random.default_rng(0)
  deltas = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(5)]
  lr, beta = 0.5, 0.8
  got = _run(polar_momentum(lr, beta, scale=scale), deltas)
  want, moms = reference(deltas, beta, scale)
  for g, w, m in zip(got, want, moms):
    for k, x in m.items():
      # Heavy-ball in float32: <= rounds eps |m| per entry. The SVD is
      # backward stable: the factors are exact for m + δm, ‖δm‖_2 <= 8 p eps
      # ‖m‖_2 (p = max dim), and the polar factor moves by <= 3 ‖δm‖ / σ_min
      # (Li 1995; 2 / (σ_n + σ_n-1) square, <= 3 / σ_n rectangular), times
      # the step's scale. Vectors: heavy-ball's rounding only.
      if x.ndim < 2:
        np.testing.assert_allclose(g[k], -lr * w[k], rtol=0, atol=5 * lr * EPS * np.abs(x).max())
        continue
      a = x.reshape(-1, x.shape[-1])
      s = np.linalg.svd(a, compute_uv=False)
      factor = np.abs(w[k]).max()
      tol = lr * factor * (8 * max(a.shape) * EPS * s[0] * 3 / s[-1] + 5 * EPS)
      np.testing.assert_allclose(g[k], -lr * w[k], rtol=0, atol=tol)
      # The step's spectrum is flat: every singular value the same, at the
      # scale's value (‖m‖_F / sqrt(rank), or sqrt(max(1, rows / cols))).
      sv = np.linalg.svd((g[k] / -lr).reshape(a.shape).astype(np.float64), compute_uv=False)
      level = (np.linalg.norm(a) / np.sqrt(min(a.shape)) if scale == "frobenius"
               else np.sqrt(max(1.0, a.shape[0] / a.shape[1])))
      np.testing.assert_allclose(sv, level, rtol=8 * max(a.shape) * EPS * 3 * s[0] / s[-1])
  # Frobenius: heavy-ball's step length, matrix by matrix.
  if scale == "frobenius":
    np.testing.assert_allclose(np.linalg.norm(got[-1]["tall"]), lr * np.linalg.norm(
        moms[-1]["tall"]), rtol=1e-5)   # 24 entries summed in float32: << 1e-5


def test_rank_deficient_momentum_keeps_its_range_and_zero_stays_zero():
  # Rank 1: the polar factor on the range is u vᵀ, so the Frobenius-scaled
  # step is σ u vᵀ = m itself; "unit" gives u vᵀ sqrt(6 / 4). A zero
  # matrix has no range: a zero step, not NaN.
  rng = np.random.default_rng(1)
  u, v = rng.normal(size=6), rng.normal(size=4)
  rank1 = np.outer(u, v)
  d = {"tall": jnp.asarray(rank1, jnp.float32), "zero": jnp.zeros((3, 5))}
  for scale, want in [("frobenius", rank1),
                      ("unit", np.sqrt(1.5) * rank1 / np.linalg.norm(rank1))]:
    tx = polar_momentum(1.0, 0.9, scale=scale)
    out, _ = jax.jit(tx.update, **FAST)(d, tx.init(d))
    # σ_2 of the float32 rank-1 matrix is ~eps σ_1, under the cut-off
    # (6 eps σ_1); the kept factor is within ~8 p eps of u vᵀ / ‖·‖.
    np.testing.assert_allclose(np.asarray(out["tall"]), -want, rtol=0,
                               atol=64 * EPS * np.abs(want).max())
    np.testing.assert_array_equal(np.asarray(out["zero"]), 0.0)


def test_invalid_options_are_refused():
  with pytest.raises(ValueError, match=r"scale: must be one of \('frobenius', 'unit'\)"):
    polar_momentum(1.0, scale="spectral")
  with pytest.raises(ValueError, match=r"momentum: must be a finite number in \[0, 1\)"):
    polar_momentum(1.0, momentum=1.0)

"""Canonical reliability-aware aggregation against a NumPy reference from the
pseudo-code (basis by SVD of the concatenated matrices, not eigh of their
Gram sum; updates or local models decomposed), plus its degenerate and
robustness properties."""

import jax
import numpy as np
import pytest

from fedjax_mm.aggregation.canonical import canonical_fusion

C, M, N = 7, 6, 4


def _stack(seed):
  rng = np.random.default_rng(seed)
  updates = {"w": rng.normal(size=(C, M, N)).astype(np.float32),
             "b": rng.normal(size=(C, N)).astype(np.float32)}
  weights = rng.uniform(1, 5, size=C).astype(np.float32)
  mask = np.ones(C, bool)
  mask[[2, 5]] = False
  updates["w"][~mask] = 1e6   # garbage in padding rows
  updates["b"][~mask] = -1e6
  return updates, weights, mask


def _global(seed):
  rng = np.random.default_rng(100 + seed)
  return {"w": rng.normal(size=(M, N)).astype(np.float32),
          "b": rng.normal(size=N).astype(np.float32)}


def reference(updates, weights, mask, rank, reliability, temperature, global_w=None,
              turn=None):
  """Steps 0-5 of the module doc on the valid clients, in float64 (``turn``: an
  ``m x m`` rotation applied to the singular vectors, for :func:`float32_bound`)."""
  d_k = updates["w"][mask].astype(np.float64)
  x_k = d_k if global_w is None else global_w.astype(np.float64) - d_k   # step 0
  b_k = updates["b"][mask].astype(np.float64)
  p = weights[mask].astype(np.float64)
  p = p / p.sum()
  m = np.concatenate(list(x_k), axis=1)                    # m x (n K)
  u = np.linalg.svd(m, full_matrices=False)[0]
  u = (u if turn is None else turn @ u)[:, :rank]          # top-r left singular vectors
  coeffs = np.stack([u.T @ x for x in x_k])                 # K x r x n
  consensus = np.einsum("k,krn->rn", p, coeffs)
  if reliability == "explained":
    rho = np.array([np.sum((u @ c) ** 2) / np.sum(x ** 2) for c, x in zip(coeffs, x_k)])
  elif reliability == "agreement":
    rho = np.array([np.sum(c * consensus) / (np.linalg.norm(c) * np.linalg.norm(consensus))
                    for c in coeffs])
  elif reliability == "inverse_variance":
    rho = []
    for c in coeffs:
      d = 0.0
      for j in range(rank):           # each direction in units of its cohort variance
        var = sum(pk * np.sum((ck[j] - consensus[j]) ** 2) for pk, ck in zip(p, coeffs))
        d += np.sum((c[j] - consensus[j]) ** 2) / var / rank
      rho.append(1 / (1 + d))
    rho = np.array(rho)
  else:
    rho = np.zeros(len(p))
  alpha = p * np.exp(rho / temperature)
  alpha = alpha / alpha.sum()
  fused = u @ u.T @ np.einsum("k,kmn->mn", alpha, d_k)     # the update, projected
  return {"w": fused, "b": alpha @ b_k}, alpha


def subspace_turn(mats, rank):
  """Davis-Kahan bound on the float32 turn of the top-``rank`` eigenspace of
  ``G = Σ_k X_k X_kᵀ`` (``mats [K, m, n]``, float64; see float32_bound)."""
  gram = np.einsum("kmn,kpn->mp", mats, mats)
  lam = np.sort(np.linalg.eigvalsh(gram))[::-1]
  m = len(lam)
  error = (mats.shape[0] * mats.shape[2] + m) * np.finfo(np.float32).eps * np.trace(gram)
  return min(1.0, error / (lam[rank - 1] - lam[rank])) if rank < m else 0.0


def float32_bound(fn, mats, rank):
  """First-order bound on how far float32 moves ``fn(turn)`` (a float64 reference
  whose eigenbasis is turned by the rotation ``turn``) through the eigenbasis of
  ``G = Σ_k X_k X_kᵀ`` (``mats [K, m, n]``), plus rounding of the sums.

  float32 moves G by ``||E|| <= (K n + m) eps tr(G)`` (K n-term dots, plus
  eigh's backward error), so the top-``rank`` subspace turns by
  ``sin θ <= ||E|| / (λ_r - λ_{r+1})`` (Davis-Kahan; any turn of a full basis
  when ``rank = m``, where only the span matters: the gap is then ``inf``).
  A turn by θ is ``expm(A)`` with ``||A||_F <= sqrt(2) θ``; to first order the
  result moves by ``<= ||A||_F sqrt(Σ_g ||∂fn/∂a_g||²)`` over the unit
  generators g (central differences in float64). Rounding of the remaining
  sums and the softmax: ``64 eps`` times the result's magnitude.
  """
  eps, m = np.finfo(np.float32).eps, mats.shape[1]
  theta = subspace_turn(mats, rank)
  base = np.concatenate([np.ravel(v) for v in fn(np.eye(m))])
  squares, h = np.zeros_like(base), 1e-6
  for i in range(m):
    for j in range(i + 1, m):
      a = np.zeros((m, m))
      a[i, j], a[j, i] = h, -h
      turn = lambda t: np.eye(m) + t * a + (t * a) @ (t * a) / 2   # expm to O(h^3)
      plus, minus = (np.concatenate([np.ravel(v) for v in fn(turn(t))]) for t in (1, -1))
      squares += ((plus - minus) / (2 * h)) ** 2
  return np.sqrt(2) * theta * np.sqrt(squares) + 64 * eps * np.max(np.abs(base))


@pytest.mark.parametrize("reliability", ["explained", "agreement", "inverse_variance",
                                         "uniform"])
@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("decompose", ["updates", "weights"])
def test_matches_numpy_reference(reliability, rank, decompose):
  updates, weights, mask = _stack(rank)
  params = _global(rank)
  fn = jax.jit(lambda u, w, m, g: canonical_fusion(
      u, w, m, rank=rank, reliability=reliability, temperature=0.5, decompose=decompose,
      params=g))
  got, info = fn(updates, weights, mask, params)
  global_w = params["w"] if decompose == "weights" else None
  want, alpha = reference(updates, weights, mask, rank, reliability, 0.5, global_w)
  # Per entry bounds (float32_bound): alpha, then w and b in the reference's order.
  x_k = updates["w"][mask].astype(np.float64)
  bound = float32_bound(
      lambda turn: (lambda out, a: (a, out["w"], out["b"]))(*reference(
          updates, weights, mask, rank, reliability, 0.5, global_w, turn)),
      x_k if global_w is None else global_w - x_k, rank)
  sizes = np.cumsum([alpha.size, want["w"].size])
  np.testing.assert_array_less(np.abs(np.asarray(info["alpha"])[mask] - alpha),
                               bound[:sizes[0]] + 1e-30)
  assert np.all(np.asarray(info["alpha"])[~mask] == 0)
  for k, b in zip(("w", "b"), np.split(bound, sizes)[1:]):
    np.testing.assert_array_less(np.abs(np.asarray(got[k]) - want[k]).ravel(), b + 1e-30)


@pytest.mark.parametrize("decompose", ["updates", "weights"])
def test_full_rank_explained_is_the_weighted_mean(decompose):
  updates, weights, mask = _stack(3)
  got, info = canonical_fusion(updates, weights, mask, decompose=decompose, params=_global(3))
  p = np.where(mask, weights, 0) / np.sum(weights[mask])
  # Full rank: U Uᵀ = I to 4 m eps, ρ_k = 1 to (m + n) eps each side of its
  # ratio, which the softmax turns into relative alpha errors of
  # 2 (m + n) eps / τ (τ = 0.1): per entry <= (2 (m + n) / τ + 4 m + 8) eps
  # times Σ_k p_k |ΔW_k| (the +8: the weighted sum's own rounding).
  eps = np.finfo(np.float32).eps
  for k in updates:
    valid = np.where(mask.reshape((-1,) + (1,) * (updates[k].ndim - 1)), updates[k], 0)
    bound = (2 * (M + N) / 0.1 + 4 * M + 8) * eps * np.tensordot(p, np.abs(valid), axes=1)
    np.testing.assert_array_less(np.abs(np.asarray(got[k]) - np.tensordot(p, valid, axes=1)),
                                 bound)
  # Σ tr(UᵀGU) / Σ tr(G): UᵀU = I to m eps, the traces' K n-term dots: 5e-6.
  np.testing.assert_allclose(float(info["explained"]), 1.0,
                             rtol=(C * N + 2 * M) * np.finfo(np.float32).eps)


def test_truncated_basis_down_weights_an_update_outside_the_shared_subspace():
  # Six clients move along one shared rank-1 direction; one, with less energy
  # than they have together, moves orthogonally.
  rng = np.random.default_rng(0)
  a, b = np.linalg.qr(rng.normal(size=(M, 2)))[0].T
  v = rng.normal(size=N)
  w = np.stack([np.outer(a, v) * s for s in rng.uniform(0.5, 1.5, 6)] + [np.outer(b, v)])
  updates = {"w": w.astype(np.float32), "b": np.zeros((C, N), np.float32)}
  got, info = canonical_fusion(updates, np.ones(C, np.float32), np.ones(C, bool), rank=1,
                               temperature=0.1)
  alpha = np.asarray(info["alpha"])
  assert alpha[6] < 1e-3 * alpha[:6].min()        # explains ~0 of its own update
  # The fused update lies in the shared direction: nothing of the outlier,
  # but for the float32 turn θ of the basis (subspace_turn) times the fused
  # update's norm, plus rounding (16 eps of it).
  fused = np.einsum("k,kmn->mn", alpha, w)
  leak = (subspace_turn(w, 1) + 16 * np.finfo(np.float32).eps) * np.linalg.norm(fused)
  assert abs(np.asarray(got["w"]) @ v / (v @ v) @ b) <= leak


def test_padding_is_inert_and_all_masked_is_zero():
  updates, weights, mask = _stack(4)
  base, _ = canonical_fusion(updates, weights, mask, rank=2)
  extra = {k: np.concatenate([v, 7e5 * np.ones((3,) + v.shape[1:], np.float32)])
           for k, v in updates.items()}
  more, _ = canonical_fusion(extra, np.concatenate([weights, [9.0, 9.0, 9.0]]),
                             np.concatenate([mask, [False] * 3]), rank=2)
  # Both within float32_bound of the exact result (explained, τ = 0.1).
  bound = float32_bound(lambda turn: (lambda out, a: (out["w"], out["b"]))(*reference(
      updates, weights, mask, 2, "explained", 0.1, turn=turn)),
      updates["w"][mask].astype(np.float64), 2)
  for k, b in zip(("w", "b"), np.split(bound, [M * N])):
    np.testing.assert_array_less(np.abs(np.asarray(more[k]) - np.asarray(base[k])).ravel(),
                                 2 * b)
  none, _ = canonical_fusion(updates, weights, np.zeros(C, bool), rank=2)
  for leaf in jax.tree.leaves(none):
    assert np.all(np.asarray(leaf) == 0)


@pytest.mark.parametrize("kwargs,match", [
    ({"reliability": "vote"}, "reliability: must be one of"),
    ({"temperature": 0.0}, r"temperature: must be a finite number > 0"),
    ({"rank": 1.5}, "rank: must be"),
    ({"rank": 0}, "rank: must be"),
    ({"decompose": "projectors"}, "decompose: must be one of"),
    ({"decompose": "weights"}, "needs the round's global parameters"),
])
def test_bad_options_name_the_argument(kwargs, match):
  updates, weights, mask = _stack(0)
  with pytest.raises(ValueError, match=match):
    canonical_fusion(updates, weights, mask, **kwargs)


# Compile fast (tiny programs): XLA's backend optimizations cost more than they save.
FAST = {"compiler_options": {"xla_backend_optimization_level": 0}}


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_vmapped_matches_unbatched_within_the_float32_bound(batch):
  # Batched eigh/einsum kernels round otherwise than the lone call, so the
  # two agree only to the float32 bound (each within float32_bound of exact).
  stacks = [_stack(10 + i) for i in range(batch)]
  fn = lambda u, w, m: canonical_fusion(u, w, m, rank=2, temperature=0.5)[0]
  batched = jax.jit(jax.vmap(fn), **FAST)(*jax.tree.map(lambda *x: np.stack(x), *stacks))
  alone_fn = jax.jit(fn)
  for i, (u, w, m) in enumerate(stacks):
    alone = alone_fn(u, w, m)
    bound = float32_bound(lambda turn: (lambda out, a: (out["w"], out["b"]))(*reference(
        u, w, m, 2, "explained", 0.5, turn=turn)), u["w"][m].astype(np.float64), 2)
    for k, b in zip(("w", "b"), np.split(bound, [M * N])):
      np.testing.assert_array_less(np.abs(np.asarray(batched[k][i]) - np.asarray(alone[k])).ravel(),
                                   2 * b)

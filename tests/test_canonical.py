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


def reference(updates, weights, mask, rank, reliability, temperature, global_w=None):
  """Steps 0-5 of the module doc on the valid clients, in float64."""
  d_k = updates["w"][mask].astype(np.float64)
  x_k = d_k if global_w is None else global_w.astype(np.float64) - d_k   # step 0
  b_k = updates["b"][mask].astype(np.float64)
  p = weights[mask].astype(np.float64)
  p = p / p.sum()
  m = np.concatenate(list(x_k), axis=1)                    # m x (n K)
  u = np.linalg.svd(m, full_matrices=False)[0][:, :rank]   # top-r left singular vectors
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
  want, alpha = reference(updates, weights, mask, rank, reliability, 0.5,
                          params["w"] if decompose == "weights" else None)
  np.testing.assert_allclose(np.asarray(info["alpha"])[mask], alpha, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(info["alpha"])[~mask] == 0)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decompose", ["updates", "weights"])
def test_full_rank_explained_is_the_weighted_mean(decompose):
  updates, weights, mask = _stack(3)
  got, info = canonical_fusion(updates, weights, mask, decompose=decompose, params=_global(3))
  p = np.where(mask, weights, 0) / np.sum(weights[mask])
  for k in updates:
    np.testing.assert_allclose(np.asarray(got[k]),
                               np.tensordot(p, np.where(mask.reshape((-1,) + (1,) * (updates[k].ndim - 1)),
                                                        updates[k], 0), axes=1),
                               rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(info["explained"]), 1.0, rtol=1e-5)


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
  # The fused update lies in the shared direction: nothing of the outlier.
  np.testing.assert_allclose(np.asarray(got["w"]) @ v / (v @ v) @ b, 0.0, atol=1e-5)


def test_padding_is_inert_and_all_masked_is_zero():
  updates, weights, mask = _stack(4)
  base, _ = canonical_fusion(updates, weights, mask, rank=2)
  extra = {k: np.concatenate([v, 7e5 * np.ones((3,) + v.shape[1:], np.float32)])
           for k, v in updates.items()}
  more, _ = canonical_fusion(extra, np.concatenate([weights, [9.0, 9.0, 9.0]]),
                             np.concatenate([mask, [False] * 3]), rank=2)
  for k in base:
    np.testing.assert_allclose(np.asarray(more[k]), np.asarray(base[k]), rtol=1e-4, atol=1e-5)
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

"""TIES-merging and KnOTS against NumPy references written from the papers'
pseudo-code (float64, loops over the valid clients only, no JAX helper), plus
a hand-worked TIES case, masking invariance and the option guards."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm.aggregation.knots import knots_merge
from fedjax_mm.aggregation.ties import ties_merge

C = 5
SHAPES = {"w": (6, 4), "b": (4,), "t": (3, 2, 5), "tall": (8, 2)}   # "tall": m > n·K


def _stack(seed, garbage=1e30):
  rng = np.random.default_rng(seed)
  updates = {k: rng.normal(size=(C,) + s).astype(np.float32) for k, s in SHAPES.items()}
  weights = rng.uniform(1, 5, size=C).astype(np.float32)
  mask = np.array([True, False, True, True, False])
  for k in updates:
    updates[k][1] = garbage
    updates[k][4] = np.nan
  return updates, weights, mask


# --- references -------------------------------------------------------------


def ties_ref(vectors, weights, density, segments=None):
  """Algorithm 1 of Yadav et al. on a list of 1-D task vectors.

  ``weights=None`` is the paper verbatim (γ = sgn Σ τ̂, mean over agreeing
  τ̂); otherwise the weighted mass and weighted disjoint mean of ties.py.
  """
  size = len(vectors[0])
  trimmed = []
  for v in vectors:
    t = np.zeros(size)
    for a, b in segments or [(0, size)]:
      seg = v[a:b]
      k = max(1, math.ceil(density * (b - a) - 1e-6))
      kth = sorted(np.abs(seg), reverse=True)[k - 1]
      t[a:b] = [x if (abs(x) >= kth and x != 0) else 0.0 for x in seg]
    trimmed.append(t)
  w = np.ones(len(vectors)) if weights is None else np.asarray(weights, np.float64)
  gamma = np.sign(sum(wi * t for wi, t in zip(w, trimmed)))
  out = np.zeros(size)
  for j in range(size):
    agree = [i for i, t in enumerate(trimmed) if t[j] != 0 and np.sign(t[j]) == gamma[j]]
    if agree:
      out[j] = sum(w[i] * trimmed[i][j] for i in agree) / sum(w[i] for i in agree)
  return out


def knots_ref(updates, weights, mask, merge, density, rank):
  """KnOTS on the valid clients: per matrix SVD of [ΔW_1 | ... | ΔW_K], merge
  the S V_kᵀ blocks of all matrices (one TIES trim pool), U · merged."""
  valid = np.flatnonzero(mask)
  w = weights[valid].astype(np.float64)
  mats = [k for k in updates if updates[k].ndim >= 3]
  bases, blocks = {}, {}
  for key in mats:
    d = [updates[key][i].reshape(-1, updates[key].shape[-1]).astype(np.float64) for i in valid]
    u, s, vt = np.linalg.svd(np.concatenate(d, axis=1), full_matrices=False)
    r = len(s) if rank is None else min(rank, len(s))
    n = d[0].shape[1]
    bases[key] = u[:, :r]
    blocks[key] = [s[:r, None] * vt[:r, j * n:(j + 1) * n] for j in range(len(valid))]
  pools = [np.concatenate([blocks[key][j].ravel() for key in mats]) for j in range(len(valid))]
  if merge == "mean":
    merged = sum(wi * v for wi, v in zip(w / w.sum(), pools))
  else:
    merged = ties_ref(pools, w, density)
  out, start = {}, 0
  for key in mats:
    shape = blocks[key][0].shape
    block = merged[start:start + np.prod(shape)].reshape(shape)
    out[key] = (bases[key] @ block).reshape(updates[key].shape[1:])
    start += np.prod(shape)
  others = [k for k in updates if k not in mats]
  flat = [np.concatenate([updates[k][i].ravel().astype(np.float64) for k in others])
          for i in valid]
  merged = (sum(wi * v for wi, v in zip(w / w.sum(), flat)) if merge == "mean"
            else ties_ref(flat, w, density))
  start = 0
  for key in others:
    size = np.prod(SHAPES[key])
    out[key] = merged[start:start + size].reshape(SHAPES[key])
    start += size
  return out


def knots_bound(updates, mask, rank=None):
  """Worst-case float32 change of KnOTS's result through its eigenbases (float64).

  Per matrix, float32 moves ``G = Σ_k X_k X_kᵀ`` by ``||E|| <= (K n + m) eps
  || |X| |X|ᵀ ||`` (entrywise |E| <= K n eps |X| |X|ᵀ for K n-term dots, plus
  eigh's backward error), so each kept
  eigenvector turns by ``<= sqrt(2) ||E|| / gap`` (Davis-Kahan; gap = the
  smallest gap around the kept, supported eigenvalues: TIES is not
  rotation-invariant, so single vectors matter). The result ``U merge(Uᵀ X_k)``
  then moves by that times ``(1 + sqrt(K)) max_k ||X_k||`` (U on both sides;
  TIES' per-entry weighted means are 1-Lipschitz per entry when no trim
  flips), summed over the matrices (one trim pool); plus 16 eps rounding.
  """
  eps, valid = np.finfo(np.float32).eps, np.flatnonzero(mask)
  total = 0.0
  for key, leaf in updates.items():
    if leaf.ndim < 3:
      continue
    x = leaf[valid].reshape(len(valid), -1, leaf.shape[-1]).astype(np.float64)
    gram = np.einsum("kmn,kpn->mp", x, x)
    lam = np.sort(np.linalg.eigvalsh(gram))[::-1]
    kept = int(np.sum(lam > lam[0] * max(x.shape[1], x.shape[2] * len(valid)) * eps))
    kept = kept if rank is None else min(kept, rank)
    gap = np.min(-np.diff(lam[:kept + 1])) if kept < len(lam) else np.min(-np.diff(lam))
    magnitude = np.linalg.norm(np.einsum("kmn,kpn->mp", np.abs(x), np.abs(x)), 2)
    error = (len(valid) * x.shape[2] + x.shape[1]) * eps * magnitude
    size = np.max(np.linalg.norm(x.reshape(len(x), -1), axis=1))
    total += np.sqrt(2) * error / gap * (1 + np.sqrt(len(valid))) * size
  scale = max(np.max(np.abs(v[valid])) for v in updates.values())
  return total + 16 * eps * scale


def _assert_close(got, want, tol=1e-5):
  # Default (TIES, no basis): per entry a sum of <= 5 clients' O(1) entries
  # and one division, <= 8 eps max|x| ~ 3e-6 in float32; 1e-5 covers it.
  for k in want:
    assert got[k].shape == SHAPES[k] and got[k].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=tol, atol=tol)


# One jitted function per option set, shared by the tests (compiles dominate).
TIES_GLOBAL = jax.jit(functools.partial(ties_merge, density=0.3, scale=1.5))
TIES_PER_TENSOR = jax.jit(functools.partial(ties_merge, density=0.3, scale=1.5,
                                            trim_scope="per_tensor"))
KNOTS_TIES = jax.jit(functools.partial(knots_merge, merge="ties", density=0.3))


def _ties_vectors(updates, mask):
  keys = sorted(SHAPES)                           # jax's leaf order of a dict
  bounds = np.cumsum([0] + [int(np.prod(SHAPES[k])) for k in keys])
  vectors = [np.concatenate([updates[k][i].ravel() for k in keys]).astype(np.float64)
             for i in np.flatnonzero(mask)]
  return vectors, list(zip(keys, bounds[:-1], bounds[1:]))


def _unflat(flat, pieces):
  return {k: flat[a:b].reshape(SHAPES[k]) for k, a, b in pieces}


def _check_masking(fn, updates, weights, mask, got):
  """Masked rows (NaN, 1e30) are already excluded by comparing with a reference
  that never sees them; here: masked weights are ignored, nobody valid -> 0."""
  weights_changed = weights.copy()
  weights_changed[~mask] = 1e6
  again = fn(updates, weights_changed, mask)[0]
  for k in updates:   # masked weights are zeroed before any arithmetic: same bits
    np.testing.assert_array_equal(again[k], got[k])
  nobody, info = fn(updates, weights, np.zeros(C, bool))
  assert all(np.all(np.asarray(v) == 0) for v in nobody.values())
  assert all(np.isfinite(v) for v in info.values())


# --- TIES ---------------------------------------------------------------------


def test_ties_hand_computed():
  # density 0.5 of 4 entries: k = 2, keep |x| >= the 2nd largest magnitude.
  #   τ1 = [ 3, -1,  2,  .5] -> τ̂1 = [ 3,  0,  2, 0]
  #   τ2 = [-4,  2,  1, -.5] -> τ̂2 = [-4,  2,  0, 0]
  #   τ3 = [ 2, -3, -2,  1 ] -> τ̂3 = [ 2, -3, -2, 0]   (tie at 2: both kept)
  # uniform: mass [1, -1, 0, 0] -> γ = [+, -, 0, 0];
  #   coordinate 0: mean(3, 2) = 2.5; 1: -3 (τ̂3 only); 2: γ = 0 -> 0; 3: 0.
  #   kept 7 of 12 entries, 3 of those 7 agree with γ; λ = 2 doubles the result.
  # weights [1, 1, 4]: mass [7, -10, -6, 0] -> γ = [+, -, -, 0];
  #   0: (1·3 + 4·2) / 5 = 2.2; 1: -3; 2: -2 (τ̂3); 3: 0.
  x = {"v": jnp.array([[3, -1, 2, .5], [-4, 2, 1, -.5], [2, -3, -2, 1]], jnp.float32)}
  mask = jnp.ones(3, bool)
  got, info = ties_merge(x, jnp.ones(3), mask, density=0.5, scale=2.0)
  np.testing.assert_allclose(got["v"], [5, -6, 0, 0])
  np.testing.assert_allclose([info["kept_fraction"], info["agreement"]], [7 / 12, 3 / 7],
                             rtol=1e-6)
  got, _ = ties_merge(x, jnp.array([1.0, 1.0, 4.0]), mask, density=0.5, scale=2.0)
  np.testing.assert_allclose(got["v"], [4.4, -6, -4, 0], rtol=1e-6)


@pytest.mark.parametrize("scope", ["global", "per_tensor"])
def test_ties_matches_reference_and_ignores_masked_clients(scope):
  updates, weights, mask = _stack(0)
  fn = TIES_GLOBAL if scope == "global" else TIES_PER_TENSOR
  got, _ = fn(updates, weights, mask)
  vectors, pieces = _ties_vectors(updates, mask)
  segments = [(a, b) for _, a, b in pieces] if scope == "per_tensor" else None
  _assert_close(got, _unflat(1.5 * ties_ref(vectors, weights[mask], 0.3, segments), pieces))
  if scope == "global":
    _check_masking(fn, updates, weights, mask, got)


def test_ties_uniform_weights_are_the_paper():
  updates, _, mask = _stack(1)
  got, _ = TIES_GLOBAL(updates, np.full(C, 7.0, np.float32), mask)
  vectors, pieces = _ties_vectors(updates, mask)
  _assert_close(got, _unflat(1.5 * ties_ref(vectors, None, 0.3), pieces))


# --- KnOTS --------------------------------------------------------------------


def test_knots_ties_under_jit_matches_reference_and_ignores_masked_clients():
  # The "tall" 8x2 leaf has rank <= 2·3 < 8 over the 3 valid clients, but its
  # padded SVD has min(8, 2·5) = 8 directions: the unsupported ones must
  # neither count in the trim budget nor enter the merge.
  updates, weights, mask = _stack(2)
  got, info = KNOTS_TIES(updates, weights, mask)
  _assert_close(got, knots_ref(updates, weights, mask, "ties", 0.3, None),
                tol=knots_bound(updates, mask))
  assert float(info["energy"]) == pytest.approx(1.0, abs=1e-6)
  _check_masking(KNOTS_TIES, updates, weights, mask, got)


@pytest.mark.parametrize("merge", ["ties", "mean"])
def test_knots_truncated_rank_matches_reference(merge):
  updates, weights, mask = _stack(3)
  got, info = knots_merge(updates, weights, mask, merge=merge, density=0.3, rank=2)
  _assert_close(got, knots_ref(updates, weights, mask, merge, 0.3, 2),
                tol=knots_bound(updates, mask, rank=2))
  assert float(info["energy"]) < 1.0


def test_knots_mean_full_rank_is_the_weighted_mean():
  updates, weights, mask = _stack(4)
  got, info = knots_merge(updates, weights, mask, merge="mean")
  p = np.where(mask, weights, 0) / weights[mask].sum()
  want = {k: np.tensordot(p, np.where(mask.reshape((-1,) + (1,) * len(s)), updates[k], 0), 1)
          for k, s in SHAPES.items()}
  # Full rank: U Uᵀ = I to 4 m eps (m <= 8 rows), plus the sums' rounding: 64 eps
  # times the largest entry (~3) = 2.3e-5.
  scale = max(np.max(np.abs(v[mask])) for v in updates.values())
  _assert_close(got, want, tol=64 * np.finfo(np.float32).eps * scale)
  assert float(info["energy"]) == pytest.approx(1.0, abs=1e-6)


# --- guards ---------------------------------------------------------------------


def test_guards():
  updates, weights, mask = _stack(5)
  bad = [(ties_merge, {"density": 0.0}, "density"), (ties_merge, {"density": 1.5}, "density"),
         (ties_merge, {"density": True}, "density"), (ties_merge, {"scale": 0.0}, "scale"),
         (ties_merge, {"trim_scope": "layer"}, "trim_scope"),
         (knots_merge, {"merge": "sum"}, "merge"), (knots_merge, {"density": -0.2}, "density"),
         (knots_merge, {"rank": 0}, "rank"), (knots_merge, {"rank": 1.5}, "rank"),
         (knots_merge, {"rank": True}, "rank")]
  for fn, kwargs, field in bad:
    with pytest.raises(ValueError, match=f"^{field}: must be"):
      fn(updates, weights, mask, **kwargs)


# Compile fast (tiny programs): XLA's backend optimizations cost more than they save.
FAST = {"compiler_options": {"xla_backend_optimization_level": 0}}


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_knots_vmapped_matches_unbatched_within_the_float32_bound(batch):
  # Batched eigh/einsum kernels round otherwise than the lone call: each is
  # within knots_bound of the exact result, so they differ by <= twice it.
  stacks = [_stack(10 + i) for i in range(batch)]
  batched = jax.jit(jax.vmap(lambda u, w, m: KNOTS_TIES(u, w, m)[0]), **FAST)(
      *jax.tree.map(lambda *x: np.stack(x), *stacks))
  for i, (u, w, m) in enumerate(stacks):
    alone = KNOTS_TIES(u, w, m)[0]
    tol = 2 * knots_bound(u, m)
    for k in alone:
      np.testing.assert_array_less(np.abs(np.asarray(batched[k][i]) - np.asarray(alone[k])),
                                   tol)

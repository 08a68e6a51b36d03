"""CRA's variants (canonical.py's module doc, steps 0-6) against an independent
float64 NumPy reference written from those equations (basis by SVD of the
concatenated updates, TIES in the coefficients by explicit per-client sorting
and per-entry elections), their limits (per-direction weights that are all
equal are per-client weights; residual="mean" at uniform weights is the plain
mean; basis_decay=0 is score_with="current"; side="output" is side="input" on
transposes), the self-referential "explained" toy, the diagnostics and every
new guard."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FAST
from fedjax_mm import aggregation
from fedjax_mm.aggregation import canonical, cra
from fedjax_mm.aggregation.canonical import canonical_fusion
from test_canonical import float32_bound, subspace_turn

C, M, N = 7, 6, 4
EPS = np.finfo(np.float32).eps


def _stack(seed, gap=False):
  """7 clients (2 padded with garbage); ``gap``: a dominant rank-2 part (a clear eigengap)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(C, M, N))
  if gap:
    w = 3 * np.einsum("mr,crn->cmn", np.linalg.qr(rng.normal(size=(M, 2)))[0],
                      rng.normal(size=(C, 2, N))) + 0.1 * w
  updates = {"w": w.astype(np.float32), "b": rng.normal(size=(C, N)).astype(np.float32)}
  weights = rng.uniform(1, 5, size=C).astype(np.float32)
  mask = np.ones(C, bool)
  mask[[2, 5]] = False
  updates["w"][~mask] = 1e6
  updates["b"][~mask] = -1e6
  return updates, weights, mask


def _basis(x_k, rank, turn=None):
  u = np.linalg.svd(np.concatenate(list(x_k), axis=1), full_matrices=False)[0]
  return (u if turn is None else turn @ u)[:, :rank]


def reference(updates, weights, mask, rank, tau, *, reliability="explained",
              weighting="client", direction_score="sign_agreement", trim=0.0,
              sign_election=False, residual="drop", standardize=False, turn=None):
  """Steps 1-6 in float64 on the valid clients; returns (aggregate, alpha, margin).

  ``margin``: the smallest distance of a discontinuous decision (a sign
  agreement, the trim threshold, an elected sign) from flipping.
  """
  d = updates["w"][mask].astype(np.float64)
  p = weights[mask].astype(np.float64)
  p = p / p.sum()
  u = _basis(d, rank, turn)
  c = np.stack([u.T @ x for x in d])                       # K x r x n
  cbar = np.einsum("k,krn->rn", p, c)
  margins = [np.inf]
  if weighting == "client":
    if reliability == "explained":
      rho = np.array([np.sum(ck**2) / np.sum(x**2) for ck, x in zip(c, d)])
    elif reliability == "agreement":
      rho = np.array([np.sum(ck * cbar) / np.linalg.norm(ck) / np.linalg.norm(cbar) for ck in c])
    else:
      rho = np.zeros(len(p))
  elif direction_score == "sign_agreement":
    rho = np.array([[np.mean([c[k, j, i] * cbar[j, i] > 0 for i in range(c.shape[2])])
                     for j in range(rank)] for k in range(len(p))])
    margins.append(np.min(np.abs(c * cbar)))
  elif direction_score == "inverse_variance":
    var = [sum(p[l] * np.sum((c[l, j] - cbar[j])**2) for l in range(len(p))) for j in range(rank)]
    rho = np.array([[1 / (1 + np.sum((c[k, j] - cbar[j])**2) / var[j]) for j in range(rank)]
                    for k in range(len(p))])
  else:
    rho = np.zeros((len(p), rank))
  if standardize:
    rho = (rho - rho.mean(0)) / rho.std(0)
  e = np.exp(rho / tau) * (p if rho.ndim == 1 else p[:, None])
  alpha = e / e.sum(0)
  a = alpha[:, None, None] if alpha.ndim == 1 else alpha[:, :, None]
  if trim:   # TIES step 1 per client in the coefficients: its top ceil((1-t) r n) |entries|
    for k in range(len(p)):
      mags = np.sort(np.abs(c[k]).ravel())[::-1]
      keep = math.ceil((1 - trim) * c[k].size)
      margins.append(mags[keep - 1] - mags[keep])
      c[k][np.abs(c[k]) < mags[keep - 1]] = 0
  star = np.zeros(c.shape[1:])
  for j in range(c.shape[1]):
    for i in range(c.shape[2]):
      col, wts = c[:, j, i], a[:, j if a.shape[1] > 1 else 0, 0]
      if not sign_election:
        star[j, i] = wts @ col
        continue
      total = wts @ col                       # TIES step 2: the elected sign
      margins.append(abs(total))
      agree = (np.sign(col) == np.sign(total)) & (col != 0)
      star[j, i] = (wts[agree] @ col[agree]) / wts[agree].sum() if agree.any() else 0.0
  fused = u @ star
  if residual == "mean":
    mean = np.einsum("k,kmn->mn", p, d)
    fused = fused + mean - u @ u.T @ mean
  vec = alpha if alpha.ndim == 1 else alpha.mean(1)
  return {"w": fused, "b": vec @ updates["b"][mask]}, alpha, min(margins)


VARIANTS = [
    dict(weighting="direction", direction_score="sign_agreement"),
    dict(weighting="direction", direction_score="inverse_variance"),
    dict(trim=0.5),
    dict(sign_election=True, reliability="agreement"),
    dict(weighting="direction", direction_score="inverse_variance", trim=0.3,
         sign_election=True),
    dict(standardize=True, reliability="agreement"),
    dict(residual="mean"),
]


@pytest.mark.parametrize("options", VARIANTS, ids=[
    "direction-sign", "direction-invvar", "trim", "sign_election", "direction-ties",
    "standardize", "residual_mean"])
def test_variant_matches_numpy_reference(options):
  updates, weights, mask = _stack(3)
  got, info = jax.jit(lambda u, w, m: canonical_fusion(u, w, m, rank=2, temperature=0.5,
                                                       **options), **FAST)(updates, weights, mask)
  want, alpha, margin = reference(updates, weights, mask, 2, 0.5, **options)
  # float32 moves every decision (O(1) products, sums, magnitudes) by
  # ~1e-6 (float32_bound): a margin of 1e-4 means the code decides as the
  # reference does.
  assert margin > 1e-4
  bound = float32_bound(lambda turn: (lambda out, a, _: (a, out["w"], out["b"]))(
      *reference(updates, weights, mask, 2, 0.5, turn=turn, **options)),
      updates["w"][mask].astype(np.float64), 2)
  sizes = np.cumsum([alpha.size, want["w"].size])
  np.testing.assert_array_less(np.abs(np.asarray(info["alpha"])[mask] - alpha).ravel(),
                               bound[:sizes[0]] + 1e-30)
  for k, b in zip(("w", "b"), np.split(bound, sizes)[1:]):
    np.testing.assert_array_less(np.abs(np.asarray(got[k]) - want[k]).ravel(), b + 1e-30)


def test_direction_weights_that_are_all_equal_are_client_weights():
  updates, weights, mask = _stack(4)
  fuse = jax.jit(canonical_fusion, static_argnames=("rank", "reliability", "weighting",
                                                    "direction_score"), **FAST)
  pairs = [  # uniform scores at rank 3; inverse variance at rank 1 (one direction: its mean)
      (dict(rank=3, reliability="uniform"), dict(rank=3, direction_score="uniform")),
      (dict(rank=1, reliability="inverse_variance"),
       dict(rank=1, direction_score="inverse_variance"))]
  for client, direction in pairs:
    a, ia = fuse(updates, weights, mask, **client)
    b, ib = fuse(updates, weights, mask, weighting="direction", **direction)
    np.testing.assert_allclose(np.asarray(ib["alpha"])[:, 0], np.asarray(ia["alpha"]),
                               rtol=4 * EPS / 0.1 + 4 * EPS)
    # ^ ρ differs by the rounding of a one-entry mean (2 eps), each logit by
    # 2 eps / τ (τ = 0.1), α relatively by twice that, plus the softmax's 4 eps.
    # U C* vs U Uᵀ Σ α ΔW: the same sums in another order, (2 M + 2 N) eps of Σ α |ΔW|.
    valid = np.where(mask[:, None, None], updates["w"], 0)
    scale = np.einsum("c,cmn->mn", np.asarray(ia["alpha"]), np.abs(valid))
    np.testing.assert_array_less(np.abs(np.asarray(a["w"]) - np.asarray(b["w"])),
                                 (2 * M + 2 * N) * EPS * scale.max() + 1e-30)
    np.testing.assert_allclose(np.asarray(b["b"]), np.asarray(a["b"]), rtol=8 * EPS, atol=1e-6)


def test_residual_mean_at_uniform_weights_is_the_weighted_mean():
  updates, weights, mask = _stack(5)
  got, info = jax.jit(lambda u, w, m: canonical_fusion(u, w, m, rank=2, temperature=1e9,
                                                       residual="mean"), **FAST)(updates,
                                                                                 weights, mask)
  valid = np.where(mask[:, None, None], updates["w"], 0).astype(np.float64)
  p = np.where(mask, weights, 0) / weights[mask].sum()
  mean = np.einsum("c,cmn->mn", p, valid)
  # τ = 1e9: α = p to 4 eps; U Uᵀ x + (x - U Uᵀ x) = x up to the two m-term
  # products and the sums: (4 M + 8) eps of (‖mean‖ + Σ p |ΔW|).
  bound = (4 * M + 8) * EPS * (np.linalg.norm(mean) + np.einsum("c,cmn->mn", p, np.abs(valid)))
  np.testing.assert_array_less(np.abs(np.asarray(got["w"]) - mean), bound)
  np.testing.assert_allclose(np.asarray(info["alpha"]), p, rtol=4 * EPS)


def _gap_tol(thetas, score_theta, tau, scale):
  """A basis turned by θ moves ``U Uᵀ x`` by <= 2θ‖x‖ (U on both sides); a score
  basis turned by θ_S moves an "explained" ρ by <= 2θ_S, each logit by 2θ_S/τ and
  α relatively by <= 4θ_S/τ; plus 64 eps of rounding."""
  return (2 * sum(thetas) + 4 * score_theta / tau + 64 * EPS) * scale


def test_feedback_over_two_rounds_matches_a_numpy_loop():
  rounds = [_stack(6, gap=True), _stack(7, gap=True)]
  agg = canonical.canonical_aggregator(rank=2, reliability="uniform", residual="feedback")
  template = jax.tree.map(lambda x: x[0], rounds[0][0])
  state, step = agg.init(template), jax.jit(agg.aggregate, **FAST)
  e, outs, thetas, scale = np.zeros((M, N)), [], [], 0.0
  for updates, weights, mask in rounds:
    got, state, _ = step(state, updates, weights, mask, jax.random.key(0), template)
    x = updates["w"][mask].astype(np.float64) + e    # step 0: the carried residual
    p = weights[mask] / weights[mask].sum()
    u = _basis(x, 2)
    mean = np.einsum("k,kmn->mn", p, x)
    outs.append((got, u @ u.T @ mean, p @ updates["b"][mask]))
    e = mean - u @ u.T @ mean
    thetas.append(subspace_turn(x, 2))
    scale += np.linalg.norm(mean)
  assert max(thetas) < 1e-4 and np.linalg.norm(e) > 0.1   # a clear gap, a real residual
  tol = _gap_tol(thetas, 0.0, 1.0, scale)   # round 2 inherits round 1's residual error
  for got, want_w, want_b in outs:
    np.testing.assert_array_less(np.abs(np.asarray(got["w"]) - want_w), tol)
    np.testing.assert_allclose(np.asarray(got["b"]), want_b, rtol=16 * EPS, atol=1e-6)
  np.testing.assert_array_less(np.abs(np.asarray(state.residuals[0]) - e), tol)


def test_ema_basis_matches_numpy_and_decay_zero_is_current():
  rounds = [_stack(8, gap=True), _stack(9, gap=True)]
  template = jax.tree.map(lambda x: x[0], rounds[0][0])
  results = {}
  for name, options in (("ema", dict(score_with="ema", basis_decay=0.5)),
                        ("zero", dict(score_with="ema", basis_decay=0.0)),
                        ("current", {})):
    agg = canonical.canonical_aggregator(rank=2, temperature=0.5, **options)
    state, step = agg.init(template), jax.jit(agg.aggregate, **FAST)
    for updates, weights, mask in rounds:
      got, state, _ = step(state, updates, weights, mask, jax.random.key(0), template)
    results[name] = np.asarray(got["w"])
  grams = [np.einsum("kmn,kpn->mp", x, x) for x in
           (u["w"][m].astype(np.float64) for u, _, m in rounds)]
  moving = 0.5 * grams[0] / np.trace(grams[0]) + 0.5 * grams[1] / np.trace(grams[1])
  lam, vec = np.linalg.eigh(moving)
  s = vec[:, ::-1][:, :2]
  updates, weights, mask = rounds[1]
  x = updates["w"][mask].astype(np.float64)
  rho = np.array([np.sum((s.T @ xk)**2) / np.sum(xk**2) for xk in x])
  alpha = weights[mask] * np.exp(rho / 0.5)
  alpha /= alpha.sum()
  u = _basis(x, 2)
  want = u @ u.T @ np.einsum("k,kmn->mn", alpha, x)
  lam = lam[::-1]   # Davis-Kahan on the moving Gram (trace 1, ~(K n + m) eps rounding)
  score_theta = (C * N + M) * EPS / (lam[1] - lam[2])
  tol = _gap_tol([subspace_turn(x, 2)], score_theta, 0.5, np.linalg.norm(want))
  np.testing.assert_array_less(np.abs(results["ema"] - want), tol)
  np.testing.assert_array_less(np.abs(results["zero"] - results["current"]), 2 * tol)
  assert np.abs(results["ema"] - results["current"]).max() > 100 * tol   # it does differ


def test_output_side_is_the_input_side_on_transposes():
  updates, weights, mask = _stack(10)
  flipped = {"w": np.swapaxes(updates["w"], 1, 2), "b": updates["b"]}
  fuse = jax.jit(canonical_fusion, static_argnames=("rank", "weighting", "side"), **FAST)
  out, info = fuse(updates, weights, mask, rank=2, weighting="direction", side="output")
  ref, ref_info = fuse(flipped, weights, mask, rank=2, weighting="direction")
  # The same Gram (a transposed operand can change the sums' order): 16 eps relative.
  scale = np.abs(np.asarray(ref["w"])).max()
  np.testing.assert_allclose(np.asarray(out["w"]), np.swapaxes(np.asarray(ref["w"]), 0, 1),
                             atol=16 * EPS * scale * M)
  assert info["bases"][0].shape == (N, 2) == ref_info["bases"][0].shape
  state = canonical.init_state({"w": updates["w"][0]}, 2, side="output")
  assert state.bases[0].shape == (N, 2)


def test_self_referential_explained_score_and_its_fix():
  """The review's toy: "explained" against this round's basis is self-referential.

  19 clients along one shared direction a ⊗ v; one outlier along an
  orthogonal b ⊗ v at 5x their norm. Its energy (25) exceeds theirs (~19),
  so this round's rank-1 basis is b: scored against it the outlier explains
  itself (ρ = 1) and the others nothing, and takes α = 0.9991 (measured, τ =
  0.1). Scored against last round's basis (a, from the honest cohort) and
  z-scored, it gets α ~ 1e-21. The fusion basis is still b, though: the
  aggregate keeps the honest consensus only through residual="mean".
  """
  rng = np.random.default_rng(0)
  a, b = np.linalg.qr(rng.normal(size=(M, 2)))[0].T
  v = rng.normal(size=N)
  v /= np.linalg.norm(v)
  honest = [np.outer(a, v) * s + 0.01 * rng.normal(size=(M, N)) for s in rng.uniform(0.9, 1.1, 19)]
  w = np.stack(honest + [5 * np.outer(b, v)]).astype(np.float32)
  updates = {"w": w, "b": np.zeros((20, N), np.float32)}
  weights, everyone = np.ones(20, np.float32), np.ones(20, bool)
  template = jax.tree.map(lambda x: x[0], updates)
  alpha_out, effective = {}, {}
  for name, options in (("explained", {}),
                        ("fixed", dict(score_with="previous", standardize=True))):
    agg = canonical.canonical_aggregator(rank=1, **options)
    state, step = agg.init(template), jax.jit(agg.aggregate, **FAST)
    # Round 1: the honest clients only (the outlier joins in round 2).
    _, previous, _ = step(state, updates, weights, np.arange(20) < 19, jax.random.key(0),
                          template)
    _, _, metrics = step(previous, updates, weights, everyone, jax.random.key(0), template)
    effective[name] = float(metrics["effective_clients"])
    fixed = name == "fixed"
    fuse = jax.jit(lambda u, w, m, s: canonical_fusion(
        u, w, m, rank=1, score_bases=s, standardize=fixed,
        residual="mean" if fixed else "drop"), **FAST)
    out, info = fuse(updates, weights, everyone, previous.bases if fixed else None)
    alpha_out[name] = float(info["alpha"][19])
  honest_mean = np.mean(honest, axis=0)
  cosine = np.sum(np.asarray(out["w"]) * honest_mean) / np.linalg.norm(out["w"]) / \
      np.linalg.norm(honest_mean)
  assert cosine > 0.99   # the out-of-span part is the honest clients' (19/20 of their mean)
  assert alpha_out["explained"] > 0.9       # today: the outlier takes ~all the weight
  assert alpha_out["fixed"] < 1e-3           # scored against last round's basis a
  assert effective["explained"] < 1.1 and effective["fixed"] > 18   # 1 / Σ α²


def test_diagnostics_match_numpy():
  rounds = [_stack(11), _stack(12)]
  template = jax.tree.map(lambda x: x[0], rounds[0][0])
  agg = canonical.canonical_aggregator(rank=3, temperature=0.5)
  state, step = agg.init(template), jax.jit(agg.aggregate, **FAST)
  history = []
  for updates, weights, mask in rounds:
    _, state, metrics = step(state, updates, weights, mask, jax.random.key(0), template)
    history.append(metrics)
  np.testing.assert_allclose([float(history[0]["basis_cos2"]),
                              float(history[0]["basis_max_angle_deg"])], [0, 90], atol=1e-5)
  (u0, u1), want = [_basis(u["w"][m].astype(np.float64), 3) for u, _, m in rounds], {}
  cosines = np.linalg.svd(u1.T @ u0, compute_uv=False)
  updates, weights, mask = rounds[1]
  x = updates["w"][mask].astype(np.float64)
  p = weights[mask] / weights[mask].sum()
  _, alpha, _ = reference(updates, weights, mask, 3, 0.5)
  want = {"basis_cos2": np.mean(cosines**2),
          "basis_max_angle_deg": np.degrees(np.arccos(cosines.min())),
          "explained_weighted": sum(pk * np.sum((u1.T @ xk)**2) for pk, xk in zip(p, x))
          / sum(pk * np.sum(xk**2) for pk, xk in zip(p, x)),
          "effective_clients": 1 / np.sum(alpha**2)}
  theta = max(subspace_turn(u["w"][m].astype(np.float64), 3) for u, _, m in rounds)
  for k, value in want.items():
    # Each moves by O(θ) through the bases (θ the float32 turn; 4θ for the
    # squared overlaps, /τ through α) and arccos by ~1e-3° at float32.
    tol = {"basis_max_angle_deg": 1e-2}.get(k, 0) + 4 * theta / 0.5 * max(1, value) + 1e-5
    assert abs(float(history[1][k]) - value) <= tol, (k, float(history[1][k]), value)


@pytest.mark.parametrize("kwargs,match", [
    ({"weighting": "row"}, "weighting: must be one of"),
    ({"direction_score": "vote"}, "direction_score: must be one of"),
    ({"residual": "keep"}, "residual: must be one of"),
    ({"side": "left"}, "side: must be one of"),
    ({"trim": 1.0}, r"trim: must be a finite number in \[0, 1\)"),
    ({"trim": -0.1}, r"trim: must be a finite number in \[0, 1\)"),
    ({"basis_decay": 1.0}, r"basis_decay: must be a finite number in \[0, 1\)"),
    ({"sign_election": 1}, "sign_election: must be a bool"),
    ({"standardize": "yes"}, "standardize: must be a bool"),
    ({"weighting": "direction", "score_with": "previous"}, "needs score_with='current'"),
    ({"fusion": "mean", "trim": 0.5}, "fusion: 'mean' fuses no coefficients"),
    ({"path": "streamed", "score_with": "previous", "trim": 0.5},
     "path: 'streamed' does not compute trim=0.5"),
    ({"path": "streamed", "score_with": "previous", "side": "output"},
     "path: 'streamed' does not compute side='output'"),
])
def test_bad_variant_options_name_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    cra.cra(**kwargs)


def test_auto_path_stacks_a_variant_the_stream_cannot_compute():
  template = {"w": jnp.zeros((M, N))}
  tiny = dict(path="auto", score_with="previous", template=template, cohort_size=C,
              max_stack_bytes=1)
  assert isinstance(cra.cra(**tiny), aggregation.StreamingAggregator)
  for variant in (dict(trim=0.5), dict(residual="feedback"), dict(standardize=True),
                  dict(side="output"), dict(sign_election=True)):
    assert isinstance(cra.cra(**tiny, **variant), aggregation.CohortAggregator), variant

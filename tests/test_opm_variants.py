"""OPM's split (non-leaking) and motion variants, and its output side.

The reference is a NumPy float64 transcription of the equations in
``server/orthogonal_momentum.py``'s module doc (steps 1-3, then the split or
motion step), written from the formulas, not from the code under test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import FAST
from fedjax_mm.aggregation import canonical
from fedjax_mm.server.orthogonal_momentum import opm, orthogonal_momentum

M, N, R = 6, 4, 2
EPS = np.finfo(np.float32).eps


def _agg(u):
  return canonical.CanonicalState(bases=(u,), has_basis=jnp.ones((), bool))


def _run(tx, deltas, bases, weights=None):
  """The transform over the rounds (one jitted scan); outputs per round as NumPy."""
  template = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), deltas[0])
  weights = weights or [template] * len(deltas)
  stack = lambda xs: jax.tree.map(lambda *x: jnp.stack([jnp.asarray(v, jnp.float32)
                                                        for v in x]), *xs)

  def body(state, x):
    d, u, w = x
    out, state = tx.update(d, state, w, aggregator_state=_agg(u))
    return state, out

  run = jax.jit(lambda s, x: jax.lax.scan(body, s, x), **FAST)
  _, outs = run(tx.init(template), (stack(deltas), jnp.asarray(np.stack(bases), jnp.float32),
                                    stack(weights)))
  return [jax.tree.map(lambda o: np.asarray(o[t]), outs) for t in range(len(deltas))]


def _orthonormal(rng, m, r):
  return np.linalg.qr(rng.normal(size=(m, r)))[0]


def _problem(seed, rounds, shape=(M, N), rows=M, r=R):
  """Random updates and models; bases drifting from round to round (each a QR
  of the last plus noise), with random column signs as SVD's bases have."""
  rng = np.random.default_rng(seed)
  deltas = [{"b": rng.normal(size=N), "w": rng.normal(size=shape)} for _ in range(rounds)]
  weights = [{"b": rng.normal(size=N), "w": rng.normal(size=shape)} for _ in range(rounds)]
  bases = [_orthonormal(rng, rows, r)]
  for _ in range(rounds - 1):
    bases.append(_orthonormal(rng, rows, r) if r == rows else np.linalg.qr(
        bases[-1] + 0.4 * rng.normal(size=(rows, r)))[0] * rng.choice([-1.0, 1.0], r))
  return deltas, bases, weights


def _polar(a):
  p, _, qt = np.linalg.svd(a, full_matrices=False)
  return p @ qt


def _qf(x):
  q, r = np.linalg.qr(x)
  return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def reference(deltas, bases, weights, variant, beta=0.9, beta_b=0.5, gamma=1.0,
              retraction="polar", lam=1.0, side="input", conditioning=None):
  """The module doc's equations in float64. ``variant="motion"`` with ``lam=0``
  is ``"stiefel"``. ``conditioning`` (a list) receives each round's smallest
  singular value of the matrices whose polar/QR factors are taken."""
  orient = ((lambda x: x.reshape(-1, x.shape[-1])) if side == "input"
            else (lambda x: x.reshape(-1, x.shape[-1]).T))
  retract = _qf if retraction == "qr" else _polar
  u_s = b = coeffs = rest = bias = None
  outs = []
  for t, (d, u, w) in enumerate(zip(deltas, bases, weights)):
    delta, model = orient(np.asarray(d["w"], np.float64)), orient(np.asarray(w["w"]))
    if u_s is None:
      u_s, b = u, np.zeros_like(u)
      coeffs, rest, bias = np.zeros((u.shape[1], delta.shape[1])), np.zeros_like(delta), 0.0
    sigma = np.linalg.svd(u.T @ u_s, compute_uv=False)[-1]
    u = u @ _polar(u.T @ u_s)                                  # 1. Procrustes
    tangent = lambda x: x - u_s @ (0.5 * (u_s.T @ x + x.T @ u_s))
    b = beta_b * tangent(b) + tangent(u - u_s)                 # 2. basis momentum
    u_new = retract(u_s + gamma * b)                           # 3. retraction
    if conditioning is not None:
      conditioning.append(min(sigma, np.linalg.svd(u_s + gamma * b, compute_uv=False)[-1]))
    inside = lambda x: u_new @ (u_new.T @ x)
    if variant == "split":
      c_hat, e_hat = coeffs + u_new.T @ rest, rest - inside(rest)
      coeffs = beta * c_hat + u_new.T @ delta
      rest = beta * e_hat + delta - inside(delta)
      out = u_new @ coeffs + rest
    else:
      coeffs = beta * u_new.T @ u_s @ coeffs + u_new.T @ delta
      out = u_new @ coeffs + delta - inside(delta)
      out = out - (lam if t > 0 else 0.0) * (u_new - u_s) @ (u_s.T @ model)
    bias = beta * bias + d["b"]
    out = out if side == "input" else out.T
    outs.append({"b": bias, "w": out.reshape(np.shape(d["w"]))})
    u_s = u_new
  return outs


def bound(deltas, beta, sigma=1.0, models=()):
  """Worst-case float32 error of the outputs over ``len(deltas)`` rounds.

  A round's output is a few (<= 8) products of orthonormal factors with Δ,
  the buffers or W, each an M-term dot (<= M eps relative); the polar/QR
  factors of matrices whose smallest singular value is ``sigma`` are off by
  <= 2 eps / sigma (polar perturbation bound, Li 1995; QR likewise to first
  order). The basis carries its error from round to round (x rounds) and the
  momentum sums past errors with weights β^k (x 1 / (1 - β)); all relative
  to the largest entry of Δ and W.
  """
  size = max(np.max(np.abs(v)) for tree in [*deltas, *models] for v in tree.values())
  return len(deltas) * 8 * M * EPS * (1 + 2 / sigma) * size / (1 - beta)


@pytest.mark.parametrize("retraction", ["polar", "qr"])
def test_split_matches_the_numpy_reference_and_is_not_heavy_ball(retraction):
  deltas, bases, _ = _problem(0, 6)
  tx = orthogonal_momentum(0.8, rank=R, variant="split", basis_step=0.7,
                           retraction=retraction)
  got = _run(tx, deltas, bases)
  sigma = []
  want = reference(deltas, bases, deltas, "split", beta=0.8, gamma=0.7,
                   retraction=retraction, conditioning=sigma)
  tol = bound(deltas, 0.8, min(sigma))
  heavy = np.zeros((M, N))
  for t, (g, w) in enumerate(zip(got, want)):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=0, atol=tol)
    heavy = 0.8 * heavy + deltas[t]["w"]
  # A rotating basis turns the in-span momentum: the reference is > 4 tol
  # from FedAvgM's buffer (so the output is not FedAvgM's).
  assert np.max(np.abs(want[-1]["w"] - heavy)) > 4 * tol


@pytest.mark.parametrize("rank,rotating", [(1, False), (3, False), (M, True)])
def test_split_is_fedavgm_with_a_constant_basis_or_at_full_rank(rank, rotating):
  deltas, bases, weights = _problem(1, 6, r=rank)
  if not rotating:
    bases = [bases[0]] * len(bases)
  lr, beta = 0.5, 0.9
  tx = opm(lr, beta, variant="split", aggregator_rank=rank)
  got = _run(tx, deltas, bases)
  fedavgm = optax.sgd(lr, momentum=beta)
  state = fedavgm.init(deltas[0])
  # Ũ' = Ũ up to rounding (Procrustes of a constant basis, or of a full-rank
  # rotation: sigma = 1); both sides float32 (twice the bound), times lr.
  tol = 2 * lr * bound(deltas, beta)
  for g, d in zip(got, deltas):
    want, state = fedavgm.update(jax.tree.map(jnp.float32, d), state)
    for k in d:
      np.testing.assert_allclose(g[k], np.asarray(want[k]), rtol=0, atol=tol)
  # Motion at full rank: the basis does not move, so no motion term either.
  if rotating:
    got = _run(opm(lr, beta, variant="motion", aggregator_rank=rank), deltas, bases, weights)
    heavy = np.zeros((M, N))
    for g, d in zip(got, deltas):
      heavy = beta * heavy + d["w"]
      np.testing.assert_allclose(g["w"], -lr * heavy, rtol=0,
                                 atol=2 * lr * bound(deltas, beta, models=weights))


def test_motion_matches_the_numpy_reference():
  deltas, bases, weights = _problem(2, 6)
  tx = orthogonal_momentum(0.9, rank=R, variant="motion", basis_step=0.7, motion_scale=1.5)
  got = _run(tx, deltas, bases, weights)
  sigma = []
  want = reference(deltas, bases, weights, "motion", gamma=0.7, lam=1.5, conditioning=sigma)
  stiefel = reference(deltas, bases, weights, "motion", gamma=0.7, lam=0.0)
  tol = bound(deltas, 0.9, min(sigma), weights)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=0, atol=tol)
  # The motion term is really there (round 0 has none): the output is within
  # tol of the reference, which is > 4 tol from the "stiefel" one.
  np.testing.assert_allclose(got[0]["w"], stiefel[0]["w"], rtol=0, atol=tol)
  assert np.max(np.abs(want[-1]["w"] - stiefel[-1]["w"])) > 4 * tol


@pytest.mark.parametrize("variant", ["split", "motion"])
def test_output_side_works_on_the_transposed_matrix(variant):
  # A [2, 3, N] leaf is the 6 x N matrix; its output side the N x 6 one.
  deltas, bases, weights = _problem(3, 5, shape=(2, 3, N), rows=N)
  tx = orthogonal_momentum(0.9, rank=R, variant=variant, side="output")
  got = _run(tx, deltas, bases, weights)
  sigma = []
  want = reference(deltas, bases, weights, variant, side="output", conditioning=sigma)
  tol = bound(deltas, 0.9, min(sigma), weights)
  for g, w in zip(got, want):
    for k in w:
      np.testing.assert_allclose(g[k], w[k], rtol=0, atol=tol)


def test_a_basis_of_the_other_side_is_refused_at_trace_time():
  params = {"b": jnp.zeros(N), "w": jnp.zeros((M, N))}
  for side, rows, want in [("output", M, "side: 'output' works on 4 x 6 matrices here, so "
                            "it needs 4-row bases, but the aggregator's basis has 6 rows"),
                           ("input", N, "side: 'input' works on 6 x 4 matrices here, so "
                            "it needs 6-row bases, but the aggregator's basis has 4 rows")]:
    tx = orthogonal_momentum(0.9, rank=R, side=side)
    with pytest.raises(ValueError, match=want):
      jax.eval_shape(lambda s: tx.update(params, s, params, aggregator_state=_agg(
          jnp.zeros((rows, R)))), tx.init(params))


def test_invalid_variant_options_are_refused():
  params = {"w": jnp.zeros((M, N))}
  tx = orthogonal_momentum(variant="motion", rank=R)
  with pytest.raises(ValueError, match=r"variant: 'motion' moves the model .*params="):
    tx.update(params, tx.init(params), None, aggregator_state=_agg(jnp.zeros((M, R))))
  for kwargs, match in [
      ({"variant": "split", "residual": "drop"},
       "residual: must be 'keep' with variant='split'"),
      ({"side": "left"}, r"side: must be one of \('input', 'output'\), got 'left'"),
      ({"motion_scale": -1.0}, "motion_scale: must be a finite number >= 0")]:
    with pytest.raises(ValueError, match=match):
      orthogonal_momentum(**kwargs)

"""The trajectory diagnostics (``simulation/trajectory.py``): pseudo-gradient
cosine vs update cosine, the norms, path efficiency on hand-made paths and
tracking turned off. The driver's records and a resumed run continuing the
path bit for bit: ``test_run_records.py`` (its resume test)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import bits, build
from fedjax_mm.server import fedopt
from fedjax_mm.simulation import trajectory

NEW_METRICS = {"pseudo_gradient_cosine", "path_length"}


def _rounds(h, train, n, state=None):
  """``n`` rounds; the state after each (the harness's round donates nothing)."""
  state = h.state if state is None else state
  pop, states, history = h.pop, [], []
  for _ in range(n):
    state, pop, metrics = h.fn(state, pop, train, train.sizes.astype(jnp.float32), None)
    states.append(state)
    history.append({k: np.asarray(v) for k, v in metrics.items()})
  return states, history


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def _cos(a, b):
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_fedavg_pseudo_gradient_cosine_is_the_update_cosine(train):
  # sgd(1) applies u_t = -g_t: negation is exact, so both cosines (and norms)
  # are the same float32 computation.
  _, history = _rounds(build(tx=optax.sgd(1.0)), train, 3)
  for m in history:
    assert m["pseudo_gradient_cosine"] == m["update_cosine"]
    assert m["pseudo_gradient_norm"] == m["update_norm"] > 0
  assert history[0]["update_cosine"] == 0.0   # no previous update
  assert all(m["update_cosine"] != 0.0 for m in history[1:])


LR, BETA = 1.0, 0.9


@pytest.fixture(scope="module")
def fedavgm_run(train):
  """A FedAvgM harness and its first 4 rounds (one compile for two tests)."""
  h = build(tx=fedopt.fedavgm(LR, momentum=BETA))
  return (h, *_rounds(h, train, 4))


def test_fedavgm_cosines_differ_and_match_numpy(fedavgm_run):
  lr, beta = LR, BETA
  _, states, history = fedavgm_run
  g = [_flat(s.last_pseudo_gradient) for s in states]   # what the transform received
  u = [_flat(s.last_update) for s in states]
  # Heavy ball from the recorded pseudo-gradients: m_t = beta m_{t-1} + g_t,
  # u_t = -lr m_t (Reddi et al. 2021; Hsu et al. 2019).
  momentum = np.zeros_like(g[0])
  for t in range(4):
    momentum = beta * momentum + g[t]
    # Float32 state vs a float64 recurrence over 4 rounds: ~4 eps relative per
    # step on values of norm ~1 (amplified at most 1 / (1 - beta) = 10x): 1e-5.
    np.testing.assert_allclose(u[t], -lr * momentum, rtol=1e-5, atol=1e-6)
    # Norms and cosines: float32 reductions over P = 610 terms, <= P eps
    # relative (3.6e-5) in the worst case; 1e-4.
    np.testing.assert_allclose(history[t]["pseudo_gradient_norm"], np.linalg.norm(g[t]),
                               rtol=1e-4)
    np.testing.assert_allclose(history[t]["update_norm"], np.linalg.norm(u[t]), rtol=1e-4)
  for t in range(1, 4):
    np.testing.assert_allclose(history[t]["pseudo_gradient_cosine"], _cos(g[t], g[t - 1]),
                               atol=1e-4)
    np.testing.assert_allclose(history[t]["update_cosine"], _cos(u[t], u[t - 1]), atol=1e-4)
  # Momentum keeps the applied updates more aligned than their inputs.
  for m in history[1:]:
    assert m["update_cosine"] > m["pseudo_gradient_cosine"] + 0.01, m
  path = np.cumsum([m["update_norm"] for m in history], dtype=np.float32)
  np.testing.assert_array_equal([m["path_length"] for m in history], path)


def _fixed_updates():
  """A server transform that ignores its input: ``u_t = (a (t + 1) + b (-1)^t) d``.

  ``d`` is 0.5 in every coordinate; ``(a, b)`` sit in the transform's state,
  so both hand-made paths run one compiled round.
  """
  def update(updates, state, params=None):
    del params
    count, (a, b) = state
    scale = a * (count + 1) + b * jnp.where(count % 2 == 0, 1.0, -1.0)
    return jax.tree.map(lambda x: scale * jnp.full_like(x, 0.5), updates), (count + 1, (a, b))
  return optax.GradientTransformation(
      lambda _: (jnp.zeros((), jnp.int32), (jnp.float32(1), jnp.float32(0))), update)


def test_path_efficiency_on_hand_made_paths(train):
  h = build(tx=_fixed_updates())
  initial = h.state.trainable   # logistic regression starts at zeros
  start = trajectory.path_record(h.state, initial)   # nothing moved yet: undefined
  assert start["distance_from_init"] == 0.0 and np.isnan(start["path_efficiency"])
  d = np.sqrt(610 * 0.25)
  # Straight: u_1 = d, u_2 = 2 d (one direction). Back: u_1 = d, u_2 = -d.
  for (a, b), length, efficiency in (((1.0, 0.0), 3 * d, 1.0), ((0.0, 1.0), 2 * d, 0.0)):
    state = h.state.replace(opt_state=(h.state.opt_state[0], (jnp.float32(a), jnp.float32(b))))
    states, history = _rounds(h, train, 2, state=state)
    record = trajectory.path_record(states[-1], initial)
    # Steps are multiples of 0.5: every W_t, square and sum over the 610
    # parameters is exact in float32; only the square roots, their sum and the
    # division round (a few ulp): 1e-6.
    assert history[-1]["path_length"] == pytest.approx(length, rel=1e-6)
    assert record["path_efficiency"] == pytest.approx(efficiency, rel=1e-6, abs=0.0)


def test_tracking_off_keeps_no_state_and_reports_no_new_metrics(train, fedavgm_run):
  h, tracked, tracked_history = fedavgm_run
  off = h.state.replace(last_update=(), last_pseudo_gradient=(), path_length=())
  untracked, history = _rounds(h, train, 4, state=off)
  for field in ("last_update", "last_pseudo_gradient", "path_length"):
    assert getattr(untracked[-1], field) == ()
  assert set(tracked_history[0]) - set(history[0]) == NEW_METRICS | {"update_cosine"}
  assert trajectory.path_record(untracked[-1], h.state.trainable) == {}
  # The diagnostics only watch: the same training, bit for bit.
  for x, y in zip(bits(tracked[-1].trainable), bits(untracked[-1].trainable)):
    np.testing.assert_array_equal(x, y)

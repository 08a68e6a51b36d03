"""FedExP and FedACG against independent NumPy versions of the papers' pseudo-code.

The references are written from the papers (FedExP: Jhunjhunwala et al. 2023,
Algorithm 1; FedACG: Kim et al. 2024, Algorithm 1, in the paper's own sign:
``Δ = local − start``, ``m ← λ m + mean Δ``) in float64 NumPy; they use
nothing of ``fedjax_mm`` except ``round_lib.cohort_ids`` (which clients a
round sampled). Rounds are built with ``conftest.build``.

Setting: per-example loss ``0.5 * a * ||w - b||^2``, ``w`` in R^3, and
"identical-row" clients (every row of client k is ``(a_k, b_k)``), so any
mini-batch's mean gradient is ``a_k (w - b_k)`` and local training is
deterministic: ``tau_k = min(E * ceil(n_k / B), S)`` plain gradient steps.
All K = 6 rounds share one spec (4 of 6 clients, chunks of 3: 2 padding
slots) and one data shape (30 rows), so each algorithm setting compiles once.
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import build, quadratic_task
from fedjax_mm import config_files, configuration
from fedjax_mm.algorithms import ALGORITHMS, fedacg, fedavg, fedexp
from fedjax_mm.data import federated
from fedjax_mm.simulation import round as round_lib
from fedjax_mm.simulation import validation

DIM = 3
W0 = np.array([0.5, -0.25, 0.125])   # dyadic: the hand-computed case below is exact
# Simulator (float32) vs float64 references over 3 rounds of <= 8 steps on
# O(1) parameters: rounding is ~1e-7 per operation; 1e-5 relative leaves ~10x
# room, atol covers components near zero.
RTOL, ATOL = 1e-5, 1e-6


QTASK = quadratic_task(W0)


class Population:
  """Identical-row clients: host values for the references, packed rows for the simulator."""

  def __init__(self, sizes, a, b):
    self.sizes, self.a = np.asarray(sizes), np.asarray(a, np.float64)
    self.b = np.asarray(b, np.float64).reshape(-1, DIM)
    owners = np.repeat(np.arange(len(sizes)), sizes)
    examples = {"a": self.a[owners].astype(np.float32), "b": self.b[owners].astype(np.float32)}
    self.data = jax.device_put(federated.pack(examples, owners, len(sizes)))
    self.weights = jnp.asarray(self.sizes, jnp.float32)

  def grad(self, k, w):
    return self.a[k] * (w - self.b[k])


K, COHORT, CHUNK = 6, 4, 3
SIZES = np.array([3, 7, 1, 5, 10, 4])          # 30 rows
SCHEDULE = federated.LocalSchedule("epochs", num_steps=8, batch_size=3, num_epochs=2)
STEPS = np.array([min(2 * math.ceil(n / 3), 8) for n in SIZES])   # [2, 6, 2, 4, 8, 4]
SPEC = round_lib.RoundSpec(num_clients=K, cohort_size=COHORT, chunk_size=CHUNK,
                           schedule=SCHEDULE)
LR = 0.1
HETERO = Population(SIZES, [0.5, 1.2, 2.0, 0.8, 1.5, 0.3],
                    np.random.default_rng(1).normal(size=(K, DIM)) * 2.0)
UNIFORM = jnp.ones((K,), jnp.float32)

_HARNESSES = {}


def harness(name, **options):
  """The K = 6 round of ``name`` (cached: one compilation per setting)."""
  key = (name, tuple(sorted(options.items())))
  if key not in _HARNESSES:
    algorithm = {"fedexp": fedexp, "fedacg": fedacg, "fedavg": fedavg}[name](**options)
    _HARNESSES[key] = build(task=QTASK, num_clients=K, cohort=COHORT, chunk=CHUNK,
                            schedule=SCHEDULE, algorithm=algorithm, tx=optax.sgd(1.0),
                            client_lr=LR, seed=3)
  return _HARNESSES[key]


def simulate(h, pop, rounds, weights, spec=SPEC):
  """Rounds one by one: (final state, the cohorts, the metrics, ``w`` after each round)."""
  state, pop_state, cohorts, history, trajectory = h.state, h.pop, [], [], []
  for _ in range(rounds):
    cohorts.append(np.asarray(round_lib.cohort_ids(state, spec, None)))
    state, pop_state, (metrics,) = h.run(pop.data, 1, state, pop_state, weights)
    history.append(metrics)
    trajectory.append(np.asarray(state.trainable["w"]))
  return state, cohorts, history, trajectory


def local_gd(grad, start, steps, lr, correction=None):
  y = start.copy()
  for _ in range(steps):
    y = y - lr * (grad(y) + (0.0 if correction is None else correction(y)))
  return y


def normalized(weights, ids):
  w = np.asarray(weights, np.float64)[ids]
  return w / w.sum()


# --------------------------------------------------------------------------- FedExP

def reference_fedexp(pop, cohorts, weights, eps):
  """Algorithm 1, weights p: ``w -= eta D``, ``D = sum p D_i``,

  ``eta = max(1, sum p ||D_i||^2 / (2 (||D||^2 + eps)))``; returns (w, eta per round).
  """
  w, etas = W0.copy(), []
  for ids in cohorts:
    deltas = np.array([w - local_gd(lambda y, k=k: pop.grad(k, y), w, STEPS[k], LR)
                       for k in ids])
    p = normalized(weights, ids)
    mean = p @ deltas
    eta = max(1.0, float(p @ np.sum(deltas ** 2, axis=1)) / (2 * (mean @ mean + eps)))
    w = w - eta * mean
    etas.append(eta)
  return w, etas


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_fedexp_matches_numpy_reference(weighting):
  weights = HETERO.weights if weighting == "num_examples" else UNIFORM
  eps = 1e-3
  state, cohorts, history, _ = simulate(harness("fedexp", eps=eps), HETERO, 3, weights)
  expected, etas = reference_fedexp(HETERO, cohorts, np.asarray(weights), eps)
  np.testing.assert_allclose(np.asarray(state.trainable["w"], np.float64), expected,
                             rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose([float(m["fedexp/eta_g"]) for m in history], etas, rtol=RTOL)
  # The extrapolation is active here (else this proves no more than FedAvg).
  assert max(etas) > 1.2, etas


def test_fedexp_step_is_one_when_every_client_sends_the_same_delta():
  same = Population(np.full(K, 5), np.full(K, 0.7), np.tile([1.0, -2.0, 0.5], (K, 1)))
  fedexp_run = simulate(harness("fedexp", eps=1e-3), same, 3, same.weights)
  fedavg_run = simulate(harness("fedavg"), same, 3, same.weights)
  # mean ||D||^2 = ||D||^2, so the ratio is < 1/2 and max(1, .) = 1 exactly:
  # 1.0 * d == d, the FedAvg round bit for bit.
  assert [float(m["fedexp/eta_g"]) for m in fedexp_run[2]] == [1.0] * 3
  for a, b in zip(fedexp_run[3], fedavg_run[3]):
    np.testing.assert_array_equal(a, b)


def test_fedexp_step_on_two_clients_by_hand():
  """One gradient step at lr 1 on a = 1 moves client k to b_k: ``D_k = w0 - b_k``.

  D_1 = (1, 2, 0), D_2 = (1, -2, 0), eps = 1/4; sum_i p_i ||D_i||^2 = 5.
  Example weights (1, 3): mean D = (1, -1, 0), ||.||^2 = 2, eta = 5 / (2 * 2.25) = 10/9.
  Uniform weights: mean D = (1, 0, 0), ||.||^2 = 1, eta = 5 / (2 * 1.25) = 2.
  """
  deltas = np.array([[1.0, 2.0, 0.0], [1.0, -2.0, 0.0]])
  pop = Population([1, 3], [1.0, 1.0], W0 - deltas)
  spec = round_lib.RoundSpec(num_clients=2, cohort_size=2, chunk_size=0,
                             schedule=federated.LocalSchedule("steps", 1, 4))
  h = build(task=QTASK, num_clients=2, cohort=2, schedule=spec.schedule,
            algorithm=fedexp(eps=0.25), client_lr=1.0)
  for weights, eta, mean in ((pop.weights, 10 / 9, [1.0, -1.0, 0.0]),
                             (jnp.ones((2,), jnp.float32), 2.0, [1.0, 0.0, 0.0])):
    state, _, (metrics,), _ = simulate(h, pop, 1, weights, spec)
    # Dyadic inputs make the deltas exact; eta (10/9) is rounded to float32: 1e-6.
    np.testing.assert_allclose(float(metrics["fedexp/eta_g"]), eta, rtol=1e-6)
    np.testing.assert_allclose(state.trainable["w"], W0 - eta * np.array(mean), rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan"), float("inf"), True])
def test_fedexp_rejects_a_bad_eps(eps):
  with pytest.raises(ValueError, match=r"^eps: must be a finite number > 0, got "):
    ALGORITHMS.make("fedexp", eps=eps)


# --------------------------------------------------------------------------- FedACG

def reference_fedacg(pop, cohorts, weights, lam, beta):
  """Algorithm 1 in the paper's variables; returns (w, m, mean ||D_i|| per round).

  ``w~ = w + lam m``; clients: GD on ``f_k + beta/2 ||. - w~||^2`` from w~;
  ``D_k = theta_k - w~``; ``m = lam m + sum p D_k``; ``w = w~ + sum p D_k``.
  """
  w, m, norms = W0.copy(), np.zeros(DIM), []
  for ids in cohorts:
    start = w + lam * m
    deltas = np.array([local_gd(lambda y, k=k: pop.grad(k, y), start, STEPS[k], LR,
                                correction=lambda y: beta * (y - start)) - start
                       for k in ids])
    mean = normalized(weights, ids) @ deltas
    m = lam * m + mean
    w = start + mean
    norms.append(float(np.mean(np.linalg.norm(deltas, axis=1))))
  return w, m, norms


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_fedacg_matches_numpy_reference(weighting):
  weights = HETERO.weights if weighting == "num_examples" else UNIFORM
  lam, beta = 0.85, 0.5
  state, cohorts, history, _ = simulate(harness("fedacg", momentum=lam, beta=beta), HETERO, 3,
                                        weights)
  w, m, norms = reference_fedacg(HETERO, cohorts, np.asarray(weights), lam, beta)
  np.testing.assert_allclose(np.asarray(state.trainable["w"], np.float64), w,
                             rtol=RTOL, atol=ATOL)
  # The server keeps v = -m (pseudo-gradient sign).
  np.testing.assert_allclose(-np.asarray(state.algorithm["w"], np.float64), m,
                             rtol=RTOL, atol=ATOL)
  # Clients upload their change from the lookahead they were sent, not from w.
  np.testing.assert_allclose([float(m_["mean_client_delta_norm"]) for m_ in history], norms,
                             rtol=RTOL)
  # Both the momentum lookahead and the proximal term matter at this setting.
  for other in ((0.0, beta), (lam, 0.0)):
    assert np.linalg.norm(reference_fedacg(HETERO, cohorts, np.asarray(weights), *other)[0]
                          - w) > 1e-2


def test_fedacg_without_momentum_and_regularization_is_fedavg_bit_exact():
  acg = simulate(harness("fedacg", momentum=0.0, beta=0.0), HETERO, 3, HETERO.weights)
  avg = simulate(harness("fedavg"), HETERO, 3, HETERO.weights)
  # The lookahead w - 0 * v, the gradient g + 0 * (w - w~) and the
  # pseudo-gradient 0 * v + d are exact: every round is FedAvg's, bit for bit.
  for a, b in zip(acg[3], avg[3]):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("options,message", [
    (dict(momentum=-0.1), r"^momentum: must be a finite number in \[0, 1\), got -0.1"),
    (dict(momentum=1.0), r"^momentum: must be a finite number in \[0, 1\), got 1.0"),
    (dict(momentum=float("nan")), r"^momentum: must be a finite number in \[0, 1\), got nan"),
    (dict(beta=-1e-3), r"^beta: must be a finite number >= 0, got -0.001"),
    (dict(beta=float("inf")), r"^beta: must be a finite number >= 0, got inf"),
    (dict(beta=True), r"^beta: must be a finite number >= 0, got True"),
])
def test_fedacg_rejects_bad_options(options, message):
  with pytest.raises(ValueError, match=message):
    ALGORITHMS.make("fedacg", **options)


# --------------------------------------------------------------------------- config paths

@pytest.mark.parametrize("kind,option,value,rule", [
    ("fedexp", "eps", 0.0, r"must be a finite number > 0, got 0\.0"),
    ("fedacg", "momentum", 1.0, r"must be a finite number in \[0, 1\), got 1\.0"),
    ("fedacg", "beta", -1.0, r"must be a finite number >= 0, got -1\.0"),
])
def test_a_bad_option_in_a_config_is_named_by_its_path(kind, option, value, rule):
  config = config_files.load(pathlib.Path(__file__).resolve().parents[1] / "configs"
                             / "synthetic.py")
  config.algorithm.kind = kind
  validation.validate(config)   # the defaults are valid: the option is the cause
  config.algorithm[kind][option] = value
  with pytest.raises(configuration.ConfigError,
                     match=rf"^config\.algorithm\.{kind}\.{option}: {rule}$"):
    validation.validate(config)

"""FedProx, SCAFFOLD and FedNova against independent NumPy versions of the papers' pseudo-code.

The references below are written from the papers (FedProx: Li et al. 2020;
SCAFFOLD: Karimireddy et al. 2020, Algorithm 1 option II; FedNova: Wang et
al. 2020, Eq. 6 and the momentum appendix) in float64 NumPy; they call nothing
of ``fedjax_mm`` except ``round_lib.cohort_ids`` (to know which clients a round
sampled).

Setting: a quadratic task, per-example loss ``0.5 * a * ||w - b||^2`` with
``w`` in R^3. Local training is made deterministic for the references:

* full-batch clients (batch size >= the largest client, epochs mode): every
  local step is one gradient step on the mean over the client's rows, whatever
  their order; or
* "identical-row" clients: every row of client k holds the same ``(a_k, b_k)``,
  so any mini-batch's mean gradient is ``a_k (w - b_k)`` and clients differ
  only in how many steps they take, ``tau_k = min(E * ceil(n_k / B), S)``.

Speed: compiling a round dominates this file (the rounds themselves take
milliseconds), so the K = 6 tests share one population shape and settings and
the jitted round functions are cached by (algorithm, spec, client optimizer);
they are compiled at XLA optimization level 0, which halves compile time on
CPU and changes nothing the tests check.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import FAST, quadratic_task
from fedjax_mm import algorithms
from fedjax_mm import client as client_lib
from fedjax_mm.data import federated
from fedjax_mm.simulation import round as round_lib

DIM = 3
W0 = np.array([0.5, -0.3, 0.2])
# Reference vs simulator: the simulator runs in float32, the references in
# float64, over a few rounds of at most 8 steps; 1e-5 relative leaves ~10x room
# over float32 accumulation, and atol covers components that cross zero
# (parameters and control variates are O(1) here).
RTOL, ATOL = 1e-5, 1e-6


# --------------------------------------------------------------------------- setting

QTASK = quadratic_task(W0)


class Population:
  """Clients' rows on the host (for the references) and packed (for the simulator)."""

  def __init__(self, rows_a, rows_b):
    self.rows_a = [np.asarray(a, np.float64) for a in rows_a]
    self.rows_b = [np.asarray(b, np.float64).reshape(-1, DIM) for b in rows_b]
    self.sizes = np.array([len(a) for a in self.rows_a])
    self.num_clients = len(self.rows_a)
    owners = np.repeat(np.arange(self.num_clients), self.sizes)
    examples = {"a": np.concatenate(self.rows_a).astype(np.float32),
                "b": np.concatenate(self.rows_b).astype(np.float32)}
    self.data = jax.device_put(federated.pack(examples, owners, self.num_clients))
    self.weights = jnp.asarray(self.sizes, jnp.float32)

  def grad(self, k, w):
    """Mean gradient of client k's loss at ``w`` over all its rows."""
    a, b = self.rows_a[k], self.rows_b[k]
    return np.mean(a[:, None] * (w[None, :] - b), axis=0)

  def poisoned(self, k):
    """The same population with client k's curvatures set to NaN."""
    rows_a = [a.copy() for a in self.rows_a]
    rows_a[k][:] = np.nan
    return Population(rows_a, self.rows_b)


def identical_rows(sizes, a, b) -> Population:
  """Client k holds ``sizes[k]`` copies of the row ``(a[k], b[k])``."""
  return Population([np.full(n, a_k) for n, a_k in zip(sizes, a)],
                    [np.tile(b_k, (n, 1)) for n, b_k in zip(sizes, b)])


def epoch_steps(sizes, batch_size, num_epochs, num_steps):
  """``tau_k = min(E * ceil(n_k / B), S)``: steps of epochs mode (computed here, not imported)."""
  return np.array([min(num_epochs * math.ceil(n / batch_size), num_steps) for n in sizes])


def make_spec(num_clients, cohort, chunk, schedule):
  return round_lib.RoundSpec(num_clients=num_clients, cohort_size=cohort, chunk_size=chunk,
                             schedule=schedule)


def make_algorithm(name, param=0.0):
  if name == "fedavg":
    return algorithms.fedavg()
  if name == "fedprox":
    return algorithms.fedprox(param)
  if name == "scaffold":
    return algorithms.scaffold()
  if name == "feddyn":
    return algorithms.feddyn(param)
  return algorithms.fednova(client_momentum=param)


_ROUND_FNS = {}


def round_fn(algorithm, spec, client_lr, server_lr, client_opt="sgd"):
  """The jitted round for ``algorithm = (name, param)``, compiled once per setting."""
  key = (algorithm, spec, client_lr, server_lr, client_opt)
  if key not in _ROUND_FNS:
    factory = client_lib.make_client_optimizer(client_opt, momentum=0.9)
    _ROUND_FNS[key] = jax.jit(
        round_lib.build_round_fn(QTASK, spec, optax.sgd(server_lr), factory, client_lr,
                                 algorithm=make_algorithm(*algorithm)),
        **FAST)
  return _ROUND_FNS[key]


def simulate(pop, spec, algorithm, *, rounds, client_lr, server_lr, client_opt="sgd", seed=0,
             weights=None):
  """Runs ``rounds`` rounds of ``algorithm = (name, param)`` on ``pop``.

  Returns:
    (server state, population state, the cohort of every round, every
    round's metrics, the global ``w`` after every round).
  """
  fn = round_fn(algorithm, spec, client_lr, server_lr, client_opt)
  alg = make_algorithm(*algorithm)
  state = round_lib.init_server_state(QTASK, optax.sgd(server_lr), seed, algorithm=alg)
  population_state = round_lib.init_population(QTASK, spec.num_clients, algorithm=alg)
  weights = pop.weights if weights is None else weights
  cohorts, history, trajectory = [], [], []
  for _ in range(rounds):
    cohorts.append(np.asarray(round_lib.cohort_ids(state, spec, None)))
    state, population_state, metrics = fn(state, population_state, pop.data, weights, None)
    history.append(metrics)
    trajectory.append(np.asarray(state.trainable["w"]))
  return state, population_state, cohorts, history, trajectory


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- references

def local_sgd(grad, x, steps, lr, momentum=0.0, correction=None):
  """``steps`` heavy-ball steps ``m <- rho m + g; w <- w - lr m`` from ``x`` (rho = 0: SGD).

  ``correction(y)`` is added to the gradient (FedProx's proximal term,
  SCAFFOLD's ``c - c_k``). The momentum buffer starts at zero every round.
  """
  y, m = x.copy(), np.zeros_like(x)
  for _ in range(steps):
    g = grad(y) + (0.0 if correction is None else correction(y))
    m = momentum * m + g
    y = y - lr * m
  return y


def weighted(values, weights):
  p = np.asarray(weights, np.float64) / np.sum(weights)
  return np.einsum("k,kd->d", p, np.asarray(values))


def reference_fedprox(pop, cohorts, steps, lr, mu, server_lr):
  """FedProx: local ``w <- w - lr (grad f_k(w) + mu (w - w_global))``; ``w <- w - lr_g sum p_k Delta_k``."""
  x = W0.copy()
  for ids in cohorts:
    deltas = [x - local_sgd(lambda w, k=k: pop.grad(k, w), x, steps[k], lr,
                            correction=lambda w: mu * (w - x)) for k in ids]
    x = x - server_lr * weighted(deltas, pop.sizes[ids])
  return x


def reference_scaffold(pop, cohorts, steps, lr, server_lr, excluded=()):
  """SCAFFOLD, Algorithm 1 with option II; returns (x, c, c_k for every client).

  With aggregation weights w_k (here example counts) the server variate is
  the w-weighted mean of the c_k: ``c <- c + sum_S (w_k / W) Delta-c_k``,
  W the whole population's weight (uniform w gives the paper's 1/N).

  ``excluded`` clients are sampled but their upload is dropped (the
  simulator's NaN exclusion): they change neither x, c nor their own c_k.
  """
  x, c = W0.copy(), np.zeros(DIM)
  c_k = np.zeros((pop.num_clients, DIM))
  for ids in cohorts:
    ids = [k for k in ids if k not in excluded]
    dy, dc, total = [], [], np.sum(pop.sizes)
    for k in ids:
      y = local_sgd(lambda w, k=k: pop.grad(k, w), x, steps[k], lr,
                    correction=lambda w, k=k: c - c_k[k])
      c_plus = c_k[k] - c + (x - y) / (steps[k] * lr)          # option II
      dy.append(y - x)
      dc.append(pop.sizes[k] / total * (c_plus - c_k[k]))
      c_k[k] = c_plus
    x = x + server_lr * weighted(dy, pop.sizes[ids])            # Delta-y with example weights
    c = c + np.sum(dc, axis=0)                                   # w-weighted (1/N if uniform)
  return x, c, c_k


def fednova_norm(tau, rho):
  """``||a||_1`` with ``a_j = (1 - rho^j) / (1 - rho)``, j = 1..tau (a_j = 1 when rho = 0)."""
  return float(sum((1.0 - rho ** j) / (1.0 - rho) for j in range(1, tau + 1)))


def reference_fednova(pop, cohorts, steps, lr, server_lr, momentum=0.0):
  """FedNova: ``d_k = Delta_k / ||a_k||_1``; ``w <- w - lr_g tau_eff sum p_k d_k``."""
  x = W0.copy()
  for ids in cohorts:
    norms = np.array([fednova_norm(int(steps[k]), momentum) for k in ids])
    d = [(x - local_sgd(lambda w, k=k: pop.grad(k, w), x, steps[k], lr, momentum)) / norms[i]
         for i, k in enumerate(ids)]
    p = pop.sizes[ids] / pop.sizes[ids].sum()
    tau_eff = float(np.sum(p * norms))
    x = x - server_lr * tau_eff * weighted(d, pop.sizes[ids])
  return x


def reference_feddyn(pop, cohorts, steps, lr, alpha):
  """FedDyn, Algorithm 1 of Acar et al. (2021), in its own variables.

  Client k keeps ``g_k = grad L_k(theta_k)`` (0 at first) and minimizes
  ``L_k(t) - <g_k, t> + alpha/2 |t - theta|^2`` by local SGD steps; then
  ``g_k <- g_k - alpha (theta_k - theta)``; the server, over the m clients:
  ``h <- h - alpha/m sum_P (theta_k - theta)``, ``theta <- mean_P theta_k - h / alpha``.
  Returns (theta, h, g for every client).
  """
  m = pop.num_clients
  theta, h, g = W0.copy(), np.zeros(DIM), np.zeros((m, DIM))
  for ids in cohorts:
    local = {}
    for k in ids:
      local[k] = local_sgd(lambda w, k=k: pop.grad(k, w), theta, steps[k], lr,
                           correction=lambda w, k=k: -g[k] + alpha * (w - theta))
      g[k] = g[k] - alpha * (local[k] - theta)
    h = h - alpha / m * np.sum([local[k] - theta for k in ids], axis=0)
    theta = np.mean([local[k] for k in ids], axis=0) - h / alpha
  return theta, h, g


def reference_fedavg(pop, cohorts, steps, lr, server_lr, momentum=0.0):
  x = W0.copy()
  for ids in cohorts:
    deltas = [x - local_sgd(lambda w, k=k: pop.grad(k, w), x, steps[k], lr, momentum)
              for k in ids]
    x = x - server_lr * weighted(deltas, pop.sizes[ids])
  return x


# --------------------------------------------------------------------------- shared K = 6 setting

K = 6
SIZES = np.array([3, 7, 1, 5, 13, 4])        # 33 rows; client 4: 5 batches of 3 per epoch
CURVATURES = np.array([0.5, 1.2, 2.0, 0.8, 1.5, 0.3])
OPTIMA = np.random.default_rng(1).normal(size=(K, DIM)) * 1.5
# Batch 3, 2 epochs, 8 step slots: tau = [2, 6, 2, 4, 8 (10 capped), 4].
SCHEDULE = federated.LocalSchedule("epochs", num_steps=8, batch_size=3, num_epochs=2)
STEPS = epoch_steps(SIZES, 3, 2, 8)
LR, SERVER_LR = 0.1, 0.8
FULL = make_spec(K, cohort=K, chunk=0, schedule=SCHEDULE)
FULL_PADDED = make_spec(K, cohort=K, chunk=4, schedule=SCHEDULE)   # 2 chunks of 4: 2 padding
PARTIAL = make_spec(K, cohort=4, chunk=3, schedule=SCHEDULE)       # 2 chunks of 3: 2 padding


@pytest.fixture(scope="module")
def unequal_pop():
  return identical_rows(SIZES, CURVATURES, OPTIMA)


@pytest.fixture(scope="module")
def equal_steps_pop():
  """Same 33 rows and schedule, but every client takes 2 * ceil(n / 3) = 4 steps.

  Rows differ within a client (mini-batch order matters), sizes (so weights)
  differ across clients; the data order is the same for every algorithm.
  """
  rng = np.random.default_rng(7)
  sizes = [6, 6, 6, 5, 5, 5]
  assert set(epoch_steps(sizes, 3, 2, 8)) == {4} and sum(sizes) == SIZES.sum()
  return Population([rng.uniform(0.3, 2.0, n) for n in sizes],
                    [rng.normal(size=(n, DIM)) * 2 for n in sizes])


# --------------------------------------------------------------------------- 1. FedProx

def test_fedprox_matches_numpy_reference():
  rng = np.random.default_rng(0)
  sizes = [3, 7, 1, 5, 12, 4]
  # Heterogeneous rows within each client: full-batch steps (B = 12 >= n_k).
  pop = Population([rng.uniform(0.3, 2.0, n) for n in sizes],
                   [rng.normal(size=(n, DIM)) * 2 for n in sizes])
  epochs, lr, mu, server_lr = 3, 0.2, 0.1, 0.7
  spec = make_spec(K, cohort=4, chunk=0,
                   schedule=federated.LocalSchedule("epochs", epochs, 12, epochs))
  state, _, cohorts, history, _ = simulate(pop, spec, ("fedprox", mu), rounds=3,
                                           client_lr=lr, server_lr=server_lr)
  assert [int(m["client_steps"]) for m in history] == [4 * epochs] * 3
  steps = np.full(K, epochs)
  expected = reference_fedprox(pop, cohorts, steps, lr, mu, server_lr)
  assert_close(state.trainable["w"], expected)
  # The proximal term matters at this setting (else the test proves little).
  assert np.linalg.norm(reference_fedprox(pop, cohorts, steps, lr, 0.0, server_lr)
                        - expected) > 1e-3


# --------------------------------------------------------------------------- 2. SCAFFOLD

@pytest.mark.parametrize("spec", [FULL, PARTIAL], ids=["full", "partial"])
def test_scaffold_matches_numpy_reference(unequal_pop, spec):
  state, pop_state, cohorts, history, _ = simulate(
      unequal_pop, spec, ("scaffold",), rounds=4, client_lr=LR, server_lr=SERVER_LR, seed=0)
  for ids, m in zip(cohorts, history):
    assert int(m["client_steps"]) == int(STEPS[ids].sum())
  if spec is PARTIAL:
    # Clients sit out rounds; client 0 (the padding slots' id) both in and out.
    assert any(0 in ids for ids in cohorts) and any(0 not in ids for ids in cohorts)
  x, c, c_k = reference_scaffold(unequal_pop, cohorts, STEPS, LR, SERVER_LR)
  assert_close(state.trainable["w"], x)
  assert_close(state.algorithm["w"], c)
  assert_close(pop_state.client["w"], c_k)
  # The server variate is the weighted mean of all clients' variates
  # (never-sampled ones are 0), in the reference and in the simulator.
  p = unequal_pop.sizes / np.sum(unequal_pop.sizes)
  np.testing.assert_allclose(c, p @ c_k, rtol=1e-12, atol=1e-12)
  assert_close(state.algorithm["w"], p @ np.asarray(pop_state.client["w"], np.float64))
  never = sorted(set(range(K)) - set(np.concatenate(cohorts).tolist()))
  assert np.all(np.asarray(pop_state.client["w"])[never] == 0.0)


# --------------------------------------------------------------------------- FedDyn

@pytest.mark.parametrize("spec", [FULL, PARTIAL], ids=["full", "partial"])
def test_feddyn_matches_numpy_reference(unequal_pop, spec):
  """The paper's setting: uniform aggregation weights, server step 1 (theta <- mean - h/alpha)."""
  alpha = 0.3
  uniform = jnp.ones((K,), jnp.float32)
  state, pop_state, cohorts, _, _ = simulate(
      unequal_pop, spec, ("feddyn", alpha), rounds=4, client_lr=LR, server_lr=1.0, seed=2,
      weights=uniform)
  theta, h, g = reference_feddyn(unequal_pop, cohorts, STEPS, LR, alpha)
  assert_close(state.trainable["w"], theta)
  assert_close(state.algorithm["w"], h)
  assert_close(pop_state.client["w"], g)
  # The dynamic regularizer matters here: plain FedAvg lands elsewhere.
  fedavg = reference_fedavg(unequal_pop, cohorts, STEPS, LR, 1.0)
  assert np.linalg.norm(fedavg - theta) > 1e-2


# --------------------------------------------------------------------------- 3. FedNova

@pytest.mark.parametrize("client_opt,rho", [("sgd", 0.0), ("momentum", 0.9)])
def test_fednova_matches_numpy_reference(unequal_pop, client_opt, rho):
  state, _, cohorts, history, _ = simulate(
      unequal_pop, FULL, ("fednova", rho), rounds=3, client_lr=LR, server_lr=SERVER_LR,
      client_opt=client_opt, seed=3)
  expected = reference_fednova(unequal_pop, cohorts, STEPS, LR, SERVER_LR, rho)
  assert_close(state.trainable["w"], expected)
  # The reported tau_eff is sum_k p_k ||a_k||_1 over the cohort.
  p = SIZES / SIZES.sum()
  tau_eff = sum(p[k] * fednova_norm(int(STEPS[k]), rho) for k in range(K))
  for m in history:
    np.testing.assert_allclose(float(m["fednova/tau_eff"]), tau_eff, rtol=1e-6)
  # Unequal step counts: normalized averaging differs from plain averaging here.
  plain = reference_fedavg(unequal_pop, cohorts, STEPS, LR, SERVER_LR, rho)
  assert np.linalg.norm(plain - expected) > 1e-2


# --------------------------------------------------------------------------- 4. degenerate cases

@pytest.fixture(scope="module")
def fedavg_run(equal_steps_pop):
  return simulate(equal_steps_pop, FULL, ("fedavg",), rounds=3, client_lr=LR,
                  server_lr=SERVER_LR, seed=5)


def test_fedprox_with_zero_mu_is_fedavg_bit_exact(equal_steps_pop, fedavg_run):
  prox = simulate(equal_steps_pop, FULL, ("fedprox", 0.0), rounds=3, client_lr=LR,
                  server_lr=SERVER_LR, seed=5)
  # g + 0 * (w - w0) == g exactly, so every round is bit-identical.
  for prox_w, fedavg_w in zip(prox[4], fedavg_run[4]):
    np.testing.assert_array_equal(prox_w, fedavg_w)


def test_scaffold_first_round_with_zero_variates_is_fedavg(equal_steps_pop, fedavg_run):
  state, pop_state, _, _, _ = simulate(equal_steps_pop, FULL, ("scaffold",), rounds=1,
                                       client_lr=LR, server_lr=SERVER_LR, seed=5)
  np.testing.assert_allclose(state.trainable["w"], fedavg_run[4][0], rtol=1e-6, atol=1e-7)
  # ... while the variates it learned are not trivial.
  assert np.all(np.abs(np.asarray(pop_state.client["w"])).sum(axis=1) > 1e-3)


@pytest.mark.parametrize("client_opt,rho", [("sgd", 0.0), ("momentum", 0.9)])
def test_fednova_with_equal_steps_is_fedavg(equal_steps_pop, fedavg_run, client_opt, rho):
  if client_opt == "sgd":
    fedavg_w = fedavg_run[4]
  else:
    fedavg_w = simulate(equal_steps_pop, FULL, ("fedavg",), rounds=3, client_lr=LR,
                        server_lr=SERVER_LR, client_opt=client_opt, seed=5)[4]
  _, _, _, history, nova_w = simulate(equal_steps_pop, FULL, ("fednova", rho), rounds=3,
                                      client_lr=LR, server_lr=SERVER_LR,
                                      client_opt=client_opt, seed=5)
  np.testing.assert_allclose([float(m["fednova/tau_eff"]) for m in history],
                             fednova_norm(4, rho), rtol=1e-6)
  # Dividing by ||a||_1 and multiplying by tau_eff = ||a||_1 costs a few float32
  # ulps per round: O(1) parameters, so atol 1e-6 next to rtol 1e-6.
  for a, b in zip(nova_w, fedavg_w):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- 5. client drift

DRIFT_K = 10
DRIFT_A = np.linspace(0.2, 2.0, DRIFT_K)
_z = (DRIFT_A - DRIFT_A.mean()) / DRIFT_A.std()
# Optima correlated with curvature: the stiff clients' optima pull one way.
DRIFT_B = np.stack([1 + 2 * _z, -1 + 1.5 * _z, 0.5 - _z], axis=1)
# 50 rows in both drift tests (same shapes: one compilation per algorithm);
# B = 14 >= every client: 20 epochs = 20 full-batch steps each.
DRIFT_SPEC = make_spec(DRIFT_K, cohort=DRIFT_K, chunk=0,
                       schedule=federated.LocalSchedule("epochs", 20, 14, 20))
DRIFT_LR, DRIFT_ROUNDS = 0.3, 80


def test_scaffold_removes_client_drift_fedavg_does_not():
  """Equal sizes (5 rows each), 20 local full-batch steps at lr 0.3, 80 rounds.

  With many local steps each FedAvg client runs most of the way to its own
  optimum b_k (the flattest, a = 0.2, covers 1 - 0.94^20 = 71%; a >= 0.6
  clients > 99.9%), so FedAvg settles near the plain mean of the b_k instead
  of w* = sum n_k a_k b_k / sum n_k a_k: a NumPy run of these exact settings
  puts it at 0.61 ||w*|| from w*. SCAFFOLD's corrected steps remove that
  bias; the same NumPy run puts it at 3.7e-5 ||w*|| after 80 rounds (linear
  rate ~0.9 per round), so the bound 1e-3 ||w*|| has a ~25x margin and sits
  far above float32 rounding (~1e-7).
  """
  sizes = np.full(DRIFT_K, 5)
  pop = identical_rows(sizes, DRIFT_A, DRIFT_B)
  w_star = np.sum(sizes[:, None] * DRIFT_A[:, None] * DRIFT_B, 0) / np.sum(sizes * DRIFT_A)
  distance = {}
  for name in ("fedavg", "scaffold"):
    state = simulate(pop, DRIFT_SPEC, (name,), rounds=DRIFT_ROUNDS, client_lr=DRIFT_LR,
                     server_lr=1.0)[0]
    distance[name] = np.linalg.norm(np.asarray(state.trainable["w"], np.float64) - w_star)
  scale = np.linalg.norm(w_star)
  assert distance["scaffold"] < 1e-3 * scale, (distance, scale)
  assert distance["fedavg"] > 0.3 * scale, (distance, scale)


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_scaffold_fixed_point_is_the_optimum_of_the_weighted_objective(weighting):
  """With unequal sizes the two weightings target different optima.

  Example-count weights: ``w* = sum n_k a_k b_k / sum n_k a_k`` (what FedAvg's
  weights target); uniform weights: ``sum a_k b_k / sum a_k`` (the paper's
  (1/N) sum_k F_k). They are 0.67 ||w*|| apart here, so each run must land
  on its own (within 1e-3) and far from the other (> 0.3).
  """
  sizes = np.array([14, 8, 6, 5, 4, 4, 3, 3, 2, 1])
  pop = identical_rows(sizes, DRIFT_A, DRIFT_B)
  unweighted = np.sum(DRIFT_A[:, None] * DRIFT_B, 0) / np.sum(DRIFT_A)
  example_weighted = (np.sum(sizes[:, None] * DRIFT_A[:, None] * DRIFT_B, 0)
                      / np.sum(sizes * DRIFT_A))
  target, other = ((example_weighted, unweighted) if weighting == "num_examples"
                   else (unweighted, example_weighted))
  weights = None if weighting == "num_examples" else jnp.ones((len(sizes),), jnp.float32)
  state = simulate(pop, DRIFT_SPEC, ("scaffold",), rounds=DRIFT_ROUNDS, client_lr=DRIFT_LR,
                   server_lr=1.0, weights=weights)[0]
  w = np.asarray(state.trainable["w"], np.float64)
  scale = np.linalg.norm(target)
  assert np.linalg.norm(w - target) < 1e-3 * scale
  assert np.linalg.norm(w - other) > 0.3 * scale


# --------------------------------------------------------------------------- 6. padding, exclusion

def test_scaffold_padded_chunks_equal_one_chunk(unequal_pop):
  runs = {}
  for spec in (FULL, FULL_PADDED):
    runs[spec.chunk_size] = simulate(unequal_pop, spec, ("scaffold",), rounds=3, client_lr=LR,
                                     server_lr=SERVER_LR, seed=4)
  assert FULL_PADDED.chunking() == (2, 4)   # 8 slots for 6 clients: 2 padding (id 0)
  (s0, p0, c0, m0, _), (s4, p4, c4, m4, _) = runs[0], runs[4]
  for a, b in zip(c0, c4):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves((s0.trainable, s0.algorithm, p0)),
                  jax.tree.leaves((s4.trainable, s4.algorithm, p4))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  assert [int(m["num_counted_clients"]) for m in m4] == [K] * 3
  np.testing.assert_array_equal(p4.stats.participations, np.full(K, 3))
  x, c, c_k = reference_scaffold(unequal_pop, c4, STEPS, LR, SERVER_LR)
  assert_close(s4.trainable["w"], x)
  assert_close(s4.algorithm["w"], c)
  assert_close(p4.client["w"], c_k)


def test_scaffold_excludes_nonfinite_client_and_keeps_its_variate(unequal_pop):
  seed = 6
  first_cohort = np.asarray(round_lib.cohort_ids(
      round_lib.init_server_state(QTASK, optax.sgd(1.0), seed), PARTIAL, None))
  poisoned = int(first_cohort[1])
  bad = unequal_pop.poisoned(poisoned)
  state, pop_state, cohorts, history, _ = simulate(
      bad, PARTIAL, ("scaffold",), rounds=3, client_lr=LR, server_lr=SERVER_LR, seed=seed)
  np.testing.assert_array_equal(cohorts[0], first_cohort)
  expected_nonfinite = [int(poisoned in ids) for ids in cohorts]
  assert expected_nonfinite[0] == 1
  assert [int(m["num_nonfinite_clients"]) for m in history] == expected_nonfinite
  assert int(pop_state.stats.nonfinite_updates[poisoned]) == sum(expected_nonfinite)
  client_w = np.asarray(pop_state.client["w"])
  assert np.all(client_w[poisoned] == 0.0)
  assert np.all(np.isfinite(client_w)) and np.all(np.isfinite(state.algorithm["w"]))
  # Everything else is the reference with that client's uploads dropped.
  x, c, c_k = reference_scaffold(unequal_pop, cohorts, STEPS, LR, SERVER_LR,
                                 excluded={poisoned})
  assert_close(state.trainable["w"], x)
  assert_close(state.algorithm["w"], c)
  assert_close(client_w, c_k)

"""Tests of fedjax_mm.server.fedopt against independent float64 NumPy formulas.

The references below are written per round, the way each source writes them:
the paper's Algorithm 2 with the named options, Flower's strategies (with
Flower's sign: delta_flower = aggregated - current = -Δ, x + η·m/(√v+τ)), and
TFF's optimizers. optax's own optimizers serve as a reference for the "optax"
preset.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_mm import server
from fedjax_mm.server import fedopt

ROUNDS = 6
SHAPES = {"w": (3, 4), "b": (5,)}
RTOL, ATOL = 1e-5, 1e-6
RULES = ("fedadam", "fedyogi", "fedadagrad")
FACTORIES = {"fedadam": server.fedadam, "fedyogi": server.fedyogi,
             "fedadagrad": server.fedadagrad}

# Flower's default tau per strategy API: flwr.serverapp.strategy ("flower")
# and the legacy flwr.server.strategy ("flower_legacy").
FLOWER_TAU = {
    ("flower", "fedadam"): 1e-3, ("flower", "fedyogi"): 1e-3,
    ("flower", "fedadagrad"): 1e-3,
    ("flower_legacy", "fedadam"): 1e-9, ("flower_legacy", "fedyogi"): 1e-3,
    ("flower_legacy", "fedadagrad"): 1e-9,
}

# The presets, restated independently of the module: (b1, b2, tau,
# bias_correction, tau_placement, v0); v0 None means tau**2.
EXPECTED_PRESETS = {
    ("reddi", "fedadam"): (0.9, 0.99, 1e-3, "none", "uncorrected", None),
    ("reddi", "fedyogi"): (0.9, 0.99, 1e-3, "none", "uncorrected", None),
    ("reddi", "fedadagrad"): (0.9, None, 1e-3, "none", "uncorrected", None),
    ("flower", "fedadam"): (0.9, 0.99, 1e-3, "from_two", "uncorrected", 0.0),
    ("flower", "fedyogi"): (0.9, 0.99, 1e-3, "none", "uncorrected", 0.0),
    ("flower", "fedadagrad"): (0.0, None, 1e-3, "none", "uncorrected", 0.0),
    ("flower_legacy", "fedadam"): (0.9, 0.99, 1e-9, "from_two", "uncorrected",
                                   0.0),
    ("flower_legacy", "fedyogi"): (0.9, 0.99, 1e-3, "none", "uncorrected", 0.0),
    ("flower_legacy", "fedadagrad"): (0.0, None, 1e-9, "none", "uncorrected",
                                      0.0),
    ("optax", "fedadam"): (0.9, 0.999, 1e-8, "from_one", "corrected", 0.0),
    ("optax", "fedyogi"): (0.9, 0.999, 1e-3, "from_one", "corrected", 1e-6),
    ("optax", "fedadagrad"): (0.0, None, 1e-7, "from_one", "corrected", 0.1),
    ("tff", "fedadam"): (0.9, 0.999, 1e-7, "from_one", "uncorrected", 0.0),
    ("tff", "fedyogi"): (0.9, 0.999, 1e-3, "from_one", "uncorrected", 1e-6),
    ("tff", "fedadagrad"): (0.0, None, 1e-7, "from_one", "uncorrected", 0.1),
}


# ----------------------------------------------------------------- helpers


def _problem(seed: int = 0, rounds: int = ROUNDS, scale: float = 0.1):
  """Initial params and one random Δ per round, float64 NumPy."""
  rng = np.random.default_rng(seed)
  x0 = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  deltas = [{k: scale * rng.normal(size=s) for k, s in SHAPES.items()}
            for _ in range(rounds)]
  return x0, deltas


def _run(tx, x0, deltas, dtype=jnp.float32):
  """Applies tx round by round (jitted update); returns params per round."""
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), x0)
  state = tx.init(params)
  update = jax.jit(tx.update)
  history = []
  for delta in deltas:
    delta = jax.tree.map(lambda a: jnp.asarray(a, dtype), delta)
    updates, state = update(delta, state, params)
    params = optax.apply_updates(params, updates)
    history.append(params)
  return history, state


def _assert_history_close(got, want, rtol=RTOL, atol=ATOL):
  assert len(got) == len(want)
  for rnd, (g, w) in enumerate(zip(got, want), start=1):
    for k in SHAPES:
      np.testing.assert_allclose(np.asarray(g[k], np.float64), w[k], rtol=rtol,
                                 atol=atol, err_msg=f"round {rnd}, leaf {k}")


def _ref_algorithm2(rule, x0, deltas, eta, b1, b2, tau, bias_correction,
                    tau_placement, v0):
  """Reddi et al. Algorithm 2 (our sign: x - η·step) with the named options."""
  x = {k: v.copy() for k, v in x0.items()}
  m = {k: np.zeros_like(v) for k, v in x0.items()}
  v = {k: np.full_like(a, v0) for k, a in x0.items()}
  history = []
  for t, delta in enumerate(deltas, start=1):
    eta_t = eta(t - 1) if callable(eta) else eta
    for k in x:
      g = delta[k]
      m[k] = b1 * m[k] + (1 - b1) * g
      if rule == "fedadam":
        v[k] = b2 * v[k] + (1 - b2) * g * g
      elif rule == "fedyogi":
        v[k] = v[k] - (1 - b2) * g * g * np.sign(v[k] - g * g)
      else:
        v[k] = v[k] + g * g
      if bias_correction == "none":
        step = m[k] / (np.sqrt(v[k]) + tau)
      else:
        e = t if bias_correction == "from_one" else t + 1
        c1 = 1 - b1**e
        c2 = 1.0 if rule == "fedadagrad" else 1 - b2**e
        if tau_placement == "corrected":
          step = (m[k] / c1) / (np.sqrt(v[k] / c2) + tau)
        else:
          step = np.sqrt(c2) / c1 * m[k] / (np.sqrt(v[k]) + tau)
      x[k] = x[k] - eta_t * step
    history.append({k: a.copy() for k, a in x.items()})
  return history


def _to_list(tree):
  return [tree[k] for k in SHAPES]


def _from_list(arrays):
  return dict(zip(SHAPES, [np.array(a) for a in arrays]))


def _flower(rule, x0, deltas, eta, tau, beta_1=0.9, beta_2=0.99):
  """Flower's FedAdam/FedYogi/FedAdagrad aggregate_fit, as Flower writes it.

  Flower receives client weights; their weighted mean is current - Δ, so
  delta_t = aggregated - current = -Δ. FedAdagrad passes beta_1=0.0.
  """
  if rule == "fedadagrad":
    beta_1 = 0.0
  current_weights = _to_list(x0)
  m_t, v_t = None, None
  history = []
  for server_round, delta in enumerate(deltas, start=1):
    fedavg_weights_aggregate = [x - d for x, d in zip(current_weights,
                                                      _to_list(delta))]
    delta_t = [x - y for x, y in zip(fedavg_weights_aggregate, current_weights)]
    if not m_t:
      m_t = [np.zeros_like(x) for x in delta_t]
    m_t = [np.multiply(beta_1, x) + (1 - beta_1) * y
           for x, y in zip(m_t, delta_t)]
    if not v_t:
      v_t = [np.zeros_like(x) for x in delta_t]
    if rule == "fedadam":
      v_t = [beta_2 * x + (1 - beta_2) * np.multiply(y, y)
             for x, y in zip(v_t, delta_t)]
      eta_norm = (eta * np.sqrt(1 - np.power(beta_2, server_round + 1.0))
                  / (1 - np.power(beta_1, server_round + 1.0)))
    elif rule == "fedyogi":
      v_t = [x - (1.0 - beta_2) * np.multiply(y, y)
             * np.sign(x - np.multiply(y, y)) for x, y in zip(v_t, delta_t)]
      eta_norm = eta
    else:
      v_t = [x + np.multiply(y, y) for x, y in zip(v_t, delta_t)]
      eta_norm = eta
    current_weights = [x + eta_norm * y / (np.sqrt(z) + tau)
                       for x, y, z in zip(current_weights, m_t, v_t)]
    history.append(_from_list(current_weights))
  return history


def _flower_fedavgm(x0, deltas, server_learning_rate, server_momentum):
  """Flower's FedAvgM.aggregate_fit, as Flower writes it."""
  initial_weights = _to_list(x0)
  momentum_vector = None
  history = []
  for server_round, delta in enumerate(deltas, start=1):
    fedavg_result = [x - d for x, d in zip(initial_weights, _to_list(delta))]
    pseudo_gradient = [x - y for x, y in zip(initial_weights, fedavg_result)]
    if server_momentum > 0.0:
      if server_round > 1:
        momentum_vector = [server_momentum * x + y
                           for x, y in zip(momentum_vector, pseudo_gradient)]
      else:
        momentum_vector = pseudo_gradient
      pseudo_gradient = momentum_vector
    initial_weights = [x - server_learning_rate * y
                       for x, y in zip(initial_weights, pseudo_gradient)]
    history.append(_from_list(initial_weights))
  return history


def _tff(rule, x0, deltas, lr):
  """tff.learning.optimizers build_adam/build_yogi/build_adagrad defaults."""
  weights = _to_list(x0)
  beta_1, beta_2 = 0.9, 0.999
  epsilon = {"fedadam": 1e-7, "fedyogi": 1e-3, "fedadagrad": 1e-7}[rule]
  init_s = {"fedadam": 0.0, "fedyogi": 1e-6, "fedadagrad": 0.1}[rule]
  accumulator = [np.zeros_like(w) for w in weights]
  preconditioner = [np.full_like(w, init_s) for w in weights]
  history = []
  for step, delta in enumerate(deltas, start=1):
    gradients = _to_list(delta)
    if rule == "fedadagrad":
      preconditioner = [a + g**2 for a, g in zip(preconditioner, gradients)]
      weights = [w - lr * g / np.sqrt(a + epsilon)
                 for w, g, a in zip(weights, gradients, preconditioner)]
    else:
      accumulator = [a + (g - a) * (1 - beta_1)
                     for a, g in zip(accumulator, gradients)]
      if rule == "fedadam":
        preconditioner = [s + (g**2 - s) * (1 - beta_2)
                          for s, g in zip(preconditioner, gradients)]
      else:
        preconditioner = [s + (1 - beta_2) * np.sign(g**2 - s) * g**2
                          for s, g in zip(preconditioner, gradients)]
      normalized_lr = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
      weights = [w - normalized_lr * a / (np.sqrt(s) + epsilon)
                 for w, a, s in zip(weights, accumulator, preconditioner)]
    history.append(_from_list(weights))
  return history


# ----------------------------------------------------- presets and options


@pytest.mark.parametrize("convention", fedopt.CONVENTIONS)
@pytest.mark.parametrize("rule", RULES)
def test_every_preset_matches_algorithm2_reference(rule, convention):
  b1, b2, tau, bias, placement, v0 = EXPECTED_PRESETS[(convention, rule)]
  x0, deltas = _problem(seed=1)
  eta = 0.05
  got, _ = _run(FACTORIES[rule](eta, convention=convention), x0, deltas)
  want = _ref_algorithm2(rule, x0, deltas, eta, b1, b2, tau, bias, placement,
                         tau**2 if v0 is None else v0)
  _assert_history_close(got, want)


EXPLICIT_CASES = [
    ("fedadam", dict(convention="flower_legacy", b2=0.95,
                     bias_correction="from_one", tau_placement="corrected",
                     initial_v=1e-4),
     (0.9, 0.95, 1e-9, "from_one", "corrected", 1e-4)),
    ("fedadam", dict(convention="optax", tau=1e-3, tau_placement="uncorrected"),
     (0.9, 0.999, 1e-3, "from_one", "uncorrected", 0.0)),
    ("fedyogi", dict(convention="reddi", bias_correction="from_two",
                     tau_placement="uncorrected", tau=1e-2),
     (0.9, 0.99, 1e-2, "from_two", "uncorrected", 1e-4)),
    ("fedyogi", dict(convention="tff", bias_correction="none", initial_v=0.0,
                     b1=0.5),
     (0.5, 0.999, 1e-3, "none", "uncorrected", 0.0)),
    ("fedadagrad", dict(b1=0.5, bias_correction="from_one", initial_v=0.0,
                        tau=1e-2),
     (0.5, None, 1e-2, "from_one", "corrected", 0.0)),
    ("fedadagrad", dict(convention="flower", b1=0.9,
                        bias_correction="from_two"),
     (0.9, None, 1e-3, "from_two", "uncorrected", 0.0)),
]


@pytest.mark.parametrize("rule,kwargs,expected", EXPLICIT_CASES)
def test_explicit_options_override_the_preset(rule, kwargs, expected):
  b1, b2, tau, bias, placement, v0 = expected
  x0, deltas = _problem(seed=2)
  eta = optax.linear_schedule(0.1, 0.02, ROUNDS)
  got, _ = _run(FACTORIES[rule](eta, **kwargs), x0, deltas)
  want = _ref_algorithm2(rule, x0, deltas, eta, b1, b2, tau, bias, placement,
                         v0)
  _assert_history_close(got, want)


# --------------------------------------------- framework reproductions


@pytest.mark.parametrize("convention", ["flower", "flower_legacy"])
@pytest.mark.parametrize("rule,eta", [("fedadam", 0.1), ("fedyogi", 0.01),
                                      ("fedadagrad", 0.1)])
def test_flower_presets_reproduce_flower_strategies(rule, eta, convention):
  x0, deltas = _problem(seed=3)
  got, _ = _run(FACTORIES[rule](eta, convention=convention), x0, deltas)
  tau = FLOWER_TAU[(convention, rule)]
  _assert_history_close(got, _flower(rule, x0, deltas, eta, tau))


@pytest.mark.parametrize("rule", RULES)
def test_tff_preset_reproduces_tff_optimizers(rule):
  x0, deltas = _problem(seed=4)
  got, _ = _run(FACTORIES[rule](0.03, convention="tff"), x0, deltas)
  _assert_history_close(got, _tff(rule, x0, deltas, 0.03))


@pytest.mark.parametrize("rule,reference,rtol", [
    ("fedadam", optax.adam(0.03), RTOL),
    # optax.adagrad puts ε inside the root: Δ/√(v+ε), < 1e-6 apart at v0 = 0.1.
    ("fedadagrad", optax.adagrad(0.03, initial_accumulator_value=0.1,
                                 eps=1e-7), RTOL),
    # optax.yogi also starts m at 1e-6 (ours at 0): ~1e-4 relative early on.
    ("fedyogi", optax.yogi(0.03), 1e-3),
])
def test_optax_preset_reproduces_optax(rule, reference, rtol):
  x0, deltas = _problem(seed=5)
  got, _ = _run(FACTORIES[rule](0.03, convention="optax"), x0, deltas)
  want, _ = _run(reference, x0, deltas, dtype=jnp.float64
                 if jax.config.jax_enable_x64 else jnp.float32)
  want = [{k: np.asarray(p[k], np.float64) for k in SHAPES} for p in want]
  _assert_history_close(got, want, rtol=rtol)


@pytest.mark.parametrize("lr,momentum", [(1.0, 0.9), (0.5, 0.7), (0.3, 0.0),
                                         (1.0, 0.0)])
def test_fedavgm_reproduces_flower_fedavgm(lr, momentum):
  x0, deltas = _problem(seed=6)
  got, _ = _run(server.fedavgm(lr, momentum), x0, deltas)
  _assert_history_close(got, _flower_fedavgm(x0, deltas, lr, momentum))


def test_fedavgm_nesterov_formula():
  x0, deltas = _problem(seed=7)
  lr, mu = 0.5, 0.9
  got, _ = _run(server.fedavgm(lr, mu, nesterov=True), x0, deltas)
  x = {k: a.copy() for k, a in x0.items()}
  m = {k: np.zeros_like(a) for k, a in x0.items()}
  want = []
  for delta in deltas:
    for k in x:
      m[k] = mu * m[k] + delta[k]
      x[k] = x[k] - lr * (delta[k] + mu * m[k])
    want.append({k: a.copy() for k, a in x.items()})
  _assert_history_close(got, want)


# ------------------------------------------------------ hand-computed steps


def _first_step(tx, delta):
  params = {k: jnp.zeros(s, jnp.float32) for k, s in SHAPES.items()}
  updates, _ = tx.update(jax.tree.map(jnp.float32, delta), tx.init(params),
                         params)
  return {k: np.asarray(u, np.float64) for k, u in updates.items()}


def test_first_step_flower_fedadam_is_0_7425_eta_sign():
  _, deltas = _problem(seed=8)
  eta = 0.1
  step = _first_step(server.fedadam(eta, tau=0.0, initial_v=1e-30,
                                    convention="flower"), deltas[0])
  factor = np.sqrt(1 - 0.99**2) / (1 - 0.9**2)  # Flower's exponent is 2.
  assert abs(factor - 0.7425) < 1e-4
  for k in SHAPES:
    np.testing.assert_allclose(step[k], -factor * eta * np.sign(deltas[0][k]),
                               rtol=1e-5)


@pytest.mark.parametrize("convention", ["flower", "flower_legacy"])
@pytest.mark.parametrize("rule", RULES)
def test_flower_presets_tau_on_a_tiny_first_step(rule, convention):
  # |Δ| = 1e-6: √v ~ 1e-7 sits between the two APIs' τ (1e-9 and 1e-3), so the
  # first step is ~η·0.74 (τ = 1e-9) or ~1e-4·η (τ = 1e-3): swapping the
  # presets' τ fails by orders of magnitude.
  eta, b1, b2 = 0.1, 0.9, 0.99
  tau = FLOWER_TAU[(convention, rule)]
  d = {k: 1e-6 * np.where(np.arange(np.prod(s)).reshape(s) % 2, 1.0, -1.0)
       for k, s in SHAPES.items()}
  step = _first_step(FACTORIES[rule](eta, convention=convention), d)
  for k in SHAPES:
    g = d[k]
    if rule == "fedadam":  # eta_norm with exponent server_round + 1 = 2
      m, v = (1 - b1) * g, (1 - b2) * g * g
      want = eta * np.sqrt(1 - b2**2) / (1 - b1**2) * m / (np.sqrt(v) + tau)
    elif rule == "fedyogi":  # v = 0 - (1 - b2)·Δ²·sign(0 - Δ²)
      m, v = (1 - b1) * g, (1 - b2) * g * g
      want = eta * m / (np.sqrt(v) + tau)
    else:  # beta_1 = 0: m = Δ, v = Δ²
      want = eta * g / (np.sqrt(g * g) + tau)
    np.testing.assert_allclose(step[k], -want, rtol=1e-5)
  if tau == 1e-9 and rule != "fedyogi":
    assert np.abs(step["w"]).min() > 0.5 * eta
  else:
    assert np.abs(step["w"]).max() < 1e-2 * eta


def test_first_step_optax_convention_is_eta_sign():
  _, deltas = _problem(seed=8)
  eta = 0.1
  step = _first_step(server.fedadam(eta, convention="optax"), deltas[0])
  for k in SHAPES:
    np.testing.assert_allclose(step[k], -eta * np.sign(deltas[0][k]),
                               rtol=1e-5)


def test_first_step_reddi_default():
  _, deltas = _problem(seed=8)
  eta, tau = 0.1, 1e-3
  step = _first_step(server.fedadam(eta), deltas[0])
  for k in SHAPES:
    d = deltas[0][k]
    want = -eta * 0.1 * d / (np.sqrt(0.99 * tau**2 + 0.01 * d * d) + tau)
    np.testing.assert_allclose(step[k], want, rtol=1e-5)


def test_fedavg_unit_learning_rate_is_params_minus_delta():
  x0, deltas = _problem(seed=9)
  params = jax.tree.map(jnp.float32, x0)
  tx = server.fedavg()
  delta = jax.tree.map(jnp.float32, deltas[0])
  updates, _ = tx.update(delta, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  for k in SHAPES:
    np.testing.assert_array_equal(np.asarray(new[k]),
                                  np.asarray(params[k] - delta[k]))


def test_schedule_is_indexed_by_round():
  schedule = lambda count: 0.1 * (count + 1)  # 0.1, 0.2, 0.3, ...
  x0, deltas = _problem(seed=10, rounds=3)
  hist, _ = _run(server.fedavg(schedule), x0, deltas)
  for k in SHAPES:  # Third round: x3 - x2 = -schedule(2)·Δ3 = -0.3·Δ3.
    np.testing.assert_allclose(np.asarray(hist[2][k] - hist[1][k]),
                               -schedule(2) * deltas[2][k], rtol=1e-5,
                               atol=1e-7)
  # Adaptive rules: the reference applies eta(t - 1) on round t.
  for rule in RULES:
    tx = server.SERVER.make(rule, learning_rate=schedule)
    got, _ = _run(tx, x0, deltas)
    b1, b2, tau, bias, placement, _ = EXPECTED_PRESETS[("reddi", rule)]
    want = _ref_algorithm2(rule, x0, deltas, schedule, b1, b2, tau, bias,
                           placement, tau**2)
    _assert_history_close(got, want)


# ----------------------------------------------------------- jit and dtypes


FEDOPT = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


@pytest.mark.parametrize("name", FEDOPT)
def test_update_traces_once_and_keeps_dtypes(name):
  tx = server.SERVER.make(name, learning_rate=0.1)
  x0, deltas = _problem(seed=11, rounds=5)
  params = jax.tree.map(jnp.float32, x0)
  state = tx.init(params)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(delta, state, params):
    updates, state = tx.update(delta, state, params)
    return optax.apply_updates(params, updates), state

  structure = jax.tree.structure(state)
  dtypes = [x.dtype for x in jax.tree.leaves(state)]
  for delta in deltas:
    params, state = step(jax.tree.map(jnp.float32, delta), state, params)
    assert jax.tree.structure(state) == structure
    assert [x.dtype for x in jax.tree.leaves(state)] == dtypes
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
  chex.clear_trace_counter()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("convention", ["flower", "optax"])
def test_bfloat16_params_stay_bfloat16(rule, convention):
  x0, deltas = _problem(seed=12, rounds=3)
  hist, state = _run(FACTORIES[rule](0.1, convention=convention), x0, deltas,
                     dtype=jnp.bfloat16)
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(hist[-1]))
  assert all(np.isfinite(np.asarray(p, np.float32)).all()
             for p in jax.tree.leaves(hist[-1]))
  inner = state[0]
  assert inner.count.dtype == jnp.int32 and int(inner.count) == 3
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(inner.mu))


def test_state_types():
  params = {"w": jnp.zeros((2,), jnp.float32)}
  for rule, cls in [("fedadam", server.FedAdamState),
                    ("fedyogi", server.FedYogiState),
                    ("fedadagrad", server.FedAdagradState)]:
    state = FACTORIES[rule](0.1).init(params)[0]
    assert isinstance(state, cls)
    assert state.count.dtype == jnp.int32


# ------------------------------------------------------------- registry


@pytest.mark.parametrize("name", FEDOPT)
def test_registry_builds_what_the_factories_build(name):
  direct = {
      "fedavg": lambda: server.fedavg(0.2),
      "fedavgm": lambda: server.fedavgm(0.2, 0.5),
      "fedadam": lambda: server.fedadam(0.2, convention="flower"),
      "fedyogi": lambda: server.fedyogi(0.2, convention="flower"),
      "fedadagrad": lambda: server.fedadagrad(0.2, convention="flower"),
  }[name]()
  section = server.SERVER.section(name)
  if name == "fedavgm":
    section.fedavgm.momentum = 0.5
  elif name != "fedavg":
    section[name].convention = "flower"
  made = server.SERVER.build(section, "server", {"learning_rate": 0.2})
  x0, deltas = _problem(seed=13, rounds=3)
  got, _ = _run(made, x0, deltas)
  want, _ = _run(direct, x0, deltas)
  for g, w in zip(got, want):
    for k in SHAPES:
      np.testing.assert_array_equal(np.asarray(g[k]), np.asarray(w[k]))


def test_registry_names():
  assert server.SERVER.names == ("fedavg", "fedavgm", "fedadam",
                                 "fedyogi", "fedadagrad", "opm", "polar_momentum")


# ----------------------------------------------------------------- errors


def test_unknown_name_message():
  with pytest.raises(ValueError) as info:
    server.SERVER.make("sgd", learning_rate=1.0)
  assert str(info.value) == (
      "server optimizer: must be one of ('fedavg', 'fedavgm', 'fedadam', "
      "'fedyogi', 'fedadagrad', 'opm', 'polar_momentum'), got 'sgd'")


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kwargs,needles", [
    (dict(bias_correction="yes"),
     ["bias_correction", "'none'", "'from_one'", "'from_two'", "'yes'"]),
    (dict(tau_placement="inside"),
     ["tau_placement", "'corrected'", "'uncorrected'", "'inside'"]),
    (dict(convention="pytorch"),
     ["convention", "'reddi'", "'flower'", "'flower_legacy'", "'optax'",
      "'tff'", "'pytorch'"]),
    (dict(b1=1.0), ["b1", "[0, 1)", "1.0"]),
    (dict(b1=-0.1), ["b1", "[0, 1)", "-0.1"]),
    (dict(tau=-1e-3), ["tau", ">= 0", "-0.001"]),
    (dict(initial_v=-1.0), ["initial_v", ">= 0", "-1.0"]),
    (dict(tau=0.0, initial_v=0.0), ["tau", "initial_v"]),
])
def test_bad_options_raise_naming_option_and_allowed_values(rule, kwargs,
                                                             needles):
  with pytest.raises(ValueError) as info:
    FACTORIES[rule](0.1, **kwargs)
  for needle in needles:
    assert needle in str(info.value)
  with pytest.raises(ValueError):
    server.SERVER.make(rule, learning_rate=0.1, **kwargs)


def test_bad_b2_and_momentum_raise():
  with pytest.raises(ValueError,
                     match=r"^b2: must be a finite number in \[0, 1\), got 1\.0$"):
    server.fedadam(0.1, b2=1.0)
  with pytest.raises(ValueError,
                     match=r"^momentum: must be a finite number in \[0, 1\), got -0\.5$"):
    server.fedavgm(1.0, -0.5)
  # Options belong to their optimizer: FedAvg has no momentum, no convention.
  with pytest.raises(ValueError, match="^momentum: not an option of server optimizer 'fedavg'"):
    server.SERVER.make("fedavg", learning_rate=1.0, momentum=0.9)
  with pytest.raises(ValueError, match="^convention: not an option"):
    server.SERVER.make("fedavg", learning_rate=1.0, convention="x")

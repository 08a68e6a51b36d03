"""The interference positive control: the generator's ground truth by hand, the
projector task's metrics, every guard, and CRA beating a tuned FedAvg on it."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import build
from fedjax_mm import config_files, configuration, setups
from fedjax_mm.aggregation import cra
from fedjax_mm.data import federated, interference
from fedjax_mm.models import linear

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs/interference.py"


def _fed(**kw):
  args = dict(num_inputs=12, num_outputs=8, shared_rank=2, ratio=1.3, num_directions=4,
              client_size=40, test_fraction=0.25, noise=0.05)
  return interference.generate(3, 30, **{**args, **kw})


def test_generator_ground_truth():
  fed = _fed()
  w, b = fed.shared, fed.components
  assert w.shape == (12, 8) and b.shape == (30, 12, 8)
  np.testing.assert_array_equal(fed.train.sizes, 30)       # ceil(0.75 * 40)
  np.testing.assert_array_equal(fed.test.sizes, 10)
  assert fed.train.examples["x"].shape == (900, 12) and fed.train.examples["y"].shape == (900, 8)
  # W*: rank 2 with unit singular values; each B_k rank 1 with ‖B_k‖ = ratio ‖W*‖.
  # 1e-9: float64 SVD of O(1) entries, exact values 0 or 1.
  np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), [1, 1] + [0] * 6, atol=1e-9)
  sv = np.linalg.svd(b, compute_uv=False)
  np.testing.assert_allclose(sv[:, 0], 1.3 * np.sqrt(2), rtol=1e-9)
  np.testing.assert_allclose(sv[:, 1:], 0, atol=1e-9)
  np.testing.assert_allclose(np.linalg.norm(b, axis=(1, 2)) / np.linalg.norm(w), 1.3, rtol=1e-9)
  # Orthogonal to W* on both sides: no cross terms in the cohort's Gram.
  np.testing.assert_allclose(np.einsum("mn,kmo->kno", w, b), 0, atol=1e-9)
  np.testing.assert_allclose(np.einsum("mn,kon->kmo", w, b), 0, atol=1e-9)
  # At most 4 directions, and sign conflicts on them: B_k = -B_l for some pair.
  flat = b.reshape(30, -1) / np.linalg.norm(b.reshape(30, -1), axis=1, keepdims=True)
  cos = flat @ flat.T
  assert np.all(np.isclose(np.abs(cos), 1) | np.isclose(cos, 0, atol=1e-9))
  assert len({tuple(np.round(np.abs(f), 6)) for f in flat}) <= 4
  assert np.any(np.isclose(cos, -1))
  # Targets: a client's train rows are x (W* + B_k) + noise (its least-squares
  # fit is W* + B_k up to noise: 30 rows, 12 inputs, noise 0.05 give a standard
  # error ~0.05 / sqrt(18) = 0.012 per entry; 0.1 is over 8 of them);
  # test rows are exactly x W* (float32 storage: 1e-5).
  x, y = (np.asarray(fed.train.examples[k][:30], np.float64) for k in ("x", "y"))
  fit = np.linalg.lstsq(x, y, rcond=None)[0]
  np.testing.assert_allclose(fit, w + b[0], atol=0.1)
  xt, yt = (np.asarray(fed.test.examples[k], np.float64) for k in ("x", "y"))
  np.testing.assert_allclose(yt, xt @ w, atol=1e-5)


def test_cohort_gram_top_basis_is_the_shared_subspace():
  # The module's claim by hand: G = Σ_k (W* + B_k)(W* + B_k)ᵀ over 5 clients on
  # distinct directions, b² = 2 ratio² = 3.4 < C s² = 5: the top-2
  # eigenvectors span W*'s column space although each B_k is larger than
  # either shared direction.
  fed = _fed(num_directions=10, ratio=1.3)
  flat = fed.components.reshape(30, -1)
  cohort = []
  for k in range(30):   # the first 5 clients on distinct directions
    if all(abs(np.dot(flat[k], flat[j])) < 1e-9 for j in cohort):
      cohort.append(k)
  cohort = cohort[:5]
  x = fed.shared[None] + fed.components[cohort]
  values, vectors = np.linalg.eigh(np.einsum("cmn,cpn->mp", x, x))
  top = vectors[:, -2:]
  shared_span = np.linalg.svd(fed.shared)[0][:, :2]
  # 1e-9: the projector difference of two exact eigenspaces in float64.
  np.testing.assert_allclose(top @ top.T, shared_span @ shared_span.T, atol=1e-9)
  np.testing.assert_allclose(values[-2:], [5, 5], rtol=1e-9)
  np.testing.assert_allclose(values[-7:-2], 2 * 1.3**2, rtol=1e-9)


def test_projector_task_metrics_by_hand():
  task = linear.task(2, 2, target_energy=4.0)
  batch = {"x": jnp.array([[1.0, 0.0], [0.0, 2.0]]), "y": jnp.array([[1.0, 1.0], [0.0, 4.0]])}
  zero = task.init_trainable(None)
  assert zero["projector"]["kernel"].shape == (2, 2)
  m = task.per_example_metrics(zero, {}, batch)
  # Errors ‖y‖² = 2 and 16: loss = half of them, accuracy 1 - 2/4 and max(0, 1 - 16/4).
  np.testing.assert_allclose(m["loss"], [1.0, 8.0])
  np.testing.assert_allclose(m["accuracy"], [0.5, 0.0])
  exact = {"projector": {"kernel": jnp.array([[1.0, 1.0], [0.0, 2.0]])}}
  np.testing.assert_allclose(task.per_example_metrics(exact, {}, batch)["accuracy"], [1, 1])
  np.testing.assert_allclose(task.per_example_loss(exact, {}, batch), [0, 0])


@pytest.mark.parametrize("kw,message", [
    ({"shared_rank": 8}, r"shared_rank: must be an integer in \[1, min\(m, n\) - 1 = 7\]"),
    ({"shared_rank": 0}, "shared_rank: must be"),
    ({"num_directions": 11}, r"num_directions: must be an integer in \[1, m - shared_rank = 10\]"),
    ({"client_size": 1}, "client_size: must be an integer >= 2"),
    ({"test_fraction": 1.0}, r"test_fraction: must be a finite number in \(0, 1\)"),
])
def test_generator_guards(kw, message):
  with pytest.raises(ValueError, match=message):
    _fed(**kw)


def test_task_guard():
  with pytest.raises(ValueError, match="target_energy: must be a finite number > 0, got 0.0"):
    linear.task(2, 2, 0.0)


@pytest.mark.parametrize("field,value,message", [
    ("num_clients", 0, ">= 1"),
    ("num_inputs", 1, ">= 2"),
    ("num_outputs", 1, ">= 2"),
    ("shared_rank", 16, r"in \[1, min\(num_inputs, num_outputs\) - 1 = 15\]"),
    ("num_directions", 31, r"in \[1, num_inputs - shared_rank = 30\]"),
    ("ratio", -0.1, ">= 0"),
    ("client_size", 1, ">= 2"),
    ("noise", -1.0, ">= 0"),
])
def test_config_guards(field, value, message):
  config = config_files.load(CONFIG)
  config.data[field] = value
  with pytest.raises(configuration.ConfigError, match=rf"config\.data\.{field}: must be .*"
                     + message):
    setups.validate(config)


def test_config_variants_and_setup():
  fedavg, cra_config = config_files.load(CONFIG), config_files.load(CONFIG, "cra")
  assert fedavg.aggregation.kind == "mean" and fedavg.server.learning_rate == 0.2
  assert cra_config.aggregation.kind == "canonical"
  assert cra_config.aggregation.canonical.decompose == "weights"
  with pytest.raises(ValueError, match="variant must be one of"):
    config_files.load(CONFIG, "median")
  setups.validate(fedavg)
  setup = setups.build(fedavg)
  np.testing.assert_array_equal(setup.train.sizes, 256)
  np.testing.assert_array_equal(setup.test.sizes, 64)
  assert setup.info["target_energy"] == pytest.approx(2.0)   # ‖W*‖_F² = rank 2


# Server learning rates each method is tuned over (FedAvg's best at 10 rounds
# is 0.2, inside the grid: the noise floor vs convergence trade-off).
GRID = (0.2, 0.4, 0.7, 1.0)


def best_accuracies(seed: int, rounds: int = 10) -> dict[str, float]:
  """Best test accuracy over ``GRID`` after ``rounds`` rounds, FedAvg and CRA.

  The configured scenario (``configs/interference.py``) through the real
  round engine; the server learning rate is an injected hyperparameter so
  each method compiles once for the whole grid.
  """
  config = config_files.load(CONFIG)
  config.seed = seed
  setup = setups.build(config)
  train, test = jax.device_put(setup.train), jax.device_put(setup.test)
  schedule = federated.LocalSchedule("steps", config.local.num_steps, config.local.batch_size)
  tx = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)
  score = jax.jit(lambda t: setup.task.per_example_metrics(t, {}, test.examples)["accuracy"]
                  .mean())
  methods = {"fedavg": None,
             "cra": cra.cra(rank=2, reliability="uniform", decompose="weights")}
  best = {}
  for name, aggregator in methods.items():
    h = build(task=setup.task, num_clients=config.data.num_clients,
              cohort=config.clients_per_round, schedule=schedule, aggregator=aggregator,
              tx=tx, client_lr=config.client.learning_rate, seed=seed)
    accuracies = []
    for lr in GRID:
      state = h.state.replace(opt_state=h.state.opt_state._replace(
          hyperparams={"learning_rate": jnp.float32(lr)}))
      state, _, _ = h.run(train, rounds, state=state)
      accuracies.append(float(score(state.trainable)))
    best[name] = max(accuracies)
  return best


def test_cra_beats_tuned_fedavg_on_the_interference_control():
  # Measured with best_accuracies (seeds 0, 1, 2): FedAvg best 0.9763 /
  # 0.9668 / 0.9690, CRA best 0.9998 / 0.9998 / 0.9996: gaps 0.0235, 0.0330,
  # 0.0305 (and >= 0.0212 over seeds 0-5). The margin 0.01 is under half
  # the smallest gap, yet ~10 times CRA's own shortfall from 1: FedAvg's
  # floor (≈ η/(2-η) ratio²/C = 0.016 at η = 0.2, plus unconverged bias)
  # cannot close it at any grid point.
  best = best_accuracies(seed=0)
  assert best["cra"] >= best["fedavg"] + 0.01, best
  assert best["cra"] > 0.99, best

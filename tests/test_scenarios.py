"""One-pass cohort sampling and the configs/scenarios.py presets (no data is built)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm import client as client_lib
from fedjax_mm import config_files, configuration
from fedjax_mm.data import federated, synthetic
from fedjax_mm.models import logreg
from fedjax_mm.server import fedopt
from fedjax_mm.simulation import round as round_lib
from fedjax_mm.simulation import validation

ROOT = Path(__file__).parents[1]
SCENARIOS = ROOT / "configs" / "scenarios.py"


def _one_pass_spec(num_clients: int, cohort: int, chunk: int = 0) -> round_lib.RoundSpec:
  return round_lib.RoundSpec(num_clients=num_clients, cohort_size=cohort, chunk_size=chunk,
                             schedule=federated.LocalSchedule("epochs", 4, 2, 1),
                             sampling="one_pass")


@functools.partial(jax.jit, static_argnums=2)
def _ids_at_rounds(state, rounds: jax.Array, spec: round_lib.RoundSpec) -> jax.Array:
  # One compiled call per spec (eager cycle walking is slow); round t's ids
  # still see nothing but the state's root key and t.
  return jax.vmap(lambda t: round_lib.cohort_ids(state.replace(round=t), spec, None))(rounds)


def _cohorts(spec: round_lib.RoundSpec, rounds: int, seed: int = 0) -> np.ndarray:
  """``[rounds, C]`` ids, each round's from a fresh state (as a resume would)."""
  task = logreg.task(4, 2)
  state = round_lib.init_server_state(
      task, fedopt.fedavg(1.0), seed)
  return np.asarray(_ids_at_rounds(state, jnp.arange(rounds, dtype=jnp.int32), spec))


@pytest.mark.parametrize("num_clients, cohort", [(24, 4), (25, 4), (7, 7)])
def test_one_pass_cohorts_are_disjoint_and_cover_the_population(num_clients, cohort):
  rounds = num_clients // cohort
  ids = _cohorts(_one_pass_spec(num_clients, cohort), rounds)
  assert ids.shape == (rounds, cohort)
  assert len(np.unique(ids)) == rounds * cohort            # no client twice
  assert np.all((ids >= 0) & (ids < num_clients))
  if rounds * cohort == num_clients:
    np.testing.assert_array_equal(np.sort(ids.ravel()), np.arange(num_clients))
  # A keyed order, not the identity, and another seed draws another order.
  assert not np.array_equal(ids.ravel(), np.arange(rounds * cohort))
  assert not np.array_equal(ids, _cohorts(_one_pass_spec(num_clients, cohort), rounds, 1))


def test_one_pass_ids_depend_only_on_rng_and_round_not_chunking():
  base = _cohorts(_one_pass_spec(30, 6), 5)
  for chunk in (4, 6):
    np.testing.assert_array_equal(_cohorts(_one_pass_spec(30, 6, chunk), 5), base)


def test_one_pass_round_trains_every_client_exactly_once_in_padded_chunks():
  """Through the jitted round: after K / C rounds every client trained once, in
  the round ``cohort_ids`` names; chunks of 3 for cohorts of 4 pad the last."""
  k, cohort, rounds = 12, 4, 3
  task = logreg.task(5, 3)
  data = synthetic.generate(0, k, num_features=5, num_classes=3, size_mean=1.5,
                            min_size=3, max_size=12)
  tx = fedopt.fedavg(1.0)
  spec = _one_pass_spec(k, cohort, chunk=3)
  fn = jax.jit(round_lib.build_round_fn(task, spec, tx, client_lib.make_client_optimizer("sgd"),
                                        0.1))
  state = round_lib.init_server_state(task, tx, seed=2)
  pop = round_lib.init_population(task, k)
  for _ in range(rounds):
    state, pop, _ = fn(state, pop, data, data.sizes.astype(jnp.float32), None)
  np.testing.assert_array_equal(pop.stats.participations, np.ones(k))
  expected = np.zeros(k, int)
  for t, ids in enumerate(_cohorts(_one_pass_spec(k, cohort), rounds, seed=2)):
    expected[ids] = t     # unchunked ids: the chunking does not move a client
  np.testing.assert_array_equal(pop.stats.last_round, expected)


def test_one_pass_budget_over_the_population_is_refused():
  config = config_files.load(ROOT / "configs" / "synthetic.py")   # K = 30, C = 10
  config.sampling, config.num_rounds = "one_pass", 3
  validation.validate(config)                                  # 3 x 10 = 30: one pass
  config.num_rounds = 4
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.sampling: 'one_pass' .*num_rounds=4 x "
                           r"clients_per_round=10 = 40 > data\.num_clients=30"):
    validation.validate(config)


def _scenario(preset):
  return config_files.load(SCENARIOS, preset)


@pytest.mark.parametrize("preset", ["concept_0.1", "concept_0.5", "domain", "one_pass",
                                    "silos", "iid"])
def test_every_preset_validates_on_the_shared_round_budget(preset):
  config = _scenario(preset)
  validation.validate(config)
  assert config.num_rounds == 150
  # About the same training cost per round: clients x step slots x batch.
  cost = config.clients_per_round * config.local.num_steps * config.local.batch_size
  assert cost == 4_000


def test_default_and_concept_presets():
  assert _scenario(None).to_dict() == _scenario("concept_0.1").to_dict()
  for alpha in (0.1, 0.5):
    p = _scenario(f"concept_{alpha}").data.partition
    assert p.kind == "dirichlet" and p.alpha == alpha
  domain = _scenario("domain").data.partition
  assert domain.kind == "iid" and domain.domains_per_client == 1
  iid = _scenario("iid").data.partition
  assert iid.kind == "iid" and iid.domains_per_client == 0


def test_one_pass_preset_sees_no_example_twice():
  config = _scenario("one_pass")
  assert config.sampling == "one_pass"
  assert config.local.mode == "epochs" and config.local.num_epochs == 1
  assert config.num_rounds * config.clients_per_round <= config.data.num_clients
  assert config.data.partition.quantity == "power_law"
  assert config.data.num_clients >= 10_000 and config.data.examples_per_client <= 10
  # The budget is still a field, and the guard holds it to one pass.
  config.num_rounds += 1
  with pytest.raises(configuration.ConfigError, match=r"^config\.sampling: 'one_pass'"):
    validation.validate(config)


def test_silos_preset():
  config = _scenario("silos")
  p = config.data.partition
  assert config.data.num_clients == config.clients_per_round == 8
  assert p.style_mode == "per_client"
  assert round(p.missing_fraction * 8) == 3 and p.caption_rate <= 0.1
  assert config.local.num_steps == 20


def test_unknown_preset_lists_the_allowed_ones():
  with pytest.raises(ValueError, match=r"one of \('concept_0\.1', .*'iid'\), got 'cross'"):
    _scenario("cross")

"""Tests for fedjax_mm.configuration.validate and the configs/synthetic.py presets."""

from __future__ import annotations

import pathlib
import re

import ml_collections
import numpy as np
import pytest

from fedjax_mm import client as client_lib
from fedjax_mm import config_files, configuration
from fedjax_mm import schedules
from fedjax_mm.data import federated
from fedjax_mm.server import fedopt
from fedjax_mm.simulation import round as round_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _base(arg=None) -> ml_collections.ConfigDict:
  return config_files.load(REPO_ROOT / "configs" / "synthetic.py", arg)


def _set_all(*pairs):
  """A mutator that sets several ``(path, value)`` fields."""
  mutators = [_set(path, value) for path, value in pairs]

  def mutate(config):
    for m in mutators:
      m(config)
  return mutate


def _set(path: str, value, ignore_type: bool = False):
  """A mutator that sets ``config.<path> = value``."""
  def mutate(config):
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
      node = node[part]
    if ignore_type:
      with node.ignore_type():
        setattr(node, leaf, value)
    else:
      setattr(node, leaf, value)
  return mutate


def _tuple_text(values) -> str:
  return re.escape(str(tuple(values)))


# (id, mutator, field path named in the message, regex the message must match)
_BAD = [
    ("cohort_gt_population", _set("clients_per_round", 31), "clients_per_round",
     r"an integer in \[1, data\.num_clients=30\], got 31"),
    ("cohort_zero", _set("clients_per_round", 0), "clients_per_round",
     r"in \[1, data\.num_clients=30\], got 0"),
    ("client_lr_negative", _set("client.learning_rate", -0.1), "client.learning_rate",
     r"a number > 0, got -0\.1"),
    ("client_lr_nan", _set("client.learning_rate", float("nan")), "client.learning_rate",
     r"> 0, got nan"),
    ("server_lr_zero", _set("server.learning_rate", 0.0), "server.learning_rate",
     r"a number > 0, got 0\.0"),
    ("server_optimizer", _set("server.optimizer", "fedsgd"), "server.optimizer",
     r"must be one of " + _tuple_text(fedopt.SERVER_OPTIMIZERS) + r", got 'fedsgd'"),
    ("client_optimizer", _set("client.optimizer", "adamw"), "client.optimizer",
     r"must be one of " + _tuple_text(client_lib.CLIENT_OPTIMIZERS) + r", got 'adamw'"),
    ("local_mode", _set("local.mode", "rounds"), "local.mode",
     r"must be one of " + _tuple_text(federated.LOCAL_MODES) + r", got 'rounds'"),
    ("sampling", _set("sampling", "weighted"), "sampling",
     r"must be one of " + _tuple_text(round_lib.SAMPLINGS) + r", got 'weighted'"),
    ("server_convention", _set("server.convention", "pytorch"), "server.convention",
     r"must be one of " + _tuple_text(fedopt.CONVENTIONS) + r", got 'pytorch'"),
    ("bias_correction", _set("server.bias_correction", "always"), "server.bias_correction",
     r"must be one of " + _tuple_text(fedopt.BIAS_CORRECTIONS) + r", got 'always'"),
    ("tau_placement", _set("server.tau_placement", "middle"), "server.tau_placement",
     r"must be one of " + _tuple_text(fedopt.TAU_PLACEMENTS) + r", got 'middle'"),
    ("server_b1_one", _set("server.b1", 1.0), "server.b1",
     r"in \[0, 1\) or unset, got 1\.0"),
    ("server_b2_negative", _set("server.b2", -0.5), "server.b2",
     r"in \[0, 1\) or unset, got -0\.5"),
    ("server_tau_negative", _set("server.tau", -1e-3), "server.tau",
     r">= 0 or unset, got -0\.001"),
    ("server_initial_v_negative", _set("server.initial_v", -1.0), "server.initial_v",
     r">= 0 or unset, got -1\.0"),
    ("test_fraction_one", _set("data.test_fraction", 1.0), "data.test_fraction",
     r"a number in \(0, 1\), got 1\.0"),
    ("test_fraction_zero", _set("data.test_fraction", 0.0), "data.test_fraction",
     r"in \(0, 1\), got 0\.0"),
    ("batch_size_zero", _set("local.batch_size", 0), "local.batch_size",
     r"an integer >= 1, got 0"),
    ("num_steps_zero", _set("local.num_steps", 0), "local.num_steps", r">= 1, got 0"),
    ("num_epochs_zero", _set("local.num_epochs", 0), "local.num_epochs", r">= 1, got 0"),
    ("custom_weights_without_file", _set("aggregation.weighting", "custom"),
     "aggregation.custom_weights_path", r"must name an existing \.npy file.*got ''"),
    ("weighting_unknown", _set("aggregation.weighting", "median"), "aggregation.weighting",
     r"must be one of \('num_examples', 'uniform', 'custom'\), got 'median'"),
    ("lr_is_string", _set("client.learning_rate", "0.01", ignore_type=True),
     "client.learning_rate", r"must be a number > 0, got '0\.01'"),
    ("batch_size_is_float", _set("local.batch_size", 10.0, ignore_type=True),
     "local.batch_size", r"must be an integer >= 1, got 10\.0"),
    ("seed_is_bool", _set("seed", True), "seed", r"must be an integer >= 0, got True"),
    ("seed_negative", _set("seed", -1), "seed", r">= 0, got -1"),
    ("num_rounds_zero", _set("num_rounds", 0), "num_rounds", r"an integer >= 1, got 0"),
    ("dataset_unknown", _set("data.name", "mnist"), "data.name",
     r"must be one of \('synthetic', 'world', 'real'\), got 'mnist'"),
    ("num_classes_one", _set("data.num_classes", 1), "data.num_classes", r">= 2, got 1"),
    ("alpha_negative", _set("data.alpha", -1.0), "data.alpha", r">= 0, got -1\.0"),
    ("min_size_one", _set("data.min_size", 1), "data.min_size",
     r">= 2 \(a train and a test row\), got 1"),
    ("max_below_min", _set("data.max_size", 10), "data.max_size",
     r">= data\.min_size=50, got 10"),
    ("client_momentum_one", _set("client.momentum", 1.0), "client.momentum",
     r"in \[0, 1\), got 1\.0"),
    ("server_momentum_negative", _set("server.momentum", -0.1), "server.momentum",
     r"in \[0, 1\), got -0\.1"),
    ("client_schedule", _set("client.schedule", "linear"), "client.schedule",
     r"must be one of " + _tuple_text(schedules.SCHEDULES) + r", got 'linear'"),
    ("server_decay_rate_zero", _set("server.decay_rate", 0.0), "server.decay_rate",
     r"> 0, got 0\.0"),
    ("warmup_negative", _set("client.warmup_rounds", -1), "client.warmup_rounds",
     r">= 0, got -1"),
    ("chunk_negative", _set("chunk_size", -2), "chunk_size",
     r">= 0 \(0 = whole cohort\), got -2"),
    ("eval_batch_zero", _set("eval_batch_size", 0), "eval_batch_size", r">= 1, got 0"),
    ("max_to_keep_zero", _set("checkpoint.max_to_keep", 0), "checkpoint.max_to_keep",
     r">= 1, got 0"),
    ("algorithm_unknown", _set("algorithm.name", "fedsplit"), "algorithm.name",
     r"must be one of \('fedavg', 'fedprox', 'scaffold', 'fednova'\), got 'fedsplit'"),
    ("prox_mu_negative", _set("algorithm.prox_mu", -0.1), "algorithm.prox_mu",
     r">= 0, got -0\.1"),
    ("aggregator_unknown", _set("aggregation.kind", "bulyan"), "aggregation.kind",
     r"must be one of \('mean', 'median', 'trimmed_mean', 'krum', 'multi_krum', "
     r"'geometric_median', 'canonical', 'ties', 'knots'\), got 'bulyan'"),
    ("canonical_path", _set("aggregation.canonical_path", "disk"),
     "aggregation.canonical_path", r"must be one of \('auto', 'stacked', 'streamed'\)"),
    ("canonical_streamed_current", _set_all(("aggregation.kind", "canonical"),
                                            ("aggregation.canonical_path", "streamed")),
     "aggregation.canonical_path", "needs canonical_score_with='previous'"),
    ("opm_needs_canonical", _set("server.optimizer", "opm"), "server.optimizer",
     "needs aggregation.kind='canonical', got 'mean'"),
    ("opm_retraction", _set_all(("server.optimizer", "opm"), ("server.retraction", "cayley")),
     "server.retraction", r"must be one of \('qr', 'polar'\)"),
    ("merge_density", _set("aggregation.merge_density", 0.0), "aggregation.merge_density",
     r"in \(0, 1\], got 0\.0"),
    ("knots_merge", _set("aggregation.knots_merge", "dare"), "aggregation.knots_merge",
     r"must be one of \('ties', 'mean'\)"),
    ("canonical_rank_negative", _set("aggregation.canonical_rank", -1),
     "aggregation.canonical_rank", r">= 0 \(0 = full rank\), got -1"),
    ("canonical_reliability", _set("aggregation.canonical_reliability", "vote"),
     "aggregation.canonical_reliability",
     r"must be one of \('explained', 'agreement', 'inverse_variance', 'uniform'\), got 'vote'"),
    ("canonical_decompose", _set("aggregation.canonical_decompose", "projectors"),
     "aggregation.canonical_decompose", r"must be one of \('updates', 'weights'\)"),
    ("canonical_streamed_inverse_variance", _set_all(
        ("aggregation.kind", "canonical"), ("aggregation.canonical_path", "streamed"),
        ("aggregation.canonical_score_with", "previous"),
        ("aggregation.canonical_reliability", "inverse_variance")),
     "aggregation.canonical_path", r"canonical_reliability in \('explained', 'uniform'\)"),
    ("canonical_temperature_zero", _set("aggregation.canonical_temperature", 0.0),
     "aggregation.canonical_temperature", r"> 0, got 0\.0"),
    ("clip_negative", _set("aggregation.clip_norm", -1.0), "aggregation.clip_norm",
     r">= 0 \(0 = no clipping\), got -1\.0"),
    ("trim_half", _set("aggregation.trim_fraction", 0.5), "aggregation.trim_fraction",
     r"in \[0, 0\.5\), got 0\.5"),
    ("byzantine_ge_cohort", _set("aggregation.num_byzantine", 10),
     "aggregation.num_byzantine", r"in \[0, clients_per_round=10\), got 10"),
    ("selected_gt_cohort", _set("aggregation.num_selected", 11), "aggregation.num_selected",
     r"in \[0, clients_per_round=10\].*got 11"),
    ("gm_smoothing_zero", _set("aggregation.gm_smoothing", 0.0), "aggregation.gm_smoothing",
     r"> 0, got 0\.0"),
    ("gm_iters_zero", _set("aggregation.gm_max_iters", 0), "aggregation.gm_max_iters",
     r">= 1, got 0"),
    ("stack_cap_zero", _set("aggregation.max_stack_mib", 0.0), "aggregation.max_stack_mib",
     r"> 0, got 0\.0"),
]


@pytest.mark.parametrize("algorithm", ["fednova", "scaffold"])
def test_sgd_step_algorithms_reject_adaptive_clients(algorithm):
  config = _base()
  config.algorithm.name, config.client.optimizer = algorithm, "adam"
  with pytest.raises(configuration.ConfigError,
                     match=rf"^config\.client\.optimizer: .*{algorithm}.*\('sgd', 'momentum'\)"):
    configuration.validate(config)
  config.client.optimizer = "momentum"
  configuration.validate(config)


def test_size_sampling_with_example_weights_is_rejected():
  config = _base()
  config.sampling = "size"
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.sampling: .*counts a client's size twice"):
    configuration.validate(config)
  config.aggregation.weighting = "uniform"   # the unbiased pairing is accepted
  configuration.validate(config)


@pytest.mark.parametrize("mutate, path, rule", [c[1:] for c in _BAD],
                         ids=[c[0] for c in _BAD])
def test_bad_field_raises_config_error_naming_field_and_rule(mutate, path, rule):
  config = _base()
  configuration.validate(config)  # the base is valid, so the mutation is the cause
  mutate(config)
  with pytest.raises(configuration.ConfigError) as info:
    configuration.validate(config)
  message = str(info.value)
  assert message.startswith(f"config.{path}: "), message
  assert re.search(rule, message), message
  assert "\n" not in message
  assert isinstance(info.value, ValueError)


def test_bad_cases_cover_distinct_fields():
  assert len({c[2] for c in _BAD}) >= 30


def test_missing_field_is_named():
  config = _base()
  del config.eval_every
  with pytest.raises(configuration.ConfigError, match=r"^config\.eval_every: missing"):
    configuration.validate(config)
  config = _base()
  del config.server.tau
  with pytest.raises(configuration.ConfigError, match=r"^config\.server\.tau: missing"):
    configuration.validate(config)


def test_first_invalid_field_is_reported():
  config = _base()
  config.seed = -1
  config.server.optimizer = "nope"
  with pytest.raises(configuration.ConfigError, match=r"^config\.seed:"):
    configuration.validate(config)


@pytest.mark.parametrize("arg", [None, "", "30", "100", "1000", "10000", "100000"])
def test_presets_are_valid(arg):
  config = _base(arg)
  configuration.validate(config)
  expected_k = int(arg) if arg else 30
  assert config.data.num_clients == expected_k
  assert 1 <= config.clients_per_round <= expected_k
  # Placeholders are unset, and unset is allowed.
  for name in ("b1", "b2", "tau", "bias_correction", "tau_placement", "initial_v"):
    assert config.server[name] is None


@pytest.mark.parametrize("arg", ["7", "31", "0"])
def test_unknown_preset_raises(arg):
  with pytest.raises(ValueError, match=r"population preset must be one of \[30, 100, "
                     r"1000, 10000, 100000\], got '" + arg + "'"):
    _base(arg)


def test_non_integer_preset_raises():
  with pytest.raises(ValueError):
    _base("many")


def test_valid_variations_pass(tmp_path):
  config = _base()
  config.server.optimizer = "fedadam"
  config.server.b1 = 0.0
  config.server.b2 = 0.999
  config.server.tau = 1e-3
  config.server.bias_correction = "from_one"
  config.server.tau_placement = "corrected"
  config.server.initial_v = 0.0
  config.client.learning_rate = 3  # an int is a number
  config.local.mode = "steps"
  config.sampling = "size"
  config.aggregation.weighting = "uniform"   # size sampling needs unweighted means
  config.clients_per_round = 30    # the whole population
  config.data.test_fraction = 0.5
  config.data.alpha = 0.0
  config.data.max_size = config.data.min_size
  config.chunk_size = 0
  config.eval_every = 0
  config.client.schedule = "warmup_cosine"
  configuration.validate(config)
  weights = tmp_path / "w.npy"
  np.save(weights, np.ones(30, np.float32))
  config.aggregation.weighting = "custom"
  config.aggregation.custom_weights_path = str(weights)
  configuration.validate(config)
  config.aggregation.custom_weights_path = str(tmp_path / "missing.npy")
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.aggregation\.custom_weights_path: .*missing\.npy"):
    configuration.validate(config)


def test_every_server_optimizer_and_convention_accepted():
  for name in fedopt.SERVER_OPTIMIZERS:
    for convention in fedopt.CONVENTIONS:
      config = _base()
      config.server.optimizer = name
      config.server.convention = convention
      if name == "opm":   # moves the canonical aggregator's basis
        config.aggregation.kind = "canonical"
      configuration.validate(config)


def test_zero_tau_with_zero_initial_v_is_rejected_by_the_optimizer():
  # Precondition for the validation test below: the optimizer refuses this setting.
  with pytest.raises(ValueError, match="tau and initial_v must not both be 0"):
    fedopt.make_server_optimizer("fedadam", learning_rate=1.0, tau=0.0,
                                 convention="reddi")


def test_zero_tau_and_zero_initial_v_fail_validation():
  config = _base()
  config.server.optimizer = "fedadam"
  config.server.tau = 0.0
  with pytest.raises(configuration.ConfigError, match=r"config\.server: .*tau and initial_v"):
    configuration.validate(config)


def _fedma_config(name: str, preset: str):
  return config_files.load(REPO_ROOT / "configs" / f"{name}.py", preset)


@pytest.mark.parametrize("name", ["fedma", "fedma_demo"])
@pytest.mark.parametrize("preset", ["iid", "dirichlet", "domain", "style", "missing"])
def test_fedma_presets_validate(name, preset):
  config = _fedma_config(name, preset)
  configuration.validate(config)
  assert config.data.num_clients == 1000 and config.clients_per_round == 100
  assert config.server.optimizer == "fedavg"


def test_fedma_demo_is_the_base_config_sized_down():
  base, demo = _fedma_config("fedma", "dirichlet"), _fedma_config("fedma_demo", "dirichlet")
  assert demo.data.partition.kind == "dirichlet" and demo.data.partition.alpha == 0.1
  assert demo.num_rounds < base.num_rounds


def test_fedma_eval_clients_is_checked():
  config = _fedma_config("fedma", "iid")
  config.data.eval_clients = -1
  with pytest.raises(configuration.ConfigError, match=r"config\.data\.eval_clients"):
    configuration.validate(config)

"""Tests for the config validation (run, dataset and part fields) and the configs/ presets."""

from __future__ import annotations

import pathlib
import re

import ml_collections
import numpy as np
import pytest

from fedjax_mm import client as client_lib
from fedjax_mm import config_files, configuration
from fedjax_mm import schedules, server
from fedjax_mm.aggregation import AGGREGATORS, PREPROCESSORS
from fedjax_mm.algorithms import ALGORITHMS
from fedjax_mm.data import federated
from fedjax_mm.server import SERVER
from fedjax_mm.simulation import validation

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
_FEDADAM = ("server.kind", "fedadam")
_CANONICAL = ("aggregation.kind", "canonical")
_BAD = [
    ("cohort_gt_population", _set("clients_per_round", 31), "clients_per_round",
     r"an integer in \[1, data\.num_clients=30\], got 31"),
    ("cohort_zero", _set("clients_per_round", 0), "clients_per_round",
     r"in \[1, data\.num_clients=30\], got 0"),
    ("client_lr_negative", _set("client.learning_rate", -0.1), "client.learning_rate",
     r"a finite number > 0, got -0\.1"),
    ("client_lr_nan", _set("client.learning_rate", float("nan")), "client.learning_rate",
     r"> 0, got nan"),
    ("client_lr_inf", _set("client.learning_rate", float("inf")), "client.learning_rate",
     r"a finite number > 0, got inf"),
    ("server_lr_zero", _set("server.learning_rate", 0.0), "server.learning_rate",
     r"a finite number > 0, got 0\.0"),
    ("server_kind", _set("server.kind", "fedsgd"), "server.kind",
     r"must be one of " + _tuple_text(SERVER.names) + r", got 'fedsgd'"),
    ("client_optimizer", _set("client.optimizer", "adamw"), "client.optimizer",
     r"must be one of " + _tuple_text(client_lib.CLIENT_OPTIMIZERS) + r", got 'adamw'"),
    ("local_mode", _set("local.mode", "rounds"), "local.mode",
     r"must be one of " + _tuple_text(federated.LOCAL_MODES) + r", got 'rounds'"),
    ("sampling", _set("sampling", "weighted"), "sampling",
     r"must be one of " + _tuple_text(federated.SAMPLINGS) + r", got 'weighted'"),
    ("server_convention", _set_all(_FEDADAM, ("server.fedadam.convention", "pytorch")),
     "server.fedadam.convention",
     r"must be one of " + _tuple_text(server.CONVENTIONS) + r", got 'pytorch'"),
    ("bias_correction", _set_all(_FEDADAM, ("server.fedadam.bias_correction", "always")),
     "server.fedadam.bias_correction",
     r"must be one of " + _tuple_text(server.BIAS_CORRECTIONS) + r", got 'always'"),
    ("tau_placement", _set_all(("server.kind", "fedyogi"),
                               ("server.fedyogi.tau_placement", "middle")),
     "server.fedyogi.tau_placement",
     r"must be one of " + _tuple_text(server.TAU_PLACEMENTS) + r", got 'middle'"),
    ("server_b1_one", _set_all(_FEDADAM, ("server.fedadam.b1", 1.0)), "server.fedadam.b1",
     r"in \[0, 1\), got 1\.0"),
    ("server_b2_negative", _set_all(_FEDADAM, ("server.fedadam.b2", -0.5)),
     "server.fedadam.b2", r"in \[0, 1\), got -0\.5"),
    ("server_tau_negative", _set_all(("server.kind", "fedadagrad"),
                                     ("server.fedadagrad.tau", -1e-3)),
     "server.fedadagrad.tau", r">= 0, got -0\.001"),
    ("server_initial_v_negative", _set_all(_FEDADAM, ("server.fedadam.initial_v", -1.0)),
     "server.fedadam.initial_v", r">= 0, got -1\.0"),
    ("test_fraction_one", _set("data.test_fraction", 1.0), "data.test_fraction",
     r"a finite number in \(0, 1\), got 1\.0"),
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
     "client.learning_rate", r"must be a finite number > 0, got '0\.01'"),
    ("batch_size_is_float", _set("local.batch_size", 10.0, ignore_type=True),
     "local.batch_size", r"must be an integer >= 1, got 10\.0"),
    ("seed_is_bool", _set("seed", True), "seed", r"must be an integer in \[0, 2147483647\], "
     r"got True"),
    ("seed_negative", _set("seed", -1), "seed", r"in \[0, 2147483647\], got -1"),
    ("seed_twenty_digits", _set("seed", 12345678901234567890), "seed",
     r"in \[0, 2147483647\], got 12345678901234567890"),
    ("num_rounds_zero", _set("num_rounds", 0), "num_rounds", r"an integer >= 1, got 0"),
    ("dataset_unknown", _set("data.name", "mnist"), "data.name",
     r"must be one of \('synthetic', 'interference', 'world', 'real'\), got 'mnist'"),
    ("num_classes_one", _set("data.num_classes", 1), "data.num_classes", r">= 2, got 1"),
    ("alpha_negative", _set("data.alpha", -1.0), "data.alpha", r">= 0, got -1\.0"),
    ("min_size_one", _set("data.min_size", 1), "data.min_size",
     r">= 2 \(a train and a test row\), got 1"),
    ("max_below_min", _set("data.max_size", 10), "data.max_size",
     r">= data\.min_size=50, got 10"),
    ("size_mean_nan", _set("data.size_mean", float("nan")), "data.size_mean",
     r"must be a finite number .*got nan"),
    ("size_mean_inf", _set("data.size_mean", float("inf")), "data.size_mean",
     r"must be a finite number .*got inf"),
    ("client_momentum_one", _set("client.momentum", 1.0), "client.momentum",
     r"in \[0, 1\), got 1\.0"),
    ("server_momentum_negative", _set_all(("server.kind", "fedavgm"),
                                          ("server.fedavgm.momentum", -0.1)),
     "server.fedavgm.momentum", r"in \[0, 1\), got -0\.1"),
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
    ("algorithm_unknown", _set("algorithm.kind", "fedsplit"), "algorithm.kind",
     r"must be one of " + _tuple_text(ALGORITHMS.names) + r", got 'fedsplit'"),
    ("prox_mu_negative", _set_all(("algorithm.kind", "fedprox"), ("algorithm.fedprox.mu", -0.1)),
     "algorithm.fedprox.mu", r">= 0, got -0\.1"),
    ("prox_mu_inf", _set_all(("algorithm.kind", "fedprox"),
                             ("algorithm.fedprox.mu", float("inf"))),
     "algorithm.fedprox.mu", r">= 0, got inf"),
    ("feddyn_alpha_zero", _set_all(("algorithm.kind", "feddyn"), ("algorithm.feddyn.alpha", 0.)),
     "algorithm.feddyn.alpha", r"> 0, got 0\.0"),
    ("aggregator_unknown", _set("aggregation.kind", "zeno"), "aggregation.kind",
     r"must be one of " + _tuple_text(AGGREGATORS.names) + r", got 'zeno'"),
    ("canonical_path", _set_all(_CANONICAL, ("aggregation.canonical.path", "disk")),
     "aggregation.canonical.path", r"must be one of \('auto', 'stacked', 'streamed'\)"),
    ("canonical_streamed_current", _set_all(_CANONICAL,
                                            ("aggregation.canonical.path", "streamed")),
     "aggregation.canonical.path", "needs score_with='previous'"),
    ("opm_needs_canonical", _set("server.kind", "opm"), "aggregation.kind",
     "'opm' moves the canonical aggregator's shared basis, so it needs 'canonical', "
     "got 'mean'"),
    ("opm_retraction", _set_all(("server.kind", "opm"), _CANONICAL,
                                ("server.opm.retraction", "cayley")),
     "server.opm.retraction", r"must be one of \('qr', 'polar'\)"),
    ("opm_procrustes", lambda c: (_set_all(("server.kind", "opm"), _CANONICAL)(c),
                                  _set("server.opm.procrustes", 1, ignore_type=True)(c)),
     "server.opm.procrustes",
     r"must be True or False, got 1"),
    ("merge_density", _set_all(("aggregation.kind", "ties"), ("aggregation.ties.density", 0.)),
     "aggregation.ties.density", r"in \(0, 1\], got 0\.0"),
    ("knots_merge", _set_all(("aggregation.kind", "knots"), ("aggregation.knots.merge", "dare")),
     "aggregation.knots.merge", r"must be one of \('ties', 'mean'\)"),
    ("canonical_rank_negative", _set_all(_CANONICAL, ("aggregation.canonical.rank", -1)),
     "aggregation.canonical.rank", r">= 0 \(0 = full rank\), got -1"),
    ("canonical_reliability", _set_all(_CANONICAL,
                                       ("aggregation.canonical.reliability", "vote")),
     "aggregation.canonical.reliability",
     r"must be one of \('explained', 'agreement', 'inverse_variance', 'uniform'\), got 'vote'"),
    ("canonical_decompose", _set_all(_CANONICAL,
                                     ("aggregation.canonical.decompose", "projectors")),
     "aggregation.canonical.decompose", r"must be one of \('updates', 'weights'\)"),
    ("canonical_streamed_inverse_variance", _set_all(
        _CANONICAL, ("aggregation.canonical.path", "streamed"),
        ("aggregation.canonical.score_with", "previous"),
        ("aggregation.canonical.reliability", "inverse_variance")),
     "aggregation.canonical.path", r"reliability in \('explained', 'uniform'\)"),
    ("canonical_temperature_zero", _set_all(_CANONICAL,
                                            ("aggregation.canonical.temperature", 0.0)),
     "aggregation.canonical.temperature", r"> 0.*, got 0\.0"),
    ("preprocess_unknown", _set("preprocess.chain", "l2_clip,gzip"), "preprocess.chain",
     r"must be one of " + _tuple_text(PREPROCESSORS.names) + r", got 'gzip'"),
    ("clip_negative", _set_all(("preprocess.chain", "l2_clip"),
                               ("preprocess.l2_clip.max_norm", -1.0)),
     "preprocess.l2_clip.max_norm", r"> 0, got -1\.0"),
    ("trim_half", _set_all(("aggregation.kind", "trimmed_mean"),
                           ("aggregation.trimmed_mean.trim_fraction", 0.5)),
     "aggregation.trimmed_mean.trim_fraction", r"in \[0, 0\.5\), got 0\.5"),
    ("krum_bound", _set_all(("aggregation.kind", "krum"), ("aggregation.krum.num_byzantine", 4)),
     "aggregation.krum.num_byzantine",
     r"in \[0, \(C - 3\) // 2 = 3\] \(Krum needs C >= 2 f \+ 3; cohort size C = 10\), "
     r"got 4"),
    ("selected_gt_cohort", _set_all(("aggregation.kind", "multi_krum"),
                                    ("aggregation.multi_krum.num_selected", 11)),
     "aggregation.multi_krum.num_selected", r"in \[0, clients_per_round = 10\].*got 11"),
    ("gm_smoothing_zero", _set_all(("aggregation.kind", "geometric_median"),
                                   ("aggregation.geometric_median.smoothing", 0.0)),
     "aggregation.geometric_median.smoothing", r"> 0.*, got 0\.0"),
    ("gm_iters_zero", _set_all(("aggregation.kind", "geometric_median"),
                               ("aggregation.geometric_median.max_iters", 0)),
     "aggregation.geometric_median.max_iters", r">= 1, got 0"),
    ("stack_cap_zero", _set("aggregation.max_stack_mib", 0.0), "aggregation.max_stack_mib",
     r"in \(0, 2\*\*40\], got 0\.0"),
    ("stack_cap_inf", _set("aggregation.max_stack_mib", float("inf")),
     "aggregation.max_stack_mib", r"in \(0, 2\*\*40\], got inf"),
]


@pytest.mark.parametrize("algorithm", ["fednova", "scaffold"])
def test_sgd_step_algorithms_reject_adaptive_clients(algorithm):
  config = _base()
  config.algorithm.kind, config.client.optimizer = algorithm, "adam"
  with pytest.raises(configuration.ConfigError,
                     match=rf"^config\.client\.optimizer: .*{algorithm}.*\('sgd', 'momentum'\)"):
    validation.validate(config)
  config.client.optimizer = "momentum"
  validation.validate(config)


def test_opm_and_cra_must_decompose_the_same_side():
  config = _base()
  config.server.kind, config.aggregation.kind = "opm", "canonical"
  config.aggregation.canonical.rank = 8
  config.aggregation.canonical.side = "output"
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.server\.opm\.side: must equal "
                           r"config\.aggregation\.canonical\.side \('output'.*got 'input'"):
    validation.validate(config)
  config.server.opm.side = "output"        # matching sides are accepted
  validation.validate(config)
  config.server.kind = "fedavgm"            # no OPM: CRA's side alone is fine
  validation.validate(config)


def test_size_sampling_with_example_weights_is_rejected():
  config = _base()
  config.sampling = "size"
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.sampling: .*counts a client's size twice"):
    validation.validate(config)
  config.aggregation.weighting = "uniform"   # the unbiased pairing is accepted
  validation.validate(config)


@pytest.mark.parametrize("mutate, path, rule", [c[1:] for c in _BAD],
                         ids=[c[0] for c in _BAD])
def test_bad_field_raises_config_error_naming_field_and_rule(mutate, path, rule):
  config = _base()
  validation.validate(config)  # the base is valid, so the mutation is the cause
  mutate(config)
  with pytest.raises(configuration.ConfigError) as info:
    validation.validate(config)
  message = str(info.value)
  assert message.startswith(f"config.{path}: "), message
  assert re.search(rule, message), message
  assert "\n" not in message
  assert isinstance(info.value, ValueError)


def test_bad_cases_cover_distinct_fields():
  assert len({c[2] for c in _BAD}) >= 55


def test_missing_field_is_named_and_a_missing_part_option_takes_its_default():
  config = _base()
  del config.eval_every
  with pytest.raises(configuration.ConfigError, match=r"^config\.eval_every: missing"):
    validation.validate(config)
  config = _base()
  del config.server.kind
  with pytest.raises(configuration.ConfigError, match=r"^config\.server\.kind: missing"):
    validation.validate(config)
  # A part's option absent from its sub-section (a config written before the
  # option existed) is the factory's default.
  config = _base()
  config.server.kind = "fedadam"
  del config.server.fedadam.tau
  validation.validate(config)


def test_unknown_part_option_is_named():
  config = _base()
  config.aggregation.kind = "krum"
  config.aggregation.krum.num_byzantin = 1
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.aggregation\.krum\.num_byzantin: not an option of "
                     r"'krum'; its options are \('num_byzantine',\)$"):
    validation.validate(config)


def test_moved_field_is_named_with_its_new_path():
  config = _base()
  config.server.optimizer = "fedadam"   # an old config.json's field
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.server\.optimizer: moved to config\.server\.kind$"):
    validation.validate(config)


def test_every_moved_field_names_a_real_new_path():
  """Each MOVED target exists in today's configs (with <a|b> spelled out)."""
  config = _base()
  for old, new in configuration.MOVED.items():
    target = new.split(" ")[0]
    if target.startswith("preprocess.chain="):
      target = "preprocess.l2_clip.max_norm"
    head, _, rest = target.partition("<")
    options = rest.split(">")[0].split("|") if rest else [""]
    tail = rest.split(">")[1] if rest else ""
    for option in options:
      path = f"{head}{option}{tail}"
      configuration.get(config, path)   # raises if the new path does not exist


def test_first_invalid_field_is_reported():
  config = _base()
  config.seed = -1
  config.server.kind = "nope"
  with pytest.raises(configuration.ConfigError, match=r"^config\.seed:"):
    validation.validate(config)


@pytest.mark.parametrize("arg", [None, "", "30", "100", "1000", "10000", "100000"])
def test_presets_are_valid(arg):
  config = _base(arg)
  validation.validate(config)
  expected_k = int(arg) if arg else 30
  assert config.data.num_clients == expected_k
  assert 1 <= config.clients_per_round <= expected_k
  # Placeholders are unset, and unset is allowed.
  for name in ("b1", "b2", "tau", "bias_correction", "tau_placement", "initial_v"):
    assert config.server.fedadam[name] is None


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
  config.server.kind = "fedadam"
  config.server.fedadam.b1 = 0.0
  config.server.fedadam.b2 = 0.999
  config.server.fedadam.tau = 1e-3
  config.server.fedadam.bias_correction = "from_one"
  config.server.fedadam.tau_placement = "corrected"
  config.server.fedadam.initial_v = 0.0
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
  validation.validate(config)
  weights = tmp_path / "w.npy"
  np.save(weights, np.ones(30, np.float32))
  config.aggregation.weighting = "custom"
  config.aggregation.custom_weights_path = str(weights)
  validation.validate(config)
  config.aggregation.custom_weights_path = str(tmp_path / "missing.npy")
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.aggregation\.custom_weights_path: .*missing\.npy"):
    validation.validate(config)


@pytest.mark.parametrize("kind", SERVER.names)
def test_every_server_optimizer_and_convention_accepted(kind):
  for convention in server.CONVENTIONS:
    config = _base()
    config.server.kind = kind
    if "convention" in config.server[kind]:
      config.server[kind].convention = convention
    if kind == "opm":   # moves the canonical aggregator's basis
      config.aggregation.kind = "canonical"
    validation.validate(config)


def test_zero_tau_with_zero_initial_v_is_rejected_by_the_optimizer():
  # Precondition for the validation test below: the optimizer refuses this setting.
  with pytest.raises(ValueError, match="tau and initial_v must not both be 0"):
    server.fedadam(1.0, tau=0.0, convention="reddi")


def test_zero_tau_and_zero_initial_v_fail_validation():
  config = _base()
  config.server.kind = "fedadam"
  config.server.fedadam.tau = 0.0
  with pytest.raises(configuration.ConfigError,
                     match=r"^config\.server\.fedadam: .*tau and initial_v"):
    validation.validate(config)


def _fedma_config(name: str, preset: str):
  return config_files.load(REPO_ROOT / "configs" / f"{name}.py", preset)


@pytest.mark.parametrize("name", ["fedma", "fedma_demo"])
@pytest.mark.parametrize("preset", ["iid", "dirichlet", "domain", "style", "missing"])
def test_fedma_presets_validate(name, preset):
  config = _fedma_config(name, preset)
  validation.validate(config)
  assert config.data.num_clients == 1000 and config.clients_per_round == 100
  assert config.server.kind == "fedavg"


def test_fedma_demo_is_the_base_config_sized_down():
  base, demo = _fedma_config("fedma", "dirichlet"), _fedma_config("fedma_demo", "dirichlet")
  assert demo.data.partition.kind == "dirichlet" and demo.data.partition.alpha == 0.1
  assert demo.num_rounds < base.num_rounds


def test_fedma_eval_clients_is_checked():
  config = _fedma_config("fedma", "iid")
  config.data.eval_clients = -1
  with pytest.raises(configuration.ConfigError, match=r"config\.data\.eval_clients"):
    validation.validate(config)

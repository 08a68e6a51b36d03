"""Run-level config: the shared sections, their checks, and the fields that moved.

This module knows the run (rounds, cohort, local schedule, optimizers'
learning rates, checkpoints) and nothing of any part or dataset: each part's
options come from its registry (``Registry.section``) and are checked by
building the part; each dataset validates its own fields
(``fedjax_mm.setups``). ``fedjax_mm.simulation.validation.validate`` runs
all three before any compute. Every error is one line naming the field, the
rule and the value.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import ml_collections

from fedjax_mm import checks
from fedjax_mm import client as client_lib
from fedjax_mm import schedules
from fedjax_mm.aggregation import AGGREGATORS, PREPROCESSORS, WRAPPERS
from fedjax_mm.algorithms import ALGORITHMS
from fedjax_mm.data import federated
from fedjax_mm.server import SERVER

WEIGHTINGS = ("num_examples", "uniform", "custom")
# A seed is folded into a PRNG key as a 32-bit word pair; keep it a plain int.
MAX_SEED = 2**31 - 1

# Fields of configs written before the part registries (issue 16), and where
# each went. The CLI and a resume of an old workdir name the new path.
MOVED: Mapping[str, str] = {
    "algorithm.name": "algorithm.kind",
    "algorithm.prox_mu": "algorithm.fedprox.mu",
    "server.optimizer": "server.kind",
    "server.momentum": "server.fedavgm.momentum (or server.opm.momentum)",
    "server.convention": "server.<fedadam|fedyogi|fedadagrad>.convention",
    "server.b1": "server.<fedadam|fedyogi|fedadagrad>.b1",
    "server.b2": "server.<fedadam|fedyogi>.b2",
    "server.tau": "server.<fedadam|fedyogi|fedadagrad>.tau",
    "server.bias_correction": "server.<fedadam|fedyogi|fedadagrad>.bias_correction",
    "server.tau_placement": "server.<fedadam|fedyogi|fedadagrad>.tau_placement",
    "server.initial_v": "server.<fedadam|fedyogi|fedadagrad>.initial_v",
    "server.opm_variant": "server.opm.variant",
    "server.basis_momentum": "server.opm.basis_momentum",
    "server.basis_step": "server.opm.basis_step",
    "server.retraction": "server.opm.retraction",
    "server.procrustes": "server.opm.procrustes",
    "server.opm_residual": "server.opm.residual",
    "aggregation.clip_norm": "preprocess.chain=l2_clip with preprocess.l2_clip.max_norm",
    "aggregation.trim_fraction": "aggregation.trimmed_mean.trim_fraction",
    "aggregation.num_byzantine": "aggregation.<krum|multi_krum>.num_byzantine",
    "aggregation.num_selected": "aggregation.multi_krum.num_selected",
    "aggregation.gm_smoothing": "aggregation.geometric_median.smoothing",
    "aggregation.gm_max_iters": "aggregation.geometric_median.max_iters",
    "aggregation.canonical_rank": "aggregation.canonical.rank",
    "aggregation.canonical_reliability": "aggregation.canonical.reliability",
    "aggregation.canonical_temperature": "aggregation.canonical.temperature",
    "aggregation.canonical_fusion": "aggregation.canonical.fusion",
    "aggregation.canonical_score_with": "aggregation.canonical.score_with",
    "aggregation.canonical_decompose": "aggregation.canonical.decompose",
    "aggregation.canonical_path": "aggregation.canonical.path",
    "aggregation.merge_density": "aggregation.<ties|knots>.density",
    "aggregation.merge_scale": "aggregation.<ties|knots>.scale",
    "aggregation.knots_merge": "aggregation.knots.merge",
    "aggregation.knots_rank": "aggregation.knots.rank",
}


class ConfigError(ValueError):
  """An invalid config field; the message names the field and allowed values."""


def moved_message(path: str) -> str | None:
  """``"config.<old>: moved to config.<new>"`` for a field that moved, else None."""
  path = path.removeprefix("config.")
  if path in MOVED:
    return f"config.{path}: moved to config.{MOVED[path]}"
  return None


def _schedule_fields(section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  section.schedule = "constant"   # constant | cosine | warmup_cosine | exponential | step
  section.warmup_rounds = 0
  section.decay_rate = 0.1
  section.step_rounds = 0
  section.end_value = 0.0
  return section


def client_section(optimizer: str, learning_rate: float) -> ml_collections.ConfigDict:
  """Default ``config.client``: optimizer, learning rate and its schedule."""
  return _schedule_fields(ml_collections.ConfigDict(dict(
      optimizer=optimizer, learning_rate=learning_rate, momentum=0.9)))


def server_section(kind: str = "fedavg", learning_rate: float = 1.0
                   ) -> ml_collections.ConfigDict:
  """Default ``config.server``: ``kind``, the learning rate and schedule, each optimizer's options."""
  section = SERVER.section(kind, learning_rate=learning_rate)
  return _schedule_fields(section)


def algorithm_section(kind: str = "fedavg") -> ml_collections.ConfigDict:
  """Default ``config.algorithm``: ``kind`` and each algorithm's options."""
  return ALGORITHMS.section(kind)


def aggregation_section(kind: str = "mean") -> ml_collections.ConfigDict:
  """Default ``config.aggregation``: weights, the stack cap, ``kind`` and each aggregator's options."""
  return AGGREGATORS.section(
      kind,
      weighting="num_examples",   # num_examples | uniform | custom
      custom_weights_path="",     # .npy of [num_clients] weights, for custom
      max_stack_mib=4096.0)       # whole-cohort aggregators: cap on the stacked updates


def preprocess_section(chain: str = "") -> ml_collections.ConfigDict:
  """Default ``config.preprocess``: the ordered ``chain`` (comma-separated names) and options."""
  return PREPROCESSORS.section(None, chain=chain)


def wrap_section(chain: str = "") -> ml_collections.ConfigDict:
  """Default ``config.wrap``: wrappers around the aggregator, innermost first, and options."""
  return WRAPPERS.section(None, chain=chain)


_CHAINS = {"preprocess": PREPROCESSORS, "wrap": WRAPPERS}


def chain_names(chain: str, section: str = "preprocess") -> tuple[str, ...]:
  """``"l2_clip, foo"`` -> ``("l2_clip", "foo")`` (empty string: no step).

  Args:
    chain: the value of ``config.<section>.chain``.
    section: ``"preprocess"`` or ``"wrap"`` (whose registry names are allowed).
  """
  names_allowed = _CHAINS[section].names
  if not isinstance(chain, str):
    raise ConfigError(f"config.{section}.chain: must be a comma-separated string of "
                      f"{names_allowed}, got {chain!r}")
  names = tuple(n.strip() for n in chain.split(",") if n.strip())
  for name in names:
    _check_one_of(f"{section}.chain", name, names_allowed)
  if len(set(names)) != len(names):
    raise ConfigError(f"config.{section}.chain: each name at most once (one options "
                      f"section each), got {chain!r}")
  return names


def get(config: ml_collections.ConfigDict, path: str) -> Any:
  """``config.<path>``, or :class:`ConfigError` naming the missing (or moved) field."""
  node = config
  for part in path.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, Mapping)) or part not in node:
      raise ConfigError(f"config.{path}: missing (required field)")
    node = node[part]
  return node


def _check_one_of(path: str, value: Any, allowed: Sequence) -> None:
  try:
    checks.one_of(f"config.{path}", value, allowed)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def one_of(config: ml_collections.ConfigDict, path: str, allowed: Sequence) -> None:
  """``config.<path>`` is one of ``allowed``."""
  _check_one_of(path, get(config, path), allowed)


def number(config: ml_collections.ConfigDict, path: str, ok: Callable[[float], bool],
           rule: str, integer: bool = False) -> None:
  """``config.<path>`` is a finite number (an integer with ``integer``) satisfying ``ok``."""
  try:
    checks.number(f"config.{path}", get(config, path), ok, rule, integer=integer)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _schedule(config, prefix: str) -> None:
  one_of(config, f"{prefix}.schedule", schedules.SCHEDULES)
  number(config, f"{prefix}.learning_rate", lambda v: v > 0, "> 0")
  number(config, f"{prefix}.warmup_rounds", lambda v: v >= 0, ">= 0", integer=True)
  number(config, f"{prefix}.decay_rate", lambda v: v > 0, "> 0")
  number(config, f"{prefix}.step_rounds", lambda v: v >= 0, ">= 0", integer=True)
  number(config, f"{prefix}.end_value", lambda v: v >= 0, ">= 0")


def _check_moved(config: ml_collections.ConfigDict) -> None:
  for old in MOVED:
    section, _, field = old.partition(".")
    node = config.get(section)
    if isinstance(node, ml_collections.ConfigDict) and field in node and \
        not isinstance(node[field], ml_collections.ConfigDict):
      raise ConfigError(moved_message(old))


def validate_run(config: ml_collections.ConfigDict) -> None:
  """Checks the run-level fields; raises :class:`ConfigError` on the first invalid one."""
  _check_moved(config)
  number(config, "seed", lambda v: 0 <= v <= MAX_SEED, f"in [0, {MAX_SEED}]", integer=True)
  number(config, "num_rounds", lambda v: v >= 1, ">= 1", integer=True)
  number(config, "data.num_clients", lambda v: v >= 1, ">= 1", integer=True)
  k = get(config, "data.num_clients")
  number(config, "clients_per_round", lambda v: 1 <= v <= k,
         f"in [1, data.num_clients={k}]", integer=True)
  number(config, "chunk_size", lambda v: v >= 0, ">= 0 (0 = whole cohort)", integer=True)
  number(config, "num_devices", lambda v: v >= 0, ">= 0 (0 = all devices)", integer=True)
  one_of(config, "sampling", federated.SAMPLINGS)
  rounds, c = config.num_rounds, config.clients_per_round
  if config.sampling == "one_pass" and rounds * c > k:
    # Past K // C rounds the one-pass order would wrap and revisit clients,
    # silently breaking the regime the run asked for.
    raise ConfigError(
        f"config.sampling: 'one_pass' visits each client at most once, so num_rounds x "
        f"clients_per_round must be <= data.num_clients; got num_rounds={rounds} x "
        f"clients_per_round={c} = {rounds * c} > data.num_clients={k} (use num_rounds <= "
        f"{k // c}, fewer clients_per_round or more clients)")
  number(config, "data.test_fraction", lambda v: 0 < v < 1, "in (0, 1)")
  one_of(config, "local.mode", federated.LOCAL_MODES)
  number(config, "local.num_steps", lambda v: v >= 1, ">= 1", integer=True)
  number(config, "local.batch_size", lambda v: v >= 1, ">= 1", integer=True)
  number(config, "local.num_epochs", lambda v: v >= 1, ">= 1", integer=True)
  one_of(config, "client.optimizer", client_lib.CLIENT_OPTIMIZERS)
  number(config, "client.momentum", lambda v: 0 <= v < 1, "in [0, 1)")
  _schedule(config, "client")
  _schedule(config, "server")
  one_of(config, "aggregation.weighting", WEIGHTINGS)
  if config.aggregation.weighting == "custom":
    path = get(config, "aggregation.custom_weights_path")
    if not isinstance(path, str) or not os.path.isfile(path):
      raise ConfigError("config.aggregation.custom_weights_path: must name an existing .npy "
                        f"file of [data.num_clients] weights, got {path!r}")
  if config.sampling == "size" and config.aggregation.weighting == "num_examples":
    raise ConfigError(
        "config.sampling: 'size' with aggregation.weighting='num_examples' counts a "
        "client's size twice (drawn in proportion to it, then weighted by it); use "
        "aggregation.weighting='uniform' with size sampling, or sampling='uniform'")
  number(config, "aggregation.max_stack_mib", lambda v: 0 < v <= 2**40, "in (0, 2**40]")
  chain_names(get(config, "preprocess.chain"))
  chain_names(get(config, "wrap.chain"), "wrap")
  number(config, "eval_every", lambda v: v >= 0, ">= 0 (0 = only at the end)", integer=True)
  number(config, "eval_batch_size", lambda v: v >= 1, ">= 1", integer=True)
  number(config, "checkpoint.every", lambda v: v >= 0, ">= 0 (0 = only at the end)",
         integer=True)
  number(config, "checkpoint.max_to_keep", lambda v: v >= 1, ">= 1", integer=True)


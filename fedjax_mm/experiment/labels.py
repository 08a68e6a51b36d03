"""A run's label read off its config through the registries' ``Part.label``.

Tables and plots name a run by what actually ran (the final config,
``--override`` included), not by the method name asked for. Every part's
name comes from its registry, so a newly registered part is labelled
without an edit here.
"""

from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from fedjax_mm import configuration
from fedjax_mm.aggregation import AGGREGATORS, PREPROCESSORS, WRAPPERS
from fedjax_mm.algorithms import ALGORITHMS
from fedjax_mm.server import SERVER

# The parts a label leaves unsaid: the defaults every run starts from.
_PLAIN_SERVER, _PLAIN_AGGREGATOR, _PLAIN_CLIENT = "fedavg", "mean", "adam"
# Algorithms whose options are part of their name even at the default
# (FedProx is "FedProx (mu=...)" in the literature).
_ALWAYS_SHOW_OPTIONS = ("fedprox",)


def _value(value: Any) -> str:
  return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) \
      else str(value)


def _options(options: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}={_value(v)}" for k, v in options.items())


def method_label(config: ml_collections.ConfigDict) -> str:
  """What ran, e.g. "FedAvg", "FedAdam", "SCAFFOLD (SGD clients)", "FedProx (mu=0.01), Krum".

  The algorithm (with its options when one differs from its default), the
  server optimizer unless FedAvg's, the client optimizer unless Adam, the
  aggregator unless the mean, then each preprocessing step with its options,
  then each wrapper of the aggregator with its options.
  """
  algorithm = config.algorithm.kind
  part = ALGORITHMS[algorithm]
  name = part.label
  if config.server.kind != _PLAIN_SERVER:
    server = SERVER[config.server.kind].label
    name = server if algorithm == "fedavg" else f"{name} + {server} server"
  options = dict(config.algorithm[algorithm]) if algorithm in config.algorithm else {}
  defaults = part.options()
  if algorithm in _ALWAYS_SHOW_OPTIONS or any(v != defaults[k] for k, v in options.items()):
    if options:
      name += f" ({_options(options)})"
  if config.client.optimizer != _PLAIN_CLIENT:
    optimizer = config.client.optimizer
    name += f" ({optimizer.upper() if optimizer == 'sgd' else optimizer} clients)"
  if config.aggregation.kind != _PLAIN_AGGREGATOR:
    name += f", {AGGREGATORS[config.aggregation.kind].label}"
  for step in configuration.chain_names(config.preprocess.chain):
    values = ", ".join(_value(v) for v in config.preprocess[step].values())
    name += f", {PREPROCESSORS[step].label} {values}".rstrip()
  for step in configuration.chain_names(config.wrap.chain, "wrap"):
    name += f", {WRAPPERS[step].label} ({_options(config.wrap[step])})"
  return name


def data_label(config: ml_collections.ConfigDict, preset: str) -> str:
  """The clients' split for a table row: "IID", "Dirichlet(0.1)", else the preset's name."""
  if preset == "iid":
    return "IID"
  if preset == "dirichlet":
    return f"Dirichlet({config.data.partition.alpha:g})"
  return preset

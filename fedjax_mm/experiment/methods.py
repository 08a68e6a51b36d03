"""The named methods of the experiments: config overrides and the learning rate each is tuned on.

One table for every experiment: the demos (``experiments/fedma_demo.py``,
``experiments/fedma_real_demo.py``) run any entry by name (``--methods``),
and the comparison (``experiments/compare_algorithms.py``) runs the entries
of :data:`COMPARED` and :data:`ABLATIONS`. A method is a set of config
overrides on top of the experiment's config (then the command line's
``--override`` on top of that), plus the one learning rate it is tuned on:
its own primary knob (the client's for methods that change client work or
aggregation, the server's for server optimizers). The comparison tunes it on
:data:`GRID` times its default.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, NamedTuple, Sequence

import ml_collections

GRID = (1 / 3, 1.0, 3.0)   # the same relative grid for every method


class Method(NamedTuple):
  """One named method.

  Attributes:
    overrides: ``{config path: value}`` applied to the experiment's config.
    tuned: the config path of the learning rate the method is tuned on.
    label: the comparison's name for it (the demos label a row by what ran,
      :func:`fedjax_mm.experiment.labels.method_label`).
  """

  overrides: Mapping[str, Any]
  tuned: str
  label: str

  def default_lr(self, base_config: ml_collections.ConfigDict) -> float:
    """The tuned learning rate's value: this method's override, else the base config's."""
    if self.tuned in self.overrides:
      return float(self.overrides[self.tuned])
    node = base_config
    for part in self.tuned.split("."):
      node = node[part]
    return float(node)


# SCAFFOLD (option II) and FedNova are defined for SGD steps: SGD clients,
# and their FedAvg twin with the same clients.
_SGD = {"client.optimizer": "sgd", "client.learning_rate": 0.5}
_FEDADAM = {"server.kind": "fedadam", "server.learning_rate": 0.01}
# Fed-CMP's defaults (a reconstruction; see aggregation/canonical.py and
# server/orthogonal_momentum.py): CRA at rank 32 of 128 scored by explained
# energy, and OPM with FedAvgM's momentum and server learning rate.
_FEDCMP = {"aggregation.kind": "canonical", "aggregation.canonical.rank": 32,
           "aggregation.canonical.reliability": "explained",
           "aggregation.canonical.temperature": 0.1,
           "server.kind": "opm", "server.opm.momentum": 0.9, "server.learning_rate": 1.0}
_CLIENT_LR, _SERVER_LR = "client.learning_rate", "server.learning_rate"

METHODS: Mapping[str, Method] = {
    "fedavg": Method({}, _CLIENT_LR, "FedAvg"),
    "fedavgm": Method({"server.kind": "fedavgm", "server.learning_rate": 1.0,
                       "server.fedavgm.momentum": 0.9}, _SERVER_LR, "FedAvgM"),
    "fedadam": Method(_FEDADAM, _SERVER_LR, "FedAdam"),
    "fedyogi": Method({**_FEDADAM, "server.kind": "fedyogi"}, _SERVER_LR, "FedYogi"),
    "fedprox": Method({"algorithm.kind": "fedprox", "algorithm.fedprox.mu": 0.01}, _CLIENT_LR,
                      "FedProx (mu 0.01)"),
    "fedavg_sgd": Method(_SGD, _CLIENT_LR, "FedAvg (SGD clients)"),
    "scaffold": Method({"algorithm.kind": "scaffold", **_SGD}, _CLIENT_LR,
                       "SCAFFOLD (SGD clients)"),
    "fednova": Method({"algorithm.kind": "fednova", **_SGD}, _CLIENT_LR,
                      "FedNova (SGD clients)"),
    "ties": Method({"aggregation.kind": "ties"}, "aggregation.ties.scale",
                   "TIES-merging (density 0.2)"),
    "knots": Method({"aggregation.kind": "knots"}, "aggregation.knots.scale", "KnOTS-TIES"),
    "fedcmp": Method(_FEDCMP, _SERVER_LR, "Fed-CMP (CRA + OPM)"),
    # Ablations of Fed-CMP (the comparison runs them at Fed-CMP's chosen rate).
    "cra_only": Method({**_FEDCMP, "server.kind": "fedavg"}, _SERVER_LR,
                       "CRA only (FedAvg server)"),
    "opm_only": Method({**_FEDCMP, "aggregation.canonical.fusion": "mean"}, _SERVER_LR,
                       "OPM only (mean fusion)"),
    "fedcmp_agreement": Method({**_FEDCMP, "aggregation.canonical.reliability": "agreement"},
                               _SERVER_LR, "Fed-CMP, agreement reliability"),
    "fedcmp_inverse_variance": Method(
        {**_FEDCMP, "aggregation.canonical.reliability": "inverse_variance"}, _SERVER_LR,
        "Fed-CMP, inverse-variance reliability"),
    "fedcmp_uniform": Method({**_FEDCMP, "aggregation.canonical.reliability": "uniform"},
                             _SERVER_LR, "Fed-CMP, uniform reliability"),
    "fedcmp_rank8": Method({**_FEDCMP, "aggregation.canonical.rank": 8}, _SERVER_LR,
                           "Fed-CMP, rank 8"),
    "fedcmp_full_rank": Method({**_FEDCMP, "aggregation.canonical.rank": 0}, _SERVER_LR,
                               "Fed-CMP, full rank (= FedAvgM with explained)"),
    "fedcmp_no_procrustes": Method({**_FEDCMP, "server.opm.procrustes": False}, _SERVER_LR,
                                   "Fed-CMP, no Procrustes alignment"),
    "fedcmp_weights": Method({**_FEDCMP, "aggregation.canonical.decompose": "weights"},
                             _SERVER_LR, "Fed-CMP, local projectors decomposed (not updates)"),
    "fedcmp_span": Method({**_FEDCMP, "server.opm.variant": "span"}, _SERVER_LR,
                          "Fed-CMP, span(U) heavy-ball OPM"),
}

# The comparison's methods (tuned on GRID) and Fed-CMP's ablations (not re-tuned).
COMPARED = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox", "scaffold", "fednova",
            "ties", "knots", "fedcmp")
ABLATIONS = ("cra_only", "opm_only", "fedcmp_agreement", "fedcmp_inverse_variance",
             "fedcmp_uniform", "fedcmp_rank8", "fedcmp_full_rank", "fedcmp_no_procrustes",
             "fedcmp_weights", "fedcmp_span")


def parse_methods(value: str, allowed: Sequence[str] | None = None) -> list[str]:
  """``"a,b"`` -> ``["a", "b"]`` in order (``""`` -> none).

  Raises:
    ValueError: ``"must be comma-separated names of (...), got 'x'"`` for a
      name outside ``allowed`` (default: every method); the caller names the
      flag (:func:`methods_arg` through argparse).
  """
  allowed = tuple(METHODS) if allowed is None else tuple(allowed)
  names = [n for n in value.split(",") if n]
  for name in names:
    if name not in allowed:
      raise ValueError(f"must be comma-separated names of {allowed}, got {name!r}")
  return names


def methods_arg(value: str) -> list[str]:
  """argparse ``type=`` for a list of methods: a bad name exits with one line."""
  try:
    return parse_methods(value)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def ablations_arg(value: str) -> list[str]:
  """argparse ``type=`` for a list of :data:`ABLATIONS`."""
  try:
    return parse_methods(value, ABLATIONS)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None

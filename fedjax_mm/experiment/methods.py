"""The named methods of the experiments: config overrides and the learning rate each is tuned on.

One table for every experiment: the demos (``experiments/fedma_demo.py``,
``experiments/fedma_real_demo.py``) run any entry by name (``--methods``),
and the comparison (``experiments/compare_algorithms.py``) runs the entries
of :data:`COMPARED` and :data:`ABLATIONS`. A method is a set of config
overrides on top of the experiment's config (then the command line's
``--override`` on top of that), plus the rates it is tuned on: the clients'
learning rate and the method's own step knob (the server's learning rate, or
a merging method's scale), so every method gets the same two-dimensional
log-spaced grid (:mod:`fedjax_mm.experiment.tuning`) around its defaults.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping, NamedTuple, Sequence

import ml_collections

class Method(NamedTuple):
  """One named method.

  Attributes:
    overrides: ``{config path: value}`` applied to the experiment's config.
    axes: the config paths of the rates the method is tuned on (the grid's
      axes, centered on the defaults).
    label: the comparison's name for it (the demos label a row by what ran,
      :func:`fedjax_mm.experiment.labels.method_label`).
  """

  overrides: Mapping[str, Any]
  axes: tuple[str, ...]
  label: str

  def default(self, base_config: ml_collections.ConfigDict, path: str) -> float:
    """A tuned field's default: this method's override, else the base config's."""
    if path in self.overrides:
      return float(self.overrides[path])
    node = base_config
    for part in path.split("."):
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
_RATES = (_CLIENT_LR, _SERVER_LR)   # the clients' step x the server's step

METHODS: Mapping[str, Method] = {
    "fedavg": Method({}, _RATES, "FedAvg"),
    "fedavgm": Method({"server.kind": "fedavgm", "server.learning_rate": 1.0,
                       "server.fedavgm.momentum": 0.9}, _RATES, "FedAvgM"),
    "fedadam": Method(_FEDADAM, _RATES, "FedAdam"),
    "fedyogi": Method({**_FEDADAM, "server.kind": "fedyogi"}, _RATES, "FedYogi"),
    "fedprox": Method({"algorithm.kind": "fedprox", "algorithm.fedprox.mu": 0.01}, _RATES,
                      "FedProx (mu 0.01)"),
    "fedavg_sgd": Method(_SGD, _RATES, "FedAvg (SGD clients)"),
    "scaffold": Method({"algorithm.kind": "scaffold", **_SGD}, _RATES,
                       "SCAFFOLD (SGD clients)"),
    "fednova": Method({"algorithm.kind": "fednova", **_SGD}, _RATES,
                      "FedNova (SGD clients)"),
    "ties": Method({"aggregation.kind": "ties"}, (_CLIENT_LR, "aggregation.ties.scale"),
                   "TIES-merging (density 0.2)"),
    "knots": Method({"aggregation.kind": "knots"}, (_CLIENT_LR, "aggregation.knots.scale"),
                    "KnOTS-TIES"),
    "feddyn": Method({"algorithm.kind": "feddyn"}, _RATES, "FedDyn"),
    "fedexp": Method({"algorithm.kind": "fedexp", "algorithm.fedexp.eps": 1e-3}, _RATES,
                     "FedExP"),
    "fedacg": Method({"algorithm.kind": "fedacg", "algorithm.fedacg.momentum": 0.85,
                      "algorithm.fedacg.beta": 0.001}, _RATES, "FedACG (lambda 0.85)"),
    "regmean": Method({"algorithm.kind": "regmean", "algorithm.regmean.alpha": 0.9}, _RATES,
                      "RegMean (alpha 0.9)"),
    "polar_momentum": Method({"server.kind": "polar_momentum", "server.learning_rate": 1.0,
                              "server.polar_momentum.momentum": 0.9,
                              "server.polar_momentum.scale": "frobenius"}, _RATES,
                             "Polar momentum (orthogonalized FedAvgM)"),
    "fedcmp": Method(_FEDCMP, _RATES, "Fed-CMP (CRA + OPM)"),
    # The positive control's Fed-CMP (configs/interference.py): the basis at the
    # shared map's rank 2 (rank 32 is that 32-row kernel's full rank, where CRA
    # averages), local projectors decomposed (near the optimum the updates no
    # longer carry the shared signal; see tests/test_interference.py).
    "cra_control": Method({**_FEDCMP, "server.kind": "fedavg", "aggregation.canonical.rank": 2,
                           "aggregation.canonical.decompose": "weights"}, _RATES,
                          "CRA rank 2, local projectors (FedAvg server)"),
    "fedcmp_control": Method({**_FEDCMP, "aggregation.canonical.rank": 2,
                              "aggregation.canonical.decompose": "weights"}, _RATES,
                             "Fed-CMP rank 2, local projectors"),
    # Ablations of Fed-CMP (the comparison runs them at Fed-CMP's chosen rate).
    "cra_only": Method({**_FEDCMP, "server.kind": "fedavg"}, _RATES,
                       "CRA only (FedAvg server)"),
    "opm_only": Method({**_FEDCMP, "aggregation.canonical.fusion": "mean"}, _RATES,
                       "OPM only (mean fusion)"),
    "fedcmp_agreement": Method({**_FEDCMP, "aggregation.canonical.reliability": "agreement"},
                               _RATES, "Fed-CMP, agreement reliability"),
    "fedcmp_inverse_variance": Method(
        {**_FEDCMP, "aggregation.canonical.reliability": "inverse_variance"}, _RATES,
        "Fed-CMP, inverse-variance reliability"),
    "fedcmp_uniform": Method({**_FEDCMP, "aggregation.canonical.reliability": "uniform"},
                             _RATES, "Fed-CMP, uniform reliability"),
    "fedcmp_rank8": Method({**_FEDCMP, "aggregation.canonical.rank": 8}, _RATES,
                           "Fed-CMP, rank 8"),
    "fedcmp_full_rank": Method({**_FEDCMP, "aggregation.canonical.rank": 0}, _RATES,
                               "Fed-CMP, full rank (= FedAvgM with explained)"),
    "fedcmp_no_procrustes": Method({**_FEDCMP, "server.opm.procrustes": False}, _RATES,
                                   "Fed-CMP, no Procrustes alignment"),
    "fedcmp_weights": Method({**_FEDCMP, "aggregation.canonical.decompose": "weights"},
                             _RATES, "Fed-CMP, local projectors decomposed (not updates)"),
    "fedcmp_span": Method({**_FEDCMP, "server.opm.variant": "span"}, _RATES,
                          "Fed-CMP, span(U) heavy-ball OPM"),
    # CRA variants that make the canonical space do work (aggregation/canonical.py):
    # per-direction reliability, TIES in the coefficients, the out-of-span
    # residual kept or fed back, scores z-scored against last round's basis,
    # the output (LM-embedding) side.
    "fedcmp_direction_sign": Method(
        {**_FEDCMP, "aggregation.canonical.weighting": "direction",
         "aggregation.canonical.direction_score": "sign_agreement"}, _RATES,
        "Fed-CMP, per-direction sign-agreement reliability"),
    "fedcmp_direction_invvar": Method(
        {**_FEDCMP, "aggregation.canonical.weighting": "direction",
         "aggregation.canonical.direction_score": "inverse_variance"}, _RATES,
        "Fed-CMP, per-direction inverse-variance reliability"),
    "fedcmp_ties": Method({**_FEDCMP, "aggregation.canonical.trim": 0.8,
                           "aggregation.canonical.sign_election": True}, _RATES,
                          "Fed-CMP, TIES in the coefficients (keep 20%, sign election)"),
    "fedcmp_residual": Method({**_FEDCMP, "aggregation.canonical.residual": "mean"}, _RATES,
                              "Fed-CMP, out-of-span residual kept (no truncation)"),
    "fedcmp_feedback": Method({**_FEDCMP, "aggregation.canonical.residual": "feedback"},
                              _RATES, "Fed-CMP, out-of-span residual fed back"),
    "fedcmp_zscore_previous": Method(
        {**_FEDCMP, "aggregation.canonical.score_with": "previous",
         "aggregation.canonical.standardize": True}, _RATES,
        "Fed-CMP, z-scored reliability on last round's basis"),
    "fedcmp_output_side": Method({**_FEDCMP, "aggregation.canonical.side": "output",
                                  "server.opm.side": "output"}, _RATES,
                                 "Fed-CMP, output-side (LM embedding) basis"),
    "fedcmp_split_residual": Method(
        {**_FEDCMP, "aggregation.canonical.residual": "mean", "server.opm.variant": "split"},
        _RATES, "Fed-CMP, residual kept + split OPM (strictly generalizes FedAvgM)"),
    "fedcmp_split": Method({**_FEDCMP, "server.opm.variant": "split"}, _RATES,
                           "Fed-CMP, split OPM (non-leaking)"),
    "fedcmp_motion": Method({**_FEDCMP, "aggregation.canonical.decompose": "weights",
                             "server.opm.variant": "motion", "server.opm.motion_scale": 1.0},
                            _RATES, "Fed-CMP, OPM with basis motion (projectors decomposed)"),
}

# The comparison's methods (each tuned on its grid) and Fed-CMP's ablations (run at
# Fed-CMP's chosen point, on the same report seeds: paired with it).
COMPARED = ("fedavg", "fedavgm", "fedadam", "fedyogi", "fedprox", "scaffold", "fednova",
            "feddyn", "fedexp", "fedacg", "ties", "knots", "regmean", "fedcmp")
# The positive control's methods (experiments/compare_algorithms.py --scenarios interference).
CONTROL = ("fedavg", "fedavgm", "fedadam", "ties", "knots", "cra_control", "fedcmp_control")
# The real towers' methods on a CPU (experiments/compare_algorithms.py --scenarios real).
REAL = ("fedavg", "fedavgm", "fedadam", "knots", "fedcmp")
ABLATIONS = ("cra_only", "opm_only", "fedcmp_agreement", "fedcmp_inverse_variance",
             "fedcmp_uniform", "fedcmp_rank8", "fedcmp_full_rank", "fedcmp_no_procrustes",
             "fedcmp_weights", "fedcmp_span", "fedcmp_split", "fedcmp_motion",
             "fedcmp_direction_sign", "fedcmp_direction_invvar", "fedcmp_ties", "fedcmp_residual",
             "fedcmp_feedback", "fedcmp_zscore_previous", "fedcmp_output_side",
             "fedcmp_split_residual")


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


def ablations_or_fedcmp_arg(value: str) -> list[str]:
  """argparse ``type=`` for Fed-CMP variants: ``"fedcmp"`` or names of :data:`ABLATIONS`."""
  try:
    return parse_methods(value, ("fedcmp", *ABLATIONS))
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None

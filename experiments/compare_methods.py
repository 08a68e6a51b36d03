"""The methods and ablations of the Fed-CMP comparison, as config overrides.

Each method names the one learning rate it is tuned on (its own primary
knob: the client's for methods that change client work or aggregation, the
server's for server optimizers) and its default; the grid multiplies that
default by ``GRID``. Used by ``experiments/compare_algorithms.py``.
"""

from __future__ import annotations

from typing import NamedTuple

from fedma_demo import METHODS as DEMO

GRID = (1 / 3, 1.0, 3.0)   # the same relative grid for every method


class Method(NamedTuple):
  label: str
  overrides: dict
  tuned: str            # the config field tuned on GRID x its value here

  def default_lr(self, base_config) -> float:
    if self.tuned in self.overrides:
      return float(self.overrides[self.tuned])
    node = base_config
    for part in self.tuned.split("."):
      node = node[part]
    return float(node)


# Fed-CMP's defaults (a reconstruction; see aggregation/canonical.py and
# server/orthogonal_momentum.py): CRA at rank 32 of 128 scored by explained
# energy, and OPM with FedAvgM's momentum and server learning rate.
FEDCMP = {"aggregation.kind": "canonical", "aggregation.canonical.rank": 32,
          "aggregation.canonical.reliability": "explained",
          "aggregation.canonical.temperature": 0.1,
          "server.kind": "opm", "server.opm.momentum": 0.9, "server.learning_rate": 1.0}

# The baselines the demo also runs keep the demo's settings (one table of them).
METHODS = {
    "fedavg": Method("FedAvg", DEMO["fedavg"], "client.learning_rate"),
    "fedavgm": Method("FedAvgM", DEMO["fedavgm"], "server.learning_rate"),
    "fedadam": Method("FedAdam", DEMO["fedadam"], "server.learning_rate"),
    "fedyogi": Method("FedYogi", {**DEMO["fedadam"], "server.kind": "fedyogi"},
                      "server.learning_rate"),
    "fedprox": Method("FedProx (mu 0.01)", DEMO["fedprox"], "client.learning_rate"),
    "scaffold": Method("SCAFFOLD (SGD clients)", DEMO["scaffold"], "client.learning_rate"),
    "fednova": Method("FedNova (SGD clients)", DEMO["fednova"], "client.learning_rate"),
    "ties": Method("TIES-merging (density 0.2)", {"aggregation.kind": "ties"},
                   "aggregation.ties.scale"),
    "knots": Method("KnOTS-TIES", {"aggregation.kind": "knots"}, "aggregation.knots.scale"),
    "fedcmp": Method("Fed-CMP (CRA + OPM)", FEDCMP, "server.learning_rate"),
}

# Ablations of Fed-CMP, at Fed-CMP's chosen learning rate (not re-tuned).
ABLATIONS = {
    "cra_only": Method("CRA only (FedAvg server)", {
        **FEDCMP, "server.kind": "fedavg"}, "server.learning_rate"),
    "opm_only": Method("OPM only (mean fusion)", {
        **FEDCMP, "aggregation.canonical.fusion": "mean"}, "server.learning_rate"),
    "fedcmp_agreement": Method("Fed-CMP, agreement reliability", {
        **FEDCMP, "aggregation.canonical.reliability": "agreement"}, "server.learning_rate"),
    "fedcmp_inverse_variance": Method("Fed-CMP, inverse-variance reliability", {
        **FEDCMP, "aggregation.canonical.reliability": "inverse_variance"},
        "server.learning_rate"),
    "fedcmp_uniform": Method("Fed-CMP, uniform reliability", {
        **FEDCMP, "aggregation.canonical.reliability": "uniform"}, "server.learning_rate"),
    "fedcmp_rank8": Method("Fed-CMP, rank 8", {
        **FEDCMP, "aggregation.canonical.rank": 8}, "server.learning_rate"),
    "fedcmp_full_rank": Method("Fed-CMP, full rank (= FedAvgM with explained)", {
        **FEDCMP, "aggregation.canonical.rank": 0}, "server.learning_rate"),
    "fedcmp_no_procrustes": Method("Fed-CMP, no Procrustes alignment", {
        **FEDCMP, "server.opm.procrustes": False}, "server.learning_rate"),
    "fedcmp_weights": Method("Fed-CMP, local projectors decomposed (not updates)", {
        **FEDCMP, "aggregation.canonical.decompose": "weights"}, "server.learning_rate"),
    "fedcmp_span": Method("Fed-CMP, span(U) heavy-ball OPM", {
        **FEDCMP, "server.opm.variant": "span"}, "server.learning_rate"),
}

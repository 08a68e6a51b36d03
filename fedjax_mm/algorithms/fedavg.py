"""FedAvg: local training from the global model, example-weighted averaging.

Client k runs local optimizer steps from the global parameters ``w`` and
uploads ``Δ_k = w - w_k``; the server applies its optimizer to the aggregate
(``optax.sgd(1)`` on the weighted mean is exactly FedAvg's
``w ← Σ_k (n_k / n) w_k``).

References:
  McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017; arXiv:1602.05629.
"""

from __future__ import annotations

from fedjax_mm.algorithms.base import Algorithm, local_training, stateless_server
from fedjax_mm.registry import Part


def fedavg() -> Algorithm:
  """The default algorithm: plain local training, stateless server."""
  return Algorithm(name="fedavg", client=local_training(), server=stateless_server())


PART = Part("fedavg", fedavg, "FedAvg",
            "local training, weighted mean of the updates (McMahan et al., AISTATS 2017)")

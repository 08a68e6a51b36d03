"""Federated algorithms, one file each, built from the parts in ``base``.

Adding an algorithm: write ``algorithms/<name>.py`` returning an
:class:`~fedjax_mm.algorithms.base.Algorithm` (client work + server work),
and add it to :func:`make_algorithm` and ``ALGORITHMS``; the round is not edited.
"""

from __future__ import annotations

from fedjax_mm.algorithms.base import (Aggregates, Algorithm, ClientWork, ServerWork,
                                       local_training, stateless_server)
from fedjax_mm.algorithms.fedavg import fedavg
from fedjax_mm.algorithms.fednova import fednova
from fedjax_mm.algorithms.fedprox import fedprox
from fedjax_mm.algorithms.scaffold import scaffold

ALGORITHMS = ("fedavg", "fedprox", "scaffold", "fednova")


def make_algorithm(name: str, *, prox_mu: float = 0.0,
                   client_momentum: float = 0.0) -> Algorithm:
  """An algorithm by name.

  Args:
    name: one of ``ALGORITHMS``.
    prox_mu: FedProx's proximal coefficient μ.
    client_momentum: the client optimizer's heavy-ball momentum (0 for plain
      SGD), which FedNova's normalizer depends on.
  """
  if name == "fedavg":
    return fedavg()
  if name == "fedprox":
    return fedprox(prox_mu)
  if name == "scaffold":
    return scaffold()
  if name == "fednova":
    return fednova(client_momentum)
  raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {name!r}")


__all__ = ["ALGORITHMS", "Aggregates", "Algorithm", "ClientWork", "ServerWork", "fedavg",
           "fednova", "fedprox", "local_training", "make_algorithm", "scaffold",
           "stateless_server"]

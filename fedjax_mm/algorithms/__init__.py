"""Federated algorithms, one file each, built from the parts in ``base``.

Adding an algorithm: write ``algorithms/<name>.py`` returning an
:class:`~fedjax_mm.algorithms.base.Algorithm` (client work + server work)
with a ``PART`` line, and add that line to ``ALGORITHMS``; its options
(``config.algorithm.<name>.<option>``), validation, labels, ``--help`` and
the contract suite follow from the registry. The round is not edited.
"""

from __future__ import annotations

from fedjax_mm.algorithms import fedacg as _fedacg
from fedjax_mm.algorithms import fedavg as _fedavg
from fedjax_mm.algorithms import feddyn as _feddyn
from fedjax_mm.algorithms import fedexp as _fedexp
from fedjax_mm.algorithms import fednova as _fednova
from fedjax_mm.algorithms import fedprox as _fedprox
from fedjax_mm.algorithms import regmean as _regmean
from fedjax_mm.algorithms import scaffold as _scaffold
from fedjax_mm.algorithms.base import (Aggregates, Algorithm, ClientWork, ServerWork,
                                       local_training, stateless_server)
from fedjax_mm.algorithms.fedacg import fedacg
from fedjax_mm.algorithms.fedavg import fedavg
from fedjax_mm.algorithms.feddyn import feddyn
from fedjax_mm.algorithms.fedexp import fedexp
from fedjax_mm.algorithms.fednova import fednova
from fedjax_mm.algorithms.fedprox import fedprox
from fedjax_mm.algorithms.regmean import regmean
from fedjax_mm.algorithms.scaffold import scaffold
from fedjax_mm.registry import Registry

ALGORITHMS = Registry("algorithm", [
    _fedavg.PART,
    _fedprox.PART,
    _scaffold.PART,
    _fednova.PART,
    _feddyn.PART,
    _regmean.PART,
    _fedexp.PART,
    _fedacg.PART,
])

__all__ = ["ALGORITHMS", "Aggregates", "Algorithm", "ClientWork", "ServerWork", "fedacg",
           "fedavg", "feddyn", "fedexp", "fednova", "fedprox", "local_training", "regmean",
           "scaffold",
           "stateless_server"]

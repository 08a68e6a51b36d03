"""Server-side optimizers applied to the aggregated client pseudo-gradient.

``SERVER`` is the registry (``config.server.kind`` and
``config.server.<kind>.<option>``); adding an optimizer is a factory
``(learning_rate, **options) -> optax transform`` with a ``Part`` line.
"""

from fedjax_mm.registry import Registry
from fedjax_mm.server import fedopt as _fedopt
from fedjax_mm.server import orthogonal_momentum as _orthogonal_momentum
from fedjax_mm.server import polar_momentum as _polar_momentum
from fedjax_mm.server.adaptive import FedAdagradState
from fedjax_mm.server.adaptive import FedAdamState
from fedjax_mm.server.adaptive import FedYogiState
from fedjax_mm.server.adaptive import scale_by_fedadagrad
from fedjax_mm.server.adaptive import scale_by_fedadam
from fedjax_mm.server.adaptive import scale_by_fedyogi
from fedjax_mm.server.conventions import BIAS_CORRECTIONS
from fedjax_mm.server.conventions import CONVENTIONS
from fedjax_mm.server.conventions import DEFAULT_CONVENTION
from fedjax_mm.server.conventions import TAU_PLACEMENTS
from fedjax_mm.server.fedopt import fedadagrad
from fedjax_mm.server.fedopt import fedadam
from fedjax_mm.server.fedopt import fedavg
from fedjax_mm.server.fedopt import fedavgm
from fedjax_mm.server.fedopt import fedyogi
from fedjax_mm.server.orthogonal_momentum import opm
from fedjax_mm.server.polar_momentum import polar_momentum

SERVER = Registry("server optimizer", [
    *_fedopt.PARTS,
    _orthogonal_momentum.PART,
    _polar_momentum.PART,
])

__all__ = [
    "BIAS_CORRECTIONS",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "FedAdagradState",
    "FedAdamState",
    "FedYogiState",
    "SERVER",
    "TAU_PLACEMENTS",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fedyogi",
    "opm",
    "polar_momentum",
    "scale_by_fedadagrad",
    "scale_by_fedadam",
    "scale_by_fedyogi",
]

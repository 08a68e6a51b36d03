"""Server-side optimizers applied to the aggregated client pseudo-gradient."""

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
from fedjax_mm.server.fedopt import SERVER_OPTIMIZERS
from fedjax_mm.server.fedopt import fedadagrad
from fedjax_mm.server.fedopt import fedadam
from fedjax_mm.server.fedopt import fedavg
from fedjax_mm.server.fedopt import fedavgm
from fedjax_mm.server.fedopt import fedyogi
from fedjax_mm.server.fedopt import make_server_optimizer

__all__ = [
    "BIAS_CORRECTIONS",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "FedAdagradState",
    "FedAdamState",
    "FedYogiState",
    "SERVER_OPTIMIZERS",
    "TAU_PLACEMENTS",
    "fedadagrad",
    "fedadam",
    "fedavg",
    "fedavgm",
    "fedyogi",
    "make_server_optimizer",
    "scale_by_fedadagrad",
    "scale_by_fedadam",
    "scale_by_fedyogi",
]

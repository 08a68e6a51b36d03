"""fedjax_mm: a JAX simulator for federated (multimodal) pretraining.

The curated public surface; see ARCHITECTURE.md for the module map.
Checkpointing (orbax) lives in ``fedjax_mm.checkpoint`` and is imported only
by those who need it.
"""

from fedjax_mm.aggregation import (AGGREGATORS, PREPROCESSORS, CohortAggregator,
                                   Preprocessor, StreamingAggregator, coordinate_median,
                                   geometric_median, krum, l2_clip, trimmed_mean,
                                   weighted_mean)
from fedjax_mm.algorithms import (ALGORITHMS, Algorithm, ClientWork, ServerWork, fedacg,
                                  fedavg, feddyn, fedexp, fednova, fedprox, scaffold)
from fedjax_mm.client import (ClientSlot, LocalContext, local_steps, local_update,
                              make_client_optimizer, train_on_batches)
from fedjax_mm.data.federated import (FederatedData, LocalSchedule, pack, sample_cohort,
                                      split_by_position)
from fedjax_mm.registry import Part, Registry
from fedjax_mm.server import SERVER
from fedjax_mm.server.fedopt import (fedadagrad, fedadam, fedavg as fedavg_server, fedavgm,
                                     fedyogi)
from fedjax_mm.simulation.population import (ClientStateRule, PopulationState,
                                              participation_stats)
from fedjax_mm.simulation.round import (RoundSpec, build_round_fn, init_population,
                                        init_server_state)
from fedjax_mm.types import ClientResult, ServerState, Task

__version__ = "0.1.0"

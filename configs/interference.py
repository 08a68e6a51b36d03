"""The interference positive control: FedAvg vs Fed-CMP's CRA on a constructed federation.

Clients fit one linear projector (32 x 16); their targets share a rank-2 map
and add a large client-specific rank-1 map with a random sign from a pool of
30 directions (``fedjax_mm/data/interference.py`` has the construction and the
argument). FedAvg's mean keeps the cohort's interference at any server
learning rate; CRA's top-2 basis of the local projectors removes it.

Run (FedAvg, server lr 0.2: the best of {0.1, 0.2, 0.4, 0.7, 1.0} at 10 rounds):
  python -m fedjax_mm.main --config=configs/interference.py --workdir=runs/interference
CRA (rank 2 on the local projectors, uniform reliability, FedAvg server at lr 0.4):
  python -m fedjax_mm.main --config=configs/interference.py:cra --workdir=runs/interference_cra
Override any field on the command line, e.g. --config.data.ratio=1.2
"""

import ml_collections

from fedjax_mm import configuration
from fedjax_mm.setups import interference

VARIANTS = ("fedavg", "cra")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "fedavg"
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {arg!r}")

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_rounds = 10           # a small budget: FedAvg's low-lr remedy has not converged
  config.clients_per_round = 5
  config.chunk_size = 0
  config.num_devices = 0
  config.sampling = "uniform"

  config.data = interference.data_section(200)

  # 10 full-batch steps at lr 1 nearly solve each client's least squares (the
  # 256-row covariance has eigenvalues in ~[0.42, 1.83]): the local model is
  # W* + B_k, as the argument assumes.
  config.local = ml_collections.ConfigDict()
  config.local.mode = "steps"
  config.local.num_steps = 10
  config.local.batch_size = 256
  config.local.num_epochs = 1

  config.client = configuration.client_section("sgd", 1.0)
  config.server = configuration.server_section("fedavg", 0.2)
  config.algorithm = configuration.algorithm_section("fedavg")
  config.preprocess = configuration.preprocess_section()
  config.aggregation = configuration.aggregation_section()
  config.wrap = configuration.wrap_section()
  if variant == "cra":
    config.server.learning_rate = 0.4
    config.aggregation.kind = "canonical"
    config.aggregation.canonical.rank = 2
    config.aggregation.canonical.reliability = "uniform"
    config.aggregation.canonical.decompose = "weights"

  config.eval_every = 5
  config.eval_batch_size = 4096
  config.divergence_factor = 100.0
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 10
  config.checkpoint.max_to_keep = 1
  config.checkpoint.async_save = True
  return config

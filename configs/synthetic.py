"""Synthetic(alpha, beta) (FedProx, MLSys 2020): logistic regression, FedAvg.

Run:
  python -m fedjax_mm.main --config=configs/synthetic.py --workdir=runs/synthetic
Population presets (the argument after the colon; default 30 = the paper's):
  python -m fedjax_mm.main --config=configs/synthetic.py:1000 --workdir=runs/syn1k
  python -m fedjax_mm.main --config=configs/synthetic.py:100000 --workdir=runs/syn100k
Override any field on the command line, e.g.
  --config.server.kind=fedadam --config.server.learning_rate=0.03
"""

import ml_collections

from fedjax_mm import configuration
from fedjax_mm.setups import synthetic

# Population size -> (clients per round, size lognormal mean, sigma, min size).
# The paper's sizes (lognormal(4, 2) + 50, ~400 examples on average) are kept
# up to 1,000 clients; larger populations use smaller clients so that 100,000
# of them fit in memory (~17 examples each, 1.7M examples, 0.4 GB).
_PRESETS = {
    30: (10, 4.0, 2.0, 50),
    100: (10, 4.0, 2.0, 50),
    1000: (100, 4.0, 2.0, 50),
    10000: (1000, 3.0, 1.5, 20),
    100000: (1000, 2.0, 1.0, 5),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  num_clients = int(arg) if arg else 30
  if num_clients not in _PRESETS:
    raise ValueError(f"population preset must be one of {sorted(_PRESETS)}, got {arg!r}")
  per_round, size_mean, size_sigma, min_size = _PRESETS[num_clients]

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_rounds = 200
  config.clients_per_round = per_round
  config.chunk_size = 0            # 0: whole cohort at once; else clients per chunk
  config.num_devices = 0           # 0: all devices; the clients axis is sharded
  config.sampling = "uniform"      # uniform | size

  config.data = synthetic.data_section(num_clients, size_mean, size_sigma, min_size)

  config.local = ml_collections.ConfigDict()
  config.local.mode = "epochs"     # epochs | steps
  config.local.num_epochs = 1      # FedProx: E = 20 local epochs is their setting
  config.local.num_steps = 20      # step slots (a cap in epochs mode)
  config.local.batch_size = 10

  # Optimizer sections (shared layout, see fedjax_mm.configuration); e.g.
  # --config.server.kind=fedadam --config.server.fedadam.convention=flower
  config.client = configuration.client_section("sgd", 0.01)
  config.server = configuration.server_section("fedavg", 1.0)

  # The algorithm (client + server work), the per-client preprocessing chain and
  # the aggregation, each a registry of parts with their own options (see
  # fedjax_mm.registry; `--help` lists them), e.g. --config.algorithm.kind=scaffold
  # --config.aggregation.kind=trimmed_mean --config.aggregation.trimmed_mean.trim_fraction=0.2
  # --config.preprocess.chain=l2_clip --config.preprocess.l2_clip.max_norm=1.0
  config.algorithm = configuration.algorithm_section("fedavg")
  config.preprocess = configuration.preprocess_section()
  config.aggregation = configuration.aggregation_section()
  config.wrap = configuration.wrap_section()

  config.eval_every = 10
  config.eval_batch_size = 4096

  # Stop when the training loss exceeds this multiple of the run's first one.
  config.divergence_factor = 100.0
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every = 20
  config.checkpoint.max_to_keep = 3
  config.checkpoint.async_save = True
  return config

"""The Fed-MA demo (`scripts/demo.sh`): the base config sized for a 2-core laptop.

FedAvg, 1,000 clients with Dirichlet(0.1) concept skew over shape x color,
100 clients per round; what changes from `configs/fedma.py` is only what
makes the whole demo (tower pretraining included) fit in minutes on a CPU:
fewer rounds, visual tokens pooled to one per quadrant, evaluation on a
fixed random 200 of the 1,000 clients, every 10 rounds.

  python experiments/fedma_demo.py                  # what demo.sh runs
  python -m fedjax_mm.main --config=configs/fedma_demo.py --workdir=runs/demo
Presets as in `configs/fedma.py` (`configs/fedma_demo.py:iid`, ...).
"""

import os

import ml_collections

from fedjax_mm import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # Config files are loaded by path, not imported as a package: load the base
  # config beside this file the same way.
  config = config_files.load(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "fedma.py"), arg)
  config.num_rounds = 30
  config.eval_every = 10
  config.data.eval_clients = 200
  config.model.projector.pool_to = 4
  return config

"""Four federated scenarios of Fed-MA, on one round budget, for comparison.

Every preset is `configs/fedma_demo.py` (`configs/fedma.py`'s frozen towers,
federated projector and FedAvg, sized for a CPU: visual tokens pooled to 4,
evaluation on 200 random clients every 10 rounds) with only the population
changed; all share `num_rounds` (150 by default,
still a field) and about the same training cost per round: clients x local
steps x batch = 4,000 example-gradients (fedma's 100 x 5 x 8).

Presets (the argument after the colon):
  concept_0.1  1,000 clients, Dirichlet(0.1) concept skew over shape x color (default)
  concept_0.5  the same with Dirichlet(0.5): milder concept skew
  domain       1,000 clients, each holding images of one rendering domain only
  one_pass     cross-device: 15,000 small power-law clients, 100 per round, one
               local epoch, each client drawn once: no example is seen twice
  one_pass_concept  one_pass with Dirichlet(0.1) concept skew: heterogeneous
               clients seen once each (where Fed-CMP's abstract places both
               of its problems: interference and oscillation)
  quantity     1,000 IID clients with power-law sizes (exponent 1.1, mean 40
               rows), one local epoch capped at 25 steps: the clients' local
               work differs by up to 25x (FedNova's objective inconsistency)
  silos        8 large silos, all in every round, one caption style each,
               3 of them keeping only 10% of their captions (mostly unpaired)
  iid          1,000 IID clients: not a scenario but the budget check (at a
               budget where IID clients reach the centralized reference, the
               scenarios' gap to it measures heterogeneity, not budget)

Run:
  python -m fedjax_mm.main --config=configs/scenarios.py:one_pass --workdir=runs/one_pass
and e.g. `--config.num_rounds=100` to change the shared budget (one_pass
refuses budgets over data.num_clients / clients_per_round = 150 rounds).
"""

import os

import ml_collections

from fedjax_mm import config_files

NUM_ROUNDS = 150
PRESETS = ("concept_0.1", "concept_0.5", "domain", "one_pass", "one_pass_concept", "quantity",
           "silos", "iid")

# one_pass: one pass over the population in the round budget needs
# K >= num_rounds x C; 1% participation would allow only 100 rounds, so the
# population is sized to the budget instead (100 / 15,000 = 0.67% per round).
ONE_PASS_COHORT = 100
ONE_PASS_CLIENTS = NUM_ROUNDS * ONE_PASS_COHORT


def _fedma(preset: str) -> ml_collections.ConfigDict:
  # Config files are loaded by path, not imported as a package: load the base
  # config beside this file the way the CLI would.
  return config_files.load(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "fedma_demo.py"), preset)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config of one scenario preset (see the module docstring).

  Args:
    arg: a name in ``PRESETS``; None means ``"concept_0.1"``.

  Returns:
    The run config.

  Raises:
    ValueError: an unknown preset (the message lists the allowed ones).
  """
  preset = arg or "concept_0.1"
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {arg!r}")

  if preset.startswith("concept_"):
    config = _fedma("dirichlet")
    config.data.partition.alpha = float(preset.split("_")[1])
  elif preset in ("domain", "iid"):
    config = _fedma(preset)
  elif preset in ("one_pass", "one_pass_concept"):
    config = _fedma("iid" if preset == "one_pass" else "dirichlet")
    config.clients_per_round = ONE_PASS_COHORT
    config.sampling = "one_pass"
    d = config.data
    d.num_clients = ONE_PASS_CLIENTS
    # Mean 8 rows (about 6 train, 2 test): 120,000 scenes in all, ~1 GB of
    # float32 features; the power-law tail reaches a few hundred rows.
    d.examples_per_client = 8
    # About 3,000 test rows, as the 1,000-client presets' 300 clients hold.
    d.eval_clients = 2_000
    d.partition.quantity = "power_law"    # exponent 1.5, min_size 4 (fedma's)
    config.local.mode = "epochs"
    config.local.num_epochs = 1
    # Batches of 2 give the smallest clients (3-4 train rows) two steps and
    # the median client three. The 20-step cap (40 rows) truncates only the
    # ~0.5% largest clients (~4% of all rows, never seen: the driver warns);
    # 100 x 20 x 2 matches fedma's per-round cost.
    config.local.batch_size = 2
    config.local.num_steps = 20
  elif preset == "quantity":
    config = _fedma("iid")
    config.data.partition.quantity = "power_law"
    # Exponent 1.1: a heavier tail than one_pass's 1.5 (min 4 rows, mean ~40).
    config.data.partition.quantity_exponent = 1.1
    config.local.mode = "epochs"
    config.local.num_epochs = 1
    # One epoch of batches of 8, capped at 25 steps (200 rows): a 4-row
    # client takes 1 step, a 200-row one 25.
    config.local.num_steps = 25
  else:  # silos
    config = _fedma("style")              # IID concepts, one caption style per client
    config.clients_per_round = 8
    d = config.data
    d.num_clients = 8
    d.examples_per_client = 5_000         # 40,000 scenes, as fedma's 1,000 x 40
    d.eval_clients = 0                    # all 8 silos
    # round(0.375 x 8) = 3 silos keep 10% of their captions.
    d.partition.missing_fraction = 0.375
    d.partition.caption_rate = 0.1
    # Fewer, larger clients: more local steps, and batches of 25 keep the
    # per-round cost at fedma's (8 x 20 x 25 = 4,000 example-gradients).
    config.local.num_steps = 20
    config.local.batch_size = 25

  config.num_rounds = NUM_ROUNDS
  config.eval_every = 10
  return config

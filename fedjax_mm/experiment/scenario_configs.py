"""The comparison's scenario configs: `configs/scenarios.py` presets at a scale, or own files."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import ml_collections

from fedjax_mm import config_files
from fedjax_mm.experiment import overrides

ROOT = Path(__file__).resolve().parents[2]
# --quick / --scale small: 30 rounds of about 800 example-gradients (a fifth of
# the presets' 4,000: 20 clients, or the 8 silos with batches of 10 x 10 steps
# and 1,000 rows each), validation and test on 100 clients each.
SMALL = {"rounds": 30, "clients_per_round": 20, "eval_clients": 100, "silo_examples": 1_000}


class OwnConfig(NamedTuple):
  """A scenario with a config file of its own (not a ``configs/scenarios.py`` preset).

  Attributes:
    path: the config file, relative to the repository.
    presets: ``{scale: the file's preset}`` ("small" / "presets"); a scale not
      named runs the file's default.
    report: the report files' suffix when the experiment runs only such
      scenarios (``compare_<report>.md``).
  """

  path: str
  presets: Mapping[str, str]
  report: str


# The positive control is already small (one size at every scale); the real
# towers run their CPU preset at --scale small (20 clients, 8 rounds: minutes
# a run on a 2-core box) and their GPU preset (10,000 clients, 500
# rounds) at --scale presets.
OWN_CONFIGS = {
    "interference": OwnConfig("configs/interference.py", {}, "control"),
    "real": OwnConfig("configs/fedma_real.py", {"small": "cpu", "presets": "gpu"}, "real"),
}


def scenario_config(name: str, *, scale: str, rounds: int | None = None,
                    override: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """``configs/scenarios.py:<name>`` at ``scale`` ("presets" or "small"), then ``override``.

  A name of :data:`OWN_CONFIGS` loads that file instead, its preset for ``scale``.
  """
  if name in OWN_CONFIGS:
    own = OWN_CONFIGS[name]
    config = config_files.load(ROOT / own.path, own.presets.get(scale))
    if rounds:
      config.num_rounds = rounds
    return overrides.apply(config, override)
  config = config_files.load(ROOT / "configs/scenarios.py", name)
  if scale == "small":
    config.num_rounds = rounds or SMALL["rounds"]   # before one_pass sizes its population
    if config.clients_per_round > SMALL["clients_per_round"]:
      config.clients_per_round = SMALL["clients_per_round"]
    else:   # the silos: all clients every round, smaller local work and test sets
      config.local.num_steps, config.local.batch_size = 10, 10
      config.data.examples_per_client = SMALL["silo_examples"]
    if config.sampling == "one_pass":
      # One pass over a population sized to the budget; its clients hold ~2
      # test rows each, so all of them are evaluated (half validate, half test).
      config.data.num_clients = config.num_rounds * config.clients_per_round
      config.data.eval_clients = 0
    elif config.data.eval_clients > SMALL["eval_clients"]:
      config.data.eval_clients = SMALL["eval_clients"]
  if rounds:
    config.num_rounds = rounds
  return overrides.apply(config, override)

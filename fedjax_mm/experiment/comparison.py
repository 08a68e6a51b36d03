"""The comparison's runs: scenarios, each method's grid and seeds, references, all resumable.

Every run is kept in its own directory under the experiment's work directory
(``<scenario>/<method>/lr<value>/seed<k>/result.json``, the references in
``<scenario>/references/references.json``) through
:mod:`fedjax_mm.experiment.workdirs`, so workers share the work and an
interrupted experiment resumes. Used by ``experiments/compare_algorithms.py``.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

import ml_collections
import numpy as np

from fedjax_mm import config_files, metrics as metrics_lib
from fedjax_mm.experiment import methods as methods_lib
from fedjax_mm.experiment import overrides, references, workdirs
from fedjax_mm.setups import fedma
from fedjax_mm.simulation import driver, validation

ROOT = Path(__file__).resolve().parents[2]
# --quick / --scale small: 30 rounds of 800 example-gradients (a fifth of the
# presets' 4,000: 20 clients, or the 8 silos with batches of 10 x 10 steps and
# 1,000 rows each), evaluation on 100 clients (one_pass: all of them).
SMALL = {"rounds": 30, "clients_per_round": 20, "eval_clients": 100, "silo_examples": 1_000}


def scenario_config(name: str, *, scale: str, rounds: int | None = None,
                    override: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """``configs/scenarios.py:<name>`` at ``scale`` ("presets" or "small"), then ``override``."""
  config = config_files.load(ROOT / "configs/scenarios.py", name)
  if scale == "small":
    config.num_rounds = SMALL["rounds"]
    if config.clients_per_round > SMALL["clients_per_round"]:
      config.clients_per_round = SMALL["clients_per_round"]
    else:   # the silos: all clients every round, smaller local work and test sets
      config.local.num_steps, config.local.batch_size = 10, 10
      config.data.examples_per_client = SMALL["silo_examples"]
    if config.sampling == "one_pass":
      # One pass over a population sized to the budget; its clients hold ~2
      # test rows each, so all of them are evaluated.
      config.data.num_clients = config.num_rounds * config.clients_per_round
      config.data.eval_clients = 0
    elif config.data.eval_clients > SMALL["eval_clients"]:
      config.data.eval_clients = SMALL["eval_clients"]
  if rounds:
    config.num_rounds = rounds
  return overrides.apply(config, override)


def method_config(base: ml_collections.ConfigDict, method: methods_lib.Method, lr: float
                  ) -> ml_collections.ConfigDict:
  """``base`` with the method's overrides and its tuned learning rate ``lr``, validated."""
  config = overrides.apply_values(base, {**method.overrides, method.tuned: lr})
  validation.validate(config)
  return config


def accuracy(result: dict) -> float:
  """A run's final accuracy; -inf for a diverged run (never the best grid point)."""
  return result["final"].get("accuracy", -math.inf) if "diverged" not in result else -math.inf


class Scenario:
  """One scenario's base config, with its data built only when a run needs it."""

  def __init__(self, name: str, base: ml_collections.ConfigDict, towers: dict):
    self.name, self.base, self._towers, self._setup = name, base, towers, None
    self.data_seconds = 0.0

  @property
  def setup(self):
    if self._setup is None:
      if "towers" not in self._towers:   # shared by every scenario
        self._towers["towers"] = fedma.build_towers(self.base)
      tick = time.perf_counter()
      self._setup = fedma.build(self.base, pretrained=self._towers["towers"])
      self.data_seconds = time.perf_counter() - tick
    return self._setup


def run_one(config: ml_collections.ConfigDict, rundir: Path, scenario: Scenario) -> dict | None:
  """One federated run, kept in ``rundir/result.json`` (None: another worker has it)."""

  def compute() -> dict:
    tick = time.perf_counter()
    try:
      summary = driver.train_and_evaluate(config, str(rundir), setup=scenario.setup,
                                          progress=False)
    except driver.NonFiniteError as e:   # a diverging grid point: recorded, never averaged
      result = {"diverged": str(e), "final": {}, "curve": [], "cosine": []}
    else:
      history = metrics_lib.read(rundir)
      result = {
          "final": {k[5:]: v for k, v in summary["final"].items() if k.startswith("eval_")},
          "curve": [(h["round"], h["eval_accuracy"]) for h in history
                    if "eval_accuracy" in h],
          "cosine": [h.get("update_cosine", float("nan")) for h in history],
      }
    for ckpt in rundir.glob("checkpoints"):   # results are kept; checkpoints are not
      shutil.rmtree(ckpt, ignore_errors=True)
    return {**result, "seconds": time.perf_counter() - tick, "pid": os.getpid()}

  return workdirs.kept(rundir, "result.json", compute)


def scenario_references(config: ml_collections.ConfigDict, setup, batch: int) -> dict:
  """Floor and the two centralized references (same examples; same sequential steps)."""
  evaluate = references.evaluator(setup.task, setup.test, config.eval_batch_size)
  out = {"floor": references.floor(setup.task, config.seed, evaluate).summary}
  for name, steps in (("centralized, same examples", references.budget_steps(config, batch)),
                      ("centralized, same sequential steps",
                       references.sequential_steps(config, setup.train))):
    ref = references.centralized(config, setup.task, setup.train, evaluate, batch_size=batch,
                                 num_steps=steps)
    out[name] = {**ref.summary, "steps": ref.steps}
  return out


def method_runs(scenario: Scenario, key: str, workdir: Path, *, seeds: int, tune: bool,
                chosen_cmp: float | None) -> dict | None:
  """A method's grid (seed 0) and its best point on every seed; None while pending.

  Pending: another worker holds one of its runs, or (an ablation) Fed-CMP's
  learning rate is not chosen yet. Every run this process can take is done.
  """
  method = methods_lib.METHODS[key]
  is_ablation = key in methods_lib.ABLATIONS
  center = method.default_lr(scenario.base)
  grid = [center * g for g in methods_lib.GRID] if tune and not is_ablation else [center]
  if is_ablation and chosen_cmp is not None:
    grid = [chosen_cmp]
  base = workdir / scenario.name / key
  trials = {lr: run_one(method_config(scenario.base, method, lr),
                        base / f"lr{lr:.4g}" / "seed0", scenario) for lr in grid}
  if any(r is None for r in trials.values()):
    return None
  best = max(trials, key=lambda lr: accuracy(trials[lr]))
  runs = [trials[best]]
  for seed in range(1, seeds):
    config = method_config(scenario.base, method, best)
    config.seed = seed
    runs.append(run_one(config, base / f"lr{best:.4g}" / f"seed{seed}", scenario))
  if any(r is None for r in runs):
    return None
  return {"label": method.label, "tuned": method.tuned,
          "grid": {f"{lr:.4g}": accuracy(r) for lr, r in trials.items()},
          "chosen": best, "ablation": is_ablation, "runs": runs}


def run_scenario(scenario: Scenario, keys: Sequence[str], workdir: Path, *, central_batch: int,
                 seeds: int, tune: bool, poll_s: float = 5.0) -> dict:
  """Every run of one scenario (shared with other workers), then its report entry."""
  base = scenario.base
  while True:
    refs = workdirs.kept(workdir / scenario.name / "references", "references.json",
                         lambda: scenario_references(base, scenario.setup, central_batch))
    entries: dict[str, dict | None] = {}
    for key in keys:
      chosen = entries["fedcmp"]["chosen"] if entries.get("fedcmp") else None
      if key in methods_lib.ABLATIONS and "fedcmp" in keys and chosen is None:
        entries[key] = None          # at Fed-CMP's learning rate, once it is chosen
        continue
      entries[key] = method_runs(scenario, key, workdir, seeds=seeds, tune=tune,
                                 chosen_cmp=chosen)
    if refs is not None and all(e is not None for e in entries.values()):
      break
    time.sleep(poll_s)    # the rest is held by other workers: wait for their results
  _print_entries(entries)
  return {"rounds": base.num_rounds, "clients": base.data.num_clients,
          "per_round": base.clients_per_round, "local_steps": base.local.num_steps,
          "batch": base.local.batch_size, "data_seconds": scenario.data_seconds,
          "references": refs, "methods": entries}


def _print_entries(entries: Mapping[str, dict]) -> None:
  for entry in entries.values():
    accs = [accuracy(r) for r in entry["runs"]]
    print(f"  {entry['label']:45s} lr {entry['chosen']:.4g}: acc {np.mean(accs):.4f} "
          f"(+- {np.std(accs):.4f}), {sum(r['seconds'] for r in entry['runs']):.0f}s")

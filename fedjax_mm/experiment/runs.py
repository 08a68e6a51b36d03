"""One run of the comparison: its config, its result kept in ``result.json``, its diagnostics.

A run's result holds the final evaluation (on the test clients each
client's accuracy too), the trajectory diagnostics and its seconds; a
diverged run is recorded as such and never averaged.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import jax
import ml_collections

from fedjax_mm import metrics as metrics_lib
from fedjax_mm.experiment import methods as methods_lib
from fedjax_mm.experiment import overrides, workdirs
from fedjax_mm.simulation import driver, validation

if TYPE_CHECKING:
  from fedjax_mm.experiment.comparison import Scenario


def method_config(base: ml_collections.ConfigDict, method: methods_lib.Method,
                  values: Mapping[str, float], seed: int) -> ml_collections.ConfigDict:
  """``base`` with the method's overrides, the grid point's ``values`` and ``seed``, validated."""
  config = overrides.apply_values(base, {**method.overrides, **values, "seed": seed})
  validation.validate(config)
  return config


def accuracy(result: dict) -> float:
  """A run's final accuracy; -inf for a diverged run (never the best grid point)."""
  return result["final"].get("accuracy", -math.inf) if "diverged" not in result else -math.inf


def _diagnostics(history: list[dict]) -> dict:
  """The run's trajectory: applied-update and pseudo-gradient cosines, path efficiency.

  With CRA, its per-round diagnostics too (``canonical``: explained energy,
  effective clients, consecutive bases' overlap and largest angle).
  """
  last = history[-1] if history else {}
  out = {"cosine": [h.get("update_cosine") for h in history],
         "pg_cosine": [h.get("pseudo_gradient_cosine") for h in history],
         "path_efficiency": last.get("path_efficiency")}
  canonical = sorted({k for h in history for k in h if k.startswith("canonical/")})
  if canonical:
    out["canonical"] = {k.split("/", 1)[1]: [h.get(k) for h in history] for k in canonical}
  return out


def run_one(config: ml_collections.ConfigDict, rundir: Path, scenario: Scenario,
            split: str) -> dict | None:
  """One federated run, kept in ``rundir/result.json`` (None: another worker has it)."""

  def compute() -> dict:
    tick = time.perf_counter()
    try:
      summary, trainable = driver.train_and_evaluate(
          config, str(rundir), setup=scenario.setup(split), progress=False,
          return_trainable=True)
    except driver.NonFiniteError as e:   # a diverging grid point: recorded, never averaged
      result = {"diverged": str(e), "final": {}, "curve": []}
    else:
      history = metrics_lib.read(rundir)
      final = {k[5:]: v for k, v in summary["final"].items() if k.startswith("eval_")}
      if split == "test":   # each client's accuracy too (a resumed run evaluates again)
        final = ({**final, "clients": summary["final_clients"]} if summary.get("final_clients")
                 else scenario.evaluator(split)(jax.device_put(trainable)))
      result = {"final": final, **_diagnostics(history),
                "curve": [(h["round"], h["eval_accuracy"]) for h in history
                          if "eval_accuracy" in h]}
    for ckpt in rundir.glob("checkpoints"):   # results are kept; checkpoints are not
      shutil.rmtree(ckpt, ignore_errors=True)
    return {**result, "seconds": time.perf_counter() - tick, "pid": os.getpid()}

  result = workdirs.kept(rundir, "result.json", compute)
  if (result is not None and "canonical" not in result and "diverged" not in result
      and (rundir / metrics_lib.METRICS_FILE).exists()
      and config.aggregation.kind == "canonical"):
    # Kept by a version that did not record CRA's diagnostics: read them back
    # once, into the kept result (workers polling for results read it again).
    result["canonical"] = _diagnostics(metrics_lib.read(rundir)).get("canonical", {})
    workdirs.write(rundir, "result.json", result)
  return result

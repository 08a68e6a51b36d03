"""The comparison's runs: scenarios, each method's tuned point and seeds, references, resumable.

The protocol (:mod:`fedjax_mm.experiment.protocol`, :mod:`~.tuning`): every
method is tuned on a log-spaced grid over its axes (the clients' learning
rate x the server's, or a merging scale), widened until the best point is
interior, each point scored on the validation clients averaged over the
selection seeds; the chosen point then runs on the fresh report seeds,
evaluated on the test clients (disjoint from the validation ones), with each
client's accuracy kept for bootstrap intervals. The centralized references
are tuned the same way over Adam's learning rate.

Every run is kept in its own directory under the experiment's work directory
(``<scenario>/<method>/<point>/<sel|test><seed>/result.json``, references
under ``<scenario>/references/``) through :mod:`fedjax_mm.experiment.workdirs`,
so workers share the work and an interrupted experiment resumes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from fedjax_mm.data import federated
from fedjax_mm.experiment import methods as methods_lib
from fedjax_mm.experiment import joint as joint_lib
from fedjax_mm.experiment import overrides, protocol, references, tuning, workdirs
from fedjax_mm.experiment.scenario_configs import OWN_CONFIGS, SMALL, scenario_config  # noqa: F401
from fedjax_mm import setups
from fedjax_mm.setups import fedma
from fedjax_mm.experiment.runs import accuracy, method_config, run_one  # noqa: F401

SPLITS = ("validation", "test")


class Scenario:
  """One scenario's base config and data (built once, when a run first needs it).

  The data is built with every client's test rows; :meth:`setup` then keeps
  the validation or the test clients (:func:`protocol.evaluation_split`).
  """

  def __init__(self, name: str, base: ml_collections.ConfigDict, towers: dict):
    self.name, self.base, self._towers = name, base, towers
    self._setup, self._split, self._splits, self._evaluators = None, None, {}, {}
    self.data_seconds = 0.0

  def _build(self):
    if self._setup is None:
      eval_clients = self.base.data.get("eval_clients", 0)
      tick = time.perf_counter()
      if self.base.data.name == "world":
        if "towers" not in self._towers:   # shared by every scenario
          self._towers["towers"] = fedma.build_towers(self.base)
        every = overrides.apply_values(self.base, {"data.eval_clients": 0})
        self._setup = fedma.build(every, pretrained=self._towers["towers"], progress=False)
      else:                                # e.g. the positive control: every client's test rows
        self._setup = setups.build(self.base, progress=False)
      self._split = protocol.evaluation_split(np.asarray(self._setup.test.sizes),
                                              eval_clients, self.base.seed)
      self.data_seconds = time.perf_counter() - tick
    return self._setup

  def setup(self, split: str):
    """The scenario's setup evaluated on the ``split`` ("validation" or "test") clients."""
    if split not in self._splits:
      full = self._build()
      ids = getattr(self._split, split)
      self._splits[split] = full._replace(
          test=federated.select_clients(full.test, ids),
          info={**full.info, "eval_split": split, "eval_clients": len(ids)})
    return self._splits[split]

  def evaluator(self, split: str) -> references.Evaluate:
    if split not in self._evaluators:
      s = self.setup(split)
      self._evaluators[split] = references.evaluator(
          s.task, s.test, self.base.eval_batch_size, per_client=split == "test")
    return self._evaluators[split]


RunAt = Callable[[tuning.Point, int, str, Path], "dict | None"]


def tuned_runs(axes: Sequence[tuning.Axis], run_at: RunAt, base: Path, *, tune: bool,
               seeds: Sequence[int], point: tuning.Point | None = None) -> dict | None:
  """Select a point (unless given), then run it on the report ``seeds``; None while pending.

  ``run_at(point, seed, split, rundir)`` runs (or reads back) one run.
  """
  search = None
  if point is None and tune:
    def score(p: tuning.Point) -> float | None:
      runs = [run_at(p, s, "validation", base / tuning.point_name(p) / f"sel{s}")
              for s in protocol.SELECTION_SEEDS]
      return None if any(r is None for r in runs) else float(np.mean([accuracy(r)
                                                                        for r in runs]))
    search = tuning.search(len(axes), score)
    if search.pending:
      return None
    point = search.chosen
  point = point if point is not None else (0,) * len(axes)
  runs = [run_at(point, s, "test", base / tuning.point_name(point) / f"test{s}") for s in seeds]
  if any(r is None for r in runs):
    return None
  grid = {}
  if search is not None:
    grid = {tuning.point_name(p): {"values": tuning.values(axes, p), "score": s}
            for p, s in sorted(search.scores.items())}
  return {"axes": [a.path for a in axes], "point": list(point),
          "chosen": tuning.values(axes, point), "grid": grid,
          "edges": list(search.edges) if search else [None] * len(axes), "runs": runs}


def method_runs(scenario: Scenario, key: str, workdir: Path, *, seeds: Sequence[int],
                tune: bool, point: tuning.Point | None = None) -> dict | None:
  """A method's tuned point and its report runs (``point``: given, e.g. an ablation's)."""
  method = methods_lib.METHODS[key]
  axes = [tuning.Axis(path, method.default(scenario.base, path)) for path in method.axes]
  at_values = run_at_rates(scenario, key)

  def run_at(p, seed, split, rundir):
    return at_values(tuning.values(axes, p), seed, split, rundir)

  out = tuned_runs(axes, run_at, workdir / scenario.name / key, tune=tune, seeds=seeds,
                   point=point)
  if out is not None:
    out.update(label=method.label, ablation=key in methods_lib.ABLATIONS)
  return out


REFERENCES = ("centralized, same examples", "centralized, same sequential steps")


def reference_runs(scenario: Scenario, workdir: Path, *, central_batch: int,
                   seeds: Sequence[int], tune: bool) -> dict | None:
  """The floor and the two centralized references, each tuned over Adam's learning rate.

  "same examples": as many example-gradients as one federated run computes
  (:func:`references.example_budget`), in batches of ``central_batch``; "same
  sequential steps": rounds x the mean client's local steps. None while pending.
  """
  base, setup = scenario.base, scenario.setup("test")
  budget = references.example_budget(base, setup.train)
  steps = {REFERENCES[0]: max(budget // central_batch, 1),
           REFERENCES[1]: references.sequential_steps(base, setup.train)}
  # Adam's rate: centered on the clients' when they run Adam, else on Adam's usual 0.01.
  center = base.client.learning_rate if base.client.optimizer == "adam" else 0.01
  axes = [tuning.Axis("client.learning_rate", float(center))]
  out = {"example_budget": budget, "examples_per_round": budget / base.num_rounds}
  floor = workdirs.kept(workdir / scenario.name / "references" / "floor", "result.json",
                        lambda: {"final": references.floor(
                            setup.task, seeds[0], scenario.evaluator("test")).summary})
  for name in REFERENCES:
    def run_at(p, seed, split, rundir, name=name):
      def compute():
        tick = time.perf_counter()
        config = overrides.apply_values(base, {"seed": seed})
        ref = references.centralized(config, setup.task, setup.train,
                                     scenario.evaluator(split), batch_size=central_batch,
                                     num_steps=steps[name],
                                     learning_rate=tuning.values(axes, p)[axes[0].path])
        return {"final": ref.summary, "steps": ref.steps,
                "seconds": time.perf_counter() - tick}
      return workdirs.kept(rundir, "result.json", compute)
    key = "same_examples" if name == REFERENCES[0] else "same_steps"
    out[name] = tuned_runs(axes, run_at, workdir / scenario.name / "references" / key,
                           tune=tune, seeds=seeds)
  if floor is None or any(out[name] is None for name in REFERENCES):
    return None
  out["floor"] = floor
  return out


def run_at_rates(scenario: Scenario, key: str) -> Callable[..., "dict | None"]:
  """``(values, seed, split, rundir) -> result``: method ``key`` at config ``values``."""
  method = methods_lib.METHODS[key]

  def run_at(values, seed, split, rundir):
    config = method_config(scenario.base, method, values, seed)
    if split == "validation":   # selection reads the final accuracy only: no curve
      config.eval_every = 0
    return run_one(config, rundir, scenario, split)

  return run_at


def run_scenario(scenario: Scenario, keys: Sequence[str], workdir: Path, *, central_batch: int,
                 seeds: Sequence[int], tune: bool, joint: Sequence[str] = (),
                 poll_s: float = 5.0) -> dict:
  """Every run of one scenario (shared with other workers), then its report entry.

  Ablations run at Fed-CMP's chosen point (so they pair with it by seed); they
  wait for it when "fedcmp" is among ``keys``. Each variant of ``joint`` is
  tuned over :data:`fedjax_mm.experiment.joint.JOINT_AXES` at Fed-CMP's
  chosen rates (its defaults without "fedcmp"), entry ``<key>+joint``.
  """
  base = scenario.base
  while True:
    refs = reference_runs(scenario, workdir, central_batch=central_batch, seeds=seeds,
                          tune=tune)
    entries: dict[str, dict | None] = {}
    for key in keys:
      cmp_point = tuple(entries["fedcmp"]["point"]) if entries.get("fedcmp") else None
      if key in methods_lib.ABLATIONS and "fedcmp" in keys and cmp_point is None:
        entries[key] = None          # at Fed-CMP's point, once it is chosen
        continue
      entries[key] = method_runs(scenario, key, workdir, seeds=seeds, tune=tune,
                                 point=cmp_point if key in methods_lib.ABLATIONS else None)
    for key in joint:
      if "fedcmp" in keys and entries["fedcmp"] is None:
        entries[key + joint_lib.SUFFIX] = None
        continue
      variant = methods_lib.METHODS[key]
      rates = (entries["fedcmp"]["chosen"] if "fedcmp" in keys else
               {path: variant.default(base, path) for path in variant.axes})
      entries[key + joint_lib.SUFFIX] = joint_lib.joint_runs(
          key, rates, run_at_rates(scenario, key), workdir / scenario.name / key / "joint",
          seeds=seeds, score=accuracy)
    if refs is not None and all(e is not None for e in entries.values()):
      break
    time.sleep(poll_s)    # the rest is held by other workers: wait for their results
  _print_entries(entries)
  return {"dataset": base.data.name, "rounds": base.num_rounds,
          "clients": base.data.num_clients,
          "per_round": base.clients_per_round, "local_steps": base.local.num_steps,
          "batch": base.local.batch_size, "local_mode": base.local.mode,
          "eval_clients": {s: len(getattr(scenario._split, s)) for s in SPLITS},
          "data_seconds": scenario.data_seconds, "references": refs, "methods": entries}


def _print_entries(entries: Mapping[str, dict]) -> None:
  for entry in entries.values():
    accs = [accuracy(r) for r in entry["runs"]]
    chosen = ", ".join(f"{k.split('.')[-2]} {v:.3g}" for k, v in entry["chosen"].items())
    print(f"  {entry['label']:45s} {chosen}: acc {np.mean(accs):.4f} "
          f"(+- {np.std(accs):.4f}), {sum(r['seconds'] for r in entry['runs']):.0f}s")

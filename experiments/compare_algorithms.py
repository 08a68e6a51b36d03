"""Fed-CMP against the baselines on the four scenarios of `configs/scenarios.py`.

For every scenario: the floor (untrained projector), two centralized
references (the federated run's example budget; and its number of
sequential steps, rounds x the mean client's local steps, in batches of
``--central-batch``), and every method of ``--methods``
(see ``experiments/compare_methods.py``) at the same budget (rounds x local
steps x examples). Each method is tuned on the same relative grid of its own
learning rate (x1/3, x1, x3 of its default) on seed 0; the best is then run
on the other seeds. Writes ``compare.md`` / ``compare.json`` (mean ± std over
seeds of alignment accuracy, per-attribute accuracy, caption loss, worst-10%
client accuracy, the oscillation of the server's trajectory, the grid and the
chosen value) and one plot per scenario (accuracy vs round, ±std shaded),
plus the oscillation curve (cosine between consecutive server updates).
Ablations of Fed-CMP run on ``--ablation-scenarios`` at its chosen rate; the
budget check runs FedAvg and FedAvgM on IID clients at the same budget.

  python experiments/compare_algorithms.py --quick --workers 2     # < 20 min on 2 cores
  python experiments/compare_algorithms.py --scale small --workers 2   # hours; resumable
  python experiments/compare_algorithms.py                         # the presets: a GPU job
  python experiments/compare_algorithms.py --scenarios one_pass --methods fedavg,fedcmp

``--scale small`` is the quick size (see ``QUICK``) with the full protocol
(every method, tuning, 3 seeds, ablations); the default ``presets`` runs the
scenarios as configured (150 rounds of 100 clients; ~40 h on a 2-core CPU).
Every finished run is kept under ``--workdir`` (``result.json``): a killed
experiment resumes where it stopped (and the driver resumes a killed run
from its checkpoint). ``--workers N`` runs N processes over the same work
directory (each run is claimed by one of them; the CPU cores are split).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_methods import ABLATIONS, GRID, METHODS  # noqa: E402
import compare_report  # noqa: E402
from fedma_demo import apply_overrides, set_field  # noqa: E402

from fedjax_mm import centralized, config_files, evaluation  # noqa: E402
from fedjax_mm.simulation import validation  # noqa: E402
from fedjax_mm import metrics as metrics_lib  # noqa: E402
from fedjax_mm.setups import fedma  # noqa: E402
from fedjax_mm.simulation import driver, mesh  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("concept_0.1", "concept_0.5", "domain", "one_pass", "silos")
# The budget check: the same budget on IID clients (one seed, default lrs).
# Where IID clients reach the centralized reference, the scenarios' gap to it
# is heterogeneity; where they do not, part of it is budget.
BUDGET_CHECK = ("iid", ("fedavg", "fedavgm"))
# --quick: one seed, no tuning, 30 rounds of 800 example-gradients (a fifth of
# the presets' 4,000: 20 clients, or the 8 silos with batches of 10 x 10
# steps and 1,000 rows each), evaluation on 100 clients (one_pass: all 600,
# ~1,000 test rows), five methods (Fed-CMP, its nearest relative KnOTS, and
# the FedAvg, FedAvgM and FedAdam baselines); no ablations, no budget check.
QUICK = {"rounds": 30, "clients_per_round": 20, "eval_clients": 100, "silo_examples": 1_000,
         "methods": "fedavg,fedavgm,fedadam,knots,fedcmp", "ablation_scenarios": ""}


def scenario_config(name: str, args):
  config = config_files.load(ROOT / "configs/scenarios.py", name)
  if args.scale == "small":
    config.num_rounds = QUICK["rounds"]
    if config.clients_per_round > QUICK["clients_per_round"]:
      config.clients_per_round = QUICK["clients_per_round"]
    else:   # the silos: all clients every round, smaller local work and test sets
      config.local.num_steps, config.local.batch_size = 10, 10
      config.data.examples_per_client = QUICK["silo_examples"]
    if config.sampling == "one_pass":
      # One pass over a population sized to the budget; its clients hold ~2
      # test rows each, so all of them are evaluated.
      config.data.num_clients = config.num_rounds * config.clients_per_round
      config.data.eval_clients = 0
    elif config.data.eval_clients > QUICK["eval_clients"]:
      config.data.eval_clients = QUICK["eval_clients"]
  if args.rounds:
    config.num_rounds = args.rounds
  apply_overrides(config, args.override)
  return config


def method_config(base, method, lr: float):
  config = base.copy_and_resolve_references()
  for key, value in method.overrides.items():
    set_field(config, key, value)
  set_field(config, method.tuned, lr)
  validation.validate(config)
  return config


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # alive, someone else's
    return True
  return True


def claim(rundir: Path) -> bool:
  """Takes ``rundir`` for this process; False while another live process holds it.

  Workers (``--workers``) share the work directory: a run is done by whoever
  creates its ``claim`` file first, and a claim left by a killed process is
  taken over, so an interrupted experiment resumes with any number of workers.
  """
  rundir.mkdir(parents=True, exist_ok=True)
  lock = rundir / "claim"
  for _ in range(3):
    try:
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        text, age = lock.read_text(), time.time() - lock.stat().st_mtime
      except OSError:               # released meanwhile: try again
        continue
      holder = int(text) if text.strip().isdigit() else 0
      if holder == os.getpid():
        return True
      if (holder and _alive(holder)) or (not holder and age < 60):   # 0: being written
        return False
      lock.unlink(missing_ok=True)  # stale: its process is gone
      continue
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True
  return False


def kept(rundir: Path, filename: str, compute) -> dict | None:
  """``rundir/filename`` (JSON), computed by ``compute()`` under a claim the first time.

  Returns None while another worker holds the claim. The file is written
  atomically: a reader never sees half of it.
  """
  done = rundir / filename
  if done.exists():
    return json.loads(done.read_text())
  if not claim(rundir):
    return None
  if not done.exists():             # it may have finished between the check and the claim
    tmp = rundir / f"{filename}.tmp"
    tmp.write_text(json.dumps(compute()))
    tmp.replace(done)
  (rundir / "claim").unlink(missing_ok=True)
  return json.loads(done.read_text())


def run_one(config, rundir: Path, scenario: "Scenario") -> dict | None:
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

  return kept(rundir, "result.json", compute)


def accuracy(result: dict) -> float:
  return result["final"].get("accuracy", -math.inf) if "diverged" not in result else -math.inf


def sequential_steps(config, train) -> int:
  """Local steps of the mean client (epochs mode: its epochs' batches, capped)."""
  if config.local.mode != "epochs":
    return config.local.num_steps
  sizes = np.asarray(train.sizes)
  steps = np.minimum(config.local.num_steps,
                     config.local.num_epochs * -(-sizes // config.local.batch_size))
  return max(int(round(float(steps.mean()))), 1)


def references(config, setup, batch: int) -> dict:
  """Floor and the two centralized references, on the scenario's data."""
  eval_fn = jax.jit(evaluation.build_eval_fn(setup.task, setup.test, config.eval_batch_size))
  evaluate = lambda p: evaluation.summarize(jax.device_get(eval_fn(p, setup.test)))
  init = setup.task.init_trainable(jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1))
  out = {"floor": evaluate(init)}
  budget = config.num_rounds * config.clients_per_round * config.local.num_steps * \
      config.local.batch_size
  for name, steps in (("centralized, same examples", budget // batch),
                      ("centralized, same sequential steps",
                       config.num_rounds * sequential_steps(config, setup.train))):
    trained = centralized.train(setup.task, setup.train, num_steps=steps, batch_size=batch,
                                optimizer=optax.adam(config.client.learning_rate),
                                seed=config.seed, trainable=init)
    out[name] = {**evaluate(trained), "steps": steps}
  return out


class Scenario:
  """One scenario's base config, with its data built only when a run needs it."""

  def __init__(self, name: str, base, towers: dict):
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


def scenario_references(scenario: Scenario, rundir: Path, batch: int) -> dict | None:
  """The scenario's references, computed once and kept like a run."""
  return kept(rundir, "references.json",
              lambda: references(scenario.base, scenario.setup, batch))


def method_runs(scenario: Scenario, key: str, method, workdir: Path, *, seeds: int,
                tune: bool, chosen_cmp: float | None) -> dict | None:
  """A method's grid (seed 0) and its best point on every seed; None while pending.

  Pending: another worker holds one of its runs, or (an ablation) Fed-CMP's
  learning rate is not chosen yet. Every run this process can take is done.
  """
  is_ablation = key in ABLATIONS
  center = method.default_lr(scenario.base)
  grid = [center * g for g in GRID] if tune and not is_ablation else [center]
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


def run_scenario(scenario: Scenario, todo: dict, workdir: Path, args, *, seeds: int,
                 tune: bool) -> dict:
  """Every run of one scenario (shared with other workers), then its report entry."""
  base = scenario.base
  while True:
    refs = scenario_references(scenario, workdir / scenario.name / "references",
                               args.central_batch)
    entries: dict = {}
    for key, method in todo.items():
      chosen = entries["fedcmp"]["chosen"] if entries.get("fedcmp") else None
      if key in ABLATIONS and "fedcmp" in todo and chosen is None:
        entries[key] = None          # at Fed-CMP's learning rate, once it is chosen
        continue
      entries[key] = method_runs(scenario, key, method, workdir, seeds=seeds, tune=tune,
                                 chosen_cmp=chosen)
    if refs is not None and all(e is not None for e in entries.values()):
      break
    time.sleep(5)    # the rest is held by other workers: wait for their results
  for key, entry in entries.items():
    accs = [accuracy(r) for r in entry["runs"]]
    print(f"  {entry['label']:45s} lr {entry['chosen']:.4g}: acc {np.mean(accs):.4f} "
          f"(+- {np.std(accs):.4f}), {sum(r['seconds'] for r in entry['runs']):.0f}s")
  return {"rounds": base.num_rounds, "clients": base.data.num_clients,
          "per_round": base.clients_per_round, "local_steps": base.local.num_steps,
          "batch": base.local.batch_size, "data_seconds": scenario.data_seconds,
          "references": refs, "methods": entries}


def spawn_workers(count: int) -> list[subprocess.Popen]:
  """This command as ``count - 1`` more workers, the CPU cores split among all ``count``.

  Sets this process's own share too (before JAX starts); it is the first worker.
  """
  if "FEDJAX_MM_CPU_DEVICES" not in os.environ:
    os.environ["FEDJAX_MM_CPU_DEVICES"] = str(max((os.cpu_count() or 1) // count, 1))
  argv = [sys.executable, *sys.argv]
  return [subprocess.Popen(argv + ["--worker", str(rank)], env=dict(os.environ))
          for rank in range(1, count)]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/compare")
  parser.add_argument("--out", default=str(ROOT / "experiments/results"))
  parser.add_argument("--scenarios", default=",".join(SCENARIOS))
  parser.add_argument("--methods", default=None,
                      help=f"default: all of {tuple(METHODS)} ({QUICK['methods']} with --quick)")
  parser.add_argument("--ablations", default=",".join(ABLATIONS),
                      help="Fed-CMP ablations ('' for none), run on --ablation-scenarios")
  parser.add_argument("--ablation-scenarios", default=None,
                      help=f"default: one_pass ({QUICK['ablation_scenarios'] or 'none'} "
                           "with --quick)")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--no-tune", action="store_true", help="each method's default lr only")
  parser.add_argument("--quick", action="store_true",
                      help="one seed, no tuning, a fifth of the work per round, "
                           f"{QUICK['rounds']} rounds (see QUICK)")
  parser.add_argument("--scale", choices=("presets", "small"), default=None,
                      help="presets: the scenarios as configured (150 rounds of 100 clients); "
                           "small: --quick's size (see QUICK). Default: small with --quick")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument("--central-batch", type=int, default=64)
  parser.add_argument("--workers", type=int, default=1,
                      help="parallel processes sharing the work directory, the CPU cores "
                           "split between them (2-core CPU, --scale small: 2 workers of 1 "
                           "device finish 1.26x more runs per hour than 1 of 2 devices)")
  parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)   # its rank
  parser.add_argument("--no-budget-check", action="store_true",
                      help=f"skip {BUDGET_CHECK[1]} on the {BUDGET_CHECK[0]!r} preset "
                           "(--quick skips it)")
  parser.add_argument("--override", action="append", default=[],
                      help="config overrides key=value for every run, repeatable")
  args = parser.parse_args()
  if args.workers < 1:
    parser.error(f"--workers must be >= 1, got {args.workers}")
  if args.methods is None:
    args.methods = QUICK["methods"] if args.quick else ",".join(METHODS)
  if args.scale is None:
    args.scale = "small" if args.quick else "presets"
  if args.ablation_scenarios is None:
    args.ablation_scenarios = QUICK["ablation_scenarios"] if args.quick else "one_pass"
  workers = spawn_workers(args.workers) if args.workers > 1 and not args.worker else []
  mesh.use_cpu_cores()                  # before any JAX computation
  workdir = Path(args.workdir) / ("quick" if args.quick else f"full-{args.scale}")
  # Seeds and grid points of one method compile to the same program.
  jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir) / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  seeds = 1 if args.quick else args.seeds
  tune = not (args.quick or args.no_tune)
  started = time.perf_counter()
  methods = {k: METHODS[k] for k in args.methods.split(",") if k}
  ablations = {k: ABLATIONS[k] for k in args.ablations.split(",") if k}
  report = {"settings": {"quick": args.quick, "scale": args.scale, "seeds": seeds, "tuned": tune,
                         "grid": GRID, "devices": jax.device_count(),
                         "workers": args.workers}, "scenarios": {}}
  towers: dict = {}
  entries: dict = {}
  names = args.scenarios.split(",")
  # Worker r starts r/workers of the way down the list (wrapping round), so the
  # workers begin on different scenarios and mostly build each one's data once.
  shift = args.worker * len(names) // args.workers
  for name in names[shift:] + names[:shift]:
    base = scenario_config(name, args)
    validation.validate(base)
    todo = {**methods, **(ablations if name in args.ablation_scenarios.split(",") else {})}
    print(f"== {name}: {base.data.num_clients} clients, {base.clients_per_round}/round, "
          f"{base.num_rounds} rounds", flush=True)
    entries[name] = run_scenario(Scenario(name, base, towers), todo, workdir, args,
                                 seeds=seeds, tune=tune)
  report["scenarios"] = {name: entries[name] for name in names}
  report["settings"]["not_run"] = [name for name in SCENARIOS if name not in names]
  if not (args.no_budget_check or args.quick):
    name, keys = BUDGET_CHECK
    base = scenario_config(name, args)
    validation.validate(base)
    print(f"== budget check: {name}", flush=True)
    report["budget_check"] = run_scenario(Scenario(name, base, towers),
                                          {k: METHODS[k] for k in keys}, workdir, args,
                                          seeds=1, tune=False)
  for worker in workers:
    if worker.wait():
      raise SystemExit(f"a worker failed (exit {worker.returncode}); rerun to resume")
  if args.worker:
    return
  report["settings"]["wall_seconds"] = time.perf_counter() - started
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = "compare_quick" if args.quick else "compare"
  (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
  (out / f"{stem}.md").write_text(compare_report.markdown(report))
  compare_report.plots(report, out, stem)
  print(compare_report.markdown(report))
  print(f"wall time: {report['settings']['wall_seconds'] / 60:.1f} min; results in {out}")


if __name__ == "__main__":
  main()

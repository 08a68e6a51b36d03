"""Fed-CMP against the baselines on the four scenarios of `configs/scenarios.py`.

For every scenario: the floor (untrained projector), two centralized
references (the federated run's example budget; and its number of
sequential steps, rounds x the mean client's local steps, in batches of
``--central-batch``), and every method of ``--methods``
(``fedjax_mm.experiment.methods``) at the same budget (rounds x local
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

``--scale small`` is the quick size (``fedjax_mm.experiment.comparison.SMALL``)
with the full protocol (every method, tuning, 3 seeds, ablations); the default ``presets`` runs the
scenarios as configured (150 rounds of 100 clients; ~40 h on a 2-core CPU).
Every finished run is kept under ``--workdir`` (``result.json``): a killed
experiment resumes where it stopped (and the driver resumes a killed run
from its checkpoint). ``--workers N`` runs N processes over the same work
directory (each run is claimed by one of them; the CPU cores are split).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax

from fedjax_mm.experiment import comparison, compare_report, methods
from fedjax_mm.simulation import mesh, validation

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("concept_0.1", "concept_0.5", "domain", "one_pass", "silos")
# The budget check: the same budget on IID clients (one seed, default lrs).
# Where IID clients reach the centralized reference, the scenarios' gap to it
# is heterogeneity; where they do not, part of it is budget.
BUDGET_CHECK = ("iid", ("fedavg", "fedavgm"))
# --quick: one seed, no tuning, the small scale (comparison.SMALL), five
# methods (Fed-CMP, its nearest relative KnOTS, and the FedAvg, FedAvgM and
# FedAdam baselines); no ablations, no budget check.
QUICK = {"rounds": comparison.SMALL["rounds"],
         "methods": "fedavg,fedavgm,fedadam,knots,fedcmp", "ablation_scenarios": ""}


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
  parser.add_argument("--methods", default=None, type=methods.methods_arg,
                      help=f"default: all of {methods.COMPARED} ({QUICK['methods']} with "
                           "--quick)")
  parser.add_argument("--ablations", default=",".join(methods.ABLATIONS),
                      type=methods.ablations_arg,
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
                      help="config override key=value for every run, parsed by the field's "
                           "type as fedjax_mm.main's --config.key=value; repeatable")
  args = parser.parse_args()
  if args.workers < 1:
    parser.error(f"--workers: must be >= 1, got {args.workers}")
  if args.methods is None:
    args.methods = methods.parse_methods(QUICK["methods"] if args.quick else
                                         ",".join(methods.COMPARED))
  if args.scale is None:
    args.scale = "small" if args.quick else "presets"
  if args.ablation_scenarios is None:
    args.ablation_scenarios = QUICK["ablation_scenarios"] if args.quick else "one_pass"
  names = args.scenarios.split(",")

  def base_config(name: str):
    base = comparison.scenario_config(name, scale=args.scale, rounds=args.rounds,
                                      override=args.override)
    validation.validate(base)
    return base

  try:   # a bad scenario or --override is a one-line usage error, before any compute
    for name in names:
      base_config(name)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  workers = spawn_workers(args.workers) if args.workers > 1 and not args.worker else []
  mesh.use_cpu_cores()                  # before any JAX computation
  workdir = Path(args.workdir) / ("quick" if args.quick else f"full-{args.scale}")
  # Seeds and grid points of one method compile to the same program.
  jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir) / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  seeds = 1 if args.quick else args.seeds
  tune = not (args.quick or args.no_tune)
  started = time.perf_counter()
  report = {"settings": {"quick": args.quick, "scale": args.scale, "seeds": seeds, "tuned": tune,
                         "grid": methods.GRID, "devices": jax.device_count(),
                         "workers": args.workers}, "scenarios": {}}
  towers: dict = {}
  entries: dict = {}
  # Worker r starts r/workers of the way down the list (wrapping round), so the
  # workers begin on different scenarios and mostly build each one's data once.
  shift = args.worker * len(names) // args.workers
  for name in names[shift:] + names[:shift]:
    base = base_config(name)
    keys = args.methods + (args.ablations if name in args.ablation_scenarios.split(",") else [])
    print(f"== {name}: {base.data.num_clients} clients, {base.clients_per_round}/round, "
          f"{base.num_rounds} rounds", flush=True)
    entries[name] = comparison.run_scenario(
        comparison.Scenario(name, base, towers), list(dict.fromkeys(keys)), workdir,
        central_batch=args.central_batch, seeds=seeds, tune=tune)
  report["scenarios"] = {name: entries[name] for name in names}
  report["settings"]["not_run"] = [name for name in SCENARIOS if name not in names]
  if not (args.no_budget_check or args.quick):
    name, keys = BUDGET_CHECK
    print(f"== budget check: {name}", flush=True)
    report["budget_check"] = comparison.run_scenario(
        comparison.Scenario(name, base_config(name), towers), list(keys), workdir,
        central_batch=args.central_batch, seeds=1, tune=False)
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

"""Fed-CMP against the baselines on the scenarios of `configs/scenarios.py`.

For every scenario: the floor (untrained projector), two centralized
references (the example-gradients one federated run computes, and its number
of sequential steps, rounds x the mean client's local steps, in batches of
``--central-batch``; both tuned over Adam's learning rate), and every method
of ``--methods`` (``fedjax_mm.experiment.methods``) at the same budget. The
protocol (``fedjax_mm.experiment.comparison``): each method is tuned on a
log-spaced 2-D grid (clients' x server's learning rate, or merging scale),
widened until the best point is interior, selected on validation clients
averaged over 2 selection seeds; the chosen point runs on ``--seeds`` fresh
report seeds, paired across methods, evaluated on disjoint test clients.
Writes ``compare.md`` / ``compare.json`` (accuracy mean ± std over seeds,
bootstrap intervals over clients, paired t-tests against the best baseline
with Holm's correction, a Friedman/Nemenyi ranking across scenarios, the
pseudo-gradient cosine and path efficiency of each trajectory) and one plot
per scenario. Ablations of Fed-CMP run on ``--ablation-scenarios`` at its
chosen point, on the same report seeds.

  python experiments/compare_algorithms.py --quick --workers 2     # < 20 min on 2 cores
  python experiments/compare_algorithms.py --scale small --workers 2   # hours; resumable
  python experiments/compare_algorithms.py                         # the presets: a GPU job
  python experiments/compare_algorithms.py --scenarios one_pass --methods fedavg,fedcmp

``--scale small`` is the quick size (``fedjax_mm.experiment.comparison.SMALL``)
with the full protocol (every method, tuning, 5 report seeds, ablations); the default
``presets`` runs the scenarios as configured (150 rounds of 100 clients: a GPU job).
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

from fedjax_mm.experiment import (comparison, compare_report, joint as joint_lib, methods,
                                  overrides, protocol, tuning)
from fedjax_mm.simulation import mesh, validation

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ("concept_0.1", "concept_0.5", "domain", "one_pass", "one_pass_concept",
             "quantity", "silos")
# The budget check: the same budget on IID clients (one seed, default lrs).
# Where IID clients reach the centralized reference, the scenarios' gap to it
# is heterogeneity; where they do not, part of it is budget.
BUDGET_CHECK = ("iid", ("fedavg", "fedavgm"))
# --quick: one report seed, no tuning, the small scale (comparison.SMALL), no
# ablations, no budget check; four methods (Fed-CMP, its nearest relative
# KnOTS, the FedAvg and FedAvgM baselines) on four scenarios (label skew,
# domain skew, the heterogeneous one pass, the silos), to stay under 20
# minutes on a 2-core CPU from a cold compilation cache: a fresh run of the
# earlier 5 x 5 took 25.1 min (2,585 s of runs over 2 workers), of which these
# 4 x 4 are 1,759 s. Left out: FedAdam (never first there), concept_0.5
# (concept_0.1's milder twin), the IID one pass, quantity (3x a run's time).
QUICK = {"rounds": comparison.SMALL["rounds"],
         "scenarios": "concept_0.1,domain,one_pass_concept,silos",
         "methods": "fedavg,fedavgm,knots,fedcmp", "ablation_scenarios": ""}


def schedule_overrides(schedule: str, rounds: int) -> list[str]:
  """``--schedule``'s config overrides (the warmup is 10% of the ``rounds``)."""
  if schedule == "constant":
    return []
  return [f"{side}.{field}" for side in ("client", "server") for field in
          (f"schedule={schedule}", f"warmup_rounds={max(rounds // 10, 1)}")]


def print_plan(args: argparse.Namespace, names: list[str]) -> None:
  """The protocol's run count per scenario: fewest (no widening) and most (every side widened)."""
  tune = not (args.quick or args.no_tune)
  seeds = 1 if args.quick else args.seeds
  sel = len(protocol.SELECTION_SEEDS) if tune else 0
  lo = hi = 0
  for name in names:
    ablated = name in args.ablation_scenarios.split(",")
    ablations = args.ablations if ablated else []
    for key in args.methods:
      few, many = tuning.grid_points(len(methods.METHODS[key].axes)) if tune else (0, 0)
      lo, hi = lo + few * sel + seeds, hi + many * sel + seeds
    joint = len(joint_lib.points()) * len(protocol.SELECTION_SEEDS) + seeds
    extra = len(ablations) * seeds + (len(args.joint) * joint if ablated else 0)
    lo, hi = lo + extra, hi + extra
  hours = lambda runs: runs * args.seconds_per_run / args.workers / 3600
  print(f"{len(names)} scenarios x {len(args.methods)} methods (+ ablations): {lo:,} to {hi:,} "
        f"federated runs (plus the centralized references' ~{(3 * sel + seeds) * 2 * len(names)}"
        f" short ones): {hours(lo):.1f} to {hours(hi):.1f} h at {args.seconds_per_run:.0f} s a "
        f"run over {args.workers} worker(s)")


def report_stem(names: list[str], *, quick: bool, variant: str) -> str:
  """The report files' name: ``compare[_quick][_r150][_warmup_cosine][_control|_real]``.

  Scenarios of their own config files alone are a report of their own (the
  positive control: ``compare_control``; the real towers: ``compare_real``).
  """
  own = [comparison.OWN_CONFIGS[n].report for n in names if n in comparison.OWN_CONFIGS]
  return (("compare_quick" if quick else "compare") + variant.replace("-", "_")
          + ("_" + "_".join(own) if len(own) == len(names) else ""))


def cpu_name() -> str:
  """The CPU model (``/proc/cpuinfo``), named in the report: numbers depend on the machine."""
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"


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
  parser.add_argument("--scenarios", default=None,
                      help=f"default: all of {SCENARIOS} ({QUICK['scenarios']} with --quick)")
  parser.add_argument("--methods", default=None, type=methods.methods_arg,
                      help=f"default: all of {methods.COMPARED} ({QUICK['methods']} with "
                           "--quick)")
  parser.add_argument("--ablations", default=",".join(methods.ABLATIONS),
                      type=methods.ablations_arg,
                      help="Fed-CMP ablations ('' for none), run on --ablation-scenarios")
  parser.add_argument("--joint", default=[], type=methods.ablations_or_fedcmp_arg,
                      help="Fed-CMP variants (fedcmp or ablations) whose rank x momentum x "
                           "temperature is tuned jointly (fedjax_mm/experiment/joint.py), on "
                           "--ablation-scenarios")
  parser.add_argument("--ablation-scenarios", default=None,
                      help=f"default: one_pass ({QUICK['ablation_scenarios'] or 'none'} "
                           "with --quick)")
  parser.add_argument("--seeds", type=int, default=5, help="report seeds (fresh, paired)")
  parser.add_argument("--no-tune", action="store_true", help="each method's default point only")
  parser.add_argument("--schedule", choices=("constant", "warmup_cosine"), default="constant",
                      help="the clients' and the server's learning-rate schedule "
                           "(warmup_cosine: 10%% of the rounds warmup, then cosine to 0)")
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
                           "(--quick, the control and the real towers skip it)")
  parser.add_argument("--plan", action="store_true",
                      help="print how many runs the protocol needs and the hours it takes at "
                           "--seconds-per-run over --workers, then exit")
  parser.add_argument("--seconds-per-run", type=float, default=60.0,
                      help="for --plan: a run's median time (--scale small on this 2-core box, "
                           "1 device per worker: about 60 s; KnOTS and SCAFFOLD 2-3x)")
  parser.add_argument("--override", action="append", default=[],
                      help="config override key=value for every run, parsed by the field's "
                           "type as fedjax_mm.main's --config.key=value; repeatable")
  args = parser.parse_args()
  if args.workers < 1:
    parser.error(f"--workers: must be >= 1, got {args.workers}")
  if args.seeds < 1:
    parser.error(f"--seeds: must be >= 1, got {args.seeds}")
  if args.scenarios is None:
    args.scenarios = QUICK["scenarios"] if args.quick else ",".join(SCENARIOS)
  if args.methods is None and args.scenarios == "interference":   # the positive control
    args.methods = list(methods.CONTROL)
  if args.methods is None and args.scenarios == "real":           # minutes a run on a CPU
    args.methods = list(methods.REAL)
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
    base = overrides.apply(base, schedule_overrides(args.schedule, base.num_rounds))
    validation.validate(base)
    return base

  try:   # a bad scenario or --override is a one-line usage error, before any compute
    for name in names:
      base_config(name)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  if args.plan:
    print_plan(args, names)
    return
  workers = spawn_workers(args.workers) if args.workers > 1 and not args.worker else []
  mesh.use_cpu_cores()                  # before any JAX computation
  # A budget or schedule of its own gets its own runs (and report files).
  variant = (("" if not args.rounds else f"-r{args.rounds}")
             + ("" if args.schedule == "constant" else f"-{args.schedule}"))
  workdir = Path(args.workdir) / (("quick" if args.quick else f"full-{args.scale}") + variant)
  # Seeds and grid points of one method compile to the same program.
  jax.config.update("jax_compilation_cache_dir", str(Path(args.workdir) / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  seeds = protocol.report_seeds(1 if args.quick else args.seeds)
  tune = not (args.quick or args.no_tune)
  started = time.perf_counter()
  report = {"settings": {"quick": args.quick, "scale": args.scale, "report_seeds": seeds,
                         "selection_seeds": protocol.SELECTION_SEEDS if tune else (),
                         "tuned": tune, "schedule": args.schedule,
                         "devices": jax.device_count(), "workers": args.workers,
                         "cpu": cpu_name(), "argv": " ".join(sys.argv[1:])},
            "scenarios": {}}
  towers: dict = {}
  entries: dict = {}
  # Worker r starts r/workers of the way down the list (wrapping round), so the
  # workers begin on different scenarios and mostly build each one's data once.
  shift = args.worker * len(names) // args.workers
  for name in names[shift:] + names[:shift]:
    base = base_config(name)
    ablated = name in args.ablation_scenarios.split(",")
    keys = args.methods + (args.ablations if ablated else [])
    print(f"== {name}: {base.data.num_clients} clients, {base.clients_per_round}/round, "
          f"{base.num_rounds} rounds", flush=True)
    entries[name] = comparison.run_scenario(
        comparison.Scenario(name, base, towers), list(dict.fromkeys(keys)), workdir,
        central_batch=args.central_batch, seeds=seeds, tune=tune,
        joint=args.joint if ablated else ())
  report["scenarios"] = {name: entries[name] for name in names}
  report["settings"]["not_run"] = [name for name in SCENARIOS if name not in names]
  # The budget check reads the presets' scenarios; the control and the real
  # towers have budgets of their own.
  own_only = set(names) <= set(comparison.OWN_CONFIGS)
  if not (args.no_budget_check or args.quick or own_only):
    name, keys = BUDGET_CHECK
    print(f"== budget check: {name}", flush=True)
    report["budget_check"] = comparison.run_scenario(
        comparison.Scenario(name, base_config(name), towers), list(keys), workdir,
        central_batch=args.central_batch, seeds=seeds[:1], tune=False)
  for worker in workers:
    if worker.wait():
      raise SystemExit(f"a worker failed (exit {worker.returncode}); rerun to resume")
  if args.worker:
    return
  report["settings"]["wall_seconds"] = time.perf_counter() - started
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  stem = report_stem(names, quick=args.quick, variant=variant)
  (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
  (out / f"{stem}.md").write_text(compare_report.markdown(report))
  compare_report.plots(report, out, stem)
  print(compare_report.markdown(report))
  print(f"wall time: {report['settings']['wall_seconds'] / 60:.1f} min; results in {out}")


if __name__ == "__main__":
  main()

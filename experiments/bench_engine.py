"""Engine benchmark: the vmapped, chunked round against a sequential client loop.

Workload: Synthetic(1, 1) multinomial logistic regression (60 features, 10
classes), FedAvg server (``optax.sgd(1.0)`` on the weighted mean delta), SGD
clients (lr 0.1), local ``"steps"`` mode with S steps of batch B (defaults 10
and 8), so a round of C clients costs ``C * S`` client-steps. One population of
``K = 2 * max(cohorts)`` small clients (sizes ``int(lognormal(2, 1)) + 10``;
``--population`` overrides K) is generated once and shared by every measurement;
uniform cohort sampling, aggregation weights = example counts.

For each cohort size C (and each chunk size asked for):

* **vmapped**: ``jax.jit(build_round_fn(...), donate_argnums=(0, 1))``.
  ``compile_s`` is the wall time of ``.lower(...).compile()``; the first
  execution is timed apart (``first_call_s``) and excluded; then ``repeats``
  steady-state rounds are timed with ``block_until_ready`` on every output and
  the median gives client-steps/s (by default at least 5 rounds and at least
  1 s of them; ``--repeats`` fixes the count). Runs in its own subprocess: the
  baseline is the RSS after imports, data loading and state placement; the
  peak RSS high-water mark (``VmHWM``) is then reset to it, so the reported
  peak is that of compilation + execution of the round on top of the baseline.
  (``ru_maxrss`` is not used: Linux carries the parent's high-water mark into
  a child across fork + exec.) The dataset is generated once by the parent
  and loaded from an ``.npz``, so generation temporaries never count.
  ``--devices N`` shards the cohort over N fake CPU devices (the worker gets
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax loads);
  data and state are then replicated, one copy per device.
* **sequential**: ``reference.build_sequential_round`` (a dispatch-lean Python
  loop of one jitted client update per client: cohort inputs computed in one
  call before the loop, each client one jitted call that also accumulates its
  weighted delta on device, nothing read back until the loop ends), from the
  same round-0 state and data, in its own subprocess. One warm-up round (jit
  compilation of the client update) is excluded;
  then up to ``repeats`` full rounds are timed, fewer when a round is slow so
  the total stays under ``--seq-budget-s`` (at least one full round is always
  timed: no subset is extrapolated).
* **ratio** = vmapped / sequential client-steps/s.

The first round of both engines starts from the same state, so their round-0
``train_loss`` and ``client_steps`` are compared as a sanity check.

Targets checked at the end: at 1,000 clients vmapped >= 5x the sequential
loop; a 10,000-client cohort peaks below 4 GiB RSS; every compile < 30 s.

  python experiments/bench_engine.py                      # the full table
  python experiments/bench_engine.py --json               # + one JSON line last
  python experiments/bench_engine.py --cohorts 1000 --chunk-size 0,256,1024
  python experiments/bench_engine.py --devices 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
NUM_FEATURES = 60
NUM_CLASSES = 10
CLIENT_LR = 0.1
SEED = 0
# Population: K = POPULATION_FACTOR * max(cohorts) small clients.
POPULATION_FACTOR = 2
SIZE_MEAN, SIZE_SIGMA, MIN_SIZE = 2.0, 1.0, 10
# Chunk size of the default run, from a sweep of 0 (whole cohort), 128, 256,
# 512, 1024, 2048 and 2500 on a 2-core CPU: speed is flat within noise for
# C <= 1,000; at C = 10,000 chunks of 1024-2048 were never slower than the whole
# cohort (often 5-15 % faster) and peak ~80 MiB lower. Cohorts not larger than
# the chunk run whole (no padding).
DEFAULT_CHUNK_SIZE = 1024
DEFAULT_COHORTS = "10,100,1000,10000"
TARGET_SPEEDUP_AT_1000 = 5.0
TARGET_PEAK_RSS_MIB_AT_10000 = 4096.0
TARGET_COMPILE_S = 30.0
WORKER_TIMEOUT_S = 900
# Default vmapped timing: at least 5 rounds and MIN_VMAPPED_S seconds of them.
MIN_VMAPPED_S = 1.0
MAX_VMAPPED_REPEATS = 200


# ----------------------------------------------------------------- helpers --

def _parse_ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v.strip()]


def _rss_mib() -> float:
  import psutil
  return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mib() -> float:
  """Peak RSS of this process's address space (``VmHWM``).

  Not ``ru_maxrss``: Linux carries the pre-``execve`` high-water mark into it,
  and a worker spawned with (v)fork + exec starts from the parent's peak.
  """
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
  """Resets ``VmHWM`` to the current RSS (Linux >= 4.0); False if not possible."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _effective_chunk_size(chunk_size: int, cohort: int) -> int:
  """0 (whole cohort) when the chunk would not split the cohort.

  ``RoundSpec.chunking`` pads the cohort up to ``chunk_size``, so a chunk
  larger than the cohort would train that many weight-0 padding clients.
  """
  return 0 if chunk_size <= 0 or chunk_size >= cohort else chunk_size


def _median(xs: Sequence[float]) -> float:
  return float(statistics.median(xs))


def _stats(xs: Sequence[float]) -> dict[str, float]:
  """Summary of timed rounds (seconds)."""
  return {"n": len(xs), "median": _median(xs), "min": min(xs), "max": max(xs)}


# ------------------------------------------------------------------- data --

def write_population(path: Path, num_clients: int) -> dict[str, Any]:
  """Generates the Synthetic(1, 1) population once and saves it as ``.npz``."""
  import numpy as np
  from fedjax_mm.data import synthetic
  start = time.perf_counter()
  data = synthetic.generate(SEED, num_clients, alpha=1.0, beta=1.0,
                            num_features=NUM_FEATURES, num_classes=NUM_CLASSES,
                            size_mean=SIZE_MEAN, size_sigma=SIZE_SIGMA,
                            min_size=MIN_SIZE)
  np.savez(path, x=data.examples["x"], y=data.examples["y"],
           offsets=data.offsets, sizes=data.sizes)
  return {"num_clients": num_clients, "num_examples": int(data.sizes.sum()),
          "min_size": int(data.sizes.min()), "max_size": int(data.sizes.max()),
          "generate_s": time.perf_counter() - start}


def load_population(path: Path) -> Any:
  """The saved population as a host :class:`FederatedData`."""
  import numpy as np
  from fedjax_mm.data import federated
  with np.load(path) as f:
    return federated.FederatedData(examples={"x": f["x"], "y": f["y"]},
                                   offsets=f["offsets"], sizes=f["sizes"])


# ---------------------------------------------------------------- workers --

def _setup(args: argparse.Namespace) -> tuple[Any, ...]:
  """Task, spec, optimizers and host data shared by every worker kind."""
  from fedjax_mm import client
  from fedjax_mm.data import federated
  from fedjax_mm.models import logreg
  from fedjax_mm.server import fedopt
  from fedjax_mm.simulation import round as round_lib
  data = load_population(args.data)
  spec = round_lib.RoundSpec(
      num_clients=data.num_clients, cohort_size=args.cohort,
      chunk_size=_effective_chunk_size(args.chunk_size, args.cohort),
      schedule=federated.LocalSchedule("steps", args.steps, args.batch))
  return (logreg.task(NUM_FEATURES, NUM_CLASSES), spec, fedopt.fedavg(1.0),
          client.make_client_optimizer("sgd"), data)


def _algorithm(args: argparse.Namespace):
  from fedjax_mm import algorithms
  return algorithms.ALGORITHMS.make(args.algorithm, **({"mu": 0.01} if args.algorithm == "fedprox" else {}))


def _initial_state(task, server_tx, num_clients: int, algorithm) -> tuple[Any, Any]:
  from fedjax_mm.simulation import round as round_lib
  return (round_lib.init_server_state(task, server_tx, SEED, algorithm=algorithm),
          round_lib.init_population(task, num_clients, algorithm=algorithm))


def run_vmapped(args: argparse.Namespace) -> dict[str, Any]:
  """Compile time, steady-state round times and peak RSS of the vmapped round."""
  import jax
  import numpy as np
  from fedjax_mm.simulation import mesh as mesh_lib
  from fedjax_mm.simulation import round as round_lib
  task, spec, server_tx, client_opt, host_data = _setup(args)
  mesh = mesh_lib.make_client_mesh(args.devices) if args.devices > 1 else None
  put = lambda tree: mesh_lib.put_replicated(tree, mesh)
  data = put(host_data)
  agg_weights = put(np.asarray(host_data.sizes, np.float32))
  del host_data
  algorithm = _algorithm(args)
  state, pop = (put(t) for t in _initial_state(task, server_tx, data.num_clients, algorithm))
  jax.block_until_ready((data, agg_weights, state, pop))
  baseline_rss = _rss_mib()
  load_peak_rss = _peak_rss_mib()
  # From here on the peak is the round's: compile + executions over the baseline.
  peak_was_reset = _reset_peak_rss()

  round_fn = jax.jit(round_lib.build_round_fn(task, spec, server_tx, client_opt, CLIENT_LR,
                                              mesh=mesh, algorithm=algorithm),
                     donate_argnums=(0, 1))
  start = time.perf_counter()
  compiled = round_fn.lower(state, pop, data, agg_weights, None).compile()
  compile_s = time.perf_counter() - start

  start = time.perf_counter()
  state, pop, metrics = compiled(state, pop, data, agg_weights, None)
  jax.block_until_ready((state, pop, metrics))
  first_call_s = time.perf_counter() - start
  round0 = {"train_loss": float(metrics["train_loss"]),
            "client_steps": int(metrics["client_steps"])}

  times: list[float] = []
  # Fixed repeats when asked for; else at least 5 and at least MIN_VMAPPED_S of
  # rounds (sub-millisecond rounds need many samples for a stable median).
  min_total = 0.0 if args.exact_repeats else MIN_VMAPPED_S
  while len(times) < args.repeats or (sum(times) < min_total
                                      and len(times) < MAX_VMAPPED_REPEATS):
    start = time.perf_counter()
    state, pop, metrics = compiled(state, pop, data, agg_weights, None)
    jax.block_until_ready((state, pop, metrics))
    times.append(time.perf_counter() - start)
  num_chunks, chunk = spec.chunking(args.devices)
  return {
      "compile_s": compile_s, "first_call_s": first_call_s, "round_s": times,
      "chunk": chunk, "num_chunks": num_chunks, "round0": round0,
      "client_steps_last_round": int(metrics["client_steps"]),
      "baseline_rss_mib": baseline_rss, "peak_rss_mib": _peak_rss_mib(),
      "peak_rss_scope": "compile+rounds" if peak_was_reset else "whole worker",
      "load_peak_rss_mib": load_peak_rss,
      "jax_version": jax.__version__, "device_count": jax.device_count(),
      "platform": jax.devices()[0].platform,
  }


def _timed_rounds(run_round, first_time: float, repeats: int,
                  budget_s: float) -> list[float]:
  """Times ``run_round()`` at least once, at most ``repeats`` times within budget."""
  times: list[float] = []
  while len(times) < repeats:
    estimate = times[-1] if times else first_time
    if times and sum(times) + estimate > budget_s:
      break
    start = time.perf_counter()
    run_round()
    times.append(time.perf_counter() - start)
  return times


def run_sequential(args: argparse.Namespace) -> dict[str, Any]:
  """The sequential reference loop from the round-0 state."""
  import jax
  from fedjax_mm.simulation import reference
  task, spec, server_tx, client_opt, host_data = _setup(args)
  data = jax.device_put(host_data)
  agg_weights = jax.device_put(host_data.sizes.astype("float32"))
  state0, pop0 = _initial_state(task, server_tx, data.num_clients, _algorithm(args))
  seq_round = reference.build_sequential_round(task, spec, server_tx, client_opt, CLIENT_LR)
  carry = {"state": state0, "pop": pop0}

  def one_round():
    carry["state"], carry["pop"], metrics = seq_round(
        carry["state"], carry["pop"], data, agg_weights, None)
    jax.block_until_ready((carry["state"], carry["pop"]))
    return metrics

  start = time.perf_counter()
  metrics = one_round()  # warm-up: jit compilation of the client update
  warmup_s = time.perf_counter() - start
  round0 = {"train_loss": float(metrics["train_loss"]),
            "client_steps": int(metrics["client_steps"])}
  times = _timed_rounds(one_round, warmup_s, args.repeats, args.seq_budget_s)
  result = {"warmup_s": warmup_s, "round_s": times, "round0": round0,
            "measured": f"{len(times)} full round(s) of {args.cohort} clients"}
  return result


def worker_main(args: argparse.Namespace) -> None:
  """Runs one measurement and prints its result as one JSON line."""
  run = run_vmapped if args._worker == "vmapped" else run_sequential
  print(json.dumps(run(args)), flush=True)


# ----------------------------------------------------------------- parent --

def spawn_worker(kind: str, args: argparse.Namespace, data_path: Path, cohort: int,
                 chunk_size: int, repeats: int) -> dict[str, Any]:
  """Runs one measurement in a fresh interpreter and returns its JSON result."""
  env = dict(os.environ)
  devices = args.devices if kind == "vmapped" else 1
  if devices > 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
  env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
  cmd = [sys.executable, str(Path(__file__).resolve()), f"--_worker={kind}",
         f"--data={data_path}", f"--cohort={cohort}", f"--chunk-size={chunk_size}",
         f"--steps={args.steps}", f"--batch={args.batch}", f"--repeats={repeats}",
         f"--devices={devices}", f"--seq-budget-s={args.seq_budget_s}",
         f"--algorithm={args.algorithm}"]
  if args.repeats is not None:
    cmd.append("--exact-repeats")
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        timeout=WORKER_TIMEOUT_S, cwd=ROOT)
  if proc.returncode != 0:
    raise RuntimeError(f"{kind} worker (cohort {cohort}) failed:\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def default_repeats(cohort: int, requested: int | None) -> int:
  if requested is not None:
    return requested
  return 5 if cohort <= 1000 else 3


def summarize(cohort: int, chunk_size: int, steps: int, vm: dict[str, Any],
              seq: dict[str, Any] | None) -> dict[str, Any]:
  """One row of figures (medians) for a (cohort, chunk size) measurement."""
  client_steps = cohort * steps
  vm_s = _median(vm["round_s"])
  row = {
      "cohort": cohort, "client_steps_per_round": client_steps,
      "chunk_size": chunk_size, "chunk": vm["chunk"], "num_chunks": vm["num_chunks"],
      "vmapped_round_s": vm_s, "vmapped_round_s_stats": _stats(vm["round_s"]),
      "vmapped_steps_per_s": client_steps / vm_s,
      "compile_s": vm["compile_s"], "first_call_s": vm["first_call_s"],
      "baseline_rss_mib": vm["baseline_rss_mib"], "peak_rss_mib": vm["peak_rss_mib"],
      "peak_rss_scope": vm["peak_rss_scope"], "load_peak_rss_mib": vm["load_peak_rss_mib"],
      "round_rss_increment_mib": vm["peak_rss_mib"] - vm["baseline_rss_mib"],
      "measured_client_steps": vm["client_steps_last_round"],
  }
  if seq is not None:
    seq_s = _median(seq["round_s"])
    row.update({
        "sequential_round_s": seq_s, "sequential_round_s_stats": _stats(seq["round_s"]),
        "sequential_steps_per_s": client_steps / seq_s,
        "sequential_measured": seq["measured"], "sequential_warmup_s": seq["warmup_s"],
        "speedup": seq_s / vm_s,
        "round0_check": {
            "client_steps_equal": vm["round0"]["client_steps"] == seq["round0"]["client_steps"],
            "train_loss_vmapped": vm["round0"]["train_loss"],
            "train_loss_sequential": seq["round0"]["train_loss"],
        },
    })
  return row


def format_table(rows: list[dict[str, Any]]) -> str:
  header = ("cohort", "chunk", "steps/round", "vmapped st/s", "seq st/s", "ratio",
            "compile s", "base MiB", "peak MiB")
  fmt = "{:>7} {:>9} {:>11} {:>13} {:>11} {:>7} {:>9} {:>8} {:>8}"
  na = "-"
  lines = [fmt.format(*header), "-" * 92]
  for r in rows:
    lines.append(fmt.format(
        r["cohort"], f'{r["chunk"]}x{r["num_chunks"]}', r["client_steps_per_round"],
        f'{r["vmapped_steps_per_s"]:,.0f}',
        f'{r["sequential_steps_per_s"]:,.0f}' if "sequential_steps_per_s" in r else na,
        f'{r["speedup"]:.1f}x' if "speedup" in r else na,
        f'{r["compile_s"]:.2f}', f'{r["baseline_rss_mib"]:.0f}', f'{r["peak_rss_mib"]:.0f}'))
  return "\n".join(lines)


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The three engine targets, evaluated on the rows that exist."""
  checks = []
  for r in rows:
    if r["cohort"] == 1000 and "speedup" in r:
      checks.append({"target": f"C=1000 vmapped >= {TARGET_SPEEDUP_AT_1000:g}x sequential",
                     "value": round(r["speedup"], 2), "chunk": r["chunk"],
                     "pass": r["speedup"] >= TARGET_SPEEDUP_AT_1000})
    if r["cohort"] == 10000:
      checks.append({"target": f"C=10000 peak RSS < {TARGET_PEAK_RSS_MIB_AT_10000:g} MiB",
                     "value": round(r["peak_rss_mib"], 1), "chunk": r["chunk"],
                     "pass": r["peak_rss_mib"] < TARGET_PEAK_RSS_MIB_AT_10000})
  worst = max(rows, key=lambda r: r["compile_s"])
  checks.append({"target": f"compile < {TARGET_COMPILE_S:g} s (worst case)",
                 "value": round(worst["compile_s"], 2), "chunk": worst["chunk"],
                 "cohort": worst["cohort"], "pass": worst["compile_s"] < TARGET_COMPILE_S})
  return checks


def machine_info(vm: dict[str, Any]) -> dict[str, Any]:
  import psutil
  return {"jax_version": vm["jax_version"], "device_count": vm["device_count"],
          "platform": vm["platform"], "cpu_count": os.cpu_count(),
          "total_memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
          "python": platform.python_version(), "machine": platform.machine(),
          "processor": platform.processor() or platform.machine()}


def parent_main(args: argparse.Namespace) -> None:
  cohorts = _parse_ints(args.cohorts)
  chunk_sizes = _parse_ints(args.chunk_size) if args.chunk_size else [DEFAULT_CHUNK_SIZE]
  log = lambda msg: print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)
  rows = []
  started = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
    data_path = Path(tmp) / "population.npz"
    population = write_population(
        data_path, args.population or POPULATION_FACTOR * max(cohorts))
    log(f"population: {population['num_clients']} clients, "
        f"{population['num_examples']} examples (sizes {population['min_size']}.."
        f"{population['max_size']}), generated in {population['generate_s']:.1f} s")
    last_vm = None
    for cohort in cohorts:
      repeats = default_repeats(cohort, args.repeats)
      seq = None
      if not args.no_sequential:
        log(f"[C={cohort}] sequential reference ...")
        seq = spawn_worker("sequential", args, data_path, cohort, 0, repeats)
      for chunk_size in chunk_sizes:
        log(f"[C={cohort}] vmapped, chunk_size={chunk_size} ...")
        last_vm = spawn_worker("vmapped", args, data_path, cohort, chunk_size,
                               repeats if args.repeats is not None else max(repeats, 5))
        rows.append(summarize(cohort, chunk_size, args.steps, last_vm, seq))
  total_s = time.perf_counter() - started

  seq_note = {r["cohort"]: r["sequential_measured"] for r in rows if "sequential_measured" in r}
  print(f"\nEngine benchmark: Synthetic(1,1) logreg {NUM_FEATURES}x{NUM_CLASSES}, "
        f"{args.algorithm}, "
        f"SGD clients, {args.steps} local steps x batch {args.batch}, K={population['num_clients']}, "
        f"devices={args.devices}. Medians; steps = client-steps.")
  print(format_table(rows))
  print("chunk: clients per chunk x chunks (padded cohort); base/peak: RSS of the vmapped "
        "worker after data loading / peak including compile.")
  for cohort, note in seq_note.items():
    print(f"  sequential C={cohort}: {note}")
  for r in rows:
    nominal_ok = r["measured_client_steps"] == r["client_steps_per_round"]
    check = r.get("round0_check")
    if check is None:
      print(f"  C={r['cohort']}: client-steps in last round match C*S: {nominal_ok}")
      continue
    rel = abs(check["train_loss_vmapped"] - check["train_loss_sequential"]) / max(
        abs(check["train_loss_sequential"]), 1e-12)
    print(f"  C={r['cohort']} round-0 check vs sequential: client_steps equal "
          f"{check['client_steps_equal']}, train_loss rel. diff {rel:.1e}; "
          f"client-steps match C*S: {nominal_ok}")
  checks = check_targets(rows)
  for c in checks:
    print(f"  [{'PASS' if c['pass'] else 'FAIL'}] {c['target']}: {c['value']}")
  print(f"total benchmark time {total_s:.0f} s")
  if args.json:
    print(json.dumps({
        "benchmark": "engine", "machine": machine_info(last_vm),
        "workload": {"dataset": "synthetic(1,1)", "features": NUM_FEATURES,
                     "classes": NUM_CLASSES, "server": "fedavg", "client": "sgd",
                     "algorithm": args.algorithm,
                     "client_lr": CLIENT_LR, "local_mode": "steps", "steps": args.steps,
                     "batch": args.batch, "population": population,
                     "devices": args.devices},
        "results": rows, "targets": checks, "total_s": total_s}))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--json", action="store_true",
                 help="print one JSON object with every figure as the last line")
  p.add_argument("--cohorts", default=DEFAULT_COHORTS, help="comma-separated cohort sizes")
  p.add_argument("--steps", type=int, default=10, help="local steps S")
  p.add_argument("--batch", type=int, default=8, help="local batch size B")
  p.add_argument("--repeats", type=int, default=None,
                 help="timed rounds per measurement, exactly (default: sequential 5 up "
                      "to 1,000 clients, 3 above, within --seq-budget-s; vmapped at least 5 "
                      f"and at least {MIN_VMAPPED_S:g} s of rounds)")
  p.add_argument("--chunk-size", default=None,
                 help=f"comma-separated chunk sizes to try (0 = whole cohort; default "
                      f"{DEFAULT_CHUNK_SIZE}); a chunk >= the cohort means the whole cohort")
  p.add_argument("--population", type=int, default=0,
                 help=f"population size K (default {POPULATION_FACTOR} x the largest cohort)")
  p.add_argument("--devices", type=int, default=1,
                 help="shard the vmapped round over N fake CPU devices")
  p.add_argument("--seq-budget-s", type=float, default=60.0,
                 help="time budget per sequential measurement (>= 1 full round is timed)")
  p.add_argument("--no-sequential", action="store_true",
                 help="skip the sequential reference (e.g. for a chunk-size sweep)")
  p.add_argument("--algorithm", default="fedavg",
                 choices=("fedavg", "fedprox", "scaffold", "fednova"),
                 help="client/server work of the vmapped round (the sequential "
                      "reference is FedAvg: use --no-sequential with others)")
  # Internal: one measurement in a subprocess.
  p.add_argument("--_worker", choices=("vmapped", "sequential"), help=argparse.SUPPRESS)
  p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
  p.add_argument("--cohort", type=int, help=argparse.SUPPRESS)
  p.add_argument("--exact-repeats", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._worker:
    args.chunk_size = int(args.chunk_size or 0)
    return args
  cohorts = _parse_ints(args.cohorts)
  if not cohorts or min(cohorts) < 1:
    p.error("--cohorts must list positive cohort sizes")
  if args.population and args.population < max(cohorts):
    p.error(f"--population {args.population} is smaller than the largest cohort")
  if args.devices < 1 or args.steps < 1 or args.batch < 1:
    p.error("--devices, --steps and --batch must be >= 1")
  if args.repeats is not None and args.repeats < 1:
    p.error("--repeats must be >= 1")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  if args._worker:
    worker_main(args)
  else:
    parent_main(args)


if __name__ == "__main__":
  main()

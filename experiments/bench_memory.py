"""Peak memory of per-client algorithm state: SCAFFOLD vs FedAvg on the Fed-MA model.

SCAFFOLD keeps a model-sized control variate for every client of the
population (``[K, P]``), gathered and scattered chunk by chunk inside the
round. This measures, on the Fed-MA demo model (``configs/fedma_demo.py``:
frozen ViT features -> ``mlp2x_gelu`` projector -> frozen LM) with a
population of K clients, for each algorithm and chunk size:

* ``state MiB``: the population state's bytes (analytic, K x P x 4 for SCAFFOLD);
* ``base MiB``: RSS after data, model and state are placed (before compiling);
* ``peak MiB``: peak RSS during compilation and ``--rounds`` rounds;
* ``round MiB``: peak - base, the round's working memory, which should grow
  with the chunk, not with K.

Each measurement runs in its own process (the peak high-water mark is reset
to the baseline before compiling, as in ``bench_engine.py``).

  python experiments/bench_memory.py                    # K = 10,000, chunks 10 and 100
  python experiments/bench_memory.py --json --clients 10000 --chunks 10,50,100
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> dict:
  import jax
  import numpy as np
  import bench_engine  # noqa: PLC0415  (same folder: RSS helpers)
  from fedjax_mm import config_files, setups
  from fedjax_mm.simulation import builders, round as round_lib
  from fedjax_mm.data import federated

  config = config_files.load(ROOT / "configs/fedma_demo.py", "dirichlet")
  config.data.num_clients = args.clients
  config.data.examples_per_client = args.examples_per_client
  config.data.eval_clients = 10
  config.clients_per_round = args.cohort
  config.chunk_size = args.chunk
  config.algorithm.kind = args.algorithm
  setup = setups.build(config, progress=False)
  parts = builders.round_parts(config)
  server_tx = builders.server_optimizer(config)
  spec = round_lib.RoundSpec(
      num_clients=args.clients, cohort_size=args.cohort, chunk_size=args.chunk,
      schedule=federated.LocalSchedule(config.local.mode, config.local.num_steps,
                                       config.local.batch_size))
  train = jax.device_put(setup.train)
  frozen = jax.device_put(setup.task.frozen)
  weights = jax.device_put(builders.aggregation_weights(config, setup.train, setup.task))
  state = round_lib.init_server_state(setup.task, server_tx, 0, algorithm=parts.algorithm)
  pop = round_lib.init_population(setup.task, args.clients, algorithm=parts.algorithm)
  jax.block_until_ready((train, frozen, weights, state, pop))
  state_mib = sum(x.nbytes for x in jax.tree.leaves(pop.client)) / 2**20
  params = sum(x.size for x in jax.tree.leaves(state.trainable))
  base = bench_engine._rss_mib()
  bench_engine._reset_peak_rss()
  fn = jax.jit(round_lib.build_round_fn(
      setup.task, spec, server_tx, builders.client_optimizer(config),
      builders.schedule(config.client, config.num_rounds), algorithm=parts.algorithm),
      donate_argnums=(0, 1))
  times = []
  for _ in range(args.rounds):
    tick = time.perf_counter()
    state, pop, metrics = fn(state, pop, train, weights, None, frozen)
    jax.block_until_ready((state, pop))
    times.append(time.perf_counter() - tick)
  return {"algorithm": args.algorithm, "clients": args.clients, "chunk": args.chunk,
          "cohort": args.cohort, "params": int(params), "state_mib": state_mib,
          "base_mib": base, "peak_mib": bench_engine._peak_rss_mib(),
          "round_mib": bench_engine._peak_rss_mib() - base,
          "round_s": float(np.median(times[1:] or times)),
          "train_loss": float(metrics["train_loss"])}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--clients", type=int, default=10_000)
  p.add_argument("--examples-per-client", type=int, default=8)
  p.add_argument("--cohort", type=int, default=100)
  p.add_argument("--chunks", default="10,100")
  p.add_argument("--algorithms", default="fedavg,scaffold")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--json", action="store_true")
  p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--algorithm", default="fedavg", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._worker:
    print(json.dumps(worker(args)))
    return
  rows = []
  for algorithm in args.algorithms.split(","):
    for chunk in (int(c) for c in args.chunks.split(",")):
      cmd = [sys.executable, __file__, "--_worker", f"--clients={args.clients}",
             f"--examples-per-client={args.examples_per_client}", f"--cohort={args.cohort}",
             f"--chunk={chunk}", f"--algorithm={algorithm}", f"--rounds={args.rounds}"]
      out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(f"  measured {algorithm} chunk {chunk}", file=sys.stderr, flush=True)
  print(f"\nFed-MA demo model ({rows[0]['params']:,} trainable parameters), "
        f"K = {args.clients:,} clients, cohort {args.cohort}; RSS in MiB, round time median")
  header = (f"{'algorithm':>10} {'chunk':>6} {'state MiB':>10} {'base MiB':>9} "
            f"{'peak MiB':>9} {'round MiB':>10} {'round s':>8}")
  print(header + "\n" + "-" * len(header))
  for r in rows:
    print(f"{r['algorithm']:>10} {r['chunk']:>6} {r['state_mib']:>10.0f} {r['base_mib']:>9.0f} "
          f"{r['peak_mib']:>9.0f} {r['round_mib']:>10.0f} {r['round_s']:>8.2f}")
  if args.json:
    print(json.dumps({"benchmark": "memory", "rows": rows}))


if __name__ == "__main__":
  main()

"""Run in a subprocess with 8 fake CPU devices by test_multidevice.py.

Runs the same rounds unsharded on one device and sharded over a mesh of 8
devices (and of 2), and prints the max differences and HLO facts as JSON.
"""

import json
import os
import sys

assert "xla_force_host_platform_device_count=8" in os.environ.get("XLA_FLAGS", "")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from fedjax_mm import aggregation, algorithms  # noqa: E402
from fedjax_mm import client as client_lib  # noqa: E402
from fedjax_mm.data import federated, synthetic  # noqa: E402
from fedjax_mm.models import logreg  # noqa: E402
from fedjax_mm import server  # noqa: E402
from fedjax_mm.simulation import mesh as mesh_lib  # noqa: E402
from fedjax_mm.simulation import round as round_lib  # noqa: E402


# Compile fast (as tests/conftest.py's FAST): the equivalence is about the
# partitioning, not about XLA's backend optimizations, which cost more compile
# time than these tiny rounds take to run.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def run(mesh, parts, rounds=3):
  K = 64
  data = synthetic.generate(0, K, size_mean=2.0, size_sigma=1.0, min_size=3, max_size=60)
  train = mesh_lib.put_replicated(federated.split_by_position(data, 0.9)[0], mesh)
  task = logreg.task(60, 10)
  spec = round_lib.RoundSpec(num_clients=K, cohort_size=20, chunk_size=8,
                             schedule=federated.LocalSchedule("steps", 5, 4))
  tx = parts.get("tx") or server.SERVER.make("fedadam", learning_rate=0.05)
  parts = {k: v for k, v in parts.items() if k != "tx"}
  fn = jax.jit(round_lib.build_round_fn(task, spec, tx, client_lib.make_client_optimizer("sgd"),
                                        0.1, mesh=mesh, **parts), compiler_options=FAST)
  state = mesh_lib.put_replicated(round_lib.init_server_state(
      task, tx, seed=5, algorithm=parts.get("algorithm"),
      aggregator=parts.get("aggregator")), mesh)
  pop = mesh_lib.put_replicated(round_lib.init_population(
      task, K, algorithm=parts.get("algorithm")), mesh)
  weights = mesh_lib.put_replicated(np.asarray(train.sizes, np.float32), mesh)
  # One compilation: the rounds run the very executable whose HLO is inspected.
  compiled = fn.lower(state, pop, train, weights, None).compile()
  for _ in range(rounds):
    state, pop, metrics = compiled(state, pop, train, weights, None)
  return (jax.device_get((state.trainable, pop.stats.participations, metrics["train_loss"])),
          compiled.as_text())


# FedAvg + streaming mean; SCAFFOLD (model-sized client state, scattered per
# chunk) + clipping + a whole-cohort trimmed mean.
PARTS = {
    "fedavg": {},
    "scaffold_trimmed": {"algorithm": algorithms.scaffold(),
                         "aggregator": aggregation.AGGREGATORS.make(
                             "trimmed_mean", trim_fraction=0.1),
                         "preprocessors": (aggregation.l2_clip(0.5),)},
    # Fed-CMP: the stacked cohort's Gram and eigh, and OPM's SVDs, on a mesh.
    "fedcmp": {"aggregator": aggregation.AGGREGATORS.make(
                   "canonical", cohort_size=20, rank=3, reliability="agreement"),
               "tx": server.SERVER.make("opm", learning_rate=0.5, momentum=0.9,
                                        aggregator_rank=3)},
}


def main():
  out = {"devices": jax.device_count()}
  for name, parts in PARTS.items():
    (p1, c1, l1), _ = run(None, parts)
    for n in ((8,) if name == "fedcmp" else (2, 8)):   # suite time: one mesh for Fed-CMP
      (pn, cn, ln), hlo = run(mesh_lib.make_client_mesh(n), parts)
      diffs = [float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-12))
               for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(pn))]
      out[f"{name}/{n}"] = {
          "max_rel_diff": max(diffs),
          "loss_diff": float(abs(l1 - ln)),
          "participations_equal": bool(np.array_equal(c1, cn)),
          "has_cross_device_reduction": ("all-reduce" in hlo) or ("reduce-scatter" in hlo),
      }
  json.dump(out, sys.stdout)


if __name__ == "__main__":
  main()

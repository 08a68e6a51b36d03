"""The Fed-MA demo: federated projector alignment on the synthetic world.

Pretrains (or loads from cache) the frozen towers, then compares on the same
clients' data:

* floor: the untrained projector;
* each method of ``--methods`` (default FedAvg) under each partition of
  ``--partitions`` (default Dirichlet(alpha) concept skew and IID clients);
* ceiling: centralized training on the union of the clients' training rows
  with the same budget of training examples as one federated run.

Rows are labelled by what actually ran (algorithm, server optimizer,
aggregator, read off the final config, ``--override`` included).

Writes ``results.md`` / ``results.json`` (caption loss, zero-shot alignment
accuracy overall and per attribute, per-client mean and worst 10%) and
``accuracy.png`` (accuracy against round) into ``--workdir``.

  python experiments/fedma_demo.py --workdir runs/demo
  python experiments/fedma_demo.py --workdir runs/methods --partitions dirichlet \
      --methods fedavg,fedavgm,fedadam,fedprox,scaffold
  python experiments/fedma_demo.py --override algorithm.kind=scaffold
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import jax
import matplotlib
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedjax_mm import centralized, config_files, configuration, evaluation, metrics  # noqa: E402
from fedjax_mm.data import world  # noqa: E402
from fedjax_mm.setups import fedma  # noqa: E402
from fedjax_mm.aggregation import AGGREGATORS, PREPROCESSORS  # noqa: E402
from fedjax_mm.algorithms import ALGORITHMS  # noqa: E402
from fedjax_mm.server import SERVER  # noqa: E402
from fedjax_mm.simulation import driver, mesh, validation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATTRS = tuple(f"acc_{a}" for a in world.ATTRIBUTES)


# Method -> config overrides on top of the demo config (then --override).
METHODS = {
    "fedavg": {},
    "fedavgm": {"server.kind": "fedavgm", "server.learning_rate": 1.0,
                "server.fedavgm.momentum": 0.9},
    "fedadam": {"server.kind": "fedadam", "server.learning_rate": 0.01},
    "fedprox": {"algorithm.kind": "fedprox", "algorithm.fedprox.mu": 0.01},
    # SCAFFOLD (option II) and FedNova are defined for SGD steps: SGD
    # clients, and their FedAvg twin with the same clients.
    "fedavg_sgd": {"client.optimizer": "sgd", "client.learning_rate": 0.5},
    "scaffold": {"algorithm.kind": "scaffold", "client.optimizer": "sgd",
                 "client.learning_rate": 0.5},
    "fednova": {"algorithm.kind": "fednova", "client.optimizer": "sgd",
                "client.learning_rate": 0.5},
}


def parse_methods(parser: argparse.ArgumentParser, value: str) -> list[str]:
  """``--methods a,b`` -> ``['a', 'b']``; an unknown name exits with the allowed ones."""
  methods = value.split(",")
  for method in methods:
    if method not in METHODS:
      parser.error(f"--methods: {method!r} is not one of {tuple(METHODS)}")
  return methods


def set_field(config, key: str, value) -> None:
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = type(node[leaf])(value) if node[leaf] is not None else value


def apply_overrides(config, items) -> None:
  """``key=value`` strings onto ``config`` (values as JSON, else bare strings)."""
  for item in items:
    key, value = item.split("=", 1)
    try:
      value = json.loads(value)
    except json.JSONDecodeError:  # a bare string: algorithm.kind=scaffold
      pass
    set_field(config, key, value)


def method_label(config) -> str:
  """What ran, from the config and the registries' labels: e.g. "FedAvg", "FedAdam",
  "SCAFFOLD (SGD clients)", "FedProx (mu=0.01), Krum"."""
  algorithm = config.algorithm.kind
  name = ALGORITHMS[algorithm].label
  if config.server.kind != "fedavg":
    server = SERVER[config.server.kind].label
    name = server if algorithm == "fedavg" else f"{name} + {server} server"
  changed = {k: v for k, v in config.algorithm[algorithm].items()
             if v != ALGORITHMS[algorithm].options()[k]}
  if algorithm == "fedprox" or changed:
    options = config.algorithm[algorithm]
    name += " (" + ", ".join(f"{k}={v:g}" for k, v in options.items()) + ")"
  if config.client.optimizer != "adam":
    optimizer = config.client.optimizer
    name += f" ({optimizer.upper() if optimizer == 'sgd' else optimizer} clients)"
  if config.aggregation.kind != "mean":
    name += f", {AGGREGATORS[config.aggregation.kind].label}"
  for step in configuration.chain_names(config.preprocess.chain):
    options = ", ".join(f"{v:g}" for v in config.preprocess[step].values())
    name += f", {PREPROCESSORS[step].label} {options}"
  return name


def row(name: str, summary: dict) -> dict:
  out = {"method": name, "caption_loss": summary["loss"], "align_acc": summary["accuracy"]}
  out.update({a.replace("acc_", ""): summary[a] for a in ATTRS})
  out["client_mean"] = summary["client_accuracy_mean"]
  out["client_worst10%"] = summary["client_accuracy_worst10"]
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/demo")
  parser.add_argument("--rounds", type=int, default=None, help="default: the config's")
  parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration")
  parser.add_argument("--partitions", default="dirichlet,iid",
                      help="comma-separated presets of configs/fedma.py")
  parser.add_argument("--methods", default="fedavg",
                      help=f"comma-separated, of {tuple(METHODS)}")
  parser.add_argument("--central-batch", type=int, default=64)
  parser.add_argument("--override", action="append", default=[],
                      help="config overrides key=value (python literal), repeatable")
  args = parser.parse_args()
  mesh.use_cpu_cores()   # one CPU device per core (before any JAX computation)
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  started = time.perf_counter()

  methods = parse_methods(parser, args.methods)

  def config_for(preset: str, method: str = "fedavg"):
    config = config_files.load(ROOT / "configs/fedma_demo.py", preset)
    if args.rounds:
      config.num_rounds = args.rounds
    if preset == "dirichlet":
      config.data.partition.alpha = args.alpha
    for key, value in METHODS[method].items():
      set_field(config, key, value)
    apply_overrides(config, args.override)
    validation.validate(config)
    return config

  presets = args.partitions.split(",")
  runs, curves, timings = [], {}, {}
  floor = ceiling = None
  print("== frozen towers: pretrained once per tower config, then loaded from the cache")
  tick = time.perf_counter()
  pretrained = fedma.build_towers(config_for(presets[0]))
  timings["towers"] = time.perf_counter() - tick
  examples = None
  for preset in presets:
    config = config_for(preset)
    print(f"== clients' data ({preset}): scenes, captions, partition, feature cache")
    tick = time.perf_counter()
    # Scenes and their cached ViT features do not depend on the partition.
    examples = examples or fedma.client_examples(config, *pretrained[:2])
    setup = fedma.build(config, pretrained=pretrained, examples=examples)
    timings[f"data_{preset}"] = time.perf_counter() - tick
    eval_fn = jax.jit(evaluation.build_eval_fn(setup.task, setup.test, config.eval_batch_size))
    test = jax.device_put(setup.test)

    def evaluate(trainable):
      return evaluation.summarize(jax.device_get(eval_fn(trainable, test)))

    if floor is None:
      init = setup.task.init_trainable(jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1))
      floor = row("floor (untrained projector)", evaluate(init))
      budget = (config.num_rounds * config.clients_per_round * config.local.num_steps
                * config.local.batch_size)
      steps = budget // args.central_batch
      print(f"== ceiling: centralized, {steps} steps x batch {args.central_batch} "
            f"= {budget} examples (the federated budget)")
      tick = time.perf_counter()
      trained = centralized.train(
          setup.task, setup.train, num_steps=steps, batch_size=args.central_batch,
          optimizer=optax.adam(config.client.learning_rate), seed=config.seed,
          trainable=init, progress=True)
      timings["centralized"] = time.perf_counter() - tick
      ceiling = row("centralized (same example budget)", evaluate(trained))

    data_label = "IID" if preset == "iid" else (
        f"Dirichlet({config.data.partition.alpha:g})" if preset == "dirichlet" else preset)
    for method in methods:
      config = config_for(preset, method)
      label = f"{method_label(config)}, {data_label}"
      print(f"== {label}: {config.data.num_clients} clients, "
            f"{config.clients_per_round} per round, {config.num_rounds} rounds")
      tick = time.perf_counter()
      # The demo always trains from scratch: a previous demo's checkpoints in
      # the same run directory would otherwise be resumed (the driver's
      # default for an interrupted long run).
      rundir = workdir / (preset if len(methods) == 1 else f"{preset}_{method}")
      shutil.rmtree(rundir, ignore_errors=True)
      summary = driver.train_and_evaluate(config, str(rundir), setup=setup)
      timings[f"federated_{rundir.name}"] = time.perf_counter() - tick
      final = {k.replace("eval_", ""): v for k, v in summary["final"].items()
               if k.startswith("eval_")}
      runs.append(row(label, final))
      history = metrics.read(rundir)
      # Round 0 is the untrained projector every run starts from.
      curves[label] = [(0, floor["align_acc"])] + [
          (h["round"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]

  rows = [floor] + runs + [ceiling]
  table = metrics.format_table(rows, list(rows[0]))
  timings["total"] = time.perf_counter() - started
  (workdir / "results.md").write_text(
      "Fed-MA on the synthetic world: zero-shot alignment accuracy (true caption ranked "
      "above every one-attribute-changed caption) and caption loss on the clients' "
      f"held-out rows\n\n```\n{table}\n```\n\nwall time (s): "
      + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + "\n")
  (workdir / "results.json").write_text(json.dumps({"rows": rows, "timings": timings},
                                                   indent=2))
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for label, points in curves.items():
    ax.plot(*zip(*points), marker="o", ms=3, label=label)
  ax.axhline(floor["align_acc"], color="gray", ls=":", label="floor (untrained)")
  ax.axhline(ceiling["align_acc"], color="black", ls="--", label="centralized ceiling")
  top = min(1.0, 1.25 * max(ceiling["align_acc"], *(a for c in curves.values() for _, a in c)))
  ax.set(xlabel="round", ylabel="zero-shot alignment accuracy", ylim=(0, top + 0.02),
         title="Fed-MA: projector alignment, 1,000 clients")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(workdir / "accuracy.png", dpi=120)
  print("\n" + table)
  print("\nwall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
  print(f"results: {workdir / 'results.md'}\nplot:    {workdir / 'accuracy.png'}")


if __name__ == "__main__":
  main()

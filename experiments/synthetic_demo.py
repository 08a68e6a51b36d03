"""The demo: Synthetic(1, 1) (FedProx, MLSys 2020) under several server optimizers.

Runs FedAvg, FedAvgM, FedAdam and FedYogi with the same clients, cohorts and
seed, then writes ``results.md`` (a table), ``accuracy.png`` (test accuracy
against round) and one run directory per optimizer under ``--workdir``.

  python experiments/synthetic_demo.py --workdir runs/synthetic_demo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedjax_mm import config_files  # noqa: E402
from fedjax_mm import metrics  # noqa: E402
from fedjax_mm.simulation import driver  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (name, server optimizer, server learning rate, extra settings)
RUNS = (
    ("FedAvg", "fedavg", 1.0),
    ("FedAvgM", "fedavgm", 0.3),
    ("FedAdam", "fedadam", 0.03),
    ("FedYogi", "fedyogi", 0.03),
)


def base_config(num_rounds: int):
  config = config_files.load(ROOT / "configs/synthetic.py", "30")
  config.num_rounds = num_rounds
  config.eval_every = 5
  config.checkpoint.every = 50
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs/synthetic_demo")
  parser.add_argument("--rounds", type=int, default=200)
  args = parser.parse_args()
  workdir = Path(args.workdir)
  workdir.mkdir(parents=True, exist_ok=True)

  rows, curves = [], {}
  for label, optimizer, lr in RUNS:
    config = base_config(args.rounds)
    config.server.kind, config.server.learning_rate = optimizer, lr
    print(f"== {label}: server {optimizer} (lr {lr}), {config.data.num_clients} clients, "
          f"{config.clients_per_round} per round, {args.rounds} rounds")
    summary = driver.train_and_evaluate(config, str(workdir / optimizer))
    final = summary["final"]
    history = metrics.read(workdir / optimizer)
    curves[label] = [(h["round"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]
    rows.append({"server": label, "lr": lr, "test_acc": final["eval_accuracy"],
                 "test_loss": final["eval_loss"],
                 "client_acc_mean": final["eval_client_accuracy_mean"],
                 "client_acc_worst10%": final["eval_client_accuracy_worst10"],
                 "best_test_acc": summary["best_eval_accuracy"],
                 # A run directory that was already complete is only re-read.
                 "s/round": (summary["round_seconds_this_run"] / args.rounds
                             if summary["resumed_from_round"] == 0 else float("nan"))})

  table = metrics.format_table(rows, list(rows[0]))
  (workdir / "results.md").write_text(
      f"Synthetic(1,1), FedAvg-style local SGD, {args.rounds} rounds\n\n```\n{table}\n```\n")
  (workdir / "results.json").write_text(json.dumps(rows, indent=2))
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, points in curves.items():
    ax.plot(*zip(*points), label=label)
  ax.set(xlabel="round", ylabel="test accuracy", title="Synthetic(1,1): 30 clients, 10 per round")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(workdir / "accuracy.png", dpi=120)
  print("\n" + table)
  print(f"\nresults: {workdir / 'results.md'}\nplot:    {workdir / 'accuracy.png'}")


if __name__ == "__main__":
  main()

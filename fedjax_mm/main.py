"""Command line: ``python -m fedjax_mm.main --config=configs/x.py --workdir=DIR``.

Any config field can be overridden, e.g. ``--config.clients_per_round=50``.
Running again with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fedjax_mm import configuration, metrics
from fedjax_mm.simulation import driver
from fedjax_mm.simulation import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (optionally with :arg).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  # Orbax reports every save at INFO through absl; keep the console for progress.
  logging.set_verbosity(logging.WARNING)
  mesh_lib.use_cpu_cores()   # before any JAX computation; no-op on GPU/TPU
  try:
    summary = driver.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                        progress=_PROGRESS.value)
  except configuration.ConfigError as e:
    print(f"invalid config: {e}", file=sys.stderr)
    sys.exit(2)
  final = summary["final"]
  print(metrics.format_table(
      [{"round": final.get("round", 0), "train_loss": final.get("train_loss", float("nan")),
        "test_loss": final.get("eval_loss", float("nan")),
        "test_accuracy": final.get("eval_accuracy", float("nan")),
        "client_acc_mean": final.get("eval_client_accuracy_mean", float("nan")),
        "client_acc_worst10%": final.get("eval_client_accuracy_worst10", float("nan"))}],
      ["round", "train_loss", "test_loss", "test_accuracy", "client_acc_mean",
       "client_acc_worst10%"]))
  print(f"run directory: {_WORKDIR.value}")


if __name__ == "__main__":
  app.run(main)

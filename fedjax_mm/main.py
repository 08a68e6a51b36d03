"""Command line: ``python -m fedjax_mm.main --config=configs/x.py --workdir=DIR``.

Any config field can be overridden, e.g. ``--config.clients_per_round=50``;
``--help --config=configs/x.py`` lists the file's presets, every field and
every registered part with its options. Running again with the same workdir
resumes from its latest checkpoint. A user error (a bad field, a moved
field, a missing file, a diverged run, an unwritable workdir) ends with one
line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fedjax_mm import cli_flags, configuration, metrics
from fedjax_mm.simulation import driver
from fedjax_mm.simulation import mesh as mesh_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (optionally with :arg).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if present).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv: list[str]) -> None:
  del argv
  if not _WORKDIR.value:
    _fail("--workdir: required (the run directory; a run there is resumed)")
  # Orbax reports every save at INFO through absl; keep the console for progress.
  logging.set_verbosity(logging.WARNING)
  mesh_lib.use_cpu_cores()   # before any JAX computation; no-op on GPU/TPU
  try:
    summary = driver.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                        progress=_PROGRESS.value)
  except configuration.ConfigError as e:
    _fail(f"invalid config: {e}")
  except driver.RUN_ERRORS as e:    # diverged, nothing trainable, no checkpoint restores
    _fail(str(e))
  except OSError as e:   # a full disk, a read-only or missing workdir
    _fail(f"{e.strerror or e} ({e.filename or _WORKDIR.value}): free space or choose a "
          "writable --workdir; the run resumes from its last checkpoint")
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
  app.run(main, flags_parser=cli_flags.parse)

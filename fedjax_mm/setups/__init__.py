"""Turning a config into what the engine runs: data, model, evaluation data.

One module per kind of experiment; ``build(config)`` dispatches on
``config.data.name``. This is the config edge: library code below it takes
typed arguments only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import ml_collections

from fedjax_mm.data import federated
from fedjax_mm.types import Task


class Setup(NamedTuple):
  """Everything the driver needs besides optimizers.

  Attributes:
    train: the clients' training rows (packed population).
    test: the clients' own held-out rows (same client ids as ``train``).
    task: the model and its frozen parameters.
    info: JSON-able facts about the setup for ``summary.json``.
  """

  train: federated.FederatedData
  test: federated.FederatedData
  task: Task
  info: dict[str, Any]


def build(config: ml_collections.ConfigDict, *, progress: bool = True) -> Setup:
  name = config.data.name
  if name == "synthetic":
    from fedjax_mm.setups import synthetic
    return synthetic.build(config)
  if name == "world":
    from fedjax_mm.setups import fedma
    return fedma.build(config, progress=progress)
  if name == "real":
    from fedjax_mm.setups import fedma_real
    return fedma_real.build(config, progress=progress)
  raise ValueError(f"config.data.name must be one of ('synthetic', 'world', 'real'), "
                   f"got {name!r}")

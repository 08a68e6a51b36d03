"""Turning a config into what the engine runs: data, model, evaluation data.

``DATASETS`` is the dataset registry: ``config.data.name`` picks an entry,
whose module validates the dataset's own fields (``config.data.*`` and
``config.model.*``) before any compute and builds the :class:`Setup`.
Modules are imported on first use, so choosing the synthetic benchmark never
imports the real towers' readers. This is the config edge: library code below
it takes typed arguments only.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

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


class Dataset(NamedTuple):
  """A registered dataset (one ``config.data.name``).

  Attributes:
    name: the ``config.data.name`` value.
    label: a short human name.
    summary: one line for ``--help``.
    validate: ``"module:function"``, ``(config) -> None`` raising
      ``ConfigError`` on the dataset's own fields.
    build: ``"module:function"``, ``(config, progress) -> Setup``.
  """

  name: str
  label: str
  summary: str
  validate: str
  build: str


DATASETS = {d.name: d for d in (
    Dataset("synthetic", "Synthetic(α, β)",
            "logistic regression on Synthetic(alpha, beta) (Li et al., FedProx, MLSys 2020)",
            "fedjax_mm.setups.synthetic:validate", "fedjax_mm.setups.synthetic:build"),
    Dataset("interference", "Interference control",
            "linear projector: shared low-rank map + conflicting client maps (a positive control)",
            "fedjax_mm.setups.interference:validate", "fedjax_mm.setups.interference:build"),
    Dataset("world", "Fed-MA world",
            "the synthetic multimodal world: frozen ViT + LM, federated projector",
            "fedjax_mm.setups.world_config:validate", "fedjax_mm.setups.fedma:build"),
    Dataset("real", "Fed-MA real",
            "EfficientNet-Lite0 + SmolLM2-135M on Fashion-MNIST and Tux Paint stamps",
            "fedjax_mm.setups.real_config:validate", "fedjax_mm.setups.fedma_real:build"),
)}


def _resolve(target: str) -> Callable:
  module, _, function = target.partition(":")
  return getattr(importlib.import_module(module), function)


def dataset(config: ml_collections.ConfigDict) -> Dataset:
  """The registry entry of ``config.data.name`` (``ValueError`` naming the field)."""
  name = config.data.name if "data" in config and "name" in config.data else None
  if name not in DATASETS:
    raise ValueError(f"config.data.name: must be one of {tuple(DATASETS)}, got {name!r}")
  return DATASETS[name]


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the chosen dataset's own fields (before any data is built)."""
  _resolve(dataset(config).validate)(config)


def build(config: ml_collections.ConfigDict, *, progress: bool = True) -> Setup:
  """Builds the chosen dataset's :class:`Setup`."""
  return _resolve(dataset(config).build)(config, progress=progress)

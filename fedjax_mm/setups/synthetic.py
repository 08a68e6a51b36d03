"""Synthetic(alpha, beta) with multinomial logistic regression (FedProx benchmark).

The registered ``"synthetic"`` dataset: :func:`data_section` (defaults),
:func:`validate` and :func:`build`.

References:
  Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
"""

from __future__ import annotations

import ml_collections

from fedjax_mm import configuration
from fedjax_mm.data import federated, synthetic
from fedjax_mm.models import logreg
from fedjax_mm.setups import Setup


def data_section(num_clients: int = 30, size_mean: float = 4.0, size_sigma: float = 2.0,
                 min_size: int = 50) -> ml_collections.ConfigDict:
  """Default ``config.data`` for Synthetic(1, 1) (the paper's recipe at 30 clients)."""
  return ml_collections.ConfigDict(dict(
      name="synthetic", num_clients=num_clients, alpha=1.0, beta=1.0, iid=False,
      num_features=60, num_classes=10,
      size_mean=size_mean,     # client sizes: int(lognormal(size_mean, size_sigma)) + min_size
      size_sigma=size_sigma, min_size=min_size, max_size=10_000, test_fraction=0.1))


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.data`` of the synthetic benchmark."""
  number = configuration.number
  number(config, "data.alpha", lambda v: v >= 0, ">= 0")
  number(config, "data.beta", lambda v: v >= 0, ">= 0")
  configuration.one_of(config, "data.iid", (True, False))
  number(config, "data.num_features", lambda v: v >= 1, ">= 1", integer=True)
  number(config, "data.num_classes", lambda v: v >= 2, ">= 2", integer=True)
  number(config, "data.min_size", lambda v: v >= 2, ">= 2 (a train and a test row)",
         integer=True)
  number(config, "data.max_size", lambda v: v >= config.data.min_size,
         f">= data.min_size={config.data.min_size}", integer=True)
  number(config, "data.size_sigma", lambda v: v >= 0, ">= 0")
  # The log-scale mean of the sizes: any finite value (sizes are capped at
  # max_size in float, so a huge mean gives max_size rows, not an overflow).
  number(config, "data.size_mean", lambda v: True, "(log-scale mean of the client sizes)")


def build(config: ml_collections.ConfigDict, *, progress: bool = True) -> Setup:
  """The packed population and the logistic-regression task."""
  del progress  # generated in well under a second
  d = config.data
  data = synthetic.generate(
      config.seed, d.num_clients, alpha=d.alpha, beta=d.beta, iid=d.iid,
      num_features=d.num_features, num_classes=d.num_classes,
      size_mean=d.size_mean, size_sigma=d.size_sigma, min_size=d.min_size,
      max_size=d.max_size)
  train, test = federated.split_by_position(data, 1.0 - d.test_fraction)
  return Setup(train=train, test=test, task=logreg.task(d.num_features, d.num_classes),
               info={"train_examples": train.num_examples, "test_examples": test.num_examples})

"""Synthetic(alpha, beta) with multinomial logistic regression (FedProx benchmark).

References:
  Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020.
"""

from __future__ import annotations

import ml_collections

from fedjax_mm.data import federated, synthetic
from fedjax_mm.models import logreg
from fedjax_mm.setups import Setup


def build(config: ml_collections.ConfigDict) -> Setup:
  d = config.data
  data = synthetic.generate(
      config.seed, d.num_clients, alpha=d.alpha, beta=d.beta, iid=d.iid,
      num_features=d.num_features, num_classes=d.num_classes,
      size_mean=d.size_mean, size_sigma=d.size_sigma, min_size=d.min_size,
      max_size=d.max_size)
  train, test = federated.split_by_position(data, 1.0 - d.test_fraction)
  return Setup(train=train, test=test, task=logreg.task(d.num_features, d.num_classes),
               info={"train_examples": train.num_examples, "test_examples": test.num_examples})

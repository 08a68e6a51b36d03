"""Standardizing cached vision features with statistics the clients can share.

A frozen encoder's features can sit far from zero mean and unit variance
(EfficientNet's are non-negative); a projector trained on them from a fresh
init learns slowly. :class:`FeatureNorm` centres and scales each feature
dimension with the training rows' mean and variance, which a federated
deployment obtains from sufficient statistics (per-client count, sum and
sum of squares, summed by the server, under secure aggregation if wanted).

References:
  Ioffe & Szegedy, "Batch Normalization", ICML 2015 (why centred, unit-scale
  inputs train faster); Bonawitz et al., "Practical Secure Aggregation for
  Privacy-Preserving Machine Learning", CCS 2017 (summing client statistics
  without revealing them).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FeatureNorm(NamedTuple):
  """Per-dimension standardization of the cached vision features.

  EfficientNet's pooled features are non-negative (ReLU6) and share a large
  common component (on Fashion-MNIST the mean vector carries 0.72 of the
  features' RMS), so a freshly initialised projector sees mostly that common
  part. Standardizing each of the 1,280 dimensions makes the class-dependent
  part visible from step one; measured centrally (400 Fashion-MNIST rows, 50
  steps of 16, Adam 3e-3): zero-shot accuracy 0.10 -> 0.72, caption loss
  2.06 -> 0.66. The statistics come from the clients' training rows through
  sufficient statistics (each client's count, sum and sum of squares, added
  by the server: one pre-round of 2 x 1,280 numbers that secure aggregation
  can hide); the simulator adds the same sums directly. This is a
  preprocessing choice of this project, not part of LLaVA's recipe (CLIP
  features are already centred); ``model.feature_norm="none"`` turns it off
  in the real Fed-MA setup (:mod:`fedjax_mm.setups.fedma_real`).
  """
  mean: np.ndarray                      # [Dv]
  scale: np.ndarray                     # [Dv]: 1 / sqrt(var + EPS)

  EPS = 1e-2   # on the variance: no dimension is amplified more than 10x

  @classmethod
  def fit(cls, vis: np.ndarray) -> "FeatureNorm":
    """Statistics over all rows and visual tokens of ``vis`` ``[n, N, Dv]``."""
    x = np.asarray(vis, np.float64).reshape(-1, vis.shape[-1])
    count, total, squares = x.shape[0], x.sum(0), np.square(x).sum(0)
    mean = total / count
    var = np.maximum(squares / count - np.square(mean), 0.0)
    return cls(mean.astype(np.float32), (1.0 / np.sqrt(var + cls.EPS)).astype(np.float32))

  def __call__(self, vis: np.ndarray) -> np.ndarray:
    return ((np.asarray(vis, np.float32) - self.mean) * self.scale).astype(vis.dtype)

"""Synthetic(alpha, beta): the FedProx benchmark's non-IID logistic data.

Per client k (as in the authors' public data scripts): ``u_k ~ N(0, alpha)``
(mean of the client's true model), ``B_k ~ N(0, beta)``, feature mean
``v_k ~ N(B_k, 1)`` (F-dim), ``W_k ~ N(u_k, 1)`` (F x classes),
``b_k ~ N(u_k, 1)``, features ``x ~ N(v_k, Sigma)`` with diagonal
``Sigma_jj = (j + 1) ** -1.2`` and labels ``y = argmax(x W_k + b_k)``. Client
sizes are ``int(lognormal(mean, sigma)) + min_size`` (FedProx: 4, 2, 50).
``N(m, s)`` follows the scripts' ``np.random.normal(m, s)``: s is the standard
deviation. Synthetic-IID (``iid=True``) shares one W, b (``N(0, 1)``) across clients,
with feature mean 0 (the scripts' IID setting has beta = 0).

Extension for scaling studies: any population size K (the paper has 30) and a
cap on client sizes, so 100,000 clients stay in memory.

References:
  Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, "Federated Optimization in
  Heterogeneous Networks" (FedProx), MLSys 2020; arXiv:1812.06127.
"""

from __future__ import annotations

import numpy as np

from fedjax_mm.data import federated

# Examples generated per block (roughly): bounds the gathered per-example
# true models [block, F, classes] while keeping generation vectorized.
_BLOCK_EXAMPLES = 65_536


def client_sizes(rng: np.random.Generator, num_clients: int, *, mean: float,
                 sigma: float, min_size: int, max_size: int) -> np.ndarray:
  """Power-law-like (lognormal) client sizes, ``int(lognormal) + min_size``."""
  # Capped in float before the cast: a huge draw (or mean) would overflow int64.
  draws = np.floor(rng.lognormal(mean, sigma, num_clients)) + min_size
  return np.minimum(draws, max_size).astype(np.int32)


def generate(seed: int, num_clients: int, *, alpha: float = 1.0,
             beta: float = 1.0, iid: bool = False, num_features: int = 60,
             num_classes: int = 10, size_mean: float = 4.0,
             size_sigma: float = 2.0, min_size: int = 50,
             max_size: int = 10_000) -> federated.FederatedData:
  """Generates a Synthetic(alpha, beta) population, packed.

  Args:
    seed: numpy seed; same seed, same data.
    num_clients: K.
    alpha: spread of the clients' true models (model heterogeneity).
    beta: spread of the clients' feature means (feature heterogeneity).
    iid: Synthetic-IID instead (alpha and beta ignored).
    num_features: F (60 in the paper).
    num_classes: 10 in the paper.
    size_mean, size_sigma, min_size, max_size: client size distribution.

  Returns:
    FederatedData with ``{'x': [N, F] float32, 'y': [N] int32}``; rows of each
    client are in random order, so a positional train/test split is random.
  """
  rng = np.random.default_rng(seed)
  sizes = client_sizes(rng, num_clients, mean=size_mean, sigma=size_sigma,
                       min_size=min_size, max_size=max_size)
  feature_std = np.arange(1, num_features + 1, dtype=np.float64) ** -0.6
  if iid:
    shared_w = rng.normal(0, 1, (num_features, num_classes))
    shared_b = rng.normal(0, 1, num_classes)
    # FedProx's IID script runs with beta = 0: the feature mean is all zeros
    # (a random shared mean would let x W swamp b and give one label to all).
    shared_v = np.zeros(num_features)
  xs, ys = [], []
  ends = np.cumsum(sizes, dtype=np.int64)
  boundaries = np.unique(np.concatenate([
      [0], np.searchsorted(ends, np.arange(_BLOCK_EXAMPLES, ends[-1] if
                                           num_clients else 0, _BLOCK_EXAMPLES)),
      [num_clients]]))
  for start, stop in zip(boundaries[:-1], boundaries[1:]):
    n_k = sizes[start:stop]
    k = n_k.size
    if iid:
      w = np.broadcast_to(shared_w, (k, num_features, num_classes))
      b = np.broadcast_to(shared_b, (k, num_classes))
      v = np.broadcast_to(shared_v, (k, num_features))
    else:
      u = rng.normal(0, alpha, k)
      big_b = rng.normal(0, beta, k)
      v = rng.normal(big_b[:, None], 1, (k, num_features))
      w = rng.normal(u[:, None, None], 1, (k, num_features, num_classes))
      b = rng.normal(u[:, None], 1, (k, num_classes))
    owner = np.repeat(np.arange(k), n_k)
    x = v[owner] + rng.normal(0, 1, (owner.size, num_features)) * feature_std
    logits = np.einsum("nf,nfc->nc", x, w[owner]) + b[owner]
    xs.append(x.astype(np.float32))
    ys.append(np.argmax(logits, axis=-1).astype(np.int32))
  offsets = (np.cumsum(sizes) - sizes).astype(np.int32)
  return federated.FederatedData(
      examples={"x": np.concatenate(xs), "y": np.concatenate(ys)},
      offsets=offsets, sizes=sizes)

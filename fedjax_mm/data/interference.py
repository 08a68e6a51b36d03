"""A federation built so that parameter interference provably hurts FedAvg.

The positive control for interference-suppressing aggregation (Fed-CMP's
CRA, ``aggregation/canonical.py``). Every client fits a linear map
``x -> x W`` (``W``: ``m x n``, inputs ``x ~ N(0, I_m)``), but its targets mix
a *shared* low-rank map with a large *client-specific* one::

    W* = A S Vᵀ          A: m x r_s, V: n x r_s orthonormal, S = s I (s = 1)
    B_k = σ_k b u_{j_k} v_{j_k}ᵀ,   σ_k = ±1,   b = ratio · ‖W*‖_F
    train rows of client k:  y = x (W* + B_k) + noise · ε,   ε ~ N(0, I_n)
    test rows (every client): y = x W*

The client components come from a pool of ``num_directions`` rank-1
directions ``u_j v_jᵀ``: ``u_j`` orthonormal and orthogonal to span(A),
``v_j`` unit vectors orthogonal to span(V), so every ``B_k`` is orthogonal to
``W*`` on both sides (``W*ᵀ B_k = 0``, ``W* B_kᵀ = 0``). Each client draws one
direction and a random sign: clients on one direction with opposite signs
are TIES' *sign interference*; clients on different directions are *subspace
interference*. Neither is signal: the test targets are the shared map only.

Why a top-``r_s`` canonical basis must win here (``tests/test_interference.py``
measures it): a client that trains to convergence returns the local model
``X_k = W* + B_k`` (its least-squares solution, up to the noise). Over a
cohort of ``C`` clients the two-sided orthogonality removes the cross terms:
``G = Σ_k X_k X_kᵀ = C W* W*ᵀ + Σ_k B_k B_kᵀ`` exactly, with eigenvalue
``C s²`` on each shared direction (span(A)) and ``j b²`` on a client
direction that ``j`` clients of the cohort drew (whatever their signs).
So while ``s < b`` and ``j b² < C s²`` (``b < sqrt(C) s`` without
collisions) interference is larger than any one shared direction, yet the
top-``r_s`` basis ``U`` is exactly span(A). FedAvg's step ``W <- W - η (W -
mean_k X_k)`` moves towards ``W* + B̄`` with ``B̄ = (1/C) Σ_k B_k`` the cohort's
mean component, ``E‖B̄‖² ≈ b² / C``, a fresh draw every round (plus the
population's non-zero mean, a bias): at server learning rate ``η`` its
stationary error is ``‖W - W*‖² ≈ η / (2 - η) · b² / C`` (an exponential
moving average of the draws), a noise floor at any fixed ``η``, and a small
``η`` that lowers it converges only as ``(1 - η)^t``. Projecting the mean
update onto span(U) removes ``B̄`` (orthogonal to A) entirely: CRA reaches
``W*`` in a few rounds at a large ``η``.

This needs CRA to decompose the *local models* (``decompose="weights"``):
the updates ``ΔW_k = W - X_k`` lose the shared part once ``W ≈ W*``, and
their Gram is then all interference (at the config's defaults: best
accuracy 0.79-0.83 against FedAvg's 0.97, seeds 0-2). It also needs
``j b² < C s²`` in every round: CRA keeps the global model's part outside
span(U), so one round whose basis picks a client direction leaves that
component in ``W`` for good. The defaults (``ratio = 0.85``: ``b = 1.2 > s``,
``b² = 1.45``, three colliding clients ``4.3 < C s² = 5`` at ``C = 5``; the
full pool ``P = m - r_s = 30``) keep collisions harmless except four of five
clients on one direction (about 2e-4 per round).

References:
  Xiong et al., "A Step Toward Federated Pretraining of Multimodal Large
  Language Models" (Fed-CMP), arXiv:2603.26786, 2026 (abstract only: CRA
  "suppresses parameter interference"); Yadav et al., "TIES-Merging:
  Resolving Interference When Merging Models", NeurIPS 2023 (sign
  interference).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedjax_mm import checks
from fedjax_mm.data import federated


class Federation(NamedTuple):
  """A generated interference federation and its ground truth.

  Attributes:
    train: ``{'x': [N, m], 'y': [N, n]}`` float32, targets ``x (W* + B_k)`` + noise.
    test: held-out rows of the same clients, targets ``x W*``.
    shared: ``W*`` ``[m, n]`` float64 (rank ``shared_rank``).
    components: ``B_k`` ``[K, m, n]`` float64 (rank 1 each).
  """

  train: federated.FederatedData
  test: federated.FederatedData
  shared: np.ndarray
  components: np.ndarray


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
  q, r = np.linalg.qr(rng.normal(size=(rows, cols)))
  return q * np.sign(np.diag(r))   # a Haar-random frame (QR's sign fixed)


def generate(seed: int, num_clients: int, *, num_inputs: int = 32, num_outputs: int = 16,
             shared_rank: int = 2, ratio: float = 0.85, num_directions: int | None = None,
             client_size: int = 320, test_fraction: float = 0.2,
             noise: float = 0.1) -> Federation:
  """Generates the federation of the module doc (numpy; same seed, same data).

  Args:
    seed: numpy seed.
    num_clients: K.
    num_inputs: m, the input width (rows of the kernel).
    num_outputs: n, the output width.
    shared_rank: r_s, the rank of ``W*`` (unit singular values).
    ratio: ``‖B_k‖_F / ‖W*‖_F`` for every client.
    num_directions: the pool of client directions, ``1 <= P <= m - r_s``
      (None: ``m - r_s``).
    client_size: rows per client (>= 2).
    test_fraction: the share held out, in (0, 1): as ``split_by_position``,
      ``ceil((1 - f) n)`` rows train, at least one on each side.
    noise: standard deviation of the training targets' noise.

  Returns:
    The :class:`Federation`.
  """
  widest = min(num_inputs, num_outputs) - 1   # room for B_k beside W* on both sides
  checks.number("shared_rank", shared_rank, lambda v: 1 <= v <= widest,
                f"in [1, min(m, n) - 1 = {widest}]", integer=True)
  if num_directions is None:
    num_directions = num_inputs - shared_rank
  checks.number("num_directions", num_directions,
                lambda v: 1 <= v <= num_inputs - shared_rank,
                f"in [1, m - shared_rank = {num_inputs - shared_rank}]", integer=True)
  checks.number("client_size", client_size, lambda v: v >= 2, ">= 2 (a train and a test row)",
                integer=True)
  checks.number("test_fraction", test_fraction, lambda v: 0 < v < 1, "in (0, 1)")
  train_size = int(np.clip(federated.fraction_count(1.0 - test_fraction, client_size,
                                                    rounding="ceil"), 1, client_size - 1))
  test_size = client_size - train_size
  rng = np.random.default_rng(seed)
  # One frame of R^m: its first r_s columns span W*'s inputs, the rest are
  # the client directions, so interference is orthogonal to the signal.
  frame = _orthonormal(rng, num_inputs, shared_rank + num_directions)
  outputs = _orthonormal(rng, num_outputs, shared_rank)
  shared = frame[:, :shared_rank] @ outputs.T
  # Output directions orthogonal to W*'s too: then W* B_kᵀ = 0 (no cross
  # terms in the Gram), so the shared directions are exact eigenvectors.
  pool_out = rng.normal(size=(num_directions, num_outputs))
  pool_out -= pool_out @ outputs @ outputs.T
  pool_out /= np.linalg.norm(pool_out, axis=1, keepdims=True)
  which = rng.integers(0, num_directions, num_clients)
  signs = rng.choice([-1.0, 1.0], num_clients)
  b = ratio * np.sqrt(shared_rank)   # ‖W*‖_F = sqrt(r_s) with unit singular values
  u = frame[:, shared_rank + which].T                         # [K, m]
  v = b * signs[:, None] * pool_out[which]                    # [K, n]
  owners = np.repeat(np.arange(num_clients), train_size)
  x = rng.normal(size=(owners.size, num_inputs))
  # x B_k = (x · u_k) b σ_k v_k: rank 1, so no [N, m, n] stack is built.
  y = (x @ shared + np.sum(x * u[owners], axis=1, keepdims=True) * v[owners]
       + noise * rng.normal(size=(owners.size, num_outputs)))
  x_test = rng.normal(size=(num_clients * test_size, num_inputs))
  as_data = lambda x, y, size: federated.pack(
      {"x": x.astype(np.float32), "y": y.astype(np.float32)},
      np.repeat(np.arange(num_clients), size), num_clients)
  return Federation(train=as_data(x, y, train_size),
                    test=as_data(x_test, x_test @ shared, test_size),
                    shared=shared, components=u[:, :, None] * v[:, None, :])

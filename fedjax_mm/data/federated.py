"""Packed federated datasets: a population of K clients with no Python objects.

All clients' examples live in flat arrays sorted by client (leading axis N);
client k owns rows ``offsets[k] : offsets[k] + sizes[k]``. Building, splitting
and gathering are vectorized (no Python loop over clients), so a population of
100,000 ragged clients costs what its arrays cost.

Cohort sampling is a pure function of ``(key, round)``; the cohort gather turns
ragged clients into fixed ``[C, S, B]`` index plans with masks, so the round
function never retraces whatever the clients' sizes.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from fedjax_mm.data import permutation

LOCAL_MODES = ("steps", "epochs")
# Cohort sampling (see RoundSpec.sampling): uniform without replacement, in
# proportion to client size, or one pass over a fixed permutation.
SAMPLINGS = ("uniform", "size", "one_pass")


@struct.dataclass
class FederatedData:
  """A packed population of clients.

  Attributes:
    examples: dict of arrays with a leading axis N, rows grouped by client.
    offsets: ``[K]`` int32, first row of each client.
    sizes: ``[K]`` int32, number of rows of each client (may be 0).
  """

  examples: Mapping[str, jax.Array]
  offsets: jax.Array
  sizes: jax.Array

  @property
  def num_clients(self) -> int:
    return int(self.sizes.shape[0])

  @property
  def num_examples(self) -> int:
    return int(jax.tree.leaves(self.examples)[0].shape[0])


def pack(examples: Mapping[str, np.ndarray], client_ids: np.ndarray,
         num_clients: int) -> FederatedData:
  """Packs examples labelled with their owner into a :class:`FederatedData`.

  Args:
    examples: dict of arrays with leading axis N (host numpy).
    client_ids: ``[N]`` owner of each example, in ``[0, num_clients)``.
    num_clients: K; clients that own nothing get size 0.

  Returns:
    The packed dataset (numpy leaves; move it with ``jax.device_put``).
  """
  client_ids = np.asarray(client_ids)
  if client_ids.size and (client_ids.min() < 0 or client_ids.max() >= num_clients):
    raise ValueError(f"client_ids must lie in [0, {num_clients})")
  order = np.argsort(client_ids, kind="stable")
  sizes = np.bincount(client_ids, minlength=num_clients).astype(np.int32)
  offsets = (np.cumsum(sizes) - sizes).astype(np.int32)
  return FederatedData(
      examples={k: np.asarray(v)[order] for k, v in examples.items()},
      offsets=offsets, sizes=sizes)


def example_owners(data: FederatedData) -> np.ndarray:
  """``[N]`` client id of every row (host numpy)."""
  return np.repeat(np.arange(data.num_clients, dtype=np.int32),
                   np.asarray(data.sizes))


def fraction_count(fraction: float, count, *, rounding: str = "floor"):
  """``floor(fraction * count)`` (or ``ceil``), read as exact decimal arithmetic.

  The one rule for "a fraction of a count" (the training split here, the
  trimmed mean's ``floor(beta * n)``): the float64 product is first rounded to
  9 decimals, then floored or ceiled. A product within 5e-10 of an integer is
  thus that integer: ``0.29 * 100`` is 28.999999999999996 in floating point,
  but counts as 29, and ``0.07 * 100`` (7.000000000000001) ceils to 7. Exact
  for fractions given with up to 9 decimals and counts below 1e6.

  Args:
    fraction: a finite number (usually in [0, 1]).
    count: an integer or an integer array.
    rounding: ``"floor"`` or ``"ceil"``.

  Returns:
    An int64 array shaped like ``count`` (a 0-d array for a scalar).

  Example:
    >>> int(fraction_count(0.29, 100))
    29
  """
  if rounding not in ("floor", "ceil"):
    raise ValueError(f"rounding: must be one of ('floor', 'ceil'), got {rounding!r}")
  product = np.round(fraction * np.asarray(count, np.float64), 9)
  return (np.floor if rounding == "floor" else np.ceil)(product).astype(np.int64)


def split_by_position(data: FederatedData, first_fraction: float
                      ) -> tuple[FederatedData, FederatedData]:
  """Splits every client's rows: the first ``ceil(f * n)`` rows go left.

  Rows within a client are assumed to be in random order already (generators
  shuffle); a client with at least 2 rows keeps at least one row on each side.
  """
  sizes = np.asarray(data.sizes).astype(np.int64)
  # Rounded first (fraction_count): 0.07 * 100 is 7.000000000000001.
  left = fraction_count(first_fraction, sizes, rounding="ceil")
  left = np.where(sizes >= 2, np.clip(left, 1, sizes - 1), sizes)
  owners = example_owners(data)
  position = np.arange(owners.size) - np.asarray(data.offsets)[owners]
  is_left = position < left[owners]

  return _take_rows(data, is_left, left), _take_rows(data, ~is_left, sizes - left)


def _take_rows(data: FederatedData, rows: np.ndarray, sizes: np.ndarray) -> FederatedData:
  """``data``'s ``rows`` (indices or mask, grouped by client) as clients of ``sizes``."""
  sizes = np.asarray(sizes).astype(np.int32)
  return FederatedData(examples={k: np.asarray(v)[rows] for k, v in data.examples.items()},
                       offsets=(np.cumsum(sizes) - sizes).astype(np.int32), sizes=sizes)


def select_clients(data: FederatedData, client_ids: np.ndarray) -> FederatedData:
  """The rows of ``client_ids`` only, packed as clients ``0 .. len(ids) - 1``.

  E.g. evaluation on a fixed random subset of clients: every selected client
  keeps all of its rows, so per-client statistics stay per client.
  """
  ids = np.asarray(client_ids, np.int64)
  sizes = np.asarray(data.sizes).astype(np.int64)[ids]
  starts = np.asarray(data.offsets).astype(np.int64)[ids]
  rows = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(sizes.sum())
  return _take_rows(data, rows, sizes)


def sample_cohort(key: jax.Array, num_clients: int, cohort_size: int,
                  weights: jax.Array | None = None) -> jax.Array:
  """Samples ``cohort_size`` distinct client ids, a pure function of ``key``.

  Args:
    key: the round's sampling key (``fold_in(root, round)`` derived).
    num_clients: K.
    cohort_size: C <= K.
    weights: optional ``[K]`` non-negative sampling weights (e.g. sizes);
      uniform when None. Sampling is without replacement (Gumbel top-k);
      clients of weight 0 are drawn only once all others are.

  Returns:
    ``[C]`` int32 client ids.
  """
  # Top-k of random scores: O(K) and no full sort (jax.random.choice without
  # replacement permutes all K clients, which dominates small rounds). With
  # weights, Gumbel top-k samples without replacement with probability
  # proportional to weight at every draw (Vieira 2014; Kool et al. 2019).
  if weights is None:
    scores = jax.random.uniform(key, (num_clients,))
  else:
    scores = jnp.log(weights.astype(jnp.float32)) + jax.random.gumbel(key, (num_clients,))
  return jax.lax.top_k(scores, cohort_size)[1].astype(jnp.int32)


def one_pass_cohort(key: jax.Array, num_clients: int, cohort_size: int,
                    round_index: jax.Array) -> jax.Array:
  """Round ``t``'s slice ``[t*C, (t+1)*C)`` of one keyed order of the K clients.

  The order is a keyed bijection of ``[0, K)`` (:mod:`permutation`) evaluated
  only at the round's C positions: O(C) per round, where materializing the
  permutation would cost O(K) every round. With the same ``key`` every round,
  rounds ``0 .. K // C - 1`` draw disjoint cohorts, so no client (hence, with
  one local epoch, no example) is visited twice in that many rounds.

  Args:
    key: the run's ordering key; it must be the same in every round (derive
      it from the root key, not the round key).
    num_clients: K.
    cohort_size: C <= K.
    round_index: scalar round ``t`` (may be traced).

  Returns:
    ``[C]`` int32 distinct client ids. Past round ``K // C`` positions wrap
    modulo K (a second pass in the same order); callers that promise one pass
    refuse such runs up front.
  """
  # uint32 positions: t * C stays exact for any run that fits one pass
  # (t * C < K < 2**31); the permutation reduces them modulo K.
  start = jnp.asarray(round_index, jnp.uint32) * jnp.uint32(cohort_size)
  positions = start + jnp.arange(cohort_size, dtype=jnp.uint32)
  return permutation.permute(positions, num_clients, permutation.round_keys(key))


class LocalSchedule(NamedTuple):
  """How many local steps a client takes over which of its examples.

  Attributes:
    mode: ``"steps"``: exactly ``num_steps`` steps of ``min(batch_size, n)``
      examples each, streaming through reshuffled passes over the client's
      data. ``"epochs"``: ``num_epochs`` passes of ``ceil(n / batch_size)``
      steps each (last batch of a pass partial), capped at ``num_steps``.
    num_steps: S, the static number of step slots.
    batch_size: B, the static batch size.
    num_epochs: passes in ``"epochs"`` mode (ignored in ``"steps"`` mode).
  """

  mode: str
  num_steps: int
  batch_size: int
  num_epochs: int = 1


def client_plan(size: jax.Array, key: jax.Array, schedule: LocalSchedule
                ) -> tuple[jax.Array, jax.Array]:
  """One client's local data plan: which of its rows fill each batch slot.

  Args:
    size: scalar number of rows the client holds (n).
    key: the client's data-order key; each pass gets a fresh permutation.
    schedule: static :class:`LocalSchedule`.

  Returns:
    ``(positions [S, B] int32, mask [S, B] bool)``; positions index the
    client's own rows (add its offset); masked slots are padding and hold a
    valid dummy position 0.
  """
  S, B = schedule.num_steps, schedule.batch_size
  n = jnp.maximum(size, 1)
  step = jnp.arange(S, dtype=jnp.int32)[:, None]
  slot = jnp.arange(B, dtype=jnp.int32)[None, :]
  if schedule.mode == "steps":
    width = jnp.minimum(B, n)            # a small client uses all its rows
    stream = step * width + slot          # position in the endless stream
    epoch, within = stream // n, stream % n
    mask = jnp.broadcast_to((slot < width) & (size > 0), (S, B))
  elif schedule.mode == "epochs":
    steps_per_epoch = (n + B - 1) // B
    epoch, within = step // steps_per_epoch, (step % steps_per_epoch) * B + slot
    mask = (within < n) & (epoch < schedule.num_epochs) & (size > 0)
  else:
    raise ValueError(f"schedule.mode must be one of {LOCAL_MODES}, got {schedule.mode!r}")
  # A fresh permutation of the client's rows for every pass over them.
  keys = permutation.pass_keys(permutation.round_keys(key), epoch)
  perm = permutation.permute(within, n, keys)
  return jnp.where(mask, perm, 0), mask


def rows_covered(size: jax.Array, schedule: LocalSchedule) -> jax.Array:
  """Distinct rows a client of ``size`` rows trains on under ``schedule``.

  Equal to ``size`` unless the step cap truncates the first pass (epochs mode
  with ``ceil(n / B) > S``) or ``S * B < n`` in steps mode. Each pass is a
  permutation, so the rows of the plan's first pass are distinct.
  """
  n = jnp.asarray(size, jnp.int32)
  B, S = schedule.batch_size, schedule.num_steps
  if schedule.mode == "steps":
    seen = S * jnp.minimum(B, n)
  else:
    steps_per_epoch = (n + B - 1) // B
    taken = jnp.minimum(schedule.num_epochs * steps_per_epoch, S)
    seen = jnp.where(taken >= steps_per_epoch, n, taken * B)
  return jnp.minimum(n, seen)


def trainable_sizes(data: FederatedData, example_mask=None) -> np.ndarray:
  """``[K]`` number of each client's rows that can train (host numpy, int64).

  Args:
    data: a packed population.
    example_mask: the task's ``batch -> [B] bool`` (e.g. rows with a
      caption); None: every row trains, i.e. ``data.sizes``.
  """
  if example_mask is None:
    return np.asarray(data.sizes).astype(np.int64)
  trainable = np.asarray(example_mask(data.examples), bool)
  return np.bincount(example_owners(data), weights=trainable,
                     minlength=data.num_clients).astype(np.int64)

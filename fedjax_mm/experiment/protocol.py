"""The comparison's protocol: which seeds and which clients select, which report.

* Selection: every grid point runs on :data:`SELECTION_SEEDS` and is scored
  by its final alignment accuracy on the *validation* clients, averaged over
  those seeds.
* Report: the chosen point runs on fresh seeds (:func:`report_seeds`, none of
  them a selection seed) and is evaluated on the *test* clients, disjoint from
  the validation clients; the seeds are the same for every method, so runs
  pair up by seed (same cohorts' randomness, same initial projector).

A seed changes the projector's initialization, the cohort sampling and the
clients' data order; the federation itself (the world sample, its partition,
the clients' rows) is the scenario's and fixed, so the same evaluation clients
score every method and seed (what a paired bootstrap over clients needs).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SELECTION_SEEDS = (0, 1)
REPORT_SEED_BASE = 100   # report seeds 100, 101, ...: never a selection seed


def report_seeds(count: int) -> tuple[int, ...]:
  """The ``count`` report seeds (fresh: disjoint from :data:`SELECTION_SEEDS`)."""
  return tuple(REPORT_SEED_BASE + i for i in range(count))


class Split(NamedTuple):
  """Disjoint evaluation clients: ``validation`` selects, ``test`` reports (sorted ids)."""

  validation: np.ndarray
  test: np.ndarray


def evaluation_split(test_sizes: np.ndarray, eval_clients: int, seed: int) -> Split:
  """Two disjoint random sets of clients with test rows.

  Each holds ``eval_clients`` clients, or half of the clients with test rows
  when ``eval_clients`` is 0 ("all") or more than half of them.

  Args:
    test_sizes: ``[K]`` test rows per client.
    eval_clients: the scenario's ``data.eval_clients``.
    seed: the scenario's seed (the split is fixed per scenario).

  Raises:
    ValueError: fewer than 2 clients hold test rows.
  """
  candidates = np.flatnonzero(np.asarray(test_sizes) > 0)
  if candidates.size < 2:
    raise ValueError(f"evaluation_split: need >= 2 clients with test rows, got "
                     f"{candidates.size}")
  half = candidates.size // 2
  n = eval_clients if 0 < eval_clients <= half else half
  order = np.random.default_rng(seed + 1).permutation(candidates)
  return Split(np.sort(order[:n]), np.sort(order[n:2 * n]))


"""Vectorized allocation primitives behind the partitioners of :mod:`.skew`.

Partitioners decide *how many* examples of each group (concept, domain, ...)
each client gets; these helpers turn such counts into per-example owners
without a Python loop over clients or examples, so 100,000 clients and
millions of examples partition in seconds:

* :func:`check_sizes`: validated client sizes (balanced by default);
* :func:`largest_remainder`: integers proportional to weights, exact sum;
* :func:`windows`: distinct consecutive items per client, balanced over items;
* :func:`random_rank`: each element's rank within its group, random order;
* :func:`materialize`: ``(owner, group, count)`` triples -> ``[N]`` owners;
* :func:`categorical_counts`, :func:`mixture_counts`: multinomial draws of
  per-client group counts, capped by each group's supply;
* :func:`dense_ids`: arbitrary labels -> ``[0, G)``.

All take a numpy ``Generator`` and are deterministic given it.

References:
  Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification", 2019; arXiv:1909.06335 (renormalizing
  over the remaining concepts when one runs out, in :func:`mixture_counts`).
"""

from __future__ import annotations

import numpy as np


def check_sizes(sizes: np.ndarray | None, num_examples: int, num_clients: int,
                rng: np.random.Generator) -> np.ndarray:
  """Validated int64 client sizes; None means balanced sizes summing to N.

  Args:
    sizes: ``[K]`` non-negative sizes summing to at most N, or None.
    num_examples: N.
    num_clients: K.
    rng: draws which clients get the remainder of balanced sizes.

  Returns:
    ``[K]`` int64 sizes.

  Raises:
    ValueError: on a wrong shape, a negative size or a sum above N.
  """
  if sizes is None:
    # Sizes differ by at most one; random clients get the remainder.
    extra = rng.permutation(num_clients) < num_examples % num_clients
    return num_examples // num_clients + extra.astype(np.int64)
  sizes = np.asarray(sizes, np.int64)
  if sizes.shape != (num_clients,) or sizes.min(initial=0) < 0:
    raise ValueError(f"sizes: must be [{num_clients}] non-negative ints, got shape "
                     f"{sizes.shape} with minimum {sizes.min(initial=0)}")
  if sizes.sum() > num_examples:
    raise ValueError(f"sizes: must sum to at most {num_examples} examples, got "
                     f"{sizes.sum()}")
  return sizes


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
  """Integers proportional to ``weights`` summing exactly to ``total``.

  Args:
    total: the exact sum.
    weights: ``[K]`` non-negative weights, not all 0.

  Returns:
    ``[K]`` int64: floors of the quotas, plus one for the largest remainders.
  """
  quota = total * weights / weights.sum()
  base = np.floor(quota).astype(np.int64)
  short = int(total - base.sum())
  base[np.argsort(base - quota, kind="stable")[:short]] += 1
  return base


def windows(count: int, num_items: int, width: int, rng: np.random.Generator,
            rank: np.ndarray | None = None) -> np.ndarray:
  """``[count, width]`` distinct items per row, each item in ~equally many rows.

  Row r holds ``width`` consecutive items of a random cyclic order of items;
  window starts are balanced over items. With ``rank`` (a permutation, e.g.
  clients by decreasing size) starts snake over items in that order, so big
  clients are spread over items instead of piling onto one.

  Args:
    count: rows (e.g. clients).
    num_items: items (e.g. domains, styles).
    width: items per row, at most ``num_items``.
    rng: draws the cyclic order and the starts.
    rank: optional ``[count]`` permutation ordering the snake.

  Returns:
    ``[count, width]`` int64 item ids.
  """
  if rank is None:
    starts = rng.permutation(np.arange(count) % num_items)
  else:
    snake = np.arange(count) % (2 * num_items)
    snake = np.where(snake < num_items, snake, 2 * num_items - 1 - snake)
    starts = np.empty(count, np.int64)
    starts[rank] = snake
  order = rng.permutation(num_items)
  return order[(starts[:, None] + np.arange(width)) % num_items]


def random_rank(groups: np.ndarray, num_groups: int,
                rng: np.random.Generator) -> np.ndarray:
  """Position of each element within its group, in a random order per group.

  Args:
    groups: ``[N]`` group of each element, in ``[0, num_groups)``.
    num_groups: G.
    rng: draws the order within each group.

  Returns:
    ``[N]`` int64 ranks: a group of size s holds ranks ``0 .. s-1``.
  """
  perm = rng.permutation(groups.size)
  order = perm[np.argsort(groups[perm], kind="stable")]  # by group, random within
  counts = np.bincount(groups, minlength=num_groups)
  rank = np.empty(groups.size, np.int64)
  rank[order] = np.arange(groups.size) - np.repeat(np.cumsum(counts) - counts, counts)
  return rank


def materialize(groups: np.ndarray, num_groups: int, owner: np.ndarray,
                group: np.ndarray, count: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
  """Hands ``count[i]`` random examples of ``group[i]`` to ``owner[i]``.

  Args:
    groups: ``[N]`` group of each example, in ``[0, num_groups)``.
    num_groups: G.
    owner: ``[M]`` client of each triple.
    group: ``[M]`` group of each triple.
    count: ``[M]`` examples of that group for that client; per-group sums
      must not exceed the group sizes.
    rng: draws which examples of a group go to which owner.

  Returns:
    ``[N]`` int32 client ids; leftovers stay ``-1``.
  """
  slots = np.argsort(group, kind="stable")
  dealt = np.repeat(owner[slots], count[slots]).astype(np.int32)  # by group
  used = np.bincount(group, weights=count, minlength=num_groups).astype(np.int64)
  rank = random_rank(groups, num_groups, rng)
  take = rank < used[groups]
  client_ids = np.full(groups.size, -1, np.int32)
  client_ids[take] = dealt[(np.cumsum(used) - used)[groups[take]] + rank[take]]
  return client_ids


def categorical_counts(n: np.ndarray, p: np.ndarray,
                       rng: np.random.Generator) -> np.ndarray:
  """Rows ``Multinomial(n[k], p[k])`` by inverse CDF over one flat array.

  Costs O(K * G + sum(n) log(K * G)); numpy's multinomial draws a binomial
  per cell, which dominates when G is large and clients are small. Row k's
  normalized CDF is shifted by k, so one searchsorted serves every row.

  Args:
    n: ``[K]`` draws per row.
    p: ``[K, G]`` non-negative probabilities (rows need not sum to 1).
    rng: the draws.

  Returns:
    ``[K, G]`` int64 counts with row sums ``n``.
  """
  k, g = p.shape
  cdf = np.cumsum(p, axis=1)
  cdf /= cdf[:, -1:]
  cdf += np.arange(k)[:, None]
  row = np.repeat(np.arange(k), n)
  idx = np.searchsorted(cdf.reshape(-1), row + rng.random(row.size), side="right")
  # k + u can round up to k + 1; the caller tolerates a rare pick of a group
  # with no supply (it is cut back to zero and redrawn).
  idx = np.minimum(idx, row * g + g - 1)
  return np.bincount(idx, minlength=k * g).reshape(k, g)


def mixture_counts(supply: np.ndarray, sizes: np.ndarray, mixtures: np.ndarray,
                   alpha: float, rng: np.random.Generator) -> np.ndarray:
  """``[K, G]`` counts: client k draws ``sizes[k]`` examples by ``mixtures[k]``.

  Each round every client draws its unmet demand multinomially from its
  mixture renormalized over groups with supply left. A group demanded beyond
  its supply is awarded to uniformly random demand units, and the losers
  redraw next round (Hsu et al.'s renormalize-over-remaining-concepts, ties
  broken at random instead of in client order). A client with no mixture
  mass left draws a fresh Dirichlet(alpha * remaining-supply share), which
  keeps small-alpha clients skewed instead of IID. Every round with a shortfall
  exhausts a group, so at most G + 1 rounds run (each O(K * G)).

  Args:
    supply: ``[G]`` examples of each group.
    sizes: ``[K]`` examples each client draws; sum at most ``supply.sum()``.
    mixtures: ``[K, G]`` each client's group mixture.
    alpha: Dirichlet concentration of a fresh mixture.
    rng: the draws.

  Returns:
    ``[K, G]`` int64 counts: row sums ``sizes``, column sums <= ``supply``.
  """
  counts = np.zeros(mixtures.shape, np.int64)
  supply, deficit = supply.astype(np.int64).copy(), sizes.astype(np.int64).copy()
  while (active := np.flatnonzero(deficit)).size:
    live = supply > 0
    p = mixtures[active] * live
    mass = p.sum(1)
    dead = mass <= 0
    if dead.any():
      fresh = np.zeros((int(dead.sum()), supply.size))
      fresh[:, live] = rng.dirichlet(alpha * supply[live] / supply.sum(), dead.sum())
      p[dead] = fresh
    demand = categorical_counts(deficit[active], p, rng)
    over = demand.sum(0) > supply
    if over.any():
      # Keep a uniformly random subset of each overdrawn group's demand units
      # (multivariate hypergeometric), all groups at once.
      cut = demand[:, over]
      unit = np.repeat(np.arange(cut.size), cut.reshape(-1))
      group = unit % cut.shape[1]
      keep = random_rank(group, cut.shape[1], rng) < supply[over][group]
      demand[:, over] = np.bincount(unit[keep], minlength=cut.size).reshape(cut.shape)
    counts[active] += demand
    supply -= demand.sum(0)
    deficit[active] -= demand.sum(1)
  return counts


def dense_ids(values: np.ndarray) -> tuple[np.ndarray, int]:
  """Maps arbitrary int labels to ``[0, G)``.

  Args:
    values: any-shape int labels.

  Returns:
    ``([N] int64 dense ids of the flattened labels, G)``.
  """
  uniq, inverse = np.unique(np.asarray(values), return_inverse=True)
  return inverse.reshape(-1).astype(np.int64), int(uniq.size)

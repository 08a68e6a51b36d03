"""Who owns which example: IID, concept, quantity and domain skew.

Every partitioner is a pure function of its arrays and ``seed`` (numpy
``default_rng``), vectorized over examples and clients (the primitives are in
:mod:`.allocation`), and returns ``client_ids: int32 [N]`` with values in
``[0, num_clients)``, or ``-1`` for an example no client owns (when the
requested sizes sum to less than N, or when rounding leaves a few examples
over). ``federated.pack`` needs ids in range: use
:func:`fedjax_mm.data.partition.pack_assigned`, which drops the ``-1`` rows
first.

* concept skew: :func:`dirichlet` (Hsu et al.) or :func:`shards` (McMahan);
* quantity skew: :func:`power_law_sizes`, fed to ``sizes=`` of :func:`iid`,
  :func:`dirichlet` or :func:`by_domain`;
* domain skew: :func:`by_domain`, optionally with a Dirichlet concept mixture
  inside each client's domains.

Caption-style and missing-modality skew, and the declarative composition of
all of them, are in :mod:`fedjax_mm.data.partition`.

References:
  Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification", 2019; arXiv:1909.06335.
  McMahan, Moore, Ramage, Hampson, Aguera y Arcas, "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017.
  Li, Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An
  Experimental Study", ICDE 2022; arXiv:2102.02079.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from fedjax_mm import checks
from fedjax_mm.data import allocation

Seed = int | Sequence[int]


def iid(num_examples: int, num_clients: int, seed: Seed,
        sizes: np.ndarray | None = None) -> np.ndarray:
  """IID partition: a random permutation of the examples cut into clients.

  Args:
    num_examples: N.
    num_clients: K.
    seed: numpy seed.
    sizes: optional ``[K]`` exact client sizes (sum <= N, rest ``-1``); by
      default sizes are balanced (differ by at most one) and use all of N.

  Returns:
    ``[N]`` int32 client ids.
  """
  rng = np.random.default_rng(seed)
  sizes = allocation.check_sizes(sizes, num_examples, num_clients, rng)
  client_ids = np.full(num_examples, -1, np.int32)
  client_ids[rng.permutation(num_examples)[:sizes.sum()]] = np.repeat(
      np.arange(num_clients, dtype=np.int32), sizes)
  return client_ids


def dirichlet(concepts: np.ndarray, num_clients: int, alpha: float, seed: Seed,
              sizes: np.ndarray | None = None) -> np.ndarray:
  """Concept skew: each client draws its examples from a Dirichlet mixture.

  Client k draws ``q_k ~ Dir(alpha * p)``, ``p`` the global concept
  frequencies (Hsu et al.'s prior; with it alpha -> inf tends to IID), and
  takes ``sizes[k]`` examples concept by concept from ``q_k``, without
  replacement. When a concept runs out, contested examples go to random
  demand units and the clients left short redraw from their mixture
  renormalized over the concepts that remain (see
  :func:`.allocation.mixture_counts`), so sizes are always exact and every
  example is used at most once. Time and memory are O(K * C + N log N) for C
  concepts (~0.5 s for K = 1e5, N = 1e6, C = 10 on one core; ~3 s with
  C = 200).

  Args:
    concepts: ``[N]`` int concept key of each example (any labels; concepts
      absent from the data have prior mass 0, so they need not be listed).
    num_clients: K.
    alpha: concentration > 0; small => each client dominated by few concepts.
    seed: numpy seed.
    sizes: optional ``[K]`` exact sizes (e.g. :func:`power_law_sizes`); by
      default balanced sizes using all N examples.

  Returns:
    ``[N]`` int32 client ids (``-1`` where sizes sum to less than N).

  References:
    Hsu, Qi, Brown 2019, arXiv:1909.06335.
  """
  checks.number("alpha", alpha, lambda v: v > 0, "> 0")
  rng = np.random.default_rng(seed)
  groups, num_groups = allocation.dense_ids(concepts)
  sizes = allocation.check_sizes(sizes, groups.size, num_clients, rng)
  supply = np.bincount(groups, minlength=num_groups)
  mixtures = rng.dirichlet(alpha * supply / supply.sum(), num_clients)
  counts = allocation.mixture_counts(supply, sizes, mixtures, alpha, rng)
  owner, group = np.nonzero(counts)
  return allocation.materialize(groups, num_groups, owner, group, counts[owner, group],
                                rng)


def shards(concepts: np.ndarray, num_clients: int, shards_per_client: int,
           seed: Seed) -> np.ndarray:
  """Pathological non-IID: sort by concept, cut equal shards, deal them out.

  ``N mod (K * shards_per_client)`` random examples are left out (``-1``) so
  all shards are equal. A shard is pure unless it straddles a concept
  boundary, so a client sees at most ``shards_per_client`` concepts when every
  concept's size is a multiple of the shard size (at most twice that always).

  Args:
    concepts: ``[N]`` int concept key of each example.
    num_clients: K.
    shards_per_client: shards per client (2 in McMahan et al.).
    seed: numpy seed.

  Returns:
    ``[N]`` int32 client ids; every client holds exactly
    ``N // (K * shards_per_client) * shards_per_client`` examples.

  References:
    McMahan et al., AISTATS 2017 (MNIST pathological non-IID).
  """
  concepts = np.asarray(concepts)
  num_shards = num_clients * shards_per_client
  if shards_per_client < 1 or num_clients < 1 or concepts.size < num_shards:
    raise ValueError(f"need shards_per_client >= 1 and N >= K * shards_per_client,"
                     f" got N={concepts.size}, K={num_clients}, {shards_per_client}")
  shard_size = concepts.size // num_shards
  rng = np.random.default_rng(seed)
  # A random subset in random order: the stable sort then cuts each concept's
  # examples into shards at random, and the dropped remainder is unbiased.
  perm = rng.permutation(concepts.size)[:num_shards * shard_size]
  order = perm[np.argsort(concepts[perm], kind="stable")]
  shard_owner = rng.permutation(np.repeat(np.arange(num_clients, dtype=np.int32),
                                          shards_per_client))
  client_ids = np.full(concepts.size, -1, np.int32)
  client_ids[order] = np.repeat(shard_owner, shard_size)
  return client_ids


def power_law_sizes(num_examples: int, num_clients: int, exponent: float,
                    seed: Seed, min_size: int = 1) -> np.ndarray:
  """Quantity skew: client sizes with a Pareto tail, summing exactly to N.

  Client weights are classical Pareto ``w ~ Pareto(x_m=1, exponent)``, i.e.
  ``P(w > x) = x ** -exponent``; every client gets ``min_size`` and the other
  ``N - K * min_size`` examples are split in proportion to ``w`` (largest
  remainder). The large sizes therefore keep tail index ``exponent``
  (rank-size slope ``-1 / exponent`` on log-log axes); smaller exponent =>
  heavier tail (below 1 a few clients hold most of the data).

  Args:
    num_examples: N, the exact sum of the sizes.
    num_clients: K.
    exponent: Pareto tail index > 0.
    seed: numpy seed.
    min_size: floor for every client.

  Returns:
    ``[K]`` int64 sizes.

  References:
    Li, Diao, Chen, He 2022 (quantity-based label/size skew), arXiv:2102.02079.
  """
  checks.number("exponent", exponent, lambda v: v > 0, "> 0")
  if min_size < 0 or num_clients * min_size > num_examples:
    raise ValueError(f"need 0 <= min_size and K * min_size <= N, got "
                     f"min_size={min_size}, K={num_clients}, N={num_examples}")
  weights = 1.0 + np.random.default_rng(seed).pareto(exponent, num_clients)
  return min_size + allocation.largest_remainder(num_examples - num_clients * min_size,
                                                 weights)


def by_domain(domains: np.ndarray, num_clients: int, domains_per_client: int = 1,
              seed: Seed = 0, sizes: np.ndarray | None = None, *,
              concepts: np.ndarray | None = None,
              alpha: float | None = None) -> np.ndarray:
  """Domain skew: each client only holds examples of its own domains.

  Client k holds ``domains_per_client`` distinct domains: a window of
  consecutive domains in a random cyclic order, window starts balanced over
  domains (so every domain has ~``K * dpc / D`` holders; when ``K * dpc < D``
  some domains have none and their examples stay ``-1``). Each client splits
  its size evenly over its domains (one "slot" per domain).

  Without ``sizes``, each domain's examples are dealt equally to its slots,
  so all examples are used (client sizes then follow the domain sizes). With
  ``sizes``, clients are first ranked by size and snaked over domains to
  balance load; a domain whose slots ask for more than it holds scales its
  slots down proportionally (never up), so sizes are exact where the domains
  allow and otherwise upper bounds; unused examples stay ``-1``.

  With ``concepts`` and ``alpha`` concept skew composes: client k draws one
  Dirichlet(alpha * p) concept mixture (p: global concept frequencies) and
  fills each of its slots from that mixture, renormalized inside the domain
  as in :func:`dirichlet`.

  Args:
    domains: ``[N]`` int domain of each example.
    num_clients: K.
    domains_per_client: distinct domains per client, in ``[1, D]``.
    seed: numpy seed.
    sizes: optional ``[K]`` target sizes (sum <= N).
    concepts: optional ``[N]`` concept keys for Dirichlet skew within domains.
    alpha: Dirichlet concentration, required with ``concepts``.

  Returns:
    ``[N]`` int32 client ids (``-1`` for unused examples).

  References:
    Li, Diao, Chen, He 2022 (feature/domain skew), arXiv:2102.02079.
  """
  rng = np.random.default_rng(seed)
  dom, num_domains = allocation.dense_ids(domains)
  checks.number("domains_per_client", domains_per_client,
                lambda v: 1 <= v <= num_domains, f"in [1, {num_domains}]", integer=True)
  if (concepts is None) != (alpha is None):
    raise ValueError("concepts and alpha must be given together")
  supply = np.bincount(dom, minlength=num_domains)
  rank = None
  if sizes is not None:
    sizes = allocation.check_sizes(sizes, dom.size, num_clients, rng)
    rank = np.argsort(-sizes, kind="stable")
  held = allocation.windows(num_clients, num_domains, domains_per_client, rng, rank)
  owner = np.repeat(np.arange(num_clients), domains_per_client)
  group = held.reshape(-1)
  if sizes is None:
    cover = np.bincount(group, minlength=num_domains)
    quota = supply[group] // cover[group] + (
        allocation.random_rank(group, num_domains, rng)
        < (supply % np.maximum(cover, 1))[group])
  else:
    quota = (sizes[:, None] // domains_per_client
             + (np.arange(domains_per_client) < sizes[:, None] % domains_per_client))
    quota = quota.reshape(-1)
    demand = np.bincount(group, weights=quota, minlength=num_domains).astype(np.int64)
    over = (demand > supply)[group]
    # Integer floor keeps every domain within its supply exactly.
    quota = np.where(over, quota * supply[group] // np.maximum(demand[group], 1), quota)
  if concepts is None:
    return allocation.materialize(dom, num_domains, owner, group, quota, rng)
  checks.number("alpha", alpha, lambda v: v > 0, "> 0")
  con, num_concepts = allocation.dense_ids(concepts)
  if con.size != dom.size:
    raise ValueError("concepts and domains must have the same length")
  joint = dom * num_concepts + con
  supply_dc = np.bincount(joint, minlength=num_domains * num_concepts).reshape(
      num_domains, num_concepts)
  mixtures = rng.dirichlet(alpha * supply_dc.sum(0) / dom.size, num_clients)
  owners, groups, counts = [], [], []
  for d in range(num_domains):  # a loop over domains, vectorized within
    slots = np.flatnonzero(group == d)
    c = allocation.mixture_counts(supply_dc[d], quota[slots], mixtures[owner[slots]], alpha,
                                  rng)
    i, j = np.nonzero(c)
    owners.append(owner[slots][i])
    groups.append(d * num_concepts + j)
    counts.append(c[i, j])
  return allocation.materialize(joint, num_domains * num_concepts, np.concatenate(owners),
                      np.concatenate(groups), np.concatenate(counts), rng)

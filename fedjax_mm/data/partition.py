"""Federated partitioners: who owns each example of a centralized dataset.

Every partitioner is a pure function of its arrays and ``seed`` (numpy
``default_rng``), vectorized over examples and clients, and returns
``client_ids: int32 [N]`` with values in ``[0, num_clients)``, or ``-1`` for an
example no client owns (when the requested sizes sum to less than N, or when
rounding leaves a few examples over). ``federated.pack`` needs ids in range:
use :func:`pack_assigned`, which drops the ``-1`` rows first.

Skews and how they compose (see :func:`partition`):
  * concept skew: :func:`dirichlet` (Hsu et al.) or :func:`shards` (McMahan);
  * quantity skew: :func:`power_law_sizes`, fed to ``sizes=`` of
    :func:`iid`, :func:`dirichlet` or :func:`by_domain`;
  * domain skew: :func:`by_domain`, optionally with a Dirichlet concept
    mixture inside each client's domains;
  * caption style: :func:`assign_styles` and :func:`example_styles`;
  * missing modality: :func:`missing_modality`.

References:
  Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data Distribution
  for Federated Visual Classification", 2019; arXiv:1909.06335.
  McMahan, Moore, Ramage, Hampson, Aguera y Arcas, "Communication-Efficient
  Learning of Deep Networks from Decentralized Data", AISTATS 2017.
  Li, Diao, Chen, He, "Federated Learning on Non-IID Data Silos: An
  Experimental Study", ICDE 2022; arXiv:2102.02079.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from fedjax_mm.data import federated

Seed = int | Sequence[int]
KINDS = ("iid", "dirichlet", "shards")
QUANTITY_KINDS = ("equal", "power_law")
STYLE_MODES = ("per_client", "iid")


class Partition(NamedTuple):
  """Result of :func:`partition` (host numpy arrays).

  Attributes:
    client_ids: ``[N]`` int32 owner of each example, ``-1`` if unassigned.
    client_styles: ``[K]`` int32 caption style of each client, or ``[K, m]``
      when a client holds ``m > 1`` styles (see :func:`assign_styles`).
    has_caption: ``[N]`` bool, False where a caption is dropped.
  """

  client_ids: np.ndarray
  client_styles: np.ndarray
  has_caption: np.ndarray


# ----------------------------------------------------------------- helpers


def _check_sizes(sizes: np.ndarray | None, num_examples: int, num_clients: int,
                 rng: np.random.Generator) -> np.ndarray:
  """Validated int64 sizes; None means balanced sizes summing to N."""
  if sizes is None:
    # Sizes differ by at most one; random clients get the remainder.
    extra = rng.permutation(num_clients) < num_examples % num_clients
    return num_examples // num_clients + extra.astype(np.int64)
  sizes = np.asarray(sizes, np.int64)
  if sizes.shape != (num_clients,) or sizes.min(initial=0) < 0:
    raise ValueError(f"sizes must be [{num_clients}] non-negative ints")
  if sizes.sum() > num_examples:
    raise ValueError(f"sizes sum to {sizes.sum()} > {num_examples} examples")
  return sizes


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
  """Integers proportional to ``weights`` summing exactly to ``total``."""
  quota = total * weights / weights.sum()
  base = np.floor(quota).astype(np.int64)
  short = int(total - base.sum())
  base[np.argsort(base - quota, kind="stable")[:short]] += 1
  return base


def _windows(count: int, num_items: int, width: int, rng: np.random.Generator,
             rank: np.ndarray | None = None) -> np.ndarray:
  """``[count, width]`` distinct items per row, each item in ~equally many rows.

  Row r holds ``width`` consecutive items of a random cyclic order of items;
  window starts are balanced over items. With ``rank`` (a permutation, e.g.
  clients by decreasing size) starts snake over items in that order, so big
  clients are spread over items instead of piling onto one.
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


def _random_rank(groups: np.ndarray, num_groups: int,
                 rng: np.random.Generator) -> np.ndarray:
  """Position of each element within its group, in a random order per group."""
  perm = rng.permutation(groups.size)
  order = perm[np.argsort(groups[perm], kind="stable")]  # by group, random within
  counts = np.bincount(groups, minlength=num_groups)
  rank = np.empty(groups.size, np.int64)
  rank[order] = np.arange(groups.size) - np.repeat(np.cumsum(counts) - counts, counts)
  return rank


def _materialize(groups: np.ndarray, num_groups: int, owner: np.ndarray,
                 group: np.ndarray, count: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
  """Hands ``count[i]`` random examples of ``group[i]`` to ``owner[i]``.

  Per-group counts must not exceed group sizes; leftovers stay ``-1``.
  """
  slots = np.argsort(group, kind="stable")
  dealt = np.repeat(owner[slots], count[slots]).astype(np.int32)  # by group
  used = np.bincount(group, weights=count, minlength=num_groups).astype(np.int64)
  rank = _random_rank(groups, num_groups, rng)
  take = rank < used[groups]
  client_ids = np.full(groups.size, -1, np.int32)
  client_ids[take] = dealt[(np.cumsum(used) - used)[groups[take]] + rank[take]]
  return client_ids


def _categorical_counts(n: np.ndarray, p: np.ndarray,
                        rng: np.random.Generator) -> np.ndarray:
  """Rows ``Multinomial(n[k], p[k])`` by inverse CDF over one flat array.

  Costs O(K * G + sum(n) log(K * G)); numpy's multinomial draws a binomial
  per cell, which dominates when G is large and clients are small. Row k's
  normalized CDF is shifted by k, so one searchsorted serves every row.
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


def _mixture_counts(supply: np.ndarray, sizes: np.ndarray, mixtures: np.ndarray,
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
    demand = _categorical_counts(deficit[active], p, rng)
    over = demand.sum(0) > supply
    if over.any():
      # Keep a uniformly random subset of each overdrawn group's demand units
      # (multivariate hypergeometric), all groups at once.
      cut = demand[:, over]
      unit = np.repeat(np.arange(cut.size), cut.reshape(-1))
      group = unit % cut.shape[1]
      keep = _random_rank(group, cut.shape[1], rng) < supply[over][group]
      demand[:, over] = np.bincount(unit[keep], minlength=cut.size).reshape(cut.shape)
    counts[active] += demand
    supply -= demand.sum(0)
    deficit[active] -= demand.sum(1)
  return counts


def _dense_ids(values: np.ndarray) -> tuple[np.ndarray, int]:
  """Maps arbitrary int labels to ``[0, G)``."""
  uniq, inverse = np.unique(np.asarray(values), return_inverse=True)
  return inverse.reshape(-1).astype(np.int64), int(uniq.size)


# ------------------------------------------------------------ partitioners


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
  sizes = _check_sizes(sizes, num_examples, num_clients, rng)
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
  renormalized over the concepts that remain (see ``_mixture_counts``), so
  sizes are always exact and every example is used at most once. Time and
  memory are O(K * C + N log N) for C concepts (~0.5 s for K = 1e5, N = 1e6,
  C = 10 on one core; ~3 s with C = 200).

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
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha}")
  rng = np.random.default_rng(seed)
  groups, num_groups = _dense_ids(concepts)
  sizes = _check_sizes(sizes, groups.size, num_clients, rng)
  supply = np.bincount(groups, minlength=num_groups)
  mixtures = rng.dirichlet(alpha * supply / supply.sum(), num_clients)
  counts = _mixture_counts(supply, sizes, mixtures, alpha, rng)
  owner, group = np.nonzero(counts)
  return _materialize(groups, num_groups, owner, group, counts[owner, group], rng)


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
  if not exponent > 0:
    raise ValueError(f"exponent must be > 0, got {exponent}")
  if min_size < 0 or num_clients * min_size > num_examples:
    raise ValueError(f"need 0 <= min_size and K * min_size <= N, got "
                     f"min_size={min_size}, K={num_clients}, N={num_examples}")
  weights = 1.0 + np.random.default_rng(seed).pareto(exponent, num_clients)
  return min_size + _largest_remainder(num_examples - num_clients * min_size, weights)


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
  dom, num_domains = _dense_ids(domains)
  if not 1 <= domains_per_client <= num_domains:
    raise ValueError(f"domains_per_client must be in [1, {num_domains}], "
                     f"got {domains_per_client}")
  if (concepts is None) != (alpha is None):
    raise ValueError("concepts and alpha must be given together")
  supply = np.bincount(dom, minlength=num_domains)
  rank = None
  if sizes is not None:
    sizes = _check_sizes(sizes, dom.size, num_clients, rng)
    rank = np.argsort(-sizes, kind="stable")
  held = _windows(num_clients, num_domains, domains_per_client, rng, rank)
  owner = np.repeat(np.arange(num_clients), domains_per_client)
  group = held.reshape(-1)
  if sizes is None:
    cover = np.bincount(group, minlength=num_domains)
    quota = supply[group] // cover[group] + (
        _random_rank(group, num_domains, rng) < (supply % np.maximum(cover, 1))[group])
  else:
    quota = (sizes[:, None] // domains_per_client
             + (np.arange(domains_per_client) < sizes[:, None] % domains_per_client))
    quota = quota.reshape(-1)
    demand = np.bincount(group, weights=quota, minlength=num_domains).astype(np.int64)
    over = (demand > supply)[group]
    # Integer floor keeps every domain within its supply exactly.
    quota = np.where(over, quota * supply[group] // np.maximum(demand[group], 1), quota)
  if concepts is None:
    return _materialize(dom, num_domains, owner, group, quota, rng)
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha}")
  con, num_concepts = _dense_ids(concepts)
  if con.size != dom.size:
    raise ValueError("concepts and domains must have the same length")
  joint = dom * num_concepts + con
  supply_dc = np.bincount(joint, minlength=num_domains * num_concepts).reshape(
      num_domains, num_concepts)
  mixtures = rng.dirichlet(alpha * supply_dc.sum(0) / dom.size, num_clients)
  owners, groups, counts = [], [], []
  for d in range(num_domains):  # a loop over domains, vectorized within
    slots = np.flatnonzero(group == d)
    c = _mixture_counts(supply_dc[d], quota[slots], mixtures[owner[slots]], alpha, rng)
    i, j = np.nonzero(c)
    owners.append(owner[slots][i])
    groups.append(d * num_concepts + j)
    counts.append(c[i, j])
  return _materialize(joint, num_domains * num_concepts, np.concatenate(owners),
                      np.concatenate(groups), np.concatenate(counts), rng)


def assign_styles(num_clients: int, num_styles: int, seed: Seed,
                  mode: str = "per_client", styles_per_client: int = 1) -> np.ndarray:
  """Caption style(s) of each client.

  Args:
    num_clients: K.
    num_styles: number of caption styles.
    seed: numpy seed.
    mode: ``"per_client"``: client k holds ``styles_per_client`` distinct
      styles, clients balanced over styles (style skew); ``"iid"``: every
      client holds every style, so example styles are IID (no style skew).
    styles_per_client: styles per client in ``"per_client"`` mode.

  Returns:
    ``[K]`` int32 when a client holds one style, else ``[K, m]`` int32 (m =
    ``styles_per_client``, or ``num_styles`` in ``"iid"`` mode).
  """
  if mode not in STYLE_MODES:
    raise ValueError(f"mode must be one of {STYLE_MODES}, got {mode!r}")
  if num_styles < 1:
    raise ValueError(f"num_styles must be >= 1, got {num_styles}")
  if mode == "iid":
    held = np.tile(np.arange(num_styles, dtype=np.int32), (num_clients, 1))
  else:
    if not 1 <= styles_per_client <= num_styles:
      raise ValueError(f"styles_per_client must be in [1, {num_styles}], "
                       f"got {styles_per_client}")
    held = _windows(num_clients, num_styles, styles_per_client,
                    np.random.default_rng(seed)).astype(np.int32)
  return held[:, 0] if held.shape[1] == 1 else held


def example_styles(client_ids: np.ndarray, client_styles: np.ndarray,
                   seed: Seed) -> np.ndarray:
  """``[N]`` int32 style of each example: uniform over its client's styles.

  ``-1`` for unassigned examples (``client_ids == -1``).
  """
  ids, styles = np.asarray(client_ids), np.asarray(client_styles)
  safe = np.maximum(ids, 0)
  if styles.ndim == 1:
    out = styles[safe]
  else:
    pick = np.random.default_rng(seed).integers(0, styles.shape[1], ids.size)
    out = styles[safe, pick]
  return np.where(ids >= 0, out, -1).astype(np.int32)


def missing_modality(client_ids: np.ndarray, fraction_clients: float,
                     caption_rate: float, seed: Seed,
                     num_clients: int | None = None) -> np.ndarray:
  """``[N]`` bool ``has_caption``: some clients keep few captions ("unpaired").

  Exactly ``round(fraction_clients * K)`` random clients are unpaired; each
  keeps exactly ``round(caption_rate * n_k)`` random captions of its ``n_k``
  examples. Other clients, and unassigned examples, keep every caption.

  Args:
    client_ids: ``[N]`` owners (``-1`` allowed).
    fraction_clients: fraction of clients made unpaired, in [0, 1].
    caption_rate: fraction of an unpaired client's captions kept, in [0, 1].
    seed: numpy seed.
    num_clients: K; defaults to ``max(client_ids) + 1``.
  """
  if not 0 <= fraction_clients <= 1:
    raise ValueError(f"fraction_clients must be in [0, 1], got {fraction_clients}")
  if not 0 <= caption_rate <= 1:
    raise ValueError(f"caption_rate must be in [0, 1], got {caption_rate}")
  ids = np.asarray(client_ids, np.int64)
  k = int(ids.max(initial=-1)) + 1 if num_clients is None else num_clients
  rng = np.random.default_rng(seed)
  unpaired = np.zeros(k, bool)
  unpaired[rng.permutation(k)[:round(fraction_clients * k)]] = True
  sizes = np.bincount(ids + 1, minlength=k + 1)  # slot 0: unassigned rows
  keep = np.where(np.r_[False, unpaired], np.round(caption_rate * sizes), sizes)
  return _random_rank(ids + 1, k + 1, rng) < keep[ids + 1]


def pack_assigned(examples: Mapping[str, np.ndarray], client_ids: np.ndarray,
                  num_clients: int) -> federated.FederatedData:
  """:func:`federated.pack` of the assigned rows only (drops ``-1`` rows).

  Put per-example partition outputs (``has_caption``, styles) into
  ``examples`` first so they are filtered and grouped with the data.
  """
  keep = np.asarray(client_ids) >= 0
  return federated.pack({k: np.asarray(v)[keep] for k, v in examples.items()},
                        np.asarray(client_ids)[keep], num_clients)


# ------------------------------------------------------------- composition

SPEC_FIELDS = ("kind", "alpha", "shards_per_client", "quantity",
               "domains_per_client", "styles", "missing_modality")


def _mapping(obj: Any, path: str, allowed: Sequence[str]) -> dict | None:
  """Plain dict of a mapping / dataclass / ConfigDict; rejects unknown keys."""
  if obj is None:
    return None
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    obj = dataclasses.asdict(obj)
  elif hasattr(obj, "to_dict"):
    obj = obj.to_dict()
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} must be a mapping or dataclass, got {type(obj).__name__}")
  unknown = sorted(set(obj) - set(allowed))
  if unknown:
    raise ValueError(f"{path} has unknown field(s) {unknown}; allowed: {list(allowed)}")
  return dict(obj)


def _value(d: dict | None, key: str, path: str, kind: str, *, choices: Sequence = (),
           default: Any = None, required: bool = False) -> Any:
  """Checked ``d[key]``; the ValueError names the field and what it allows.

  ``kind``: ``"choice"`` (one of ``choices``), ``"positive"`` (number > 0),
  ``"count"`` (int >= 1), ``"natural"`` (int >= 0) or ``"unit"`` (in [0, 1]).
  """
  v = default if d is None else d.get(key, default)
  if v is None and not required:
    return None
  integer = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
  number = integer or isinstance(v, (float, np.floating))
  ok = {"choice": lambda: v in choices, "positive": lambda: number and v > 0,
        "count": lambda: integer and v >= 1, "natural": lambda: integer and v >= 0,
        "unit": lambda: number and 0 <= v <= 1}[kind]
  if v is None or not ok():
    expected = {"choice": f"one of {tuple(choices)}", "positive": "a number > 0",
                "count": "an int >= 1", "natural": "an int >= 0",
                "unit": "a number in [0, 1]"}[kind]
    raise ValueError(f"{path}.{key} must be {expected}, got {v!r}")
  return v


def validate_spec(spec: Any) -> dict[str, Any]:
  """Checks a partition spec (see :func:`partition`) without touching data.

  Returns:
    The parsed fields. Raises ValueError naming the first invalid field.
  """
  s = _mapping(spec, "spec", SPEC_FIELDS)
  if s is None:
    raise ValueError("spec must be a mapping or dataclass, got None")
  kind = _value(s, "kind", "spec", "choice", choices=KINDS, required=True)
  alpha = _value(s, "alpha", "spec", "positive", required=kind == "dirichlet")
  spc = _value(s, "shards_per_client", "spec", "count", required=kind == "shards")
  for key, owner in (("alpha", "dirichlet"), ("shards_per_client", "shards")):
    if s.get(key) is not None and kind != owner:
      raise ValueError(f"spec.{key} is only allowed with kind={owner!r}, got kind={kind!r}")
  dpc = _value(s, "domains_per_client", "spec", "count")
  q = _mapping(s.get("quantity"), "spec.quantity", ("kind", "exponent", "min_size"))
  q_kind = _value(q, "kind", "spec.quantity", "choice", choices=QUANTITY_KINDS,
                  required=q is not None)
  power = q_kind == "power_law"
  exponent = _value(q, "exponent", "spec.quantity", "positive", required=power)
  min_size = _value(q, "min_size", "spec.quantity", "natural", default=1)
  st = _mapping(s.get("styles"), "spec.styles", ("mode", "styles_per_client"))
  mode = _value(st, "mode", "spec.styles", "choice", choices=STYLE_MODES,
                required=st is not None)
  per = _value(st, "styles_per_client", "spec.styles", "count", default=1)
  mm = _mapping(s.get("missing_modality"), "spec.missing_modality",
                ("fraction_clients", "caption_rate"))
  frac = _value(mm, "fraction_clients", "spec.missing_modality", "unit",
                required=mm is not None)
  rate = _value(mm, "caption_rate", "spec.missing_modality", "unit",
                required=mm is not None)
  if kind == "shards" and (power or dpc is not None):
    raise ValueError("kind='shards' fixes equal sizes and one concept order: "
                     "spec.quantity must be None or 'equal' and "
                     "spec.domains_per_client None")
  return {"kind": kind, "alpha": alpha, "shards_per_client": spc,
          "domains_per_client": dpc, "power": power, "exponent": exponent,
          "min_size": min_size, "styles": st, "mode": mode, "styles_per_client": per,
          "missing_modality": mm, "fraction_clients": frac, "caption_rate": rate}


def partition(spec: Any, *, num_clients: int, concepts: np.ndarray,
              domains: np.ndarray | None = None, num_styles: int = 1,
              seed: int = 0) -> Partition:
  """Declarative entry point composing the skews above.

  ``spec`` (dict, dataclass or ConfigDict; absent or None fields are off)::

    kind: 'iid' | 'dirichlet' | 'shards'     (required)
    alpha: float > 0                          (dirichlet only)
    shards_per_client: int >= 1               (shards only)
    quantity: {'kind': 'equal'} | {'kind': 'power_law', 'exponent': float,
               'min_size': int = 1}
    domains_per_client: int                   (domain skew; needs domains=)
    styles: {'mode': 'per_client' | 'iid', 'styles_per_client': int = 1}
    missing_modality: {'fraction_clients': float, 'caption_rate': float}

  Composition: quantity skew gives ``sizes=`` to iid / dirichlet (exact) or
  by_domain (exact where domain capacity allows). Domain skew with
  ``kind='iid'`` is IID within each client's domains; with ``'dirichlet'``,
  a Dirichlet concept mixture within them. ``'shards'`` fixes equal sizes and
  one global concept order, so it rejects quantity and domain skew. Styles
  off => every client has style 0; missing_modality off => all captions.
  Seeds: sizes ``power_law_sizes(N, K, exponent, [seed, 0], min_size)``,
  owners ``[seed, 1]``, styles ``[seed, 2]``, captions ``[seed, 3]``.

  Args:
    spec: the partition spec above; every field is validated before work.
    num_clients: K.
    concepts: ``[N]`` concept key of each example (e.g. a hash of shape,
      color, ...); defines N.
    domains: ``[N]`` domain of each example; needed for domain skew.
    num_styles: caption styles of the world (for ``styles``).
    seed: int seed.

  Returns:
    :class:`Partition`; rows with ``client_ids == -1`` belong to no client
    (drop them with :func:`pack_assigned`).
  """
  p = validate_spec(spec)
  kind, alpha, spc, dpc = p["kind"], p["alpha"], p["shards_per_client"], p["domains_per_client"]
  power, exponent, min_size = p["power"], p["exponent"], p["min_size"]
  st, mode, per, mm, frac, rate = (p["styles"], p["mode"], p["styles_per_client"],
                                   p["missing_modality"], p["fraction_clients"],
                                   p["caption_rate"])
  concepts = np.asarray(concepts)
  if dpc is not None and (domains is None or np.shape(domains) != concepts.shape):
    raise ValueError("spec.domains_per_client needs domains= of the concepts' shape")

  n = concepts.size
  sizes = power_law_sizes(n, num_clients, exponent, [seed, 0], min_size) if power else None
  if dpc is not None:
    ids = by_domain(domains, num_clients, dpc, [seed, 1], sizes,
                    concepts=concepts if kind == "dirichlet" else None, alpha=alpha)
  elif kind == "iid":
    ids = iid(n, num_clients, [seed, 1], sizes)
  elif kind == "dirichlet":
    ids = dirichlet(concepts, num_clients, alpha, [seed, 1], sizes)
  else:
    ids = shards(concepts, num_clients, spc, [seed, 1])
  styles = (np.zeros(num_clients, np.int32) if st is None
            else assign_styles(num_clients, num_styles, [seed, 2], mode, per))
  has_caption = (np.ones(n, bool) if mm is None
                 else missing_modality(ids, frac, rate, [seed, 3], num_clients))
  return Partition(ids, styles, has_caption)

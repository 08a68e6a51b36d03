"""Federated partitions of a centralized dataset, declared by one spec.

:func:`partition` composes every skew from a spec (dict, dataclass or
ConfigDict) that :func:`validate_spec` checks before any work:

  * concept skew: :func:`dirichlet` (Hsu et al.) or :func:`shards` (McMahan);
  * quantity skew: :func:`power_law_sizes`, fed to ``sizes=`` of
    :func:`iid`, :func:`dirichlet` or :func:`by_domain`;
  * domain skew: :func:`by_domain`, optionally with a Dirichlet concept
    mixture inside each client's domains;
  * caption style: :func:`assign_styles` and :func:`example_styles`;
  * missing modality: :func:`missing_modality`.

The example-ownership partitioners live in :mod:`fedjax_mm.data.skew` (on
:mod:`fedjax_mm.data.allocation`'s vectorized primitives) and are re-exported
here; this module adds the per-client modality skews and the composition.
The spec's fields and :func:`validate_spec` live in
:mod:`fedjax_mm.data.partition_spec`, also re-exported here. Owners are
``int32 [N]`` client ids, ``-1`` for an example no client owns;
:func:`pack_assigned` packs the owned rows.

References:
  The concept and quantity skews' papers are cited in
  :mod:`fedjax_mm.data.skew`; the composition follows Li, Diao, Chen, He,
  "Federated Learning on Non-IID Data Silos: An Experimental Study",
  ICDE 2022; arXiv:2102.02079.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from fedjax_mm import checks
from fedjax_mm.data import allocation
from fedjax_mm.data import federated
# The spec and its validation; re-exported for callers of partition.<name>.
from fedjax_mm.data.partition_spec import KINDS  # noqa: F401
from fedjax_mm.data.partition_spec import QUANTITY_KINDS  # noqa: F401
from fedjax_mm.data.partition_spec import SPEC_FIELDS  # noqa: F401
from fedjax_mm.data.partition_spec import STYLE_MODES
from fedjax_mm.data.partition_spec import validate_spec
# Also re-exported: callers use partition.<name> for every partitioner.
from fedjax_mm.data.skew import Seed
from fedjax_mm.data.skew import by_domain
from fedjax_mm.data.skew import dirichlet
from fedjax_mm.data.skew import iid
from fedjax_mm.data.skew import power_law_sizes
from fedjax_mm.data.skew import shards


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


# ------------------------------------------------------- modality skews


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
  checks.one_of("mode", mode, STYLE_MODES)
  checks.number("num_styles", num_styles, lambda v: v >= 1, ">= 1", integer=True)
  if mode == "iid":
    held = np.tile(np.arange(num_styles, dtype=np.int32), (num_clients, 1))
  else:
    checks.number("styles_per_client", styles_per_client,
                  lambda v: 1 <= v <= num_styles, f"in [1, {num_styles}]", integer=True)
    held = allocation.windows(num_clients, num_styles, styles_per_client,
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
  for name, value in (("fraction_clients", fraction_clients), ("caption_rate", caption_rate)):
    checks.number(name, value, lambda v: 0 <= v <= 1, "in [0, 1]")
  ids = np.asarray(client_ids, np.int64)
  k = int(ids.max(initial=-1)) + 1 if num_clients is None else num_clients
  rng = np.random.default_rng(seed)
  unpaired = np.zeros(k, bool)
  unpaired[rng.permutation(k)[:round(fraction_clients * k)]] = True
  sizes = np.bincount(ids + 1, minlength=k + 1)  # slot 0: unassigned rows
  keep = np.where(np.r_[False, unpaired], np.round(caption_rate * sizes), sizes)
  return allocation.random_rank(ids + 1, k + 1, rng) < keep[ids + 1]


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
    raise ValueError(f"spec.domains_per_client: needs domains= of shape {concepts.shape}, "
                     f"got {None if domains is None else np.shape(domains)}")

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

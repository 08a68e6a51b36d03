"""Tests for fedjax_mm.data.partition: each partitioner's defining property."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedjax_mm.data import partition as P

N, K, C, D = 20_000, 50, 10, 5
_RNG = np.random.default_rng(1234)
# Non-uniform concept frequencies, so "close to global" is a real check.
CONCEPTS = _RNG.choice(C, N, p=np.arange(1, C + 1) / np.arange(1, C + 1).sum())
DOMAINS = _RNG.integers(0, D, N)


def _hist(client_ids: np.ndarray, labels: np.ndarray, num_clients: int = K,
          num_labels: int = C) -> np.ndarray:
  """``[K, L]`` label counts of each client's examples."""
  m = client_ids >= 0
  return np.bincount(client_ids[m] * num_labels + labels[m],
                     minlength=num_clients * num_labels).reshape(num_clients, num_labels)


def _mean_tv(client_ids: np.ndarray, labels: np.ndarray = CONCEPTS) -> float:
  """Mean total variation between client concept histograms and the global one."""
  h = _hist(client_ids, labels)
  local = h / h.sum(1, keepdims=True)
  glob = np.bincount(labels, minlength=C) / labels.size
  return float(0.5 * np.abs(local - glob).sum(1).mean())


def _hill(sizes: np.ndarray, top: int) -> float:
  """Hill estimate of the Pareto tail index from the ``top`` largest sizes."""
  x = np.sort(sizes.astype(float))[::-1]
  return top / np.log(x[:top] / x[top]).sum()


_PARTITIONERS = {
    "iid": lambda s: P.iid(N, K, s),
    "dirichlet": lambda s: P.dirichlet(CONCEPTS, K, 0.3, s),
    "shards": lambda s: P.shards(CONCEPTS, K, 2, s),
    "by_domain": lambda s: P.by_domain(DOMAINS, K, 2, s),
    "by_domain_dirichlet": lambda s: P.by_domain(DOMAINS, K, 1, s, concepts=CONCEPTS,
                                                 alpha=0.3),
}


@pytest.mark.parametrize("name", sorted(_PARTITIONERS))
def test_seeded_in_range(name):
  fn = _PARTITIONERS[name]
  a, b, c = fn(0), fn(0), fn(1)
  assert a.shape == (N,) and a.dtype == np.int32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.min() >= -1 and a.max() < K
  # An [N] owner array assigns each example at most once by construction;
  # these partitioners use every example (shards: all but N mod shards).
  assert (a >= 0).sum() == (N // (2 * K) * 2 * K if name == "shards" else N)


def test_iid_matches_global_histogram_and_sizes():
  ids = P.iid(N, K, 0)
  sizes = np.bincount(ids, minlength=K)
  assert sizes.max() - sizes.min() <= 1
  assert _mean_tv(ids) < 0.15
  want = np.full(K, 150)
  ids = P.iid(N, K, 0, sizes=want)
  np.testing.assert_array_equal(np.bincount(ids[ids >= 0], minlength=K), want)
  assert (ids == -1).sum() == N - want.sum()
  with pytest.raises(ValueError, match="sizes"):
    P.iid(N, K, 0, sizes=np.full(K, N))


def test_dirichlet_small_alpha_concentrates():
  h = _hist(P.dirichlet(CONCEPTS, K, 0.05, 0), CONCEPTS)
  top2 = np.sort(h, 1)[:, -2:].sum(1) / h.sum(1)
  assert (top2 >= 0.8).mean() > 0.7


def test_dirichlet_large_alpha_near_iid():
  # Dir(100 p) itself deviates from p by ~sqrt(p / 101) per concept, so the
  # TV floor at alpha = 100 is ~0.1 (IID here: ~0.06); alpha = 0.05: ~0.7.
  assert _mean_tv(P.dirichlet(CONCEPTS, K, 100.0, 0)) < 0.2


def test_dirichlet_concepts_per_client_increase_with_alpha():
  seen = [(_hist(P.dirichlet(CONCEPTS, K, a, 0), CONCEPTS) > 0).sum(1).mean()
          for a in (0.05, 1.0, 20.0)]
  assert seen[0] < seen[1] < seen[2], seen


def test_dirichlet_sizes_exact():
  sizes = P.power_law_sizes(N, K, 1.5, 0)
  ids = P.dirichlet(CONCEPTS, K, 0.1, 0, sizes=sizes)
  np.testing.assert_array_equal(np.bincount(ids, minlength=K), sizes)
  half = sizes // 2  # sizes summing below N leave the rest unassigned
  ids = P.dirichlet(CONCEPTS, K, 0.1, 0, sizes=half)
  np.testing.assert_array_equal(np.bincount(ids[ids >= 0], minlength=K), half)
  assert (ids == -1).sum() == N - half.sum()


def test_shards_pure_when_concepts_divide():
  concepts = np.repeat(np.arange(10), 600)  # 200 shards of 30, all pure
  ids = P.shards(concepts, 100, 2, 0)
  h = _hist(ids, concepts, 100, 10)
  assert (h.sum(1) == 60).all()
  per_client = (h > 0).sum(1)
  assert per_client.max() <= 2 and per_client.mean() > 1.7


def test_shards_general_data():
  ids = P.shards(CONCEPTS, K, 3, 0)
  sizes = np.bincount(ids[ids >= 0], minlength=K)
  assert (sizes == N // (3 * K) * 3).all()
  assert (_hist(ids, CONCEPTS) > 0).sum(1).max() <= 6  # straddling shards
  with pytest.raises(ValueError):
    P.shards(CONCEPTS[:10], K, 2, 0)


@pytest.mark.parametrize("exponent", [1.5, 3.0])
def test_power_law_sizes(exponent):
  sizes = P.power_law_sizes(1_000_000, 5_000, exponent, 0, min_size=20)
  assert sizes.sum() == 1_000_000 and sizes.min() >= 20
  assert sizes.max() / np.median(sizes) > 10
  # Above the floor, sizes are scaled Pareto(exponent) draws.
  assert abs(_hill(sizes - 20, 500) - exponent) < 0.2 * exponent


def test_power_law_sizes_invalid():
  with pytest.raises(ValueError, match="min_size"):
    P.power_law_sizes(100, 50, 1.5, 0, min_size=3)
  with pytest.raises(ValueError, match="exponent"):
    P.power_law_sizes(100, 5, 0.0, 0)


@pytest.mark.parametrize("dpc", [1, 2])
def test_by_domain_only_own_domains_balanced(dpc):
  ids = P.by_domain(DOMAINS, K, dpc, 0)
  h = _hist(ids, DOMAINS, K, D)
  assert ((h > 0).sum(1) <= dpc).all()
  assert (ids >= 0).all()  # every domain's examples are used
  holders = (h > 0).sum(0)
  assert holders.max() - holders.min() <= 1 and holders.sum() == K * dpc


def test_by_domain_sizes_exact_with_slack():
  sizes = P.power_law_sizes(N // 2, K, 3.0, 0, min_size=10)
  ids = P.by_domain(DOMAINS, K, 2, 0, sizes=sizes)
  np.testing.assert_array_equal(np.bincount(ids[ids >= 0], minlength=K), sizes)
  assert ((_hist(ids, DOMAINS, K, D) > 0).sum(1) <= 2).all()
  tight = P.power_law_sizes(N, K, 1.5, 0)  # oversubscribed domains scale down
  ids = P.by_domain(DOMAINS, K, 1, 0, sizes=tight)
  got = np.bincount(ids[ids >= 0], minlength=K)
  # Sizes summing to N cannot all fit one domain each (the biggest client
  # alone exceeds a domain): never more than asked, most clients exact.
  assert (got <= tight).all() and (got == tight).mean() > 0.5 and got.sum() > N / 2


def test_by_domain_with_concept_skew():
  ids = P.by_domain(DOMAINS, K, 1, 0, concepts=CONCEPTS, alpha=0.05)
  assert ((_hist(ids, DOMAINS, K, D) > 0).sum(1) == 1).all()
  # Fewer clients per domain contest each concept, so clients fragment more
  # than in plain dirichlet; still far from IID (~10 concepts each).
  h = _hist(ids, CONCEPTS)
  assert (np.sort(h, 1)[:, -2:].sum(1) / h.sum(1)).mean() > 0.75
  assert (h > 0).sum(1).mean() < 5


def test_styles_per_client_and_iid():
  ids = P.iid(N, K, 0)
  styles = P.assign_styles(K, 5, 0)
  assert styles.shape == (K,) and np.bincount(styles).tolist() == [10] * 5
  per_example = P.example_styles(ids, styles, 0)
  assert ((_hist(ids, per_example, K, 5) > 0).sum(1) == 1).all()
  two = P.assign_styles(K, 5, 0, styles_per_client=2)
  assert two.shape == (K, 2) and (two[:, 0] != two[:, 1]).all()
  assert ((_hist(ids, P.example_styles(ids, two, 0), K, 5) > 0).sum(1) == 2).all()
  mixed = P.example_styles(ids, P.assign_styles(K, 5, 0, mode="iid"), 0)
  assert ((_hist(ids, mixed, K, 5) > 0).sum(1) == 5).all()
  with pytest.raises(ValueError, match="mode"):
    P.assign_styles(K, 5, 0, mode="bogus")


def test_missing_modality():
  ids = P.iid(N, K, 0)
  ids[:100] = -1
  has = P.missing_modality(ids, 0.2, 0.1, 0, num_clients=K)
  assert has.dtype == bool and has[:100].all()
  m = ids >= 0
  rate = np.bincount(ids[m], weights=has[m], minlength=K) / np.bincount(ids[m], minlength=K)
  unpaired = rate < 1
  assert unpaired.sum() == round(0.2 * K)
  assert np.abs(rate[unpaired] - 0.1).max() < 0.01


SPEC = {"kind": "dirichlet", "alpha": 0.1,
        "quantity": {"kind": "power_law", "exponent": 1.5},
        "domains_per_client": None, "styles": {"mode": "per_client"},
        "missing_modality": {"fraction_clients": 0.2, "caption_rate": 0.1}}


def test_partition_dirichlet_power_law():
  part = P.partition(SPEC, num_clients=K, concepts=CONCEPTS, num_styles=3, seed=7)
  # Documented: quantity sizes are power_law_sizes(N, K, exponent, [seed, 0]).
  np.testing.assert_array_equal(np.bincount(part.client_ids, minlength=K),
                                P.power_law_sizes(N, K, 1.5, [7, 0]))
  h = _hist(part.client_ids, CONCEPTS)
  assert (np.sort(h, 1)[:, -2:].sum(1) / h.sum(1) >= 0.8).mean() > 0.7
  assert part.client_styles.shape == (K,) and part.client_styles.max() < 3
  rate = np.bincount(part.client_ids, weights=part.has_caption, minlength=K) / np.bincount(
      part.client_ids, minlength=K)
  assert (rate < 1).sum() == round(0.2 * K)
  again = P.partition(SPEC, num_clients=K, concepts=CONCEPTS, num_styles=3, seed=7)
  for x, y in zip(part, again):
    np.testing.assert_array_equal(x, y)


def test_partition_domains_and_dataclass_spec():
  @dataclasses.dataclass
  class Spec:
    kind: str = "dirichlet"
    alpha: float = 0.5
    domains_per_client: int = 2

  part = P.partition(Spec(), num_clients=K, concepts=CONCEPTS, domains=DOMAINS)
  assert ((_hist(part.client_ids, DOMAINS, K, D) > 0).sum(1) <= 2).all()
  assert (part.client_styles == 0).all() and part.has_caption.all()


def test_partition_other_kinds_and_pack():
  base = {"kind": "iid", "quantity": {"kind": "equal"},
          "styles": {"mode": "per_client", "styles_per_client": 2}}
  part = P.partition({**base, "domains_per_client": 1}, num_clients=K,
                     concepts=CONCEPTS, domains=DOMAINS, num_styles=4, seed=3)
  assert ((_hist(part.client_ids, DOMAINS, K, D) > 0).sum(1) == 1).all()
  assert part.client_styles.shape == (K, 2)
  part = P.partition({"kind": "shards", "shards_per_client": 2}, num_clients=K,
                     concepts=CONCEPTS, seed=3)
  data = P.pack_assigned({"concept": CONCEPTS}, part.client_ids, K)
  assert data.num_examples == (part.client_ids >= 0).sum()
  assert (np.asarray(data.sizes) == N // (2 * K) * 2).all()
  assert (P.example_styles(np.array([-1, 0]), np.array([3]), 0) == [-1, 3]).all()


@pytest.mark.parametrize("patch, field", [
    ({"kind": "bogus"}, "spec.kind"),
    ({"alpha": None}, "spec.alpha"),
    ({"alpha": -1.0}, "spec.alpha"),
    ({"kind": "iid"}, "spec.alpha"),  # alpha given for a kind that ignores it
    ({"quantity": {"kind": "zipf"}}, "spec.quantity.kind"),
    ({"quantity": {"kind": "power_law"}}, "spec.quantity.exponent"),
    ({"styles": {"mode": "random"}}, "spec.styles.mode"),
    ({"missing_modality": {"fraction_clients": 1.5, "caption_rate": 0.1}},
     "spec.missing_modality.fraction_clients"),
    ({"colour": 1}, "unknown"),
    ({"domains_per_client": 1.5}, "spec.domains_per_client"),
    ({"quantity": {"kind": "power_law", "exponent": 1.5, "min_size": -1}},
     "spec.quantity.min_size"),
    ({"kind": "shards", "alpha": None, "shards_per_client": 2}, "spec.quantity"),
    ({"domains_per_client": 1}, "domains"),  # no domains= given
])
def test_partition_invalid_spec(patch, field):
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    P.partition({**SPEC, **patch}, num_clients=K, concepts=CONCEPTS)


def test_scale_100k_clients():
  # Vectorization is what makes this size feasible; check the result, not the
  # wall time (flaky on a loaded machine).
  n, k = 1_000_000, 100_000
  concepts = np.random.default_rng(0).integers(0, 10, n)
  ids = P.dirichlet(concepts, k, 0.1, 0)
  ids_iid = P.iid(n, k, 0)
  for x in (ids, ids_iid):
    assert x.shape == (n,) and x.dtype == np.int32
    assert (np.bincount(x, minlength=k) == 10).all()
  # Concept skew survives at this scale: most clients hold few concepts.
  h = np.bincount(ids.astype(np.int64) * 10 + concepts, minlength=k * 10).reshape(k, 10)
  assert np.median((h > 0).sum(1)) <= 3

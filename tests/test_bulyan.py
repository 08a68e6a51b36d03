"""Bulyan against an independent float64 NumPy implementation of the paper's pseudo-code.

Reference: El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of
Distributed Learning in Byzantium", ICML 2018, Section 4 (selection by
iterated Krum, then the coordinate-wise β-closest-to-median mean).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm import aggregation



def reference_bulyan(x: np.ndarray, f: int) -> tuple[np.ndarray, list[int]]:
  """The paper's Bulyan on rows ``x [n, P]`` (float64, plain loops)."""
  n = len(x)
  theta, remaining, chosen = n - 2 * f, list(range(n)), []
  for _ in range(theta):
    m = len(remaining)
    k = min(max(m - f - 2, 1), m - 1)   # Krum's n - f - 2 nearest (clamped as krum.py)
    best, best_score = None, np.inf
    for i in remaining:
      d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in remaining if j != i)
      score = sum(d[:k])
      if score < best_score:            # strict: the lowest index wins ties
        best, best_score = i, score
    chosen.append(best)
    remaining.remove(best)
  s = x[sorted(chosen)]
  beta = theta - 2 * f
  out = np.empty(x.shape[1])
  for j in range(x.shape[1]):
    med = np.median(s[:, j])
    order = sorted(range(len(s)), key=lambda r: (abs(s[r, j] - med), r))
    out[j] = np.mean(s[order[:beta], j])
  return out, sorted(chosen)


def _cohort(seed, n, p, attackers=0, scale=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, p)) + offset
  x[:attackers] = rng.normal(size=(attackers, p)) * scale + 10 * scale
  return x


@pytest.mark.parametrize("seed,n,f,attackers,scale", [
    (0, 7, 1, 0, 1.0), (1, 7, 1, 1, 1e3), (2, 11, 2, 2, 50.0), (3, 15, 3, 3, 1e6),
    (4, 12, 2, 0, 1.0), (5, 19, 4, 4, 10.0)])
def test_matches_the_papers_pseudo_code(seed, n, f, attackers, scale):
  x = _cohort(seed, n, 9, attackers, scale)
  want, chosen = reference_bulyan(x, f)
  got, selected = aggregation.bulyan({"w": jnp.asarray(x, jnp.float32)},
                                     jnp.ones(n), jnp.ones(n, bool), num_byzantine=f)
  assert sorted(np.flatnonzero(np.asarray(selected))) == chosen
  # One float32 rounding of the kept values and their mean: 4 eps relative to
  # the largest kept magnitude (the attackers are never kept: they are not selected).
  kept = np.max(np.abs(x[chosen]))
  np.testing.assert_allclose(np.asarray(got["w"]), want, rtol=0, atol=4 * 2**-23 * kept)
  assert not set(range(attackers)) & set(chosen)


def test_masked_rows_have_no_influence_and_a_common_offset_does_not_cancel():
  x = _cohort(6, 11, 5, attackers=2, scale=20.0, offset=3e3)   # offset 3000x the spread
  want, chosen = reference_bulyan(x, 2)
  padded = np.concatenate([x, np.full((4, 5), 1e9)])            # garbage rows, masked
  mask = np.arange(15) < 11
  got, selected = aggregation.bulyan({"w": jnp.asarray(padded, jnp.float32)},
                                     jnp.ones(15), jnp.asarray(mask), num_byzantine=2)
  assert sorted(np.flatnonzero(np.asarray(selected))) == chosen
  # float32 values near 3e3: one rounding each, 2 eps x 3.1e3 absolute.
  np.testing.assert_allclose(np.asarray(got["w"]), want, rtol=0, atol=2 * 2**-23 * 3.1e3 * 4)


def test_hand_computed_one_dimensional_cohort():
  # x = 0, 1, 2, 3, 4, 5, 100 and f = 1 (n = 7 = 4f + 3): θ = 5, β = 3. Krum
  # (|R| - 3 nearest) picks, in order: 2 (score 10, tied with 3: lowest index),
  # 3 (9), 1 (10, tied with 4), 4 (1, tied with 5), 0 (25, tied with 5).
  # S = {0, 1, 2, 3, 4}, median 2, the 3 values closest to it are 1, 2, 3.
  x = np.array([0.0, 1, 2, 3, 4, 5, 100])[:, None]
  got, selected = aggregation.bulyan({"w": jnp.asarray(x, jnp.float32)}, jnp.ones(7),
                                     jnp.ones(7, bool), num_byzantine=1)
  assert list(np.asarray(selected)) == [True] * 5 + [False] * 2
  assert float(got["w"][0]) == 2.0
  np.testing.assert_array_equal(reference_bulyan(x, 1)[0], [2.0])


def test_no_valid_client_gives_zeros_and_a_pytree_round_trips():
  updates = {"a": jnp.ones((7, 2, 3)), "b": jnp.ones((7,))}
  got, selected = aggregation.bulyan(updates, jnp.ones(7), jnp.zeros(7, bool), num_byzantine=1)
  assert not np.any(np.asarray(selected))
  assert jax.tree.map(jnp.shape, got) == {"a": (2, 3), "b": ()}
  assert all(float(jnp.abs(v).sum()) == 0 for v in jax.tree.leaves(got))


def test_the_bound_is_refused_naming_the_numbers():
  with pytest.raises(ValueError, match=r"^num_byzantine: must be an integer in \[0, \(C - 3\) "
                     r"// 4 = 1\] \(Bulyan needs C >= 4 f \+ 3; cohort size C = 10\), got 2$"):
    aggregation.AGGREGATORS["bulyan"].factory(2, cohort_size=10)
  with pytest.raises(ValueError, match="Bulyan needs C >= 4 f"):
    aggregation.bulyan({"w": jnp.ones((6, 2))}, jnp.ones(6), jnp.ones(6, bool), num_byzantine=1)
  aggregation.AGGREGATORS["bulyan"].factory(1, cohort_size=7)

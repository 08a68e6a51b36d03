"""Tests for fedjax_mm.data: keyed permutations, packed populations, synthetic data."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_mm.data import federated
from fedjax_mm.data import permutation
from fedjax_mm.data import synthetic

# ---------------------------------------------------------------------------
# permutation
# ---------------------------------------------------------------------------

_PERM_SIZES = (1, 2, 3, 4, 5, 15, 16, 17, 255, 256, 257, 1000, 4097)
_MAX_N = 4097


def _keys(seed: int, count: int | None = None) -> jax.Array:
  if count is None:
    return permutation.round_keys(jax.random.key(seed))
  return jax.vmap(permutation.round_keys)(jax.random.split(jax.random.key(seed), count))


@jax.jit
def _perm_prefix(n: jax.Array, keys: jax.Array) -> jax.Array:
  """Images of ``arange(_MAX_N)`` under the permutation of ``[0, n)`` (traced n)."""
  return permutation.permute(jnp.arange(_MAX_N), n, keys)


def _perm(n: int, keys: jax.Array) -> np.ndarray:
  """Images of ``arange(n)``, through one compiled program for every n."""
  return np.asarray(_perm_prefix(jnp.int32(n), keys))[:n]


_MANY_WIDTH = 128


@jax.jit
def _perm_many(n: jax.Array, keys: jax.Array) -> jax.Array:
  """``[T, _MANY_WIDTH]`` images under T keyed permutations of ``[0, n)``."""
  idx = jnp.arange(_MANY_WIDTH)
  return jax.vmap(lambda k: permutation.permute(idx, n, k))(keys)


_MANY_KEYS = 4000


@functools.lru_cache(maxsize=None)
def _many_perms(n: int) -> np.ndarray:
  """``[_MANY_KEYS, n]`` permutations of ``[0, n)`` for n <= _MANY_WIDTH."""
  return np.asarray(_perm_many(jnp.int32(n), _keys(100 + n, _MANY_KEYS)))[:, :n]


_pass_keys = jax.jit(permutation.pass_keys)


def test_round_keys_shape_dtype_and_determinism():
  k1 = permutation.round_keys(jax.random.key(3))
  k2 = permutation.round_keys(jax.random.key(3))
  k3 = permutation.round_keys(jax.random.key(4))
  assert k1.shape == (permutation.NUM_ROUNDS,)
  assert k1.dtype == jnp.uint32
  np.testing.assert_array_equal(k1, k2)
  assert not np.array_equal(k1, k3)


def test_pass_keys_shapes_and_distinct_passes():
  keys = _keys(0)
  assert _pass_keys(keys, 0).shape == (permutation.NUM_ROUNDS,)
  per_pass = np.asarray(_pass_keys(keys, jnp.arange(5)))
  assert per_pass.shape == (5, permutation.NUM_ROUNDS)
  assert per_pass.dtype == np.uint32
  assert len({row.tobytes() for row in per_pass}) == 5
  grid = _pass_keys(keys, jnp.zeros((2, 3), jnp.int32))
  assert grid.shape == (2, 3, permutation.NUM_ROUNDS)
  # Same pass index, same keys; different base keys, different pass keys.
  np.testing.assert_array_equal(grid[1, 2], per_pass[0])
  assert not np.array_equal(_pass_keys(_keys(1), 0), per_pass[0])


def test_permute_is_bijection_for_many_n_with_traced_n():
  rng = np.random.default_rng(0)
  sizes = list(_PERM_SIZES) + [int(s) for s in rng.integers(6, _MAX_N, size=5)]
  all_keys = _keys(1, len(sizes))
  for n, keys in zip(sizes, all_keys):
    img = _perm(n, keys)
    assert img.dtype == np.int32
    np.testing.assert_array_equal(np.sort(img), np.arange(n), err_msg=f"n={n}")
    if n >= 4:
      assert not np.array_equal(img, np.arange(n)), f"identity for n={n}"


def test_permute_eager_python_n_matches_traced_n():
  keys = _keys(2)
  eager = np.asarray(permutation.permute(jnp.arange(17), 17, keys))
  assert eager.dtype == np.int32
  np.testing.assert_array_equal(np.sort(eager), np.arange(17))
  np.testing.assert_array_equal(eager, _perm(17, keys))


def test_permute_n1_maps_everything_to_zero():
  np.testing.assert_array_equal(_perm(1, _keys(0)), [0])
  np.testing.assert_array_equal(
      np.asarray(_perm_prefix(jnp.int32(1), _keys(0)))[:9], np.zeros(9))


def test_permute_out_of_range_index_is_reduced_modulo_n():
  full = np.asarray(_perm_prefix(jnp.int32(13), _keys(5)))
  np.testing.assert_array_equal(full[13:26], full[:13])


def test_permute_per_element_keys_match_separate_calls():
  n = 37
  ka, kb = _keys(10), _keys(11)
  idx = jnp.arange(n)
  per_elem = jnp.where((idx % 2 == 0)[:, None], ka[None], kb[None])
  mixed = np.asarray(jax.jit(permutation.permute)(idx, n, per_elem))
  np.testing.assert_array_equal(
      mixed, np.where(np.arange(n) % 2 == 0, _perm(n, ka), _perm(n, kb)))


def test_permute_under_vmap_over_clients_with_different_n():
  # vmap over (n, keys), with each element's index only in [0, n).
  ns = jnp.asarray([1, 3, 8, 9, 50], jnp.int32)
  keys = _keys(12, 5)
  width = 50
  out = jax.jit(jax.vmap(
      lambda n, k: permutation.permute(jnp.arange(width) % n, n, k)))(ns, keys)
  out = np.asarray(out)
  for row, n, k in zip(out, np.asarray(ns).tolist(), keys):
    np.testing.assert_array_equal(np.sort(row[:n]), np.arange(n))
    np.testing.assert_array_equal(row[:n], _perm(n, k))


def test_permute_deterministic_for_same_key():
  np.testing.assert_array_equal(_perm(257, _keys(7)), _perm(257, _keys(7)))


@pytest.mark.parametrize("n", [10, 16, 100])
def test_different_keys_give_different_permutations(n):
  perms = _many_perms(n)
  assert len({p.tobytes() for p in perms[:50]}) == 50
  assert not any(np.array_equal(p, np.arange(n)) for p in perms[:50])


def test_different_keys_give_different_permutations_large_n():
  perms = [_perm(1000, k) for k in _keys(3, 8)]
  assert len({p.tobytes() for p in perms}) == 8


@pytest.mark.parametrize("n", [7, 10, 64])
def test_permute_rough_uniformity(n):
  perms = _many_perms(n)
  expected = _MANY_KEYS / n
  # Image of element 0 and position of element 0 (the inverse image).
  for hist in (np.bincount(perms[:, 0], minlength=n),
               np.bincount(np.argmax(perms == 0, axis=1), minlength=n)):
    chi2 = float(((hist - expected) ** 2 / expected).sum())
    dof = n - 1
    assert chi2 < dof + 8 * math.sqrt(2 * dof), (chi2, hist)
  # Every (element, image) cell, not only element 0.
  table = np.stack([np.bincount(perms[:, i], minlength=n) for i in range(n)])
  chi2 = float(((table - expected) ** 2 / expected).sum())
  dof = (n - 1) ** 2
  assert chi2 < dof + 8 * math.sqrt(2 * dof), chi2


# ---------------------------------------------------------------------------
# pack / example_owners / split_by_position
# ---------------------------------------------------------------------------


def _hand_packed() -> federated.FederatedData:
  # Clients 1 and 4 own nothing.
  return federated.pack(
      {"x": np.array([10, 11, 12, 13, 14]),
       "z": np.array([[0, 0], [1, 1], [2, 2], [3, 3], [4, 4]])},
      np.array([2, 0, 2, 3, 0]), num_clients=5)


def test_pack_hand_example():
  data = _hand_packed()
  np.testing.assert_array_equal(data.sizes, [2, 0, 2, 1, 0])
  np.testing.assert_array_equal(data.offsets, [0, 2, 2, 4, 5])
  assert data.sizes.dtype == np.int32 and data.offsets.dtype == np.int32
  # Stable: within a client, original order is kept.
  np.testing.assert_array_equal(data.examples["x"], [11, 14, 10, 12, 13])
  np.testing.assert_array_equal(data.examples["z"][:, 0], [1, 4, 0, 2, 3])
  assert data.num_clients == 5
  assert data.num_examples == 5
  np.testing.assert_array_equal(federated.example_owners(data), [0, 0, 2, 2, 3])


def test_pack_random_rows_land_in_their_owner_block():
  rng = np.random.default_rng(0)
  k, n = 17, 300
  ids = rng.integers(0, k, n)
  ids[ids == 5] = 6  # force an empty client in the middle
  data = federated.pack({"row": np.arange(n)}, ids, k)
  assert data.sizes[5] == 0
  np.testing.assert_array_equal(data.sizes, np.bincount(ids, minlength=k))
  np.testing.assert_array_equal(data.offsets[1:], np.cumsum(data.sizes)[:-1])
  for c in range(k):
    rows = data.examples["row"][data.offsets[c]:data.offsets[c] + data.sizes[c]]
    np.testing.assert_array_equal(rows, np.flatnonzero(ids == c))


@pytest.mark.parametrize("bad", [[0, 3], [-1, 0]])
def test_pack_rejects_out_of_range_ids(bad):
  with pytest.raises(ValueError, match=r"\[0, 3\)"):
    federated.pack({"x": np.zeros(2)}, np.array(bad), num_clients=3)


def _sized(sizes) -> federated.FederatedData:
  sizes = np.asarray(sizes)
  ids = np.repeat(np.arange(sizes.size), sizes)
  return federated.pack({"v": np.arange(ids.size) * 10}, ids, sizes.size)


def _client_rows(data, c):
  o, s = int(data.offsets[c]), int(data.sizes[c])
  return np.asarray(data.examples["v"][o:o + s])


@pytest.mark.parametrize("fraction, left_sizes", [
    (0.5, [0, 1, 1, 2, 5]),   # ceil(0.5 n), n=1 stays left, n=2 splits 1/1
    (0.9, [0, 1, 1, 2, 9]),   # ceil(2.7)=3 clipped to n-1=2; ceil(9)=9
    (0.01, [0, 1, 1, 1, 1]),  # ceil(0.03)=1; at least one row left
    (0.99, [0, 1, 1, 2, 9]),  # ceil(9.9)=10 clipped to 9: one row right
])
def test_split_by_position_hand_sizes(fraction, left_sizes):
  data = _sized([0, 1, 2, 3, 10])
  left, right = federated.split_by_position(data, fraction)
  np.testing.assert_array_equal(left.sizes, left_sizes)
  np.testing.assert_array_equal(right.sizes, np.asarray([0, 1, 2, 3, 10]) - left_sizes)
  for part in (left, right):
    assert part.sizes.dtype == np.int32 and part.offsets.dtype == np.int32
    np.testing.assert_array_equal(part.offsets, np.cumsum(part.sizes) - part.sizes)
    assert part.num_examples == int(part.sizes.sum())
  # The first rows of each client go left, the rest right, order kept.
  for c in range(5):
    rows = _client_rows(data, c)
    np.testing.assert_array_equal(_client_rows(left, c), rows[:left_sizes[c]])
    np.testing.assert_array_equal(_client_rows(right, c), rows[left_sizes[c]:])


def test_select_clients_hand_example():
  data = _sized([0, 1, 2, 3, 10])
  picked = federated.select_clients(data, np.array([4, 1, 0, 2]))
  np.testing.assert_array_equal(picked.sizes, [10, 1, 0, 2])
  np.testing.assert_array_equal(picked.offsets, [0, 10, 11, 11])
  assert picked.sizes.dtype == np.int32 and picked.offsets.dtype == np.int32
  for new, old in enumerate([4, 1, 0, 2]):
    np.testing.assert_array_equal(_client_rows(picked, new), _client_rows(data, old))
  assert federated.select_clients(data, np.array([], np.int64)).num_examples == 0


def test_split_by_position_properties_random():
  rng = np.random.default_rng(1)
  sizes = rng.integers(0, 40, 60)
  data = _sized(sizes)
  for fraction in (0.1, 0.25, 0.5, 0.8):
    left, right = federated.split_by_position(data, fraction)
    expected = np.ceil(fraction * sizes).astype(int)
    expected = np.where(sizes >= 2, np.clip(expected, 1, sizes - 1), sizes)
    np.testing.assert_array_equal(left.sizes, expected)
    np.testing.assert_array_equal(left.sizes + right.sizes, sizes)
    two = sizes >= 2
    assert np.all(left.sizes[two] >= 1) and np.all(right.sizes[two] >= 1)
    # Rows preserved: the union (by values) is the original, no duplicates.
    union = np.concatenate([left.examples["v"], right.examples["v"]])
    np.testing.assert_array_equal(np.sort(union), np.sort(data.examples["v"]))
    # And every row stays with its owner.
    for c in range(sizes.size):
      np.testing.assert_array_equal(
          np.concatenate([_client_rows(left, c), _client_rows(right, c)]),
          _client_rows(data, c))


def test_split_by_position_exact_fractions_are_not_rounded_up():
  left, _ = federated.split_by_position(_sized([100]), 0.07)
  assert int(left.sizes[0]) == 7
  # The driver's call: split_by_position(data, 1.0 - test_fraction).
  train, test = federated.split_by_position(_sized([10]), 1.0 - 0.7)
  assert (int(train.sizes[0]), int(test.sizes[0])) == (3, 7)


# ---------------------------------------------------------------------------
# sample_cohort
# ---------------------------------------------------------------------------


_sample = jax.jit(federated.sample_cohort, static_argnums=(1, 2))


def test_sample_cohort_distinct_in_range_and_deterministic():
  key = jax.random.key(0)
  for k, c in ((10, 10), (1000, 64), (5, 1)):
    ids = np.asarray(_sample(key, k, c))
    assert ids.shape == (c,) and ids.dtype == np.int32
    assert len(set(ids.tolist())) == c
    assert ids.min() >= 0 and ids.max() < k
    np.testing.assert_array_equal(ids, _sample(key, k, c))
  # Eager (unjitted) gives the same ids.
  np.testing.assert_array_equal(federated.sample_cohort(key, 10, 10), _sample(key, 10, 10))
  # Different keys, different cohorts.
  a = np.asarray(_sample(jax.random.key(1), 1000, 64))
  b = np.asarray(_sample(jax.random.key(2), 1000, 64))
  assert set(a.tolist()) != set(b.tolist())


def test_sample_cohort_weighted_distinct():
  weights = jnp.arange(1.0, 51.0)
  for seed in range(5):
    ids = np.asarray(_sample(jax.random.key(seed), 50, 20, weights))
    assert len(set(ids.tolist())) == 20 and ids.min() >= 0 and ids.max() < 50
  # Zero-weight clients are never drawn while enough positive ones exist.
  w = jnp.asarray([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
  for seed in range(10):
    ids = np.asarray(_sample(jax.random.key(seed), 6, 3, w))
    assert sorted(ids.tolist()) == [1, 3, 4]


def test_sample_cohort_uniform_inclusion_frequencies():
  keys = jax.random.split(jax.random.key(7), 4000)
  ids = np.asarray(jax.vmap(lambda k: federated.sample_cohort(k, 8, 2))(keys))
  freq = np.bincount(ids.ravel(), minlength=8) / 4000
  # Each client is in a cohort with probability 2/8; sd ~ 0.007.
  np.testing.assert_allclose(freq, 0.25, atol=0.04)


def test_sample_cohort_size_weights_favor_big_clients():
  weights = jnp.asarray([1.0, 1.0, 1.0, 7.0])
  keys = jax.random.split(jax.random.key(3), 4000)
  one = np.asarray(jax.vmap(lambda k: federated.sample_cohort(k, 4, 1, weights))(keys))
  np.testing.assert_allclose(np.bincount(one.ravel(), minlength=4) / 4000,
                             [0.1, 0.1, 0.1, 0.7], atol=0.04)
  two = np.asarray(jax.vmap(lambda k: federated.sample_cohort(k, 4, 2, weights))(keys))
  assert all(len(set(row)) == 2 for row in two.tolist())
  # Successive sampling without replacement: P(3 in) = 0.7 + 0.3 * 7/9 = 0.9333,
  # P(0 in) = 0.1 + 0.2 * 1/9 + 0.7 * 1/3 = 0.3556.
  freq = np.bincount(two.ravel(), minlength=4) / 4000
  np.testing.assert_allclose(freq, [0.3556, 0.3556, 0.3556, 0.9333], atol=0.04)


# ---------------------------------------------------------------------------
# client_plan
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _planner(schedule: federated.LocalSchedule):
  return jax.jit(jax.vmap(lambda s, k: federated.client_plan(s, k, schedule)))


def _plans(sizes, schedule, seed=0):
  keys = jax.random.split(jax.random.key(seed), len(sizes))
  pos, mask = _planner(schedule)(jnp.asarray(sizes, jnp.int32), keys)
  return np.asarray(pos), np.asarray(mask), keys


def _pass_perm(key, n, pass_index):
  """Image of ``arange(n)`` under the permutation client_plan uses for a pass."""
  return _perm(n, _pass_keys(permutation.round_keys(key), pass_index))


_STEPS = federated.LocalSchedule("steps", num_steps=5, batch_size=4)
_STEPS_SIZES = (0, 1, 3, 4, 5, 7, 20, 33)


def test_steps_plan_shapes_and_valid_slot_counts():
  pos, mask, _ = _plans(_STEPS_SIZES, _STEPS)
  assert pos.shape == (len(_STEPS_SIZES), 5, 4) and pos.dtype == np.int32
  assert mask.shape == pos.shape and mask.dtype == np.bool_
  for p, m, n in zip(pos, mask, _STEPS_SIZES):
    width = min(4, n)
    np.testing.assert_array_equal(m.sum(axis=1), [width] * 5)
    # The valid slots are the first `width` of each step.
    np.testing.assert_array_equal(m, np.broadcast_to(np.arange(4) < width, (5, 4)))
    assert np.all(p[~m] == 0)
    if n:
      assert p[m].min() >= 0 and p[m].max() < n


def test_steps_plan_streams_through_passes():
  pos, mask, _ = _plans(_STEPS_SIZES, _STEPS)
  for p, m, n in zip(pos, mask, _STEPS_SIZES):
    if n == 0:
      continue
    stream = p[m]  # step-major order
    for start in range(0, stream.size, n):
      chunk = stream[start:start + n]
      if chunk.size == n:   # a full pass is a permutation
        np.testing.assert_array_equal(np.sort(chunk), np.arange(n), err_msg=f"n={n}")
      else:                 # a partial pass has no repeats
        assert len(set(chunk.tolist())) == chunk.size
    if n >= 4 * 5:          # B*S <= n: never a repeat in the whole plan
      assert len(set(stream.tolist())) == stream.size == 20
    if n < 4:               # every step holds all n rows exactly once
      for row in p[:, :n]:
        np.testing.assert_array_equal(np.sort(row), np.arange(n))


def test_steps_plan_hand_case_n3_b2_s4():
  schedule = federated.LocalSchedule("steps", num_steps=4, batch_size=2)
  pos, mask, keys = _plans([3], schedule, seed=5)
  # Stream positions [[0,1],[2,3],[4,5],[6,7]] over n=3:
  # pass = [[0,0],[0,1],[1,1],[2,2]], within = [[0,1],[2,0],[1,2],[0,1]].
  p = [_pass_perm(keys[0], 3, e) for e in range(3)]
  expected = [[p[0][0], p[0][1]], [p[0][2], p[1][0]], [p[1][1], p[1][2]],
              [p[2][0], p[2][1]]]
  assert mask.all()
  np.testing.assert_array_equal(pos[0], expected)


def test_steps_plan_fresh_permutation_each_pass():
  schedule = federated.LocalSchedule("steps", num_steps=6, batch_size=12)
  pos, mask, _ = _plans([12], schedule, seed=9)
  assert mask.all()
  rows = {tuple(r) for r in pos[0].tolist()}
  assert len(rows) == 6  # each step is a full pass, each reshuffled
  for r in pos[0]:
    np.testing.assert_array_equal(np.sort(r), np.arange(12))


_EPOCHS = federated.LocalSchedule("epochs", num_steps=12, batch_size=4, num_epochs=3)
_EPOCH_SIZES = (0, 1, 3, 4, 5, 9, 13, 40)


def test_epochs_plan_counts_and_masks():
  pos, mask, _ = _plans(_EPOCH_SIZES, _EPOCHS)
  for p, m, n in zip(pos, mask, _EPOCH_SIZES):
    assert np.all(p[~m] == 0)
    if n == 0:
      assert not m.any()
      continue
    spe = -(-n // 4)
    valid_steps = min(3 * spe, 12)
    np.testing.assert_array_equal(m.any(axis=1), np.arange(12) < valid_steps)
    # Full batches except the last step of each epoch.
    per_step = np.zeros(12, int)
    for s in range(valid_steps):
      per_step[s] = 4 if s % spe < spe - 1 else n - (spe - 1) * 4
    np.testing.assert_array_equal(m.sum(axis=1), per_step, err_msg=f"n={n}")
    # Valid slots are a prefix of each step.
    for row in m:
      assert np.all(row == (np.arange(4) < row.sum()))
    # Each epoch (a block of spe steps) visits rows as a permutation.
    for e in range(-(-valid_steps // spe)):
      block = p[e * spe:(e + 1) * spe][m[e * spe:(e + 1) * spe]]
      if (e + 1) * spe <= valid_steps:
        np.testing.assert_array_equal(np.sort(block), np.arange(n))
      else:
        assert len(set(block.tolist())) == block.size
    counts = np.bincount(p[m], minlength=n)
    if 3 * spe <= 12:
      np.testing.assert_array_equal(counts, [3] * n)  # E uses of every row
    else:
      assert counts.sum() == 48 and counts.min() >= 1 and counts.max() <= 2


def test_epochs_plan_hand_case_n5_b2_s7_e2():
  schedule = federated.LocalSchedule("epochs", num_steps=7, batch_size=2, num_epochs=2)
  pos, mask, keys = _plans([5], schedule, seed=4)
  np.testing.assert_array_equal(
      mask[0], [[1, 1], [1, 1], [1, 0], [1, 1], [1, 1], [1, 0], [0, 0]])
  p0, p1 = _pass_perm(keys[0], 5, 0), _pass_perm(keys[0], 5, 1)
  expected = [[p0[0], p0[1]], [p0[2], p0[3]], [p0[4], 0],
              [p1[0], p1[1]], [p1[2], p1[3]], [p1[4], 0], [0, 0]]
  np.testing.assert_array_equal(pos[0], expected)
  assert not np.array_equal(p0, p1)


def test_size_zero_client_all_masked_in_both_modes():
  for schedule, sizes in ((_STEPS, _STEPS_SIZES), (_EPOCHS, _EPOCH_SIZES)):
    assert sizes[0] == 0
    pos, mask, _ = _plans(sizes, schedule, seed=2)
    assert not mask[0].any()
    np.testing.assert_array_equal(pos[0], np.zeros((schedule.num_steps, schedule.batch_size)))


def test_client_plan_deterministic_and_key_dependent():
  a, _, _ = _plans(_STEPS_SIZES, _STEPS, seed=1)
  b, _, _ = _plans(_STEPS_SIZES, _STEPS, seed=1)
  c, _, _ = _plans(_STEPS_SIZES, _STEPS, seed=2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a[-1], c[-1])  # n=33: another key, another order


def test_client_plan_unknown_mode_raises():
  with pytest.raises(ValueError, match="steps.*epochs"):
    federated.client_plan(jnp.int32(3), jax.random.key(0),
                          federated.LocalSchedule("rounds", 2, 2))


# ---------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------

_SMALL = dict(size_mean=3.0, size_sigma=1.5, min_size=5, max_size=60)


def test_generate_deterministic_by_seed():
  a = synthetic.generate(3, 25, **_SMALL)
  b = synthetic.generate(3, 25, **_SMALL)
  c = synthetic.generate(4, 25, **_SMALL)
  for key in ("x", "y"):
    np.testing.assert_array_equal(a.examples[key], b.examples[key])
  np.testing.assert_array_equal(a.sizes, b.sizes)
  assert not np.array_equal(a.examples["x"][:5], c.examples["x"][:5])


def test_generate_sizes_shapes_and_labels():
  data = synthetic.generate(0, 300, num_features=7, num_classes=4, **_SMALL)
  sizes = np.asarray(data.sizes)
  # Sizes are drawn first from the seeded generator: int(lognormal) + min, capped.
  raw = np.random.default_rng(0).lognormal(3.0, 1.5, 300).astype(np.int64) + 5
  np.testing.assert_array_equal(sizes, np.minimum(raw, 60))
  assert sizes.shape == (300,) and sizes.dtype == np.int32
  assert sizes.min() >= 5 and sizes.max() <= 60
  assert (sizes == 60).any()  # the cap binds for this seed
  np.testing.assert_array_equal(data.offsets, np.cumsum(sizes) - sizes)
  x, y = data.examples["x"], data.examples["y"]
  assert x.shape == (sizes.sum(), 7) and x.dtype == np.float32
  assert y.shape == (sizes.sum(),) and y.dtype == np.int32
  assert y.min() >= 0 and y.max() < 4
  assert np.isfinite(x).all()


def _label_stats(data, num_classes=10):
  y = data.examples["y"]
  pooled = np.bincount(y, minlength=num_classes) / y.size
  entropy, tv = [], []
  for o, s in zip(data.offsets, data.sizes):
    h = np.bincount(y[o:o + s], minlength=num_classes) / s
    nz = h[h > 0]
    entropy.append(float(-(nz * np.log(nz)).sum()))
    tv.append(0.5 * float(np.abs(h - pooled).sum()))
  return np.mean(entropy), np.mean(tv)


def test_iid_clients_share_label_distribution_noniid_do_not():
  big = dict(min_size=300, max_size=400)
  _, tv_iid = _label_stats(synthetic.generate(0, 40, iid=True, **big))
  _, tv_non = _label_stats(synthetic.generate(0, 40, alpha=1.0, beta=1.0, **big))
  # Per-client label histograms vs the pooled one (total variation).
  assert tv_iid < 0.1
  assert tv_non > 0.5


def test_iid_labels_are_more_balanced_than_noniid():
  big = dict(min_size=300, max_size=400)
  for seed in range(3):
    ent_iid, _ = _label_stats(synthetic.generate(seed, 40, iid=True, **big))
    ent_non, _ = _label_stats(synthetic.generate(seed, 40, alpha=1.0, beta=1.0, **big))
    assert ent_iid > 1.2 and ent_iid > 3 * ent_non, (seed, ent_iid, ent_non)


def test_feature_variance_decays_like_power_law():
  # One big IID population: features share a mean, per-coordinate variance (j+1)^-1.2.
  data = synthetic.generate(0, 5, iid=True, min_size=4000, max_size=4000)
  x = data.examples["x"].astype(np.float64)
  var = x.var(axis=0)
  ratio = var[0] / var[59]
  assert 136.0 / 1.3 < ratio < 136.0 * 1.3, ratio   # 60 ** 1.2 ~ 136
  np.testing.assert_allclose(var * np.arange(1, 61) ** 1.2, 1.0, rtol=0.1)
  # Non-IID: the same decay around each client's own mean.
  non = synthetic.generate(1, 50, min_size=200, max_size=200)
  xs = non.examples["x"].astype(np.float64).reshape(50, 200, 60)
  dev = xs - xs.mean(axis=1, keepdims=True)
  within = (dev ** 2).sum(axis=(0, 1)) / (50 * 199)
  np.testing.assert_allclose(within * np.arange(1, 61) ** 1.2, 1.0, rtol=0.1)
  # And client means really differ in the non-IID case (beta=1 plus N(B_k, 1)).
  assert xs.mean(axis=1).std(axis=0).min() > 0.5


def test_generate_iid_independent_of_block_size(monkeypatch):
  # IID draws only per-example noise per block, so blocking must not change it.
  ref = synthetic.generate(1, 40, iid=True, min_size=30, max_size=400)
  monkeypatch.setattr(synthetic, "_BLOCK_EXAMPLES", 100)
  blocked = synthetic.generate(1, 40, iid=True, min_size=30, max_size=400)
  for key in ("x", "y"):
    np.testing.assert_array_equal(ref.examples[key], blocked.examples[key])


def test_generate_many_blocks_consistent(monkeypatch):
  monkeypatch.setattr(synthetic, "_BLOCK_EXAMPLES", 64)
  data = synthetic.generate(2, 120, **_SMALL)
  n = int(np.sum(data.sizes))
  assert n > 64 * 10
  assert data.examples["x"].shape == (n, 60) and data.examples["y"].shape == (n,)
  # Rows are grouped per client: each client has its own mean (non-IID), so the
  # within-client spread is far smaller than the across-client spread.
  x = data.examples["x"].astype(np.float64)
  owners = federated.example_owners(data)
  means = np.stack([x[owners == c].mean(0) for c in range(120)])
  within = np.mean((x - means[owners])[:, 0] ** 2)
  assert within < 1.3 and means[:, 0].std() > 0.7

"""Aggregator wrappers: the secure sum and central Gaussian noise.

The secure sum is checked against a NumPy fixed-point reference written from
the protocol's arithmetic (round to 2^-f, two's complement, sum modulo 2^32),
bit for bit, with and without wrap-around; the masks against a chi-square
test of uniformity; chunking and its padding against the unchunked round.
The noise against its distribution, its key scheme and its refusals.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from conftest import COHORT, FAST, bits, build
from configs import synthetic
from fedjax_mm import aggregation, configuration
from fedjax_mm.aggregation import StreamingAggregator, WRAPPERS
from fedjax_mm.simulation import builders


def plain_sum() -> StreamingAggregator:
  """A test-local inner: ``Σ_k w_k Δ_k``, returned as is (the decoded sum itself)."""
  return StreamingAggregator(
      name="sum", init=lambda _: (),
      start=lambda s, t, k: jax.tree.map(jnp.zeros_like, t),
      accumulate=lambda acc, d, w: jax.tree.map(lambda a, x: a + jnp.tensordot(w, x, 1), acc, d),
      finalize=lambda s, acc, k: (acc, s, {}),
      summand=lambda d, w: jax.tree.map(lambda x: w * x, d))


def reduce(agg, deltas, weights, key, chunks):
  """The accumulator and ``finalize``'s output after streaming ``chunks`` of the cohort."""
  # One jitted program (eagerly, each of the masks' many ops compiles on its own).
  @functools.partial(jax.jit, **FAST)
  def run(deltas, weights, key):
    template = jax.tree.map(lambda x: x[0], deltas)
    state = agg.init(template)
    acc = agg.start(state, template, key)
    lo = 0
    for size in chunks:
      acc = agg.accumulate(acc, jax.tree.map(lambda x: x[lo:lo + size], deltas),
                           weights[lo:lo + size])
      lo += size
    return acc, agg.finalize(state, acc, key)
  return run(deltas, weights, key)


def fixed_point_sum(deltas, weights, f):
  """NumPy reference: per client ``clip(round(w Δ 2^f))`` as int32, summed mod 2^32, / 2^f.

  The clip is to ±(2^31 - 128), the largest float32 below 2^31 (exactly an int32).
  """
  terms = np.asarray(weights, np.float32)[:, None] * np.asarray(deltas, np.float32)
  limit = 2**31 - 128
  q = np.clip(np.round(terms.astype(np.float32) * np.float32(2.0**f)), -limit, limit)
  total = np.sum(q.astype(np.int64), axis=0) % 2**32          # the modular sum
  signed = np.where(total >= 2**31, total - 2**32, total)     # two's complement
  return (signed.astype(np.float32) / np.float32(2.0**f)), int(np.sum(np.abs(terms * 2.0**f)
                                                                      > limit))


def cohort(n=9, dim=64, scale=1.0, seed=0):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(scale * rng.normal(size=(n, dim)), jnp.float32),
          jnp.asarray(rng.integers(1, 20, n), jnp.float32))


@pytest.mark.parametrize("frac_bits", [4, 16, 30])
def test_secure_sum_decodes_the_fixed_point_sum_bit_for_bit(frac_bits):
  deltas, weights = cohort()
  agg = aggregation.secure_sum(plain_sum(), frac_bits=frac_bits)
  _, (decoded, _, metrics) = reduce(agg, deltas, weights, jax.random.key(3), [4, 4, 1])
  want, saturated = fixed_point_sum(deltas, weights, frac_bits)
  np.testing.assert_array_equal(np.asarray(decoded), want)
  # At f = 30 the range is +-2: the terms (|w Δ| up to ~60) saturate and the
  # sum wraps; the metric must say so. Below, nothing overflows.
  exact = np.einsum("k,kd->d", np.asarray(weights, np.float64), np.asarray(deltas, np.float64))
  if frac_bits == 30:
    assert saturated > 0 and float(metrics["overflow"]) >= saturated
  else:
    assert float(metrics["overflow"]) == 0.0
    # Rounding each of 9 terms to 2^-f: within 9 * 2^-(f+1) of the exact sum,
    # plus float32 rounding of the terms themselves (|w Δ| < 100: 9 * 100 eps).
    bound = 9 * 2.0**-(frac_bits + 1) + 9 * 100 * np.finfo(np.float32).eps
    np.testing.assert_array_less(np.abs(np.asarray(decoded) - exact), bound)


def test_secure_sum_wraps_modulo_2_32_like_the_protocol():
  """Terms in range whose sum is not: the decoded sum wraps exactly as the reference."""
  deltas = jnp.full((3, 8), 1.5e4, jnp.float32)       # 3 x 1.5e4 > 2^15 at f = 16
  weights = jnp.ones(3, jnp.float32)
  agg = aggregation.secure_sum(plain_sum(), frac_bits=16)
  _, (decoded, _, metrics) = reduce(agg, deltas, weights, jax.random.key(0), [2, 1])
  want, saturated = fixed_point_sum(deltas, weights, 16)
  assert saturated == 0
  np.testing.assert_array_equal(np.asarray(decoded), want)
  assert float(np.asarray(decoded)[0]) < 0               # it really wrapped
  assert float(metrics["overflow"]) == 8.0                # and was counted


def test_secure_sum_is_independent_of_the_chunking_bit_for_bit():
  deltas, weights = cohort(n=12)
  agg = aggregation.secure_sum(aggregation.weighted_mean())
  key = jax.random.key(5)
  outs = [reduce(agg, deltas, weights, key, chunks)[1][0] for chunks in ([12], [5, 5, 2], [1] * 12)]
  for out in outs[1:]:
    np.testing.assert_array_equal(np.asarray(out), np.asarray(outs[0]))
  # The weighted mean from the decoded sums (integer weights: their sum is
  # exact); the mean multiplies by 1/W, two float32 roundings against the
  # reference's one division: <= 2 eps = 2.4e-7 relative.
  num, _ = fixed_point_sum(deltas, weights, 16)
  np.testing.assert_allclose(np.asarray(outs[0]), num / np.float32(np.sum(weights)), rtol=1e-6)


def test_one_masked_upload_and_a_partial_sum_look_uniform():
  """The server's view of one client (or of all but one) is uniform on [0, 2^32).

  All-zero deltas are the worst case (an unmasked upload would be all zeros).
  Chi-square on the top 8 bits of 4096 coordinates, 255 degrees of freedom:
  a fixed key, so the statistic is fixed; p > 1e-3 (its p-value under
  uniformity is printed on failure).
  """
  dim = 4096
  deltas, weights = jnp.zeros((3, dim), jnp.float32), jnp.ones(3, jnp.float32)
  agg = aggregation.secure_sum(plain_sum())
  for n in (1, 2):                           # the first client; the first two
    acc, _ = reduce(agg, deltas[:n], weights[:n], jax.random.key(11), [n])
    top = np.asarray(acc.masked) >> 24
    counts = np.bincount(top, minlength=256)
    p = scipy.stats.chisquare(counts).pvalue
    assert p > 1e-3, (n, p)
  # The full sum, by contrast, decodes to the (zero) sum.
  _, (decoded, _, _) = reduce(agg, deltas, weights, jax.random.key(11), [3])
  np.testing.assert_array_equal(np.asarray(decoded), 0.0)


def test_secure_sum_round_equals_the_plain_round_within_the_rounding_bound(train):
  """In a round (unchunked, and chunks of 3 with 2 padding clients): the same
  uploads as the plain mean's, so the aggregates differ by the code only."""
  secure = aggregation.secure_sum(aggregation.weighted_mean())
  # Σ w Δ is within COHORT * 2^-17 per coordinate of exact and Σ w (integer
  # sizes) is exact, so the mean is within COHORT * 2^-17 / W, W >= the
  # smallest possible cohort weight; the server step is SGD(1): one round
  # moves the model by the aggregate. Plus float32 rounding of the two means.
  min_weight = float(np.sum(np.sort(np.asarray(train.sizes))[:COHORT]))
  bound = COHORT * 2.0**-17 / min_weight + 1e-6
  for chunk in (0, 3):
    plain = build(chunk=chunk).run(train, 1)
    ours = build(chunk=chunk, aggregator=secure).run(train, 1)
    for x, y in zip(bits(plain[0].trainable), bits(ours[0].trainable)):
      np.testing.assert_allclose(x, y, rtol=0, atol=bound)
    assert float(ours[2][0]["secure_sum/overflow"]) == 0.0
    # The same client training in another compiled program: XLA may order the
    # cohort's loss sum (7 clients) otherwise, <= 7 eps = 8.3e-7 relative.
    np.testing.assert_allclose(float(ours[2][0]["train_loss"]),
                               float(plain[2][0]["train_loss"]), rtol=1e-6)


def test_gaussian_noise_has_the_stated_distribution_and_key_scheme():
  deltas = jnp.zeros((4, 20000), jnp.float32)
  weights = jnp.ones(4, jnp.float32)
  agg = aggregation.gaussian_noise(aggregation.weighted_mean(), stddev=0.25)
  key = jax.random.key(7)
  _, (noisy, _, metrics) = reduce(agg, deltas, weights, key, [4])
  x = np.asarray(noisy)
  # n = 20000 draws: the sample mean's sd is 0.25/141 = 1.8e-3, the sample
  # sd's 0.25/200 = 1.25e-3; 5 of each.
  assert abs(x.mean()) < 5 * 0.25 / np.sqrt(20000)
  assert abs(x.std() - 0.25) < 5 * 0.25 / np.sqrt(2 * 20000)
  assert scipy.stats.normaltest(x).pvalue > 1e-3
  np.testing.assert_allclose(float(metrics["norm"]), np.linalg.norm(x), rtol=1e-5)
  again = reduce(agg, deltas, weights, key, [2, 2])[1][0]
  np.testing.assert_array_equal(np.asarray(again), x)                    # same key, same noise
  other = reduce(agg, deltas, weights, jax.random.key(8), [4])[1][0]
  assert np.corrcoef(np.asarray(other), x)[0, 1] < 0.05                  # another round's


def test_noise_then_secure_sum_composes_and_the_reverse_is_refused():
  config = synthetic.get_config()
  config.wrap.chain = "gaussian_noise, secure_sum"
  assert builders.round_parts(config).aggregator.name == "secure_sum"
  config.wrap.chain = "secure_sum, gaussian_noise"
  with pytest.raises(configuration.ConfigError,
                     match=r"^config.aggregation.kind: gaussian_noise .* 'secure_sum' exposes "
                           r"no per-client sum"):
    builders.round_parts(config)


@pytest.mark.parametrize("wrapper", WRAPPERS.names)
@pytest.mark.parametrize("kind,options", [("median", {}), ("krum", {}),
                                          ("canonical", {"path": "streamed", "score_with": "previous"})])
def test_wrappers_refuse_aggregators_that_are_not_sums(wrapper, kind, options):
  config = synthetic.get_config()
  config.aggregation.kind = kind
  config.aggregation[kind].update(options)
  config.wrap.chain = wrapper
  with pytest.raises(configuration.ConfigError,
                     match=rf"^config.aggregation.kind: {wrapper} .* wraps only a "
                           r"sum-decomposable aggregator; '\w+' (needs every client's update"
                           r"|exposes no per-client sum)"):
    builders.round_parts(config)


@pytest.mark.parametrize("field,value,message", [
    ("wrap.chain", "secure_sum,nope", r"config.wrap.chain: must be one of"),
    ("wrap.chain", "secure_sum,secure_sum", r"config.wrap.chain: each name at most once"),
    ("wrap.secure_sum.frac_bits", 31, r"config.wrap.secure_sum.frac_bits: must be an integer "
                                      r"in \[1, 30\]"),
    ("wrap.gaussian_noise.stddev", float("inf"), r"config.wrap.gaussian_noise.stddev: must be"),
])
def test_wrap_config_errors_name_the_field(field, value, message):
  config = synthetic.get_config()
  section, *rest = field.split(".")
  node = config[section]
  for part in rest[:-1]:
    node = node[part]
  node[rest[-1]] = value
  if field != "wrap.chain":
    config.wrap.chain = field.split(".")[1]
  with pytest.raises(configuration.ConfigError, match=message):
    configuration.validate_run(config)
    builders.round_parts(config)

"""fedjax_mm.experiment.statistics against references written here in NumPy from the papers'
formulas (sign-flip enumeration, the t formula, Holm and Friedman by hand, Demšar's tables)."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from fedjax_mm.experiment import statistics as st


# ------------------------------------------------------------------ references

def _midranks(x):
  """Average ranks of x (1 = smallest), ties sharing the mean of their positions."""
  x = np.asarray(x, dtype=float)
  return np.array([np.mean(np.flatnonzero(np.sort(x) == v)) + 1 for v in x])


def _wilcoxon_enumerated(d):
  """Two-sided exact p of the signed-rank test: every one of the 2^n sign assignments.

  Zeros dropped (Wilcoxon 1945); W+ = sum of the midranks of |d| whose sign is +;
  p = share of assignments with |W+ - mu| >= |w_obs - mu|, mu = sum(ranks) / 2.
  """
  d = np.asarray(d, dtype=float)
  d = d[d != 0]
  ranks = _midranks(np.abs(d))
  mu, w_obs = ranks.sum() / 2, ranks[d > 0].sum()
  hits = 0
  for signs in itertools.product((0, 1), repeat=d.size):
    w = ranks[np.array(signs, dtype=bool)].sum()
    hits += abs(w - mu) >= abs(w_obs - mu) - 1e-9  # midranks are halves: exact, 1e-9 for safety
  return hits / 2**d.size, min(w_obs, ranks.sum() - w_obs)


# ------------------------------------------------------------------ paired tests

def test_wilcoxon_is_the_exact_sign_flip_distribution_without_ties():
  a = np.array([0.55, 0.62, 0.47, 0.70, 0.58, 0.65])
  d = np.array([0.05, 0.12, -0.03, 0.2, 0.08, 0.15])  # |d| distinct; the negative one ranks 1
  ref_p, ref_stat = _wilcoxon_enumerated(d)
  # By hand: W- = 1, so |W+ - 10.5| >= 9.5 for W+ in {0, 1, 20, 21}: 4 of 64 assignments.
  assert ref_p == 4 / 64 and ref_stat == 1
  got = st.paired_test(a, a - d, kind="wilcoxon")
  assert got.p_value == pytest.approx(ref_p, abs=1e-12)  # both are sums of k / 64
  assert got.statistic == ref_stat and got.n == 6
  assert got.mean_diff == pytest.approx(d.mean(), abs=1e-12)  # float64 rounding of a - (a - d)


def test_wilcoxon_with_ties_and_a_zero_is_exact_too():
  d = np.array([0.25, 0.25, -0.5, 0.75, 0.0, 1.0, 0.25, -0.25])
  ref_p, ref_stat = _wilcoxon_enumerated(d)
  got = st.paired_test(1 + d, np.ones_like(d), kind="wilcoxon")  # binary fractions: ties exact
  assert got.p_value == pytest.approx(ref_p, abs=1e-12)  # both are sums of k / 128
  assert got.statistic == ref_stat and got.n == 8  # n counts the zero pair


def test_wilcoxon_beyond_50_is_the_normal_approximation():
  d = (np.arange(1, 61) * (-1.0) ** (np.arange(60) % 3 == 0)) / 64  # distinct |d|, 20 negative
  ranks = np.arange(1, 61)
  w_plus, n = ranks[d > 0].sum(), 60
  z = (w_plus - n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
  got = st.paired_test(d, np.zeros_like(d), kind="wilcoxon")
  assert got.p_value == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-9)  # float64 z


def test_five_pairs_floor_of_the_exact_wilcoxon_p():
  a, b = np.array([0.61, 0.62, 0.63, 0.64, 0.66]), np.full(5, 0.5)
  assert st.paired_test(a, b, kind="wilcoxon").p_value == 2 / 32  # the smallest it can be


def test_paired_t_is_its_formula():
  a = np.array([0.61, 0.58, 0.66, 0.63, 0.60])
  b = np.array([0.57, 0.56, 0.60, 0.62, 0.55])
  d = a - b
  t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
  got = st.paired_test(a, b)
  assert got.statistic == pytest.approx(t, rel=1e-12)  # float64 rounding only
  assert got.p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), d.size - 1), rel=1e-9)
  # n = 2: t with 1 degree of freedom is Cauchy, two-sided p = 1 - 2 atan(|t|) / pi.
  got = st.paired_test([0.7, 0.6], [0.5, 0.5])
  t = 0.15 / (math.sqrt(0.005) / math.sqrt(2))
  assert got.statistic == pytest.approx(t, rel=1e-12)
  assert got.p_value == pytest.approx(1 - 2 * math.atan(t) / math.pi, rel=1e-9)


@pytest.mark.parametrize("kind", ["t", "wilcoxon"])
def test_all_equal_pairs_give_p_one_not_nan(kind):
  assert st.paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], kind=kind) == (0.0, 1.0, 0.0, 3)


def test_constant_nonzero_difference_is_the_t_limit():
  got = st.paired_test([0.5, 1.5, 2.5], [0.0, 1.0, 2.0])  # d = 0.5 exactly, sd = 0
  assert got.statistic == math.inf and got.p_value == 0.0
  assert st.paired_test([0.0, 1.0, 2.0], [0.5, 1.5, 2.5]).statistic == -math.inf


# ------------------------------------------------------------------ Holm

def test_holm_by_hand():
  # m = 4, sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running
  # max 0.02, 0.03, 0.06, 0.06; back in the input order [0.01, 0.04, 0.03, 0.005]:
  got = st.holm([0.01, 0.04, 0.03, 0.005])
  np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)  # float products
  # Capped: 0.6 * 2 = 1.2 -> 1; 0.9 -> max(1, 0.9) = 1. One p: unchanged.
  np.testing.assert_array_equal(st.holm([0.9, 0.6]), [1.0, 1.0])
  np.testing.assert_array_equal(st.holm([0.2]), [0.2])


def test_holm_is_monotone_and_at_least_the_raw_p():
  p = np.random.default_rng(0).uniform(size=12) ** 3
  got = st.holm(p)
  order = np.argsort(p)
  assert np.all(np.diff(got[order]) >= 0) and np.all(got >= p) and np.all(got <= 1)
  np.testing.assert_array_equal(st.holm([0.01, 0.01, 0.5]), [0.03, 0.03, 0.5])  # ties: equal


# ------------------------------------------------------------------ Friedman / Nemenyi

def test_friedman_by_hand_with_a_tie():
  scores = [[0.9, 0.8, 0.7],   # ranks 1, 2, 3
            [0.8, 0.8, 0.6],   # tie: 1.5, 1.5, 3
            [0.7, 0.9, 0.5]]   # 2, 1, 3
  got = st.friedman(scores)
  np.testing.assert_allclose(got.mean_ranks, [1.5, 1.5, 3.0], rtol=1e-12)
  # chi2_F = 12*3/(3*4) * (1.5^2 + 1.5^2 + 3^2 - 3*4^2/4) = 3 * (13.5 - 12) = 4.5;
  # chi2 with 2 df: sf(x) = exp(-x/2). F_F = 2*4.5 / (3*2 - 4.5) = 6 on (2, 4) df:
  # sf(x) = (1 + 2x/4)^(-2) = 4^-2 = 1/16.
  assert got.chi2 == pytest.approx(4.5, rel=1e-12) and got.f_stat == pytest.approx(6.0, rel=1e-12)
  assert got.p_value == pytest.approx(math.exp(-2.25), rel=1e-9)  # scipy's chi2 sf accuracy
  assert got.f_p_value == pytest.approx(1 / 16, rel=1e-9)
  assert (got.n_blocks, got.k) == (3, 3)


def test_friedman_without_ties_is_scipys_and_the_limits():
  s = np.random.default_rng(1).normal(size=(6, 4))  # continuous: no ties, no tie correction
  ref = scipy_stats.friedmanchisquare(*s.T)
  got = st.friedman(s)
  assert got.chi2 == pytest.approx(ref.statistic, rel=1e-12)
  assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9)
  same = st.friedman([[3.0, 2.0, 1.0]] * 4)  # every block ranks alike: chi2 = N (k - 1)
  assert same.chi2 == pytest.approx(8.0) and same.f_stat == math.inf and same.f_p_value == 0.0
  flat = st.friedman([[1.0, 1.0], [2.0, 2.0]])
  assert (flat.chi2, flat.p_value, flat.f_stat, flat.f_p_value) == (0.0, 1.0, 0.0, 1.0)


def test_nemenyi_q_is_demsars_table_5a():
  table = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]  # k = 2..10, 0.05
  got = [st.nemenyi_q(k) for k in range(2, 11)]
  # The table prints 3 decimals (k = 3 is 2.3437 truncated): one unit in the last digit.
  np.testing.assert_allclose(got, table, atol=1e-3)
  # Demšar's worked example (sec. 3.2.2): k = 4, N = 14 -> CD = 2.569 sqrt(20/84) = 1.25.
  assert st.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=5e-3)  # printed to 2 decimals


def test_nemenyi_groups_by_hand():
  # |differences| >= 1.6: 1.0-3.0, 1.0-3.4, 1.5-3.4. Runs spanning < 1.6: {1.0, 1.5},
  # {1.5, 3.0}, {3.0, 3.4}. Input shuffled: the indices are the input's.
  ranks = np.array([3.0, 1.0, 3.4, 1.5])
  got = st.nemenyi_groups(ranks, 1.6)
  assert set(got.differ) == {(0, 1), (1, 2), (2, 3)}
  assert got.groups == ((1, 3), (3, 0), (0, 2))
  assert st.nemenyi_groups([1.0, 2.0, 3.0], 5.0) == ((), ((0, 1, 2),))
  assert st.nemenyi_groups([1.0, 2.0], 1.0).differ == ((0, 1),)  # "at least" the CD


# ------------------------------------------------------------------ bootstrap

def test_bootstrap_ci_of_a_normal_sample():
  x = np.random.default_rng(3).normal(0.6, 0.1, size=400)
  ci = st.bootstrap_ci(x)
  assert ci.estimate == pytest.approx(x.mean(), rel=1e-12) and ci.low < x.mean() < ci.high
  # Normal theory: 2 * 1.96 s / sqrt(n). The percentile endpoints at 2000 resamples carry
  # Monte-Carlo error ~ sqrt(.025 * .975 / 2000) / phi(1.96) ~ 0.06 standard errors each,
  # ~2% of the width; 15% also covers the plug-in (ddof 0) sd and the sample's skew.
  normal = 2 * 1.96 * x.std(ddof=1) / math.sqrt(x.size)
  assert abs((ci.high - ci.low) / normal - 1) < 0.15
  assert st.bootstrap_ci(x) == ci and st.bootstrap_ci(x, seed=1) != ci  # seeded
  assert st.bootstrap_ci(x, level=0.5).high - st.bootstrap_ci(x, level=0.5).low < ci.high - ci.low


def test_bootstrap_weights():
  v, w = np.array([0.2, 0.5, 0.9, 0.4]), np.array([1.0, 3.0, 2.0, 4.0])
  ci = st.bootstrap_ci(v, weights=w)
  assert ci.estimate == pytest.approx((0.2 + 1.5 + 1.8 + 1.6) / 10, rel=1e-12)
  assert ci.low <= ci.estimate <= ci.high
  plain = st.bootstrap_ci(v, num_resamples=300)  # > one chunk of resamples
  equal = st.bootstrap_ci(v, num_resamples=300, weights=np.full(4, 7.0))
  np.testing.assert_allclose(equal, plain, rtol=1e-12)  # w cancels in sum w v / sum w


def test_paired_bootstrap_resamples_clients_jointly():
  a = np.random.default_rng(4).uniform(0.1, 0.9, size=50)  # a wide spread between clients
  assert st.paired_bootstrap_ci(a, a) == (0.0, 0.0, 0.0, 0.95)
  # b = a - 0.125: every resample's mean difference is 0.125 (up to rounding), while either
  # method alone has the clients' spread.
  got = st.paired_bootstrap_ci(a, a - 0.125)
  np.testing.assert_allclose(got[:3], [0.125] * 3, rtol=1e-12)  # rounding of a - (a - 1/8)
  alone = st.bootstrap_ci(a)
  assert alone.high - alone.low > 0.05


# ------------------------------------------------------------------ format_p

def test_format_p():
  assert st.format_p(0.0123) == "p=0.012" and st.format_p(0.0004) == "p<0.001"
  assert st.format_p(0.001) == "p=0.001" and st.format_p(1.0) == "p=1.000"
  assert st.format_p(0.04, digits=2) == "p=0.04" and st.format_p(0.004, digits=2) == "p<0.01"


# ------------------------------------------------------------------ guards

@pytest.mark.parametrize("call, match", [
    (lambda: st.paired_test([0.5], [0.4]), "a: must be a 1-D array of >= 2"),
    (lambda: st.paired_test([[0.5, 0.4]], [[0.4, 0.3]]), "a: must be a 1-D array"),
    (lambda: st.paired_test([0.5, 0.4], [0.4, 0.3, 0.2]), "b: must have the shape of a"),
    (lambda: st.paired_test([0.5, np.nan], [0.4, 0.3]), "a: must be finite"),
    (lambda: st.paired_test([0.5, 0.4], [0.4, np.inf]), "b: must be finite"),
    (lambda: st.paired_test([0.5, 0.4], [0.4, 0.3], kind="sign"), "kind: must be one of"),
    (lambda: st.holm([]), "p_values: must be a 1-D array of >= 1"),
    (lambda: st.holm([0.2, 1.5]), r"p_values: must be in \[0, 1\]"),
    (lambda: st.holm([-0.1]), r"p_values: must be in \[0, 1\]"),
    (lambda: st.holm([np.nan]), "p_values: must be finite"),
    (lambda: st.friedman([0.1, 0.2]), "scores: must be a"),
    (lambda: st.friedman([[0.1, 0.2]]), "scores: must be a"),
    (lambda: st.friedman([[0.1], [0.2]]), "scores: must be a"),
    (lambda: st.friedman([[0.1, np.nan], [0.2, 0.3]]), "scores: must be finite"),
    (lambda: st.nemenyi_cd(1, 5), "k: must be an integer >= 2"),
    (lambda: st.nemenyi_cd(3.0, 5), "k: must be an integer >= 2"),
    (lambda: st.nemenyi_cd(3, 0), "n: must be an integer >= 1"),
    (lambda: st.nemenyi_cd(3, 5, alpha=0.0), r"alpha: must be a finite number in \(0, 1\)"),
    (lambda: st.nemenyi_cd(3, 5, alpha=1.0), r"alpha: must be a finite number in \(0, 1\)"),
    (lambda: st.nemenyi_groups([1.0], 1.0), "mean_ranks: must be a 1-D array of >= 2"),
    (lambda: st.nemenyi_groups([1.0, 2.0], 0.0), "cd: must be a finite number > 0"),
    (lambda: st.bootstrap_ci([0.5]), "values: must be a 1-D array of >= 2"),
    (lambda: st.bootstrap_ci([0.5, np.nan]), "values: must be finite"),
    (lambda: st.bootstrap_ci([0.5, 0.6], level=1.0), r"level: must be a finite number in \(0, 1\)"),
    (lambda: st.bootstrap_ci([0.5, 0.6], num_resamples=0),
     "num_resamples: must be an integer >= 1"),
    (lambda: st.bootstrap_ci([0.5, 0.6], seed=-1), "seed: must be an integer >= 0"),
    (lambda: st.bootstrap_ci([0.5, 0.6], weights=[1.0]), "weights: must have the shape of values"),
    (lambda: st.bootstrap_ci([0.5, 0.6], weights=[1.0, 0.0]), "weights: must be > 0"),
    (lambda: st.bootstrap_ci([0.5, 0.6], weights=[1.0, np.nan]), "weights: must be finite"),
    (lambda: st.paired_bootstrap_ci([0.5, 0.6], [0.5, 0.6, 0.7]), "b: must have the shape of a"),
    (lambda: st.format_p(1.5), r"p: must be a finite number in \[0, 1\]"),
    (lambda: st.format_p(float("nan")), r"p: must be a finite number in \[0, 1\]"),
    (lambda: st.format_p(0.5, digits=0), "digits: must be an integer >= 1"),
])
def test_guards(call, match):
  with pytest.raises(ValueError, match=match):
    call()

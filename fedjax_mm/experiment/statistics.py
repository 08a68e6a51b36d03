"""Significance for the method comparison: paired tests, Holm, Friedman/Nemenyi, bootstrap CIs.

Methods run on the same >= 5 seeds per scenario (paired), each run scoring
per-evaluation-client accuracies: :func:`paired_test` compares two methods on a
scenario's seeds, :func:`holm` adjusts the family, :func:`friedman` and Nemenyi
rank all methods over all scenarios, the bootstrap CIs are over clients.

References:
  Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 2006.
  Holm, "A Simple Sequentially Rejective Multiple Test Procedure", Scand. J. Stat. 1979.
  Wilcoxon, "Individual Comparisons by Ranking Methods", Biometrics Bulletin 1945.
  Efron & Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13 (percentile CIs).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from fedjax_mm import checks

# Exact Wilcoxon p up to this many non-zero differences (scipy's own exact threshold).
_WILCOXON_EXACT_MAX = 50
# Bootstrap means this many resamples at a time: memory O(chunk x clients).
_RESAMPLE_CHUNK = 256


def _vector(name: str, x: ArrayLike, min_size: int = 1) -> np.ndarray:
  """``x`` as a finite float64 1-D array of >= ``min_size`` entries, else a one-line error."""
  arr = np.asarray(x, dtype=np.float64)
  if arr.ndim != 1 or arr.size < min_size:
    raise ValueError(f"{name}: must be a 1-D array of >= {min_size} numbers, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name}: must be finite, got {arr.tolist()!r}")
  return arr


def _pair(a: ArrayLike, b: ArrayLike, min_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``a``, ``b`` checked: finite 1-D arrays of one length."""
  a, b = _vector("a", a, min_size), _vector("b", b, min_size)
  if a.shape != b.shape:
    raise ValueError(f"b: must have the shape of a {a.shape}, got {b.shape}")
  return a, b


class PairedTest(NamedTuple):
  """A two-sided paired test: ``mean_diff = mean(a - b)`` over ``n`` pairs."""
  statistic: float
  p_value: float
  mean_diff: float
  n: int


def _wilcoxon_tied_p(d: np.ndarray) -> float:
  """Exact two-sided Wilcoxon p given tied |d| (no zeros): the sign-flip distribution.

  Under H0 the signs are fair coins given |d|, so W+ (sum of the positive d's
  midranks r_i) has generating function prod_i (1 + x^{r_i}) / 2^n; doubled
  midranks are integers. p = P(|W+ - mu| >= |w - mu|), mu = sum(r) / 2 (symmetric).
  """
  ranks2 = np.rint(2 * stats.rankdata(np.abs(d))).astype(np.int64)
  total = int(ranks2.sum())
  dist = np.zeros(total + 1)
  dist[0] = 1.0
  for r in ranks2:  # multiply by (1 + x^r); counts stay exact integers below 2^53
    dist[r:] = dist[r:] + dist[:-r].copy()
  w2 = int(ranks2[d > 0].sum())
  far = np.abs(2 * np.arange(total + 1) - total) >= abs(2 * w2 - total)
  return float(min(dist[far].sum() / dist.sum(), 1.0))


def paired_test(a: ArrayLike, b: ArrayLike, kind: str = "t") -> PairedTest:
  """Two-sided paired test of ``a`` against ``b`` (two methods' scores on the same seeds).

  ``kind="t"``: paired t-test (Student 1908), ``t = mean(d) / (sd(d) / sqrt(n))``,
  ``d = a - b``, sd with ddof 1, n - 1 degrees of freedom (``scipy.stats.ttest_rel``);
  a constant non-zero d has no variance: ``t = +-inf``, ``p = 0`` (the limit).
  ``kind="wilcoxon"``: signed-rank test (Wilcoxon 1945); zero differences are
  dropped (Wilcoxon's rule), ``statistic = min(W+, W-)`` (rank sums of the
  positive / negative d, midranks for ties). Up to 50 non-zero d the p is exact
  (scipy's exact null distribution; with ties, the exact sign-flip distribution
  given the tied ranks), beyond that the normal approximation.

  Note:
    With 5 pairs the exact two-sided Wilcoxon p cannot go below 2/32 = 0.0625
    (all five d of one sign): it never reaches 0.05 at 5 seeds, so the t-test
    is the primary test there and Wilcoxon a distribution-free check.

  ``a``, ``b``: ``[n >= 2]`` per-seed scores of the two methods, same seeds; all-equal
  pairs give statistic 0, p 1.0 (scipy: NaN). A ValueError for fewer than 2 pairs,
  shapes differing, non-finite scores, an unknown kind.
  """
  checks.one_of("kind", kind, ("t", "wilcoxon"))
  a, b = _pair(a, b, min_size=2)
  d = a - b
  n, mean_diff = int(d.size), float(d.mean())
  if np.all(d == 0):
    return PairedTest(0.0, 1.0, 0.0, n)
  if kind == "t":
    if np.all(d == d[0]):  # sd = 0: scipy warns on the cancellation; the limit is exact
      return PairedTest(math.copysign(math.inf, d[0]), 0.0, mean_diff, n)
    res = stats.ttest_rel(a, b)
    return PairedTest(float(res.statistic), float(res.pvalue), mean_diff, n)
  nonzero = d[d != 0]
  tied = np.unique(np.abs(nonzero)).size < nonzero.size
  exact = nonzero.size <= _WILCOXON_EXACT_MAX
  # scipy's "exact" is exact only without ties; with ties its auto mode runs a
  # slow permutation test (n <= 13) or goes asymptotic: our own distribution.
  res = stats.wilcoxon(nonzero, method="exact" if exact and not tied else "asymptotic")
  p = _wilcoxon_tied_p(nonzero) if exact and tied else float(res.pvalue)
  return PairedTest(float(res.statistic), p, mean_diff, n)


def holm(p_values: ArrayLike) -> np.ndarray:
  """Holm-Bonferroni step-down adjusted p-values (Holm 1979), in the input order.

  With ``p_(1) <= ... <= p_(m)`` sorted, ``p~_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))``:
  ``p~ <= alpha`` is Holm's rejection (reject H_(1), H_(2), ... while
  ``p_(i) <= alpha / (m - i + 1)``), controlling the family-wise error at alpha
  under any dependence; the running max makes them monotone in the raw p.

  Returns ``[m]`` adjusted p, ``adjusted[i]`` for ``p_values[i]``; a ValueError when
  ``p_values`` is empty, not 1-D, non-finite or outside [0, 1].
  """
  p = _vector("p_values", p_values)
  if np.any((p < 0) | (p > 1)):
    raise ValueError(f"p_values: must be in [0, 1], got {p.tolist()!r}")
  m = p.size
  order = np.argsort(p, kind="stable")
  adjusted = np.empty(m)
  adjusted[order] = np.minimum(np.maximum.accumulate((m - np.arange(m)) * p[order]), 1.0)
  return adjusted


class Friedman(NamedTuple):
  """Friedman's test of ``k`` methods over ``n_blocks`` scenarios; F: Iman-Davenport."""
  mean_ranks: np.ndarray  # [k], rank 1 = best
  chi2: float
  p_value: float
  f_stat: float
  f_p_value: float
  n_blocks: int
  k: int


def friedman(scores: ArrayLike) -> Friedman:
  """Friedman's test of k methods over N blocks, Iman-Davenport F (Demšar 2006, sec. 3.2.2).

  Within each block the methods are ranked, 1 = highest score, ties getting
  the average of the ranks they span; R_j is method j's mean rank. Under H0::

    chi2_F = 12 N / (k (k + 1)) [sum_j R_j^2 - k (k + 1)^2 / 4]   ~ chi2(k - 1)
    F_F = (N - 1) chi2_F / (N (k - 1) - chi2_F)   ~ F(k - 1, (k - 1)(N - 1))

  No tie correction, as in Demšar (``scipy.stats.friedmanchisquare`` applies
  one): with ties chi2_F is slightly conservative. The same ranking in every
  block (``chi2_F = N (k - 1)``) gives ``F_F = inf``, p 0.

  ``scores``: ``[n_blocks >= 2, k >= 2]``, higher = better (e.g. mean accuracy per
  scenario); a ValueError for another shape or non-finite scores.
  """
  s = np.asarray(scores, dtype=np.float64)
  if s.ndim != 2 or s.shape[0] < 2 or s.shape[1] < 2:
    raise ValueError(f"scores: must be a [n_blocks >= 2, k >= 2] array, got shape {s.shape}")
  if not np.all(np.isfinite(s)):
    raise ValueError("scores: must be finite, got NaN or inf")
  n, k = s.shape
  mean_ranks = stats.rankdata(-s, axis=1).mean(axis=0)
  chi2 = 12.0 * n / (k * (k + 1)) * (np.sum(mean_ranks**2) - k * (k + 1) ** 2 / 4.0)
  chi2 = max(float(chi2), 0.0)  # rounding can leave -1e-15 when every block is all tied
  denom = n * (k - 1) - chi2
  if denom <= 1e-12 * n * (k - 1):  # perfect agreement, up to rounding
    f_stat, f_p = math.inf, 0.0
  else:
    f_stat = (n - 1) * chi2 / denom
    f_p = float(stats.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
  return Friedman(mean_ranks, chi2, float(stats.chi2.sf(chi2, k - 1)), float(f_stat), f_p, n, k)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
  """Nemenyi's q_alpha: studentized range (k, df inf) quantile / sqrt(2) (Demšar 2006, Tab. 5a)."""
  checks.number("k", k, lambda v: v >= 2, ">= 2", integer=True)
  checks.number("alpha", alpha, lambda v: 0 < v < 1, "in (0, 1)")
  return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
  """Nemenyi's critical difference ``CD = q_alpha sqrt(k (k + 1) / (6 N))`` (Demšar 2006, 3.2.2).

  Two of ``k`` methods' mean ranks over ``n`` blocks differ significantly at
  family-wise level ``alpha`` when they differ by at least CD. A ValueError unless
  ``k >= 2`` and ``n >= 1`` are integers and ``alpha`` is in (0, 1).
  """
  checks.number("n", n, lambda v: v >= 1, ">= 1", integer=True)
  return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


class NemenyiGroups(NamedTuple):
  """Pairs ``(i, j)``, ``i < j``, that differ; maximal groups that do not (input indices)."""
  differ: tuple[tuple[int, int], ...]
  groups: tuple[tuple[int, ...], ...]


def nemenyi_groups(mean_ranks: ArrayLike, cd: float) -> NemenyiGroups:
  """Which methods differ by Nemenyi's test, and the groups a CD diagram draws (Demšar 2006).

  Methods i, j differ when ``|R_i - R_j| >= cd`` ("differ by at least the
  critical difference"). ``groups``: the maximal runs of methods, best mean
  rank first, whose ranks span less than ``cd`` (the bars of Demšar's CD
  diagram; a method alone in its group differs from all others).

  ``mean_ranks``: ``[k >= 2]``, e.g. ``friedman(...).mean_ranks``; ``cd`` > 0, e.g.
  ``nemenyi_cd(k, n)``; else a ValueError.
  """
  r = _vector("mean_ranks", mean_ranks, min_size=2)
  checks.number("cd", cd, lambda v: v > 0, "> 0")
  k = r.size
  differ = tuple((i, j) for i in range(k) for j in range(i + 1, k) if abs(r[i] - r[j]) >= cd)
  order = np.argsort(r, kind="stable")
  groups, last_end = [], -1
  for start in range(k):
    end = start
    while end + 1 < k and r[order[end + 1]] - r[order[start]] < cd:
      end += 1
    if end > last_end:  # else it lies inside the previous group
      groups.append(tuple(int(i) for i in order[start:end + 1]))
      last_end = end
  return NemenyiGroups(differ, tuple(groups))


class ConfidenceInterval(NamedTuple):
  """A point estimate and its two-sided percentile bootstrap interval at ``level``."""
  estimate: float
  low: float
  high: float
  level: float


def bootstrap_ci(values: ArrayLike, level: float = 0.95, num_resamples: int = 2000,
                 seed: int = 0, weights: Optional[ArrayLike] = None) -> ConfidenceInterval:
  """Percentile bootstrap CI of the (weighted) mean over evaluation clients (Efron 1993, ch. 13).

  Clients are resampled with replacement; the resamples' ``sum w v / sum w`` (w = 1
  without weights) make the bootstrap distribution, its ``(1 -+ level) / 2``
  quantiles the interval. Weights = test-row counts: the accuracy over all test rows.

  Args:
    values: ``[n >= 2]`` per-client values (e.g. accuracies).
    level: coverage, in (0, 1).
    num_resamples: >= 1; the endpoints' Monte-Carlo error is O(1 / sqrt(num_resamples)).
    seed: >= 0 (same seed, same interval).
    weights: optional ``[n]`` weights > 0.

  Raises:
    ValueError: a value, weight or option out of the ranges above, shapes differing.
  """
  v = _vector("values", values, min_size=2)
  checks.number("level", level, lambda x: 0 < x < 1, "in (0, 1)")
  checks.number("num_resamples", num_resamples, lambda x: x >= 1, ">= 1", integer=True)
  checks.number("seed", seed, lambda x: x >= 0, ">= 0", integer=True)
  w = np.ones_like(v) if weights is None else _vector("weights", weights)
  if w.shape != v.shape:
    raise ValueError(f"weights: must have the shape of values {v.shape}, got {w.shape}")
  if np.any(w <= 0):  # a weight-0 client is no evaluation client, and a resample of them is 0/0
    raise ValueError(f"weights: must be > 0, got {w.tolist()!r}")
  rng = np.random.default_rng(seed)
  means = np.empty(num_resamples)
  for lo in range(0, num_resamples, _RESAMPLE_CHUNK):
    idx = rng.integers(0, v.size, size=(min(_RESAMPLE_CHUNK, num_resamples - lo), v.size))
    means[lo:lo + len(idx)] = (w[idx] * v[idx]).sum(axis=1) / w[idx].sum(axis=1)
  low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return ConfidenceInterval(float(np.sum(w * v) / np.sum(w)), float(low), float(high), float(level))


def paired_bootstrap_ci(a: ArrayLike, b: ArrayLike, level: float = 0.95,
                        num_resamples: int = 2000, seed: int = 0,
                        weights: Optional[ArrayLike] = None) -> ConfidenceInterval:
  """Percentile bootstrap CI of the (weighted) mean of ``a - b`` over the same clients.

  Clients are resampled jointly (a draw takes a client under both methods), so the
  spread between clients that both methods share cancels: bootstrap_ci of a - b.

  ``a``, ``b``: ``[n]``, the same clients in the same order under the two methods;
  the rest and the errors as :func:`bootstrap_ci` (plus ``a``, ``b`` shapes differing).
  """
  a, b = _pair(a, b, min_size=2)
  return bootstrap_ci(a - b, level, num_resamples, seed, weights)


def format_p(p: float, digits: int = 3) -> str:
  """``"p=0.012"``, or ``"p<0.001"`` below 10^-digits (ValueError: p not in [0, 1], digits < 1)."""
  checks.number("p", p, lambda v: 0 <= v <= 1, "in [0, 1]")
  checks.number("digits", digits, lambda v: v >= 1, ">= 1", integer=True)
  floor = 10.0 ** -digits
  return f"p<{floor:.{digits}f}" if p < floor else f"p={p:.{digits}f}"

"""The comparison's protocol: widened grids, edges on integers, disjoint evaluation clients,
paired report seeds, and the report's reading of them."""

import math

import numpy as np
import pytest

from fedjax_mm.experiment import compare_report, comparison, protocol, tuning


def _bowl(best, calls=None):
  """A score peaked at exponents ``best`` (what a well-behaved learning-rate grid looks like)."""
  def score(point):
    if calls is not None:
      calls.append(point)
    return -sum((i - b) ** 2 for i, b in zip(point, best))
  return score


def test_an_interior_optimum_is_found_without_widening():
  calls = []
  got = tuning.search(2, _bowl((0, 1), calls))
  # (0, 1) is on the initial 3 x 3 grid's top edge of axis 1: one column more.
  assert got.chosen == (0, 1) and got.edges == (None, None) and not got.pending
  assert sorted(got.scores) == sorted((i, j) for i in (-1, 0, 1) for j in (-1, 0, 1, 2))
  assert len(calls) == len(set(calls)) == 12       # every point scored once


def test_the_grid_widens_until_the_optimum_is_interior_or_the_budget_ends():
  got = tuning.search(1, _bowl((-2,)))
  assert got.chosen == (-2,) and got.edges == (None,)
  assert sorted(got.scores) == [(-3,), (-2,), (-1,), (0,), (1,)]
  far = tuning.search(2, _bowl((5, 0)))        # beyond 1 + 2 widenings: still an edge
  assert far.chosen == (3, 0) and far.edges == ("high", None)
  assert max(p[0] for p in far.scores) == 3 and min(p[0] for p in far.scores) == -1


def test_a_diverged_point_is_never_chosen_and_ties_go_to_the_center():
  score = lambda p: -math.inf if p[0] >= 1 else 0.0     # flat, diverging at the top
  got = tuning.search(1, score)
  assert got.chosen == (0,) and got.edges == (None,)
  assert tuning.search(1, lambda p: -math.inf).edges == (None,)   # all diverged: no widening


def test_a_pending_point_stops_the_search_and_the_same_results_resume_it():
  results = {}
  def score(point):               # only the first call's points are "done"
    return results.get(point)
  first = tuning.search(2, score)
  assert first.pending and first.chosen is None
  bowl = _bowl((1, -1))
  for point in first.scores:
    results[point] = bowl(point)
  second = tuning.search(2, score)
  assert second.pending                            # widened: new points are pending
  for point in second.scores:
    results[point] = bowl(point)
  assert tuning.search(2, score) == tuning.search(2, bowl)


def test_points_name_their_directories_and_values_exactly():
  axes = [tuning.Axis("client.learning_rate", 0.003), tuning.Axis("server.learning_rate", 1.0)]
  assert tuning.point_name((1, -1)) == "g+1_-1" and tuning.point_name((0,)) == "g+0"
  assert tuning.values(axes, (1, -1)) == {"client.learning_rate": 0.003 * 3.0,
                                          "server.learning_rate": 1.0 / 3.0}
  with pytest.raises(ValueError, match="half_width >= 0"):
    tuning.search(1, lambda p: 0.0, half_width=-1)
  assert tuning.search(1, lambda p: 0.0, half_width=0).scores == {(0,): 0.0}


def test_the_edge_flag_reads_the_searchs_integers_not_rounded_floats():
  # The old report compared f"{0.003 * 3:.4g}" with 0.009000000000000001 and missed
  # the edge; the search's flag is decided on exponents.
  entry = {"axes": ["client.learning_rate", "server.learning_rate"],
           "chosen": {"client.learning_rate": 0.003 * 3 ** 3, "server.learning_rate": 1 / 3},
           "edges": ["high", None]}
  assert compare_report.chosen_cell(entry) == \
      "client lr 0.081, server lr 0.333 (grid edge: client lr high)"
  entry["edges"] = [None, None]
  assert "grid edge" not in compare_report.chosen_cell(entry)


def test_validation_and_test_clients_are_disjoint_and_fixed_per_scenario():
  sizes = np.array([3, 0, 2, 5, 1, 0, 4, 4, 2, 7])     # 8 clients with test rows
  split = protocol.evaluation_split(sizes, 3, seed=0)
  assert len(split.validation) == len(split.test) == 3
  assert not set(split.validation) & set(split.test)
  assert all(sizes[i] > 0 for i in np.concatenate(split))
  again = protocol.evaluation_split(sizes, 3, seed=0)
  np.testing.assert_array_equal(split.validation, again.validation)
  every = protocol.evaluation_split(sizes, 0, seed=0)    # "all": half and half
  assert len(every.validation) == len(every.test) == 4
  assert len(protocol.evaluation_split(sizes, 6, seed=0).test) == 4   # more than half: half
  with pytest.raises(ValueError, match="need >= 2 clients with test rows, got 1"):
    protocol.evaluation_split(np.array([0, 3, 0]), 0, seed=0)


def test_report_seeds_are_fresh():
  seeds = protocol.report_seeds(5)
  assert len(set(seeds)) == 5 and not set(seeds) & set(protocol.SELECTION_SEEDS)


def test_tuned_runs_select_on_validation_then_report_on_test(tmp_path):
  calls = []
  def run_at(point, seed, split, rundir):
    calls.append((point, seed, split, rundir.relative_to(tmp_path).as_posix()))
    return {"final": {"accuracy": -abs(point[0] - 1) + 0.01 * seed}}
  axes = [tuning.Axis("client.learning_rate", 0.01)]
  got = comparison.tuned_runs(axes, run_at, tmp_path, tune=True, seeds=(100, 101))
  assert got["point"] == [1] and got["edges"] == [None]
  assert got["chosen"] == {"client.learning_rate": 0.01 * 3}
  selection = [c for c in calls if c[2] == "validation"]
  assert {c[1] for c in selection} == set(protocol.SELECTION_SEEDS)
  assert ((1,), 0, "validation", "g+1/sel0") in selection
  assert [c for c in calls if c[2] == "test"] == [((1,), 100, "test", "g+1/test100"),
                                                  ((1,), 101, "test", "g+1/test101")]
  assert got["grid"]["g+1"]["score"] == pytest.approx(0.005)   # the selection seeds' mean
  untuned = comparison.tuned_runs(axes, run_at, tmp_path, tune=False, seeds=(100,))
  assert untuned["point"] == [0] and untuned["grid"] == {}


def _entry(label, seeds_acc, clients=None, ablation=False):
  runs = []
  for i, acc in enumerate(seeds_acc):
    final = {"accuracy": acc, "loss": 1.0 - acc}
    if clients is not None:
      final["clients"] = {"accuracy": list(clients + 0.01 * i), "count": [6] * len(clients)}
    runs.append({"final": final, "pg_cosine": [0.5, -0.5, 0.1], "path_efficiency": 0.4,
                 "seconds": 1.0})
  return {"label": label, "ablation": ablation, "runs": runs, "axes": ["client.learning_rate"],
          "chosen": {"client.learning_rate": 0.003}, "edges": [None]}


def test_significance_pairs_by_seed_against_the_best_baseline_with_holm():
  from scipy import stats
  base = np.array([0.40, 0.42, 0.41, 0.43, 0.39])
  entries = {"fedavg": _entry("FedAvg", base),
             "fedavgm": _entry("FedAvgM", base + [0.02, 0.03, 0.01, 0.02, 0.03]),
             "fedcmp": _entry("Fed-CMP", base + [0.05, 0.04, 0.06, 0.03, 0.05]),  # never "best"
             "cra_only": _entry("CRA", base + [0.01, -0.01, 0.0, 0.02, 0.01], ablation=True)}
  assert compare_report.best_baseline(entries) == "fedavgm"
  sig = compare_report.significance(entries)
  assert set(sig) == {"fedavg", "fedcmp", "cra_only"} and sig["fedcmp"]["vs"] == "fedavgm"
  best = np.array(compare_report.accuracies(entries["fedavgm"]))
  p = {k: stats.ttest_rel(compare_report.accuracies(entries[k]), best).pvalue for k in sig}
  # Holm by hand over the three p values: sorted ascending, times 3, 2, 1, running max.
  order = sorted(p, key=p.get)
  adjusted, running = {}, 0.0
  for rank, key in enumerate(order):
    running = max(running, min(1.0, (3 - rank) * p[key]))
    adjusted[key] = running
  for key in sig:
    assert sig[key]["p_holm"] == pytest.approx(adjusted[key], rel=1e-12)
    assert sig[key]["diff"] == pytest.approx(np.mean(np.array(
        compare_report.accuracies(entries[key])) - best))
  diverged = dict(entries, fedavg={**entries["fedavg"], "runs": entries["fedavg"]["runs"][:4]
                                   + [{"diverged": "NaN", "final": {}}]})
  # A diverged seed scores 0 in the pairing (a loss), not a dropped pair.
  assert compare_report.significance(diverged)["fedavg"]["diff"] < sig["fedavg"]["diff"] - 0.07


def test_the_report_renders_intervals_ranks_and_na_tails():
  clients = np.linspace(0.2, 0.6, 9)
  scen = {}
  for s, shift in (("a", 0.0), ("b", 0.01), ("c", -0.02)):
    methods = {k: _entry(k.upper(), np.array([0.3, 0.31, 0.32]) + shift + d, clients)
               for k, d in (("fedavg", 0.0), ("fedavgm", 0.02), ("fedcmp", 0.01))}
    refs = {"floor": {"final": {"accuracy": 0.05, "loss": 2.0}},
            "examples_per_round": 123.4}
    for name in ("centralized, same examples", "centralized, same sequential steps"):
      refs[name] = {**_entry(name, [0.5, 0.5, 0.5]), "runs": [
          {"final": {"accuracy": 0.5, "loss": 0.5}, "steps": 17, "seconds": 1.0}] * 3}
    scen[s] = {"clients": 10, "per_round": 2, "rounds": 3, "local_steps": 2, "batch": 2,
               "local_mode": "steps", "eval_clients": {"validation": 9, "test": 9},
               "references": refs, "methods": methods}
  report = {"settings": {"tuned": True, "report_seeds": (100, 101, 102),
                         "selection_seeds": (0, 1), "devices": 1, "cpu": "Test CPU",
                         "argv": "--scale small"}, "scenarios": scen}
  text = compare_report.markdown(report)
  assert "123 example-gradients per round" in text and "on Test CPU" in text
  assert "## Ranking across scenarios" in text and "Friedman chi2 = 6.00" in text
  # FedAvgM is first in every scenario: mean rank 1; FedAvg last: 3.
  assert "| FEDAVGM | 1.00 |" in text and "| FEDAVG | 3.00 |" in text
  assert "centralized, same examples (17 steps, Adam)" in text
  assert "| n/a |" not in text                    # 6 test rows a client: tails shown
  few = {**report, "scenarios": {k: {**v, "methods": {m: {**e, "runs": [
      {**r, "final": {**r["final"], "clients": {**r["final"]["clients"], "count": [2] * 9}}}
      for r in e["runs"]]} for m, e in v["methods"].items()}} for k, v in scen.items()}}
  assert "| n/a |" in compare_report.markdown(few)   # 2 rows a client: no worst-10%


def test_one_seed_reports_no_test_rather_than_failing():
  entries = {"fedavg": _entry("FedAvg", [0.4]), "fedcmp": _entry("Fed-CMP", [0.5])}
  assert compare_report.significance(entries) == {}

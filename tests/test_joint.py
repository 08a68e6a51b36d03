"""The joint rank x momentum x temperature ablation: its grid, its selection, its pairing."""

import math

import pytest

from fedjax_mm.experiment import comparison, joint, methods, protocol

RATES = {"client.learning_rate": 0.009, "server.learning_rate": 1.0}


def test_the_grid_is_the_full_product_in_the_axes_order():
  grid = joint.points()
  assert len(grid) == 3 * 2 * 3
  assert grid[0] == {"aggregation.canonical.rank": 8, "server.opm.momentum": 0.5,
                     "aggregation.canonical.temperature": 0.03}
  assert grid[-1] == {"aggregation.canonical.rank": 0, "server.opm.momentum": 0.9,
                      "aggregation.canonical.temperature": 1.0}
  assert len({joint.point_name(p) for p in grid}) == len(grid)     # one directory each
  assert joint.point_name(grid[0]) == "rank8_momentum0.5_temperature0.03"


def test_a_tie_goes_nearest_the_default_then_to_the_first():
  grid = {"a": {"r": 8, "t": 1}, "b": {"r": 32, "t": 1}, "c": {"r": 32, "t": 2}}
  assert joint.choose({"a": 0.5, "b": 0.7, "c": 0.7}, grid, {"r": 32, "t": 2}) == "c"
  assert joint.choose({"a": 0.7, "b": 0.7, "c": 0.5}, grid, {"r": 32, "t": 2}) == "b"
  assert joint.choose({"a": 0.7, "b": 0.7, "c": 0.5}, grid, {"r": 0, "t": 0}) == "a"
  assert joint.choose({"a": -math.inf, "b": 0.1, "c": 0.0}, grid, {"r": 8, "t": 1}) == "b"


def _fake(calls, best_rank=0, best_momentum=0.9):
  def run_at(values, seed, split, rundir):
    calls.append((dict(values), seed, split, rundir.as_posix()))
    # Peaked at (best_rank, best_momentum), flat in the temperature; a seed offset.
    acc = (0.5 - 0.1 * (values["aggregation.canonical.rank"] != best_rank)
           - 0.1 * (values["server.opm.momentum"] != best_momentum) + 0.01 * seed)
    return {"final": {"accuracy": acc}}
  return run_at


def test_selection_on_validation_seeds_then_the_best_point_on_the_report_seeds(tmp_path):
  calls = []
  got = joint.joint_runs("fedcmp_split", RATES, _fake(calls), tmp_path, seeds=(100, 101),
                         score=comparison.accuracy)
  selection = [c for c in calls if c[2] == "validation"]
  assert len(selection) == 18 * len(protocol.SELECTION_SEEDS)
  assert {c[1] for c in selection} == set(protocol.SELECTION_SEEDS)
  # Every point ran at the given rates.
  assert all(c[0]["client.learning_rate"] == 0.009 for c in calls)
  # Flat in the temperature: the tie goes to Fed-CMP's default 0.1.
  assert got["chosen"] == {**RATES, "aggregation.canonical.rank": 0, "server.opm.momentum": 0.9,
                           "aggregation.canonical.temperature": 0.1}
  tests = [c for c in calls if c[2] == "test"]
  assert [c[1] for c in tests] == [100, 101]
  assert tests[0][3] == f"{tmp_path}/rank0_momentum0.9_temperature0.1/test100"
  assert got["grid"]["rank0_momentum0.9_temperature0.1"]["score"] == pytest.approx(0.505)
  assert got["grid"]["rank8_momentum0.5_temperature1.0"]["score"] == pytest.approx(0.305)
  assert got["ablation"] and got["joint"] and len(got["runs"]) == 2
  assert len(got["axes"]) == len(got["edges"]) == len(got["chosen"]) == 5


def test_a_pending_run_holds_the_entry_back(tmp_path):
  def run_at(values, seed, split, rundir):
    if values["aggregation.canonical.rank"] == 32 and seed == 1:
      return None      # another worker has it
    return {"final": {"accuracy": 0.1}}
  assert joint.joint_runs("fedcmp", RATES, run_at, tmp_path, seeds=(100,),
                          score=comparison.accuracy) is None


def test_the_variants_flag_takes_fedcmp_and_ablations_only():
  assert methods.ablations_or_fedcmp_arg("fedcmp,fedcmp_split") == ["fedcmp", "fedcmp_split"]
  with pytest.raises(Exception, match="'fedavg'"):
    methods.ablations_or_fedcmp_arg("fedavg")


def test_a_scenario_runs_each_variant_jointly_at_fedcmps_chosen_rates(monkeypatch, tmp_path):
  seen = {}

  def method_runs(scenario, key, workdir, *, seeds, tune, point=None):
    return {"point": [1, 0], "chosen": RATES, "runs": [{"final": {"accuracy": 0.4},
                                                       "seconds": 1.0}], "label": key}

  def joint_runs(key, rates, run_at, base, *, seeds, score):
    seen[key] = (dict(rates), base.relative_to(tmp_path).as_posix())
    return {"chosen": {**rates, "aggregation.canonical.rank": 0},
            "runs": [{"final": {"accuracy": 0.5}, "seconds": 1.0}], "label": key}

  monkeypatch.setattr(comparison, "reference_runs", lambda *a, **k: {})
  monkeypatch.setattr(comparison, "method_runs", method_runs)
  monkeypatch.setattr(joint, "joint_runs", joint_runs)
  scenario = comparison.Scenario("domain", comparison.scenario_config("domain", scale="small"),
                                 {})
  scenario._split = protocol.Split([0], [1])
  got = comparison.run_scenario(scenario, ["fedavg", "fedcmp"], tmp_path, central_batch=64,
                                seeds=(100,), tune=True, joint=["fedcmp_split"])
  assert seen == {"fedcmp_split": (RATES, "domain/fedcmp_split/joint")}
  assert list(got["methods"]) == ["fedavg", "fedcmp", "fedcmp_split+joint"]


def test_the_report_tabulates_the_joint_grid(tmp_path):
  from fedjax_mm.experiment import report_tables
  entry = joint.joint_runs("fedcmp", RATES, _fake([]), tmp_path, seeds=(100,),
                           score=comparison.accuracy)
  lines = report_tables.joint_table("one_pass_concept", entry)
  assert lines[5] == ("| canonical rank | opm momentum | canonical temperature 0.03 | "
                      "canonical temperature 0.1 | canonical temperature 1 |")
  rows = lines[7:]
  assert len(rows) == 3 * 2
  assert rows[-1] == "| 0 | 0.9 | 0.505 | 0.505 | 0.505 |"      # rank 0, beta 0.9: the peak
  assert rows[0] == "| 8 | 0.5 | 0.305 | 0.305 | 0.305 |"
  assert "canonical rank 0, opm momentum 0.9, canonical temperature 0.1" in lines[3]

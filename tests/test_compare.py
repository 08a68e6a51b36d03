"""The comparison experiment's work sharing: run directories claimed by one
worker at a time, stale claims taken over, finished runs read back."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedjax_mm.experiment import comparison, workdirs

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_one_claim_per_run_directory(tmp_path):
  run = tmp_path / "a" / "seed0"
  assert workdirs.claim(run)
  assert workdirs.claim(run)                    # ours already
  assert (run / "claim").read_text() == str(os.getpid())
  (run / "claim").write_text("1")               # held by a live process (init)
  assert not workdirs.claim(run)


def test_stale_claims_are_taken_over(tmp_path):
  run = tmp_path / "b"
  run.mkdir()
  (run / "claim").write_text(str(_dead_pid()))  # its worker was killed
  assert workdirs.claim(run)
  assert (run / "claim").read_text() == str(os.getpid())
  (run / "claim").write_text("")                # being written: busy for a minute
  assert not workdirs.claim(run)
  old = time.time() - 120
  os.utime(run / "claim", (old, old))           # ...then stale
  assert workdirs.claim(run)


def test_kept_computes_once_then_reads_back(tmp_path):
  calls = []
  compute = lambda: calls.append(1) or {"x": len(calls)}
  assert workdirs.kept(tmp_path / "r", "out.json", compute) == {"x": 1}
  assert workdirs.kept(tmp_path / "r", "out.json", compute) == {"x": 1}
  assert calls == [1] and not (tmp_path / "r" / "claim").exists()


def test_run_one_reads_finished_runs_and_skips_claimed_ones(tmp_path):
  done, held = tmp_path / "done", tmp_path / "held"
  done.mkdir()
  (done / "result.json").write_text(json.dumps({"final": {"accuracy": 0.5}}))
  assert comparison.run_one(None, done, None, "test") == {"final": {"accuracy": 0.5}}
  held.mkdir()
  (held / "claim").write_text("1")
  assert comparison.run_one(None, held, None, "test") is None     # another worker's: pending
  assert not (held / "result.json").exists()


def _script():
  spec = importlib.util.spec_from_file_location("compare_algorithms",
                                                ROOT / "experiments/compare_algorithms.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  return script


@pytest.mark.parametrize("flag", ["--workers", "--seeds"])
def test_counts_must_be_positive(flag, monkeypatch, capsys):
  script = _script()
  monkeypatch.setattr(sys, "argv", ["compare_algorithms.py", flag, "0"])
  with pytest.raises(SystemExit):
    script.main()
  assert f"{flag}: must be >= 1, got 0" in capsys.readouterr().err


def test_own_config_scenarios_alone_get_reports_of_their_own():
  stem = _script().report_stem
  assert stem(["concept_0.1", "silos"], quick=False, variant="") == "compare"
  assert stem(["interference"], quick=False, variant="") == "compare_control"
  assert stem(["real"], quick=False, variant="-r150") == "compare_r150_real"
  assert stem(["real", "domain"], quick=True, variant="") == "compare_quick"


def test_the_real_towers_run_their_cpu_preset_small_and_their_gpu_preset_at_scale():
  small = comparison.scenario_config("real", scale="small")
  big = comparison.scenario_config("real", scale="presets", rounds=50)
  assert (small.data.name, small.data.num_clients, small.num_rounds) == ("real", 20, 8)
  assert (big.data.num_clients, big.num_rounds, big.model.vision_tokens) == (10_000, 50, 49)


def test_the_plan_counts_the_joint_ablation(monkeypatch, capsys):
  script = _script()
  argv = ["compare_algorithms.py", "--plan", "--scale", "small", "--scenarios", "domain,silos",
          "--methods", "fedavg", "--ablation-scenarios", "silos", "--ablations", "cra_only"]
  counts = []
  for joint in ([], ["--joint", "fedcmp,fedcmp_split"]):
    monkeypatch.setattr(sys, "argv", argv + joint)
    script.main()
    counts.append(int(capsys.readouterr().out.split(" to ")[0].split(": ")[-1].replace(",", "")))
  # fedavg: 9 points x 2 selection seeds + 5 report seeds per scenario; cra_only 5;
  # each joint variant 18 points x 2 selection seeds + 5.
  assert counts == [2 * (9 * 2 + 5) + 5, 2 * (9 * 2 + 5) + 5 + 2 * (18 * 2 + 5)]


def test_cra_diagnostics_of_a_result_kept_without_them_are_read_back(tmp_path):
  import ml_collections
  rounds = [{"round": r, "canonical/effective_clients": 10.0 + r, "canonical/basis_cos2": 0.5}
            for r in (1, 2)]
  for name in ("cra", "fedavg"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "result.json").write_text(json.dumps({"final": {"accuracy": 0.5}}))
    (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
  cra = ml_collections.ConfigDict({"aggregation": {"kind": "canonical"}})
  got = comparison.run_one(cra, tmp_path / "cra", None, "test")
  assert got["canonical"] == {"basis_cos2": [0.5, 0.5], "effective_clients": [11.0, 12.0]}
  # Read back once: the kept result now holds them.
  assert json.loads((tmp_path / "cra" / "result.json").read_text()) == got
  fedavg = ml_collections.ConfigDict({"aggregation": {"kind": "mean"}})
  assert "canonical" not in comparison.run_one(fedavg, tmp_path / "fedavg", None, "test")


def test_the_cra_table_averages_the_last_rounds_then_the_seeds():
  from fedjax_mm.experiment import compare_report, report_tables
  series = lambda v: {"explained_weighted": [0.0] * 7 + [v] * 3, "effective_clients": [v] * 10,
                      "basis_cos2": [v] * 10, "basis_max_angle_deg": [90.0] * 10}
  entries = {"fedcmp": {"label": "Fed-CMP", "runs": [{"canonical": series(0.4)},
                                                     {"canonical": series(0.6)}]},
             "fedavg": {"label": "FedAvg", "runs": [{}, {}]}}
  lines = report_tables.canonical_table("domain", entries, compare_report.tail_mean)
  assert lines[-1] == "| Fed-CMP | 0.500 | 0.500 | 0.500 | 90.000 |"    # FedAvg: no row
  assert len(lines) == 6

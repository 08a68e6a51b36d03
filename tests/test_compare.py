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


def test_workers_must_be_positive(monkeypatch, capsys):
  spec = importlib.util.spec_from_file_location("compare_algorithms",
                                                ROOT / "experiments/compare_algorithms.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  monkeypatch.setattr(sys, "argv", ["compare_algorithms.py", "--workers", "0"])
  with pytest.raises(SystemExit):
    script.main()
  assert "--workers: must be >= 1, got 0" in capsys.readouterr().err


def test_seeds_must_be_positive(monkeypatch, capsys):
  spec = importlib.util.spec_from_file_location("compare_algorithms",
                                                ROOT / "experiments/compare_algorithms.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  monkeypatch.setattr(sys, "argv", ["compare_algorithms.py", "--seeds", "0"])
  with pytest.raises(SystemExit):
    script.main()
  assert "--seeds: must be >= 1, got 0" in capsys.readouterr().err

"""The CPU device count: an explicit XLA_FLAGS count is kept (each case in its
own process: the count is fixed when JAX starts), and summary.json reports the
mesh the run used beside the devices present."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
# One more than the cores: only the flag can give this count (use_cpu_cores
# would otherwise make one device per core).
_N = (os.cpu_count() or 1) + 1
_FORCE_N = f"--xla_force_host_platform_device_count={_N}"


def _python(code: str, **env) -> str:
  base = {k: v for k, v in os.environ.items()
          if k not in ("XLA_FLAGS", "FEDJAX_MM_CPU_DEVICES")}
  proc = subprocess.run([sys.executable, "-c", code], env={**base, "JAX_PLATFORMS": "cpu", **env},
                        capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.strip().splitlines()[-1]


def test_explicit_xla_flags_count_is_kept_and_summary_reports_the_mesh(tmp_path):
  code = f"""
import json, sys
sys.path.insert(0, "tests")
from fedjax_mm.simulation import mesh
requested = mesh.use_cpu_cores()
import jax
from test_driver import _small_config
from fedjax_mm.simulation import driver
config = _small_config(num_rounds=1, num_devices=2)
summary = driver.train_and_evaluate(config, {str(tmp_path)!r}, progress=False)
print(json.dumps([requested, jax.device_count(), summary["devices"], summary["devices_total"]]))
"""
  assert json.loads(_python(code, XLA_FLAGS=_FORCE_N)) == [_N, _N, 2, _N]
  written = json.loads((tmp_path / "summary.json").read_text())
  assert (written["devices"], written["devices_total"]) == (2, _N)


def test_fedjax_mm_cpu_devices_overrides_xla_flags():
  code = ("from fedjax_mm.simulation import mesh; n = mesh.use_cpu_cores(); "
          "import jax; print(n, jax.device_count())")
  assert _python(code, XLA_FLAGS=_FORCE_N, FEDJAX_MM_CPU_DEVICES="2") == "2 2"

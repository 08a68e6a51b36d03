"""1 device = 8 virtual CPU devices (in its own process: XLA_FLAGS must be set
before JAX starts)."""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_one_device_equals_eight_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  worker = Path(__file__).with_name("multidevice_worker.py")
  proc = subprocess.run([sys.executable, str(worker)], env=env, capture_output=True,
                        text=True, timeout=600, cwd=Path(__file__).parents[1])
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8
  for n in ("fedavg/2", "fedavg/8", "scaffold_trimmed/2", "scaffold_trimmed/8"):
    assert out[n]["max_rel_diff"] <= 1e-6, out
    assert out[n]["loss_diff"] <= 1e-6, out
    assert out[n]["participations_equal"], out
    # The clients axis really is sharded: the reduction crosses devices.
    assert out[n]["has_cross_device_reduction"], out
  # Fed-CMP's eigenbases of a Gram summed across devices in another order:
  # equal to float32 rounding, amplified a little by the eigensolver.
  for n in ("fedcmp/8",):
    assert out[n]["max_rel_diff"] <= 1e-4, out
    assert out[n]["participations_equal"], out


def test_use_cpu_cores_sets_the_device_count_before_jax_starts_and_not_after():
  code = ("from fedjax_mm.simulation import mesh; assert mesh.use_cpu_cores(3) == 3; "
          "import jax; assert jax.device_count() == 3; "
          "assert mesh.use_cpu_cores(2) is None; assert jax.device_count() == 3")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", code], env=dict(env, JAX_PLATFORMS="cpu"),
                        capture_output=True, text=True, timeout=300,
                        cwd=Path(__file__).parents[1])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "JAX is already initialized" in proc.stderr

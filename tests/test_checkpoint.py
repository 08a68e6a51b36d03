"""Tests for fedjax_mm.checkpoint."""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import types
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from fedjax_mm.simulation import resume
from fedjax_mm.checkpoint import Checkpointer, abstract_like

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@struct.dataclass
class _ServerState:
  # Mirrors fedjax_mm.types.ServerState without depending on it.
  round: jax.Array
  trainable: Any
  opt_state: optax.OptState
  rng: jax.Array
  extras: Any = ()


def _make_state(seed: int = 0, num_clients: int = 1000, host_leaf: bool = False) -> dict[str, Any]:
  trainable = {
      "w": jax.random.normal(jax.random.key(seed), (8, 4)),
      "b": jnp.arange(4, dtype=jnp.bfloat16) + seed,
  }
  tx = optax.adam(1e-3)
  opt_state = tx.init(trainable)
  # One real update so the adam moments and count are non-trivial.
  updates, opt_state = tx.update(jax.tree.map(jnp.ones_like, trainable), opt_state)
  server = _ServerState(
      round=jnp.int32(7 + seed),
      trainable=optax.apply_updates(trainable, updates),
      opt_state=opt_state,
      rng=jax.random.key(seed + 42),
  )
  clients = {
      "stats": jnp.arange(num_clients * 3, dtype=jnp.float32).reshape(num_clients, 3) + seed,
      "keys": jax.random.split(jax.random.key(seed), num_clients),
  }
  if host_leaf:
    # Host-side numpy leaves must come back as numpy, dtype kept.
    clients["host_counts"] = np.arange(num_clients, dtype=np.int64) + seed
  return {"server": server, "clients": clients}


def _meta(step: int) -> dict[str, Any]:
  return {
      "history": [{"round": float(r), "loss": 1.0 / (r + 1)} for r in range(step)],
      "config": {"lr": 0.1, "name": "fedavg", "cohort": 10},
  }


def _assert_trees_equal(actual: Any, expected: Any) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    assert type(a) is type(e) or (isinstance(a, jax.Array) and isinstance(e, jax.Array))
    assert a.dtype == e.dtype
    if jax.dtypes.issubdtype(e.dtype, jax.dtypes.prng_key):
      assert jax.random.key_impl(a) == jax.random.key_impl(e)
      a, e = jax.random.key_data(a), jax.random.key_data(e)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_round_trip_bit_exact_types_and_meta(tmp_path):
  state = _make_state()
  meta = _meta(3)
  with Checkpointer(tmp_path / "run") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(3, state, meta)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 3
    restored, restored_meta = ckpt.restore(None, jax.eval_shape(lambda: state))

  _assert_trees_equal(restored, state)
  assert restored_meta == meta
  server = restored["server"]
  assert isinstance(server, _ServerState)
  adam_state = server.opt_state[0]
  assert isinstance(adam_state, optax.ScaleByAdamState)
  assert isinstance(server.opt_state[1], optax.EmptyState)
  assert server.trainable["b"].dtype == jnp.bfloat16
  assert server.round.dtype == jnp.int32
  # The restored key is a working typed key that continues the same stream.
  assert jax.dtypes.issubdtype(server.rng.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(
      jax.random.normal(server.rng, (5,)), jax.random.normal(state["server"].rng, (5,))
  )
  # Leaves land on the abstract tree's (here: default) sharding.
  expected_sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  assert server.trainable["w"].sharding == expected_sharding


def test_restore_against_concrete_state_and_reopen(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  directory = "relative/run"  # orbax needs absolute paths; made so inside.
  state = _make_state(seed=1, host_leaf=True)
  with Checkpointer(directory, async_save=False) as ckpt:
    assert ckpt.save(5, state, _meta(5))
  # A fresh Checkpointer (as after a restart) sees the committed step.
  with Checkpointer(directory) as ckpt:
    assert ckpt.directory == str(tmp_path / "relative" / "run")
    assert ckpt.latest_step() == 5
    # Target values are unused; only structure, dtypes and shardings count.
    restored, meta = ckpt.restore(5, _make_state(seed=0, host_leaf=True))
  _assert_trees_equal(restored, state)
  assert isinstance(restored["clients"]["host_counts"], np.ndarray)
  assert restored["clients"]["host_counts"].dtype == np.int64
  assert meta == _meta(5)


def test_max_to_keep_interval_and_latest(tmp_path):
  ckpt = Checkpointer(tmp_path / "run", max_to_keep=2, save_interval_steps=3)
  state = {"x": jnp.zeros((2,))}
  # Orbax alone would save the first step it sees (1); we must not.
  started = [s for s in range(1, 13) if ckpt.save(s, {"x": jnp.full((2,), s)}, {"s": s})]
  assert started == [3, 6, 9, 12]
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == [9, 12]
  assert ckpt.latest_step() == 12
  # force saves off-interval; re-saving the latest step is a no-op; going
  # back in time is an error.
  assert ckpt.save(13, {"x": jnp.full((2,), 13)}, {"s": 13}, force=True)
  assert not ckpt.save(13, state, {"s": -1}, force=True)
  with pytest.raises(ValueError, match="later step"):
    ckpt.save(10, state, {}, force=True)
  ckpt.wait_until_finished()
  assert ckpt.all_steps() == [12, 13]
  restored, meta = ckpt.restore(None, state)
  np.testing.assert_array_equal(restored["x"], np.full((2,), 13))
  assert meta == {"s": 13}
  restored, meta = ckpt.restore(12, state)
  np.testing.assert_array_equal(restored["x"], np.full((2,), 12))
  with pytest.raises(FileNotFoundError):
    ckpt.restore(9, state)
  ckpt.close()
  ckpt.close()  # Idempotent.


def test_empty_directory(tmp_path):
  with Checkpointer(tmp_path / "empty") as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError):
      ckpt.restore(None, {"x": jnp.zeros(())})


def test_async_save_survives_donation_and_later_mutation(tmp_path):
  state = {"x": jnp.arange(200_000, dtype=jnp.float32).reshape(50_000, 4), "r": jnp.int32(1)}
  expected = jax.tree.map(np.array, state)
  meta = {"history": [{"loss": np.float32(0.5)}], "arr": jnp.arange(3)}

  @functools.partial(jax.jit, donate_argnums=0)
  def next_round(s):
    return {"x": s["x"] * 0.0 - 1.0, "r": s["r"] + 1}

  with Checkpointer(tmp_path / "run") as ckpt:
    assert ckpt.save(1, state, meta)
    # Keep computing on (and donating) the saved buffers, and keep appending
    # to the metric history, while the write is in flight.
    new_state = next_round(state)
    meta["history"].append({"loss": 0.25})
    jax.block_until_ready(new_state)
    ckpt.wait_until_finished()
    restored, restored_meta = ckpt.restore(1, abstract_like(new_state))

  np.testing.assert_array_equal(new_state["x"], np.full((50_000, 4), -1.0, np.float32))
  _assert_trees_equal(restored, jax.tree.map(jnp.asarray, expected))
  # numpy / jax scalars become plain JSON numbers; later appends did not leak.
  assert restored_meta == {"history": [{"loss": 0.5}], "arr": [0, 1, 2]}


def test_meta_must_be_json(tmp_path):
  with Checkpointer(tmp_path / "run") as ckpt:
    with pytest.raises(TypeError):
      ckpt.save(1, {"x": jnp.zeros(())}, {"bad": object()})
    assert ckpt.latest_step() is None


def _run_python(code: str, *args: str, extra_env: dict[str, str] | None = None):
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
  env.update(extra_env or {})
  return subprocess.run(
      [sys.executable, "-c", textwrap.dedent(code), *args],
      env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
  )


_KILL_MID_SAVE = """
import os, signal, sys
import jax.numpy as jnp
from fedjax_mm.checkpoint import Checkpointer

ckpt = Checkpointer(sys.argv[1])
ckpt.save(1, {"x": jnp.full((4_000_000, 4), 1.0)}, {"step": 1})
ckpt.wait_until_finished()
# 64 MB: the background write is far from done when save() returns.
ckpt.save(2, {"x": jnp.full((4_000_000, 4), 2.0)}, {"step": 2})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_mid_async_save_keeps_previous_checkpoint(tmp_path):
  directory = tmp_path / "run"
  proc = _run_python(_KILL_MID_SAVE, str(directory))
  assert proc.returncode == -signal.SIGKILL, proc.stderr
  if (directory / "2").exists():
    pytest.skip("the save finished before the kill; nothing tested")
  # The killed save left only a temporary directory behind.
  assert sorted(p.name for p in directory.iterdir() if p.name.startswith("2")) in (
      [], ["2.orbax-checkpoint-tmp"]
  )

  abstract = {"x": jax.ShapeDtypeStruct((4_000_000, 4), jnp.float32)}
  with Checkpointer(directory) as ckpt:  # The restarted run.
    assert ckpt.latest_step() == 1
    restored, meta = ckpt.restore(None, abstract)
    np.testing.assert_array_equal(restored["x"], np.ones((4_000_000, 4), np.float32))
    assert meta == {"step": 1}
    # Re-doing step 2 works over the leftovers, which are cleaned up.
    assert ckpt.save(2, {"x": jnp.full((4_000_000, 4), 2.0)}, {"step": 2})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2]
    restored, meta = ckpt.restore(None, abstract)
    np.testing.assert_array_equal(restored["x"], np.full((4_000_000, 4), 2.0, np.float32))
  assert not (directory / "2.orbax-checkpoint-tmp").exists()


_SAVE_LOOP = """
import sys
import jax.numpy as jnp
from fedjax_mm.checkpoint import Checkpointer

ckpt = Checkpointer(sys.argv[1], max_to_keep=2)
start = (ckpt.latest_step() or 0) + 1
for step in range(start, start + 100_000):
  ckpt.save(step, {"x": jnp.full((500_000, 2), float(step))}, {"step": step})
  if step == start:
    ckpt.wait_until_finished()
    print("ready", flush=True)  # At least one step of this run is committed.
"""


def test_sigkill_at_arbitrary_times_leaves_every_listed_step_restorable(tmp_path):
  # Kills land in any phase: array write, commit rename, pruning of old steps.
  directory = tmp_path / "run"
  abstract = {"x": jax.ShapeDtypeStruct((500_000, 2), jnp.float32)}
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
  previous_latest = 0
  for delay in (0.05, 0.3, 0.6):
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVE_LOOP, str(directory)],
        env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
      assert proc.stdout.readline().strip() == "ready"
      time.sleep(delay)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    with Checkpointer(directory, max_to_keep=2) as ckpt:
      steps = ckpt.all_steps()
      assert steps and steps[-1] > previous_latest, (delay, steps)  # Made progress.
      assert ckpt.latest_step() == steps[-1]
      for step in steps:  # Not just the latest: no half-pruned leftovers.
        restored, meta = ckpt.restore(step, abstract)
        assert meta == {"step": step}, (delay, steps, step)
        np.testing.assert_array_equal(restored["x"], np.full((500_000, 2), step, np.float32))
      previous_latest = steps[-1]


_SHARDING = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from fedjax_mm.checkpoint import Checkpointer, abstract_like

assert jax.device_count() == 4
mesh = jax.make_mesh((4,), ("c",))
x = jax.device_put(np.arange(32.0).reshape(8, 4), NamedSharding(mesh, P("c")))
with Checkpointer(sys.argv[1]) as ckpt:
  ckpt.save(1, {"x": x, "k": jax.random.key(3)}, {})
  # 1) Replicated target: the abstract tree's sharding wins over the saved one.
  rep = NamedSharding(mesh, P())
  target = {"x": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=rep),
            "k": jax.eval_shape(lambda: jax.random.key(0))}
  out, _ = ckpt.restore(1, target)
  assert out["x"].sharding == rep, out["x"].sharding
  assert out["k"].sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
  np.testing.assert_array_equal(out["x"], x)
  # 2) jax.eval_shape under an explicit mesh gives an AbstractMesh sharding.
  with jax.set_mesh(mesh):
    target = jax.eval_shape(lambda: {"x": jax.device_put(jnp.zeros((8, 4)), P(None, "c")),
                                     "k": jax.random.key(0)})
  assert isinstance(target["x"].sharding.mesh, jax.sharding.AbstractMesh)
  out, _ = ckpt.restore(1, target)
  assert out["x"].sharding.spec == P(None, "c"), out["x"].sharding
  assert out["x"].sharding.mesh.devices.size == 4
  np.testing.assert_array_equal(out["x"], x)
  assert isinstance(abstract_like(target)["x"].sharding.mesh, jax.sharding.Mesh)
print("OK")
"""


def test_restore_honours_abstract_sharding_on_four_devices(tmp_path):
  proc = _run_python(
      _SHARDING, str(tmp_path / "run"),
      extra_env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.strip().endswith("OK")


def _truncate_data_files(step_dir: pathlib.Path) -> None:
  # Every OCDBT data file cut to half its length (a disk-full or killed copy).
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for p in files:
    os.truncate(p, p.stat().st_size // 2)


_CORRUPTIONS = {
    "truncated data file": _truncate_data_files,
    "deleted manifest": lambda step_dir: (step_dir / "state" / "manifest.ocdbt").unlink(),
    "deleted state/": lambda step_dir: shutil.rmtree(step_dir / "state"),
}


def _three_steps(directory) -> dict[str, Any]:
  state = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.int32(0)}
  with Checkpointer(directory, max_to_keep=3, async_save=False) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, {"w": state["w"] + step, "n": jnp.int32(step)}, {"step": step})
  return state


# A failed restore leaves orbax's own read coroutines un-awaited (its warning,
# not ours); the behaviour under test is what restore_newest returns.
_ORBAX_UNAWAITED = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_ORBAX_UNAWAITED
@pytest.mark.parametrize("corruption", sorted(_CORRUPTIONS))
def test_a_damaged_latest_step_falls_back_and_is_set_aside(tmp_path, corruption):
  directory = tmp_path / "run"
  state = _three_steps(directory)
  _CORRUPTIONS[corruption](directory / "3")
  with Checkpointer(directory, max_to_keep=3, async_save=False) as ckpt:
    assert ckpt.latest_step() == 3   # orbax still lists it: only a restore can tell
    restored, meta, step, notes = resume.restore_newest(ckpt, abstract_like(state))
    assert (step, meta, int(restored["n"])) == (2, {"step": 2}, 2)
    np.testing.assert_array_equal(restored["w"], np.arange(6.0).reshape(2, 3) + 2)
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith("step 3 does not restore (")
    assert notes[0].endswith(f"moved to {directory / '3.corrupt'}")
    # Set aside, not deleted, and neither listed nor retried.
    assert (directory / "3.corrupt").is_dir() and not (directory / "3").exists()
    assert ckpt.all_steps() == [1, 2]
    assert resume.restore_newest(ckpt, abstract_like(state))[2:] == (2, [])
    # The run goes on and writes step 3 afresh.
    assert ckpt.save(3, state, {"step": 3})
  with Checkpointer(directory, async_save=False) as ckpt:
    assert resume.restore_newest(ckpt, abstract_like(state))[2:] == (3, [])
    assert (directory / "3.corrupt").is_dir()   # the orbax tmp cleanup leaves it


@_ORBAX_UNAWAITED
def test_no_step_restores_moves_nothing(tmp_path):
  directory = tmp_path / "run"
  state = _three_steps(directory)
  # A target the checkpoints do not fit (a changed model) fails every step:
  # that is not damage, so nothing may be set aside.
  wrong = {"w": jnp.zeros((3, 3)), "n": jnp.int32(0)}
  with Checkpointer(directory, async_save=False) as ckpt:
    with pytest.raises(resume.CheckpointError,
                       match=r"no checkpoint restores \(steps \[1, 2, 3\]; newest: "):
      resume.restore_newest(ckpt, abstract_like(wrong))
    assert ckpt.all_steps() == [1, 2, 3]
    # One damaged step and no older one: refused as well, and kept.
    for step in (1, 2):
      shutil.rmtree(directory / str(step))
    ckpt._manager.reload()
    _CORRUPTIONS["deleted state/"](directory / "3")
    with pytest.raises(resume.CheckpointError) as e:
      resume.restore_newest(ckpt, abstract_like(state))
    assert "\n" not in str(e.value) and (directory / "3").is_dir()
  with Checkpointer(tmp_path / "empty") as ckpt, pytest.raises(FileNotFoundError):
    resume.restore_newest(ckpt, abstract_like(state))


def test_set_aside_twice_keeps_both(tmp_path):
  directory = tmp_path / "run"
  _three_steps(directory)
  (directory / "3.corrupt").mkdir()
  with Checkpointer(directory, async_save=False) as ckpt:
    assert ckpt.set_aside(3) == str(directory / "3.corrupt-1")
    assert ckpt.all_steps() == [1, 2]


@_ORBAX_UNAWAITED
def test_closed_loop_noise_of_a_failed_restore_is_dropped_until_close(tmp_path, monkeypatch):
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  directory = tmp_path / "run"
  state = _three_steps(directory)
  _CORRUPTIONS["truncated data file"](directory / "3")
  ckpt = Checkpointer(directory, async_save=False)
  resume.restore_newest(ckpt, abstract_like(state))
  closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
  sys.unraisablehook(closed)
  sys.unraisablehook(other)
  assert [u for u in seen if u in (closed, other)] == [other]
  ckpt.close()
  assert sys.unraisablehook == seen.append   # the previous hook is back
  with Checkpointer(directory, async_save=False) as healthy:
    resume.restore_newest(healthy, abstract_like(state))   # nothing fails: hook untouched
    assert sys.unraisablehook == seen.append

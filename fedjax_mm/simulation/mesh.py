"""Device mesh with a ``"clients"`` axis, and the shardings the round uses.

The same round code runs on one CPU and on a mesh: with a mesh, the cohort's
clients axis is sharded over ``"clients"`` by sharding constraints (jit +
``NamedSharding``, not ``shard_map``, so gradients of replicated parameters
inside a client update are never summed across devices); the packed dataset,
the global parameters and the population state are replicated.
"""

from __future__ import annotations

import logging
import os
import re

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from fedjax_mm.types import PyTree

CLIENTS_AXIS = "clients"


def _forced_host_devices(xla_flags: str) -> int | None:
  """The count of ``--xla_force_host_platform_device_count=N`` in ``XLA_FLAGS``, if set."""
  found = re.findall(r"--xla_force_host_platform_device_count=(\d+)", xla_flags)
  return int(found[-1]) if found else None   # XLA, like absl, keeps the last one


def use_cpu_cores(num_devices: int | None = None) -> int | None:
  """One XLA CPU device per core, so a CPU run's cohort is sharded over every core.

  An XLA CPU device runs a program on about one core; with one device per
  core the ``"clients"`` mesh spreads the cohort over all of them. Call it
  before JAX computes anything (the entry points do); it is a no-op, with a
  warning, once the backend is up, and it leaves GPU/TPU runs unchanged (their
  default devices are the accelerators). The count is, in this order:
  ``num_devices``; ``$FEDJAX_MM_CPU_DEVICES`` (``1``: the old single-device
  behaviour); an explicit ``--xla_force_host_platform_device_count`` in
  ``$XLA_FLAGS`` (left to XLA: ``jax_num_cpu_devices`` would override it);
  one per core.

  Args:
    num_devices: CPU devices to create (default: as above).

  Returns:
    The count requested, or None if the backend was already initialized.
  """
  env = os.environ.get("FEDJAX_MM_CPU_DEVICES")
  forced = _forced_host_devices(os.environ.get("XLA_FLAGS", ""))
  if not num_devices and not env and forced is not None:
    return forced
  n = num_devices or (int(env) if env else (os.cpu_count() or 1))
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:
    logging.warning("use_cpu_cores: JAX is already initialized; keeping %d device(s)",
                    jax.device_count())
    return None
  return n


def make_client_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh named ``"clients"`` over the first ``num_devices`` devices.

  Args:
    num_devices: devices to use; all (over all hosts under
      ``jax.distributed``) when None or 0.
  """
  devices = jax.devices()
  n = len(devices) if not num_devices else num_devices
  if n > len(devices):
    raise ValueError(f"num_devices={n} but only {len(devices)} devices exist")
  return jax.make_mesh((n,), (CLIENTS_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices[:n])


def clients_sharding(mesh: Mesh) -> NamedSharding:
  """Shards a leading clients axis over the mesh."""
  return NamedSharding(mesh, P(CLIENTS_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_clients_axis(tree: PyTree, mesh: Mesh | None) -> PyTree:
  """Constrains every leaf's leading axis to be sharded over ``"clients"``."""
  if mesh is None or mesh.size == 1:
    return tree
  sharding = clients_sharding(mesh)
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def put_replicated(tree: PyTree, mesh: Mesh | None) -> PyTree:
  """Places a host pytree on the mesh, replicated (or on the default device)."""
  if mesh is None:
    return jax.device_put(tree)
  return jax.device_put(tree, replicated(mesh))

"""Device mesh with a ``"clients"`` axis, and the shardings the round uses.

The same round code runs on one CPU and on a mesh: with a mesh, the cohort's
clients axis is sharded over ``"clients"`` by sharding constraints (jit +
``NamedSharding``, not ``shard_map``, so gradients of replicated parameters
inside a client update are never summed across devices); the packed dataset,
the global parameters and the population state are replicated.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from fedjax_mm.types import PyTree

CLIENTS_AXIS = "clients"


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

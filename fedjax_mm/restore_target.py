"""The restore target of a checkpoint: shapes, dtypes and concrete shardings.

Orbax restores each leaf onto its target's sharding. A target without one
(``jax.eval_shape`` of an unsharded function gives ``sharding=None``) makes
orbax reuse the sharding recorded at save time, which may name devices that
no longer exist; a ``NamedSharding`` on an ``AbstractMesh`` (``jax.eval_shape``
under explicit sharding) is rejected outright. :func:`abstract_like` resolves
both to concrete shardings (verified by ``tests/test_checkpoint.py``). No orbax
here: ``checkpoint.py`` re-exports it.
"""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any


def _default_device() -> jax.Device:
  """Returns the device that un-sharded jnp arrays would be placed on."""
  dev = jax.config.jax_default_device
  if isinstance(dev, jax.Device):
    return dev
  if isinstance(dev, str):  # A platform name such as "cpu".
    return jax.devices(dev)[0]
  return jax.devices()[0]


def _concrete_mesh(abstract_mesh: jax.sharding.AbstractMesh) -> jax.sharding.Mesh:
  """Finds or builds a concrete mesh matching ``abstract_mesh``."""
  # Prefer the mesh the caller set with `jax.set_mesh`: that is the one the
  # abstract tree was traced under, with the caller's device order.
  context_mesh = jax.sharding.get_mesh()
  if not context_mesh.empty and context_mesh.abstract_mesh == abstract_mesh:
    return context_mesh
  return jax.make_mesh(
      abstract_mesh.axis_sizes,
      abstract_mesh.axis_names,
      axis_types=abstract_mesh.axis_types,
  )


def _concrete_sharding(sharding: jax.sharding.Sharding | None) -> jax.sharding.Sharding:
  """Turns a missing or abstract sharding into one orbax can restore onto."""
  if sharding is None:
    return jax.sharding.SingleDeviceSharding(_default_device())
  if isinstance(sharding, jax.sharding.NamedSharding) and isinstance(
      sharding.mesh, jax.sharding.AbstractMesh
  ):
    return jax.sharding.NamedSharding(
        _concrete_mesh(sharding.mesh), sharding.spec, memory_kind=sharding.memory_kind
    )
  return sharding


def _abstract_leaf(leaf: Any) -> Any:
  if isinstance(leaf, jax.Array):
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=_concrete_sharding(leaf.sharding)
    )
  # numpy arrays and Python scalars are kept: orbax restores a leaf with the
  # type of its target, so a host-side numpy leaf must stay numpy.
  return leaf


def abstract_like(tree: PyTree) -> PyTree:
  """Returns the restore target for ``tree``, without copying any data.

  Args:
    tree: A pytree of ``jax.Array`` (e.g. a freshly initialised state) and/or
      ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``) leaves; other
      leaves (numpy arrays, Python scalars) are allowed.

  Returns:
    The same structure (NamedTuple / dataclass node types included) where each
    ``jax.Array`` becomes a ``jax.ShapeDtypeStruct`` carrying its shape, dtype
    (typed PRNG key dtypes included) and sharding, and each
    ``jax.ShapeDtypeStruct`` gets a concrete sharding: ``None`` becomes the
    default device, a ``NamedSharding`` over an ``AbstractMesh`` is bound to
    the current ``jax.set_mesh`` mesh (or a ``jax.make_mesh`` of the same
    shape). numpy arrays and Python scalars are returned unchanged.
  """
  return jax.tree.map(_abstract_leaf, tree)

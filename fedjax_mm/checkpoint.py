"""Checkpointing of the simulator's run state.

This is the only module of ``fedjax_mm`` that imports orbax; the rest of the
code base sees a small, stable API (:class:`Checkpointer`, :func:`abstract_like`)
so that orbax upgrades only ever touch this file.

A checkpoint is one orbax step directory holding two items:

* ``state``: the run-state pytree (server state, per-client population state,
  ...), written with ``StandardSave`` (OCDBT / tensorstore).
* ``meta``: a JSON-able dict (metric history, config snapshot, ...).

Behaviour of the installed orbax (0.12.x) this module relies on or works
around, all verified by ``tests/test_checkpoint.py``:

* Steps are written to ``<dir>/<step>.orbax-checkpoint-tmp`` and renamed to
  ``<dir>/<step>`` only after every item is committed, so a process killed in
  the middle of a save leaves a tmp directory that ``latest_step()`` ignores.
* ``StandardSave`` copies every ``jax.Array`` to host memory before ``save``
  returns (numpy leaves are deep-copied), so the caller may keep computing,
  and even donate the saved buffers, while the write runs in the background.
* ``JsonSave`` calls ``json.dumps`` in the background thread, i.e. *after*
  ``save`` returned: a later in-place change to the caller's metric history
  would leak into the checkpoint, and a non-JSON value would only fail later,
  inside a thread. We therefore snapshot the metadata synchronously.
* Typed PRNG keys (``jax.random.key``) round-trip natively (stored as key data
  plus the impl name), so no conversion is needed here.
* A restore target without a sharding (``jax.eval_shape`` of an unsharded
  function gives ``sharding=None``) makes orbax reuse the sharding recorded at
  save time, which may name devices that no longer exist; a ``NamedSharding``
  on an ``AbstractMesh`` (``jax.eval_shape`` under explicit sharding) is
  rejected outright. :func:`abstract_like` resolves both to concrete shardings.
* Pruning old steps (``max_to_keep``) is an in-place ``rmtree`` by default: a
  kill during it leaves a half-deleted *older* step that orbax still lists
  (``all_steps``) and fails to restore. We make orbax rename pruned steps into
  a trash sub-directory instead (atomic) and empty that ourselves.
* Orbax's default save policy adds ``InitialSavePolicy`` to
  ``save_interval_steps``: the first step saved into an empty directory is
  written whatever its number. The interval is therefore decided here and
  orbax is always called with ``force=True``.
* Damaged files of a committed step (a truncated data file, a deleted OCDBT
  manifest or ``state/``) fail its restore with a tensorstore ``ValueError``
  or a ``KeyError``. :meth:`Checkpointer.restore_newest` falls back to the
  newest step that restores and renames the newer ones to
  ``<step>.corrupt`` (kept for inspection; orbax neither lists nor cleans it).
  The failed restore's still-pending tensorstore reads later call back into
  its closed event loop, each printing a ``RuntimeError: Event loop is
  closed`` traceback through ``sys.unraisablehook``; those (only those) are
  dropped until :meth:`Checkpointer.close`.
* Restore casts stored values to the target's dtype without complaint (e.g.
  ``jax.eval_shape`` turns an int64 numpy leaf into an int32 target under the
  default x32 mode); shape or tree-structure mismatches raise ``ValueError``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

PyTree = Any

# Item names inside one step directory.
_STATE_ITEM = "state"
_META_ITEM = "meta"
# Sub-directory orbax moves pruned steps into (an atomic rename) and that this
# module empties; its name does not parse as a step, so orbax never lists it.
_TRASH_SUBDIR = "_pruned"


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


def _json_default(obj: Any) -> Any:
  # Metric values are often numpy / jax scalars; store them as plain numbers.
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, (np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  raise TypeError(f"Checkpoint metadata is not JSON-serialisable: {type(obj)!r}")


def _snapshot_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
  """Returns a JSON-normalised deep copy of ``meta`` taken now.

  Orbax serialises JSON items in its background thread, so without this copy
  later in-place updates by the caller could end up in the checkpoint.
  """
  if not isinstance(meta, Mapping):
    raise TypeError(f"meta must be a mapping, got {type(meta)!r}")
  return json.loads(json.dumps(meta, default=_json_default))


class CheckpointError(RuntimeError):
  """No checkpoint of a run directory restores."""


def _one_line(error: BaseException, limit: int = 240) -> str:
  text = " ".join(str(error).split()) or "no message"
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}"


class Checkpointer:
  """Wraps ``orbax.checkpoint.CheckpointManager`` for one run directory.

  Each step directory holds the run-state pytree and a JSON metadata dict.
  Saves are asynchronous by default: ``save`` returns once the state has been
  copied to host memory, and the write continues in a background thread (at
  most one at a time; the next ``save`` waits for the previous one).

  Usable as a context manager; leaving the ``with`` block waits for the last
  save and closes the manager.

  Args:
    directory: The run's checkpoint directory (created if missing; made
      absolute because orbax requires it).
    max_to_keep: Number of most recent checkpoints kept; older ones are deleted
      once a newer one is committed. ``None`` keeps all.
    save_interval_steps: ``save`` only writes steps that are multiples of this.
    async_save: Whether writes happen in a background thread.
  """

  def __init__(
      self,
      directory: str | os.PathLike,
      *,
      max_to_keep: int | None = 3,
      save_interval_steps: int = 1,
      async_save: bool = True,
  ):
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    self._directory = os.path.abspath(os.fspath(directory))
    self._save_interval_steps = int(save_interval_steps)
    self._closed = False
    self._hook = None   # our unraisablehook filter, while installed
    options = ocp.CheckpointManagerOptions(
        # `max_to_keep=` is deprecated in orbax 0.12 in favour of this. LatestN
        # keeps the last n in *save* order, which is step order here because
        # `save` refuses to go back in time.
        preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
        enable_async_checkpointing=async_save,
        create=True,
        # Remove `<step>.orbax-checkpoint-tmp` leftovers of a killed run; one
        # run directory has a single writer, so nothing live is removed.
        cleanup_tmp_directories=True,
        todelete_subdir=_TRASH_SUBDIR,
    )
    self._manager = ocp.CheckpointManager(self._directory, options=options)
    self._empty_trash()  # Steps pruned just before a previous run died.

  def _empty_trash(self) -> None:
    # Only called with no save in flight: orbax prunes in its finalize step.
    shutil.rmtree(os.path.join(self._directory, _TRASH_SUBDIR), ignore_errors=True)

  @property
  def directory(self) -> str:
    """The absolute checkpoint directory."""
    return self._directory

  def all_steps(self) -> list[int]:
    """Returns the saved steps in increasing order (incl. an in-flight save)."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """Returns the newest checkpointed step, or ``None`` if there is none.

    In the saving process this includes a step whose asynchronous write is
    still in flight (it is committed unless the process dies first). A fresh
    process only sees fully committed steps.
    """
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, meta: Mapping[str, Any], *, force: bool = False) -> bool:
    """Starts saving ``(state, meta)`` as ``step`` if the step is due.

    Args:
      step: The step (e.g. round) number; must be greater than any saved step.
      state: The run-state pytree. Its arrays are copied before returning, so
        the caller may go on updating (or donating) them immediately.
      meta: JSON-able metadata. numpy / jax scalars and arrays are converted to
        numbers / lists; tuples become lists and non-string keys become strings
        (JSON semantics). Snapshotted before returning.
      force: Save even if ``step`` is not a multiple of ``save_interval_steps``.

    Returns:
      Whether a save was started. ``False`` if the step is not on the interval
      (and not forced), or if exactly this step is already checkpointed (e.g.
      a forced final save on an interval step).

    Raises:
      ValueError: If ``step`` is older than the latest checkpointed step.
      TypeError: If ``meta`` is not a JSON-able mapping.
    """
    step = int(step)
    if not force and step % self._save_interval_steps != 0:
      return False
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      if step == latest:
        return False
      raise ValueError(
          f"Cannot save step {step}: {self._directory} already holds the later "
          f"step {latest}."
      )
    meta_snapshot = _snapshot_meta(meta)
    # orbax.save would wait for the previous save anyway; waiting here first
    # lets us empty the trash it filled.
    self.wait_until_finished()
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            **{
                _STATE_ITEM: ocp.args.StandardSave(state),
                _META_ITEM: ocp.args.JsonSave(meta_snapshot),
            }
        ),
        force=True,  # The interval was decided above; see module docstring.
    )

  def restore(self, step: int | None, abstract_state: PyTree) -> tuple[PyTree, dict[str, Any]]:
    """Restores ``(state, meta)``.

    Args:
      step: The step to restore; ``None`` for the latest.
      abstract_state: The target structure: e.g. ``jax.eval_shape(init)`` or a
        freshly initialised state (only shapes, dtypes and shardings are used;
        see :func:`abstract_like`). Node types (NamedTuples, dataclasses),
        dtypes, typed PRNG keys and shardings are taken from it.

    Returns:
      The restored state pytree and metadata dict. Values are cast to the
      target dtypes (orbax does so silently), so pass the true dtypes.

    Raises:
      FileNotFoundError: If there is no checkpoint (at ``step``).
      ValueError: If the target's tree structure or a leaf shape does not
        match the checkpoint.
    """
    # A restore must not race this process's own in-flight write.
    self.wait_until_finished()
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise FileNotFoundError(f"No checkpoint found in {self._directory}.")
    restored = self._manager.restore(
        int(step),
        args=ocp.args.Composite(
            **{
                _STATE_ITEM: ocp.args.StandardRestore(abstract_like(abstract_state)),
                _META_ITEM: ocp.args.JsonRestore(),
            }
        ),
    )
    return restored[_STATE_ITEM], dict(restored[_META_ITEM])

  def set_aside(self, step: int) -> str:
    """Renames a damaged ``step`` to ``<step>.corrupt`` (not retried, not deleted).

    Returns:
      The new path (``.corrupt-<n>`` if an earlier ``.corrupt`` is there).
    """
    self.wait_until_finished()
    src = os.path.join(self._directory, str(int(step)))
    dst, n = f"{src}.corrupt", 0
    while os.path.exists(dst):
      n += 1
      dst = f"{src}.corrupt-{n}"
    os.rename(src, dst)
    self._manager.reload()   # orbax caches the step list
    return dst

  def restore_newest(self, abstract_state: PyTree
                     ) -> tuple[PyTree, dict[str, Any], int, list[str]]:
    """Restores the newest step that restores; sets newer, damaged ones aside.

    A step only counts as damaged once an older one restored into the same
    target: if none does, the target (not the files) may be what is wrong, so
    nothing is moved.

    Returns:
      ``(state, meta, step, notes)``; one note per step set aside:
      ``"step <s> does not restore (<error>); moved to <path>"``.

    Raises:
      FileNotFoundError: no checkpoint at all.
      CheckpointError: no step restores (one line: the newest one's error).
    """
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"No checkpoint found in {self._directory}.")
    failed = []
    # Installed before the first attempt: the noise may come while it fails.
    self._drop_closed_loop_noise()
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, abstract_state)
      except Exception as e:  # orbax/tensorstore raise ValueError, KeyError, OSError...
        failed.append((step, _one_line(e)))
        continue
      if not failed:
        self._restore_unraisablehook()   # nothing failed: nothing to drop
      notes = [f"step {s} does not restore ({why}); moved to {self.set_aside(s)}"
               for s, why in failed]
      return state, meta, step, notes
    raise CheckpointError(
        f"{self._directory}: no checkpoint restores (steps {steps}; newest: {failed[0][1]}); "
        "if their files are damaged move them away, else the run's state changed: "
        "use a new --workdir")

  def _drop_closed_loop_noise(self) -> None:
    if self._hook is not None:
      return
    previous = sys.unraisablehook

    def hook(unraisable):
      e = unraisable.exc_value
      if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
        previous(unraisable)
    self._hook = (hook, previous)
    sys.unraisablehook = hook

  def wait_until_finished(self) -> None:
    """Blocks until the in-flight save (if any) is committed; re-raises its error."""
    self._manager.wait_until_finished()
    self._empty_trash()

  def close(self) -> None:
    """Waits for the in-flight save, then releases orbax resources (idempotent)."""
    if self._closed:
      return
    self._closed = True
    self._manager.close()
    self._empty_trash()
    self._restore_unraisablehook()

  def _restore_unraisablehook(self) -> None:
    if self._hook is not None and sys.unraisablehook is self._hook[0]:
      sys.unraisablehook = self._hook[1]   # unless someone replaced it since
    self._hook = None

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()

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
* A restore target without a sharding, or with one on an ``AbstractMesh``,
  fails or lands on stale devices: :func:`abstract_like`
  (``restore_target.py``) resolves both to concrete shardings.
* Pruning old steps (``max_to_keep``) is an in-place ``rmtree`` by default: a
  kill during it leaves a half-deleted *older* step that orbax still lists
  (``all_steps``) and fails to restore. We make orbax rename pruned steps into
  a trash sub-directory instead (atomic) and empty that ourselves.
* Orbax's default save policy adds ``InitialSavePolicy`` to
  ``save_interval_steps``: the first step saved into an empty directory is
  written whatever its number. The interval is therefore decided here and
  orbax is always called with ``force=True``.
* Damaged files of a step (truncated data, a deleted OCDBT manifest or
  ``state/``) fail its restore (``ValueError``, ``KeyError``); the failed
  restore's pending tensorstore reads then call into its closed event loop,
  each printing ``RuntimeError: Event loop is closed`` through
  ``sys.unraisablehook``: those (only those) are dropped until ``close``
  (``closed_loop_noise.py``).
  ``<step>.corrupt`` (:meth:`Checkpointer.set_aside`) is neither listed nor
  cleaned by orbax.
* Restore casts stored values to the target's dtype without complaint (e.g.
  ``jax.eval_shape`` turns an int64 numpy leaf into an int32 target under the
  default x32 mode); shape or tree-structure mismatches raise ``ValueError``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fedjax_mm.closed_loop_noise import ClosedLoopNoiseFilter
from fedjax_mm.restore_target import abstract_like  # re-exported: part of this API

PyTree = Any

# Item names inside one step directory.
_STATE_ITEM = "state"
_META_ITEM = "meta"
# Sub-directory orbax moves pruned steps into (an atomic rename) and that this
# module empties; its name does not parse as a step, so orbax never lists it.
_TRASH_SUBDIR = "_pruned"


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
    self._noise = ClosedLoopNoiseFilter()   # see closed_loop_noise.py
    self._restore_failed = False
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
    self._noise.install()   # before: the noise may come while it fails
    try:
      restored = self._manager.restore(
          int(step),
          args=ocp.args.Composite(
              **{
                  _STATE_ITEM: ocp.args.StandardRestore(abstract_like(abstract_state)),
                  _META_ITEM: ocp.args.JsonRestore(),
              }
          ),
      )
    except Exception:
      self._restore_failed = True   # its noise may come later: drop it until close()
      raise
    if not self._restore_failed:
      self._noise.remove()   # nothing failed: nothing to drop
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
    self._noise.remove()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()

"""Resuming a run from the newest checkpoint that restores.

A committed step can still be damaged on disk (a truncated data file, a
deleted OCDBT manifest or ``state/`` directory: a full disk, a half-copied
workdir). Ending the run there would throw away the older good steps, so
:func:`restore_newest` walks back from the newest step and sets the damaged
ones aside as ``<step>.corrupt`` (kept for inspection, never retried or
pruned). A step only counts as damaged once an older one restored into the
same target: if none does, the target (a changed model, not the files) may be
what is wrong, so nothing is moved.
"""

from __future__ import annotations

from typing import Any

from fedjax_mm import checkpoint as checkpoint_lib

PyTree = Any


class CheckpointError(RuntimeError):
  """No checkpoint of a run directory restores."""


def _one_line(error: BaseException, limit: int = 240) -> str:
  text = " ".join(str(error).split()) or "no message"
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(error).__name__}: {text}"


def restore_newest(ckpt: checkpoint_lib.Checkpointer, abstract_state: PyTree
                   ) -> tuple[PyTree, dict[str, Any], int, list[str]]:
  """Restores the newest step of ``ckpt`` that restores; sets newer ones aside.

  Args:
    ckpt: the run's checkpointer.
    abstract_state: the restore target (see ``Checkpointer.restore``).

  Returns:
    ``(state, meta, step, notes)``; one note per step set aside:
    ``"step <s> does not restore (<error>); moved to <path>"``.

  Raises:
    FileNotFoundError: no checkpoint at all.
    CheckpointError: no step restores (one line: the newest one's error).
  """
  steps = ckpt.all_steps()
  if not steps:
    raise FileNotFoundError(f"No checkpoint found in {ckpt.directory}.")
  failed = []
  for step in reversed(steps):
    try:
      state, meta = ckpt.restore(step, abstract_state)
    except Exception as e:  # orbax/tensorstore raise ValueError, KeyError, OSError...
      failed.append((step, _one_line(e)))
      continue
    notes = [f"step {s} does not restore ({why}); moved to {ckpt.set_aside(s)}"
             for s, why in failed]
    return state, meta, step, notes
  raise CheckpointError(
      f"{ckpt.directory}: no checkpoint restores (steps {steps}; newest: {failed[0][1]}); "
      "if their files are damaged move them away, else the run's state changed: "
      "use a new --workdir")

"""Silences one known harmless message while a failed checkpoint restore winds down.

A failed tensorstore restore leaves pending reads that later call into its
closed event loop; each prints ``RuntimeError: Event loop is closed``
through ``sys.unraisablehook``. :class:`ClosedLoopNoiseFilter` drops exactly
those (and passes everything else to the previous hook) between
:meth:`~ClosedLoopNoiseFilter.install` and :meth:`~ClosedLoopNoiseFilter.remove`.
"""

from __future__ import annotations

import sys


def _is_noise(exc: BaseException | None) -> bool:
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class ClosedLoopNoiseFilter:
  """An ``unraisablehook`` that drops the closed-event-loop noise, installed on demand."""

  def __init__(self):
    self._hook = None   # (our hook, the previous one) while installed

  @property
  def installed(self) -> bool:
    return self._hook is not None

  def install(self) -> None:
    """Installs the filter in front of the current hook (idempotent)."""
    if self._hook is not None:
      return
    previous = sys.unraisablehook

    def hook(unraisable):
      if not _is_noise(unraisable.exc_value):
        previous(unraisable)
    self._hook = (hook, previous)
    sys.unraisablehook = hook

  def remove(self) -> None:
    """Puts the previous hook back, unless someone replaced ours since (idempotent)."""
    if self._hook is not None and sys.unraisablehook is self._hook[0]:
      sys.unraisablehook = self._hook[1]
    self._hook = None

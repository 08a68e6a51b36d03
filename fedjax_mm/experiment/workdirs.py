"""Work sharing over one experiment directory: each run claimed by one process, results kept.

Several worker processes (``compare_algorithms.py --workers N``) walk the
same list of runs over the same directory. A run is done by whoever creates
its ``claim`` file first; a claim left by a killed process is taken over, and
a finished run's JSON is read back instead of recomputed, so an interrupted
experiment resumes with any number of workers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

CLAIM = "claim"
# A claim file still empty (its writer between create and write) is busy this long.
STALE_EMPTY_CLAIM_S = 60


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # alive, someone else's
    return True
  return True


def claim(rundir: Path) -> bool:
  """Takes ``rundir`` for this process; False while another live process holds it."""
  rundir.mkdir(parents=True, exist_ok=True)
  lock = rundir / CLAIM
  for _ in range(3):
    try:
      fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        text, age = lock.read_text(), time.time() - lock.stat().st_mtime
      except OSError:               # released meanwhile: try again
        continue
      holder = int(text) if text.strip().isdigit() else 0
      if holder == os.getpid():
        return True
      if (holder and _alive(holder)) or (not holder and age < STALE_EMPTY_CLAIM_S):
        return False
      lock.unlink(missing_ok=True)  # stale: its process is gone
      continue
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True
  return False


def kept(rundir: Path, filename: str, compute: Callable[[], dict]) -> dict | None:
  """``rundir/filename`` (JSON), computed by ``compute()`` under a claim the first time.

  Returns None while another worker holds the claim. The file is written
  atomically: a reader never sees half of it.
  """
  done = rundir / filename
  if done.exists():
    return json.loads(done.read_text())
  if not claim(rundir):
    return None
  if not done.exists():             # it may have finished between the check and the claim
    write(rundir, filename, compute())
  (rundir / CLAIM).unlink(missing_ok=True)
  return json.loads(done.read_text())


def write(rundir: Path, filename: str, data: dict) -> None:
  """``rundir/filename`` as JSON, atomically: a reader sees the old file or the new one.

  The temporary file is this process's own, so two workers writing the same
  result at once cannot interleave their bytes.
  """
  tmp = rundir / f"{filename}.{os.getpid()}.tmp"
  tmp.write_text(json.dumps(data))
  tmp.replace(rundir / filename)

"""A workdir owned by one run at a time, checked before any work starts.

The lock is an advisory `flock` on `{workdir}/.trajax.lock`: the kernel drops
it when the holding process exits, however it exits (SIGKILL included), so a
dead run never blocks the next one and no stale-lock cleanup is needed.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil

from absl import logging

from trajax import atomic

LOCK_NAME = ".trajax.lock"
# Workdirs this process holds with `stages_nest=True` (realpath): a stage run inside a
# study that holds the same workdir nests in the study's claim.
_NESTING: set[str] = set()


class WorkdirBusy(RuntimeError):
  pass


@contextlib.contextmanager
def claim(workdir: str, need_bytes: int = 0, stages_nest: bool = False):
  """Creates `workdir` if needed, checks it is writable with room, locks it, sweeps residue.

  Args:
    workdir: the run's output directory.
    need_bytes: bytes the run will write; refused up front if the disk has less.
    stages_nest: later claims of the same workdir by this process (the stages of a
      study) nest inside this one instead of being refused.
  Raises:
    WorkdirBusy: another live process holds the workdir.
    OSError: the workdir cannot be created or written, or the disk is too full.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise OSError(f"workdir {workdir!r} cannot be created: {e.strerror}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise OSError(f"workdir {workdir!r} is not writable by this user")
  free = shutil.disk_usage(workdir).free
  if need_bytes and free < need_bytes:
    raise OSError(f"workdir {workdir!r}: {free / 2**20:,.0f} MiB free on its disk, this run needs "
                  f"about {need_bytes / 2**20:,.0f} MiB")
  key = os.path.realpath(workdir)
  if key in _NESTING:  # a stage inside the study that holds this workdir
    yield workdir
    return
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      with open(path) as f:
        holder = f.read().strip() or "unknown"
      raise WorkdirBusy(f"workdir {workdir!r} is in use by another trajax run (pid {holder}); "
                        f"wait for it or use another workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    removed = sweep_residue(workdir)
    if removed:
      logging.info("workdir %s: removed %d temporary file(s) left by an earlier killed run",
                   workdir, removed)
    if stages_nest:
      _NESTING.add(key)
    try:
      yield workdir
    finally:
      _NESTING.discard(key)
  finally:
    os.close(fd)  # releases the lock


def _try_lock(directory: str) -> int | None:
  """A held lock on the nested workdir `directory`, or None if a live run holds it."""
  fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  return fd


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  else:
    os.unlink(path)


def sweep_residue(workdir: str) -> int:
  """Removes trajax's temporary files under `workdir` (recursively); returns how many.

  Call only while holding `workdir`: every writer under it is then dead, except
  in nested workdirs a live run holds, which are left alone. A converted
  checkpoint moved aside (`*.old`) whose replacement never arrived is put back.
  """
  removed, nested_fds = 0, []
  try:
    for top, dirs, files in os.walk(workdir):
      if top != workdir and LOCK_NAME in files:
        fd = _try_lock(top)
        if fd is None:  # another live stage owns this subtree
          dirs[:] = []
          continue
        nested_fds.append(fd)
      keep = []
      for name in sorted(dirs) + sorted(files):
        if not atomic.is_temporary(name):
          if name in dirs:
            keep.append(name)
          continue
        path = os.path.join(top, name)
        if name.endswith(".old"):
          target = os.path.join(top, name[1:].rsplit(".tmp-", 1)[0])
          if not os.path.lexists(target):  # killed between the two renames: restore
            os.replace(path, target)
            removed += 1
            continue
        _remove(path)
        removed += 1
      dirs[:] = keep
  finally:
    for fd in nested_fds:
      os.close(fd)
  return removed

"""Atomic file writes: a reader sees the old file or the new one, never a part of one.

Every output trajax writes outside the tensorstore arrays (JSON metadata, CSV
results, JSONL generations, figures, reports, converted weights) goes through
`atomic_open`: the bytes go to a hidden temporary file beside the target, are
flushed and fsynced, then `os.replace`d over it. A run killed at any moment
leaves the previous file intact (and at worst a `.tmp-` file that the next
write of the same target does not read). A write that fails (a full disk, a
quota, a file-size limit) removes its temporary file and raises `DiskFull`,
naming the file and saying that what was written before is intact.

Every temporary name trajax makes matches `is_temporary`: `.{name}.tmp-{pid}`
here, `.{name}.tmp-{pid}-{hex}[.old]` for converted checkpoint directories, and
tensorstore's own `{chunk}.__lock`. `trajax.workdir.claim` removes what a
killed run left of them, and nothing else.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from typing import Iterator

from trajax import faults

# errno values that mean "no room to write": a full disk, a quota, a file-size limit.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_TS_OS_ERROR = re.compile(r"os_error_code='(\d+)'")
# Temporary names: ours (`.{name}.tmp-{pid}`, `.{name}.tmp-{pid}-{hex}` and its `.old`)
# and tensorstore's file driver (`{key}.__lock`, written then renamed onto `key`).
_TEMPORARY = re.compile(r"^\..+\.tmp-\d+(-[0-9a-f]+)?(\.old)?$|^.+\.__lock$")


def temporary_name(path: str, tag: str = "") -> str:
  """The temporary sibling of `path` that this process writes before renaming."""
  base = f".{os.path.basename(path)}.tmp-{os.getpid()}" + (f"-{tag}" if tag else "")
  return os.path.join(os.path.dirname(os.path.abspath(path)), base)


def is_temporary(name: str) -> bool:
  """Whether the file name `name` is one of trajax's (or tensorstore's) temporary names."""
  return bool(_TEMPORARY.match(name))


class DiskFull(OSError):
  """A write ran out of room. Earlier outputs are intact; free space and rerun."""


def no_space_error(path: str, cause: BaseException) -> DiskFull:
  """A `DiskFull` for `path` whose message tells the user what happened and what to do."""
  code = _errno(cause) or errno.ENOSPC
  return DiskFull(
      code, f"{path}: no room to write ({os.strerror(code)}). Outputs finished "
      f"before this one are intact; free space (or raise the quota) and rerun "
      f"the same command to resume")


def _errno(e: BaseException) -> int | None:
  if isinstance(e, OSError):
    return e.errno
  m = _TS_OS_ERROR.search(str(e))  # tensorstore raises ValueError("... [os_error_code='28']")
  return int(m.group(1)) if m else None


def is_no_space(e: BaseException) -> bool:
  """Whether `e` is an OS error (or a tensorstore error wrapping one) meaning "no room"."""
  return _errno(e) in NO_SPACE


def _fsync_dir(directory: str) -> None:
  with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
    fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
  """Opens a temporary file that replaces `path` when the block exits without error.

  Args:
    path: the file to write; its directory is created if needed.
    mode: "w" (text) or "wb" (bytes).
    **open_kwargs: passed to `open` (encoding, newline).
  Yields:
    The open temporary file.
  Raises:
    DiskFull: the disk (or quota, or file-size limit) ran out; `path` is unchanged.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  tmp = temporary_name(path)
  if mode == "w":
    open_kwargs.setdefault("encoding", "utf-8")
  try:
    os.makedirs(directory, exist_ok=True)
    with open(tmp, mode, **open_kwargs) as f:
      yield f
      f.flush()
      faults.point(f"atomic:{path}")  # the temporary file is complete, not yet renamed
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    if is_no_space(e):
      raise no_space_error(path, e) from e
    raise
  _fsync_dir(directory)


def write_text(path: str | os.PathLike, text: str) -> str:
  with atomic_open(path, "w") as f:
    f.write(text)
  return os.fspath(path)


def write_bytes(path: str | os.PathLike, blob: bytes) -> str:
  with atomic_open(path, "wb") as f:
    f.write(blob)
  return os.fspath(path)


def write_json(path: str | os.PathLike, obj, **dump_kwargs) -> str:
  """`obj` as JSON (indent 1, sorted keys unless told otherwise)."""
  dump_kwargs.setdefault("indent", 1)
  dump_kwargs.setdefault("sort_keys", True)
  with atomic_open(path, "w") as f:
    json.dump(obj, f, **dump_kwargs)
  return os.fspath(path)


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> str:
  """`fig.savefig` through a temporary file (format from the file extension)."""
  fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
  with atomic_open(path, "wb") as f:
    fig.savefig(f, format=fmt, **savefig_kwargs)
  return os.fspath(path)

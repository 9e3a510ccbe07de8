"""Named points in a run where a test can kill or stop the process, deterministically.

Long stages call `point(name)` at the moments a crash matters most: inside an
atomic write (the temporary file is complete, the rename has not happened),
between a store row and its done flag, after a row is done. Normally a point
costs one environment lookup. A fault test sets, for the child process,

  TRAJAX_FAULT=<action>@<pattern>[#<n>]

and the n-th point (default the first) whose name matches the `fnmatch`
pattern performs the action on the process itself: `kill` (SIGKILL: the run
dies exactly there) or `stop` (SIGSTOP: the parent sees the stop with
`os.waitpid(pid, os.WUNTRACED)`, looks at the workdir, then kills or continues
it). No sleeps, no polling: the kill lands where the code says it is.

  TRAJAX_FAULT_TRACE=<file>

appends every point name reached, one per line, so a test can first run a
stage cleanly and then choose (with a seed) which of its real points to kill at.
"""
from __future__ import annotations

import fnmatch
import os
import signal

ENV = "TRAJAX_FAULT"
TRACE_ENV = "TRAJAX_FAULT_TRACE"
ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}

_hits = 0  # points matching the armed pattern reached so far in this process


def spec(action: str, pattern: str, n: int = 1) -> str:
  """The TRAJAX_FAULT value that performs `action` at the n-th point matching `pattern`."""
  if action not in ACTIONS:
    raise ValueError(f"fault action {action!r}: expected one of {sorted(ACTIONS)}")
  return f"{action}@{pattern}#{n}"


def _parse(value: str) -> tuple[str, str, int]:
  action, sep, rest = value.partition("@")
  pattern, _, n = rest.rpartition("#") if "#" in rest else (rest, "", "1")
  if not sep or action not in ACTIONS or not pattern or not n.isdigit() or int(n) < 1:
    raise ValueError(f"{ENV}={value!r}: expected '<kill|stop>@<pattern>[#<n>]' with n >= 1")
  return action, pattern, int(n)


def point(name: str) -> None:
  """Marks a named point of the run; see the module docstring."""
  global _hits
  trace = os.environ.get(TRACE_ENV)
  if trace:
    with open(trace, "a", encoding="utf-8") as f:
      f.write(name + "\n")
  armed = os.environ.get(ENV)
  if not armed:
    return
  action, pattern, n = _parse(armed)
  if fnmatch.fnmatchcase(name, pattern):
    _hits += 1
    if _hits == n:
      os.kill(os.getpid(), ACTIONS[action])

"""Kill a stage at seeded points it really reaches, rerun it, compare with a clean run.

No sleeps and no clocks: a clean run records every `trajax.faults.point` it
passes (TRAJAX_FAULT_TRACE); a seeded choice of those points, in run order,
becomes the kill list; each killed run is started with TRAJAX_FAULT=kill@<point>
and dies exactly there (SIGKILL, checked), the next resumes from what it left.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import re
import signal
import subprocess

import numpy as np

from trajax import atomic, faults

LOCK = ".trajax.lock"  # holds the pid of the last holder: the one file that differs


def run(cmd: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.TRACE_ENV)}
  env.update(env_extra or {})
  return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def traced_run(cmd: list[str], trace_file) -> list[str]:
  """Runs `cmd` cleanly; returns the names of the fault points it passed, in order."""
  proc = run(cmd, {faults.TRACE_ENV: str(trace_file)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(trace_file, encoding="utf-8") as f:
    return f.read().splitlines()


def choose(points: list[str], seed: int, required: tuple[str, ...], extra: int) -> list[str]:
  """One seeded point per `required` pattern plus `extra` more, distinct, in run order."""
  rng = np.random.default_rng(seed)
  first = {}
  for i, p in enumerate(points):
    first.setdefault(p, i)
  names = sorted(first, key=first.get)
  chosen = set()
  for pattern in required:
    matches = [n for n in names if fnmatch.fnmatchcase(n, pattern) and n not in chosen]
    assert matches, f"no fault point matches {pattern!r}; points: {names}"
    chosen.add(matches[int(rng.integers(len(matches)))])
  rest = [n for n in names if n not in chosen]
  for k in rng.choice(len(rest), size=min(extra, len(rest)), replace=False):
    chosen.add(rest[int(k)])
  return sorted(chosen, key=first.get)


def kill_then_resume(cmd: list[str], kills: list[str]) -> list[tuple[str, int]]:
  """Runs `cmd` once per kill point (each must die there), then once to the end."""
  cases = []
  for name in kills:
    # A temporary name holds the writer's pid (and a random tag): match any.
    pattern = re.sub(r"\.tmp-\d+(-[0-9a-f]+)?", ".tmp-*", glob.escape(name))
    proc = run(cmd, {faults.ENV: faults.spec("kill", pattern)})
    cases.append((name, proc.returncode))
    assert proc.returncode == -signal.SIGKILL, (name, proc.returncode, proc.stderr[-3000:])
  final = run(cmd)
  assert final.returncode == 0, final.stderr[-3000:]
  return cases


def temporaries(root) -> list[str]:
  """Every path under `root` (recursively) with one of trajax's temporary names."""
  found = []
  for top, dirs, files in os.walk(root):
    found += [os.path.join(top, n) for n in dirs + files if atomic.is_temporary(n)]
  return found


def tree(root, ignore=()) -> dict[str, bytes]:
  """{relative path: bytes} of every file under `root` but the lock and `ignore` patterns.

  The workdir's own path, where a file records it, reads `{workdir}`.
  """
  out = {}
  for top, _, files in os.walk(root):
    for n in files:
      rel = os.path.relpath(os.path.join(top, n), root)
      if n == LOCK or any(fnmatch.fnmatchcase(rel, pat) for pat in ignore):
        continue
      with open(os.path.join(top, n), "rb") as f:
        out[rel] = f.read().replace(os.fspath(root).encode(), b"{workdir}")
  return out


def assert_same_tree(got_root, want_root, ignore=()) -> None:
  """The resumed workdir holds exactly the clean run's files, byte for byte, and no residue."""
  assert not temporaries(got_root), temporaries(got_root)
  got, want = tree(got_root, ignore), tree(want_root, ignore)
  assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))
  differ = [k for k in want if got[k] != want[k]]
  assert not differ, differ


def retarget(points: list[str], clean, out) -> list[str]:
  """Point names of the clean run's workdir, renamed to the killed run's workdir."""
  return [p.replace(str(clean), str(out)) for p in points]

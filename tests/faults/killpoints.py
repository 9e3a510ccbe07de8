"""Kill a stage at seeded points it really reaches, rerun it, compare with a clean run.

No sleeps and no clocks: a clean run records every `trajax.faults.point` it
passes (TRAJAX_FAULT_TRACE); a seeded choice of those points, in run order,
becomes the kill list; each killed run is started with TRAJAX_FAULT=kill@<point>
and dies exactly there (SIGKILL, having traced that point once), the
next resumes from what it left. `kill_and_compare` does all of it for a stage.
"""
from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import signal
import subprocess
import tempfile
from typing import Callable

import numpy as np

from trajax import atomic, faults
from conftest import HANG_GUARD_S

LOCK = ".trajax.lock"  # holds the pid of the last holder: the one file that differs


def run(cmd: list[str], env_extra: dict | None = None) -> subprocess.CompletedProcess:
  """Runs `cmd` with no fault armed or traced but what `env_extra` sets."""
  env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.TRACE_ENV)}
  env.update(env_extra or {})
  return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)


def _read_trace(trace_file) -> list[str]:
  if not os.path.exists(trace_file):
    return []
  with open(trace_file, encoding="utf-8") as f:
    return f.read().splitlines()


def traced_run(cmd: list[str], trace_file) -> list[str]:
  """Runs `cmd` cleanly; returns the names of the fault points it passed, in order."""
  proc = run(cmd, {faults.TRACE_ENV: str(trace_file)})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _read_trace(trace_file)


def choose(points: list[str], seed: int, required: tuple, extra: int) -> list[str]:
  """One seeded point per `required` entry plus `extra` more, distinct, in run order.

  Args:
    points: the fault points of a clean run, in order (repeats allowed).
    seed: seeds every choice.
    required: each entry an `fnmatch` pattern, or a tuple of patterns (any of them).
    extra: how many more points, drawn from all the others.
  Returns:
    The chosen point names, in the order the run first reaches them.
  """
  rng = np.random.default_rng(seed)
  first = {}
  for i, p in enumerate(points):
    first.setdefault(p, i)
  names = sorted(first, key=first.get)
  chosen = set()
  for entry in required:
    patterns = (entry,) if isinstance(entry, str) else tuple(entry)
    matches = [
        n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns) and n not in chosen
    ]
    assert matches, f"no fault point matches {entry!r}; points: {names}"
    chosen.add(matches[int(rng.integers(len(matches)))])
  rest = [n for n in names if n not in chosen]
  for k in rng.choice(len(rest), size=min(extra, len(rest)), replace=False):
    chosen.add(rest[int(k)])
  return sorted(chosen, key=first.get)


def kill_pattern(name: str) -> str:
  """The TRAJAX_FAULT pattern of point `name` in another run of the same stage.

  A temporary name holds the writer's pid (and a random tag): any matches.
  """
  return re.sub(r"\.tmp-\d+(-[0-9a-f]+)?", ".tmp-*", glob.escape(name))


def kill_then_resume(cmd: list[str], kills: list[str]) -> list[tuple[str, int]]:
  """Runs `cmd` once per kill point (each must die there, by SIGKILL), then once to the end.

  Returns:
    [(kill point, exit status)], the statuses all -SIGKILL.
  """
  cases = []
  with tempfile.TemporaryDirectory(prefix="trajax-kill-trace-") as traces:
    for k, name in enumerate(kills):
      pattern = kill_pattern(name)
      trace = os.path.join(traces, f"{k}.txt")
      proc = run(cmd, {faults.ENV: faults.spec("kill", pattern), faults.TRACE_ENV: trace})
      cases.append((name, proc.returncode))
      assert proc.returncode == -signal.SIGKILL, (name, proc.returncode, proc.stderr[-3000:])
      # The point traces itself, then kills: the run reached it exactly once, and went no
      # further through it (points other threads pass meanwhile may follow it in the trace).
      hits = [p for p in _read_trace(trace) if fnmatch.fnmatchcase(p, pattern)]
      assert len(hits) == 1, (name, hits)
  final = run(cmd)
  assert final.returncode == 0, final.stderr[-3000:]
  return cases


def temporaries(root) -> list[str]:
  """Every path under `root` (recursively) with one of trajax's temporary names."""
  found = []
  for top, dirs, files in os.walk(root):
    found += [os.path.join(top, n) for n in dirs + files if atomic.is_temporary(n)]
  return found


def tree(root, ignore=(), normalise=None) -> dict[str, bytes]:
  """{relative path: bytes} of every file under `root` but the lock and `ignore` patterns.

  The workdir's own path, where a file records it, reads `{workdir}`; a file whose
  relative path matches a pattern of `normalise` ({pattern: bytes -> bytes}) is
  passed through that function (fields that legitimately differ between runs).
  """
  out = {}
  for top, _, files in os.walk(root):
    for n in files:
      rel = os.path.relpath(os.path.join(top, n), root)
      if n == LOCK or any(fnmatch.fnmatchcase(rel, pat) for pat in ignore):
        continue
      with open(os.path.join(top, n), "rb") as f:
        data = f.read().replace(os.fspath(root).encode(), b"{workdir}")
      for pat, fn in (normalise or {}).items():
        if fnmatch.fnmatchcase(rel, pat):
          data = fn(data)
      out[rel] = data
  return out


def without_fields(*names: str, jsonl: bool = False) -> Callable[[bytes], bytes]:
  """A `normalise` function dropping the fields `names` of a JSON file (or of each JSONL line).

  For timings a run records (seconds, tokens/s, an ETA): each dropped value must
  be a number >= 0, and every other field is still compared byte for byte.
  """
  def drop(obj):
    for name in names:
      if name in obj:
        value = obj.pop(name)
        assert isinstance(value, (int, float)) and value >= 0, (name, value)
    return obj

  def fn(data: bytes) -> bytes:
    if jsonl:
      lines = [json.dumps(drop(json.loads(l)), sort_keys=True) for l in data.splitlines()]
      return "\n".join(lines).encode()
    return json.dumps(drop(json.loads(data)), sort_keys=True).encode()

  return fn


def substituted(pattern: bytes, repl: bytes) -> Callable[[bytes], bytes]:
  """A `normalise` function replacing every match of the regex `pattern` by `repl`."""
  return lambda data: re.sub(pattern, repl, data)


def assert_same_tree(got_root, want_root, ignore=(), normalise=None) -> None:
  """The resumed workdir holds exactly the clean run's files, byte for byte, and no residue."""
  assert not temporaries(got_root), temporaries(got_root)
  got, want = tree(got_root, ignore, normalise), tree(want_root, ignore, normalise)
  assert sorted(got) == sorted(want), (sorted(set(got) ^ set(want)))
  differ = [k for k in want if got[k] != want[k]]
  assert not differ, differ


def retarget(points: list[str], clean, out) -> list[str]:
  """Point names of the clean run's workdir, renamed to the killed run's workdir."""
  return [p.replace(str(clean), str(out)) for p in points]


def kill_and_compare(cmd: Callable[[os.PathLike], list[str]], clean, out, *, seed: int,
                     required: tuple, extra: int = 0, points: list[str] | None = None,
                     reachable: Callable[[str], bool] | None = None, ignore=(),
                     normalise=None) -> list[tuple[str, int]]:
  """Kills a stage at seeded points it reaches, resumes it, and compares with a clean run.

  1. Unless `points` are given (a clean run already made into `clean`, traced),
     `cmd(clean)` runs cleanly and records the fault points it passes.
  2. One point per `required` entry plus `extra` more (see `choose`), seeded, among
     the clean run's points renamed to `out` (and `reachable` there, if given).
  3. `cmd(out)` runs once per point and must die there by SIGKILL; then once to
     the end, exit 0.
  4. `out` holds no temporary file anywhere, and exactly the clean run's files,
     byte for byte (but `ignore`d paths and `normalise`d fields).

  Args:
    cmd: the stage's command line for a given workdir (or output root).
    clean, out: the clean run's and the killed runs' workdirs.
    seed, required, extra: the choice of kill points.
    points: the clean run's trace, if it was already made.
    reachable: keeps only points the runs in `out` will pass (e.g. not the training
      of models whose checkpoints were copied into `out`).
    ignore, normalise: see `tree`.
  Returns:
    [(kill point, exit status)], printed too (shown with `pytest -s`).
  """
  if points is None:
    with tempfile.TemporaryDirectory(prefix="trajax-clean-trace-") as traces:
      points = traced_run(cmd(clean), os.path.join(traces, "trace.txt"))
  candidates = [p for p in retarget(points, clean, out) if reachable is None or reachable(p)]
  kills = choose(candidates, seed, required, extra)
  cases = kill_then_resume(cmd(out), kills)
  stage = " ".join(os.path.basename(a) for a in cmd(out)[1:2])  # the launcher's name
  print(f"\n{stage} fault cases (kill point, exit status): {cases}")
  assert_same_tree(out, clean, ignore, normalise)
  return cases

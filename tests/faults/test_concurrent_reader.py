"""A notebook reading a store while a sweep writes it sees finished rows only, and never blocks it.

The writer stops itself (SIGSTOP, at a `trajax.faults` point) between a row's
log-probs and its done flag: the most "half-written" a row gets. A reader in
another process, with the store open throughout, is asked what it sees at that
moment, after the writer is SIGKILLed there, and while a resumed writer runs to
the end beside it. No sleeps: each step waits on an event (the stop, a line).
"""
import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np

from trajax import faults, store, sweep
from conftest import ROOT
import killpoints
import test_kill

READER = """
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from trajax import store
reader = None
for line in sys.stdin:
  reader = reader or store.open(sys.argv[2])  # opened once, kept open like a notebook's
  done = reader.status("m")
  rows = reader.logprobs("m")
  print(json.dumps({"done": done.tolist(),
                    "rows": [hashlib.sha256(r.tobytes()).hexdigest() for r in rows]}), flush=True)
"""


def _ask(reader) -> dict:
  reader.stdin.write("?\n")
  reader.stdin.flush()
  return json.loads(reader.stdout.readline())


def _sha(rows):
  return [hashlib.sha256(r.tobytes()).hexdigest() for r in rows]


def test_reader_sees_only_done_rows_while_the_writer_runs_and_dies(tmp_path, tiny_ckpt):
  config = test_kill._config(tmp_path, tiny_ckpt)  # pylint: disable=protected-access
  clean = sweep.run(config, str(tmp_path / "clean"))
  want = _sha(clean.logprobs("m"))
  out = tmp_path / "live"
  cmd = test_kill._cli(config, out)  # pylint: disable=protected-access
  env = {k: v for k, v in os.environ.items() if k not in (faults.ENV, faults.TRACE_ENV)}
  # Stop after row 2 is on disk, before its done flag.
  writer = subprocess.Popen(cmd, env=dict(env, **{faults.ENV: faults.spec("stop",
                                                                          "store.row:m:2")}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _, status = os.waitpid(writer.pid, os.WUNTRACED)
  assert os.WIFSTOPPED(status), status
  reader = subprocess.Popen(
      [sys.executable, "-c", READER, str(ROOT), str(out)], text=True, stdin=subprocess.PIPE,
      stdout=subprocess.PIPE)
  try:
    seen = _ask(reader)
    assert seen["done"] == [1, 1, 0, 0]
    assert seen["rows"] == want[:2]  # row 2 is written, but not done: not shown
    writer.send_signal(signal.SIGKILL)  # die between the row and its flag
    writer.wait()
    assert _ask(reader) == seen
    # A resumed writer runs to the end while the reader keeps its store open and reads.
    # Its log goes to a file: a pipe nobody reads while it runs could fill and block it.
    with open(tmp_path / "resumed.log", "w") as log:
      resumed = subprocess.Popen(
          cmd, env=dict(env, **{faults.ENV: faults.spec("stop", "store.done:m:3")}),
          stdout=subprocess.DEVNULL, stderr=log)
    _, status = os.waitpid(resumed.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status
    seen = _ask(reader)  # the last flag is set; the writer is stopped right after it
    assert seen["done"] == [1, 1, 1, 1] and seen["rows"] == want
    resumed.send_signal(signal.SIGCONT)
    assert resumed.wait() == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert _ask(reader)["rows"] == want
  finally:
    reader.stdin.close()
    reader.wait()
  killpoints.assert_same_tree(out, tmp_path / "clean")
  np.testing.assert_array_equal(store.open(str(out)).status("m"), clean.status("m"))

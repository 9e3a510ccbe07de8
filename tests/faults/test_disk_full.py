"""The disk fills up in the middle of a sweep: a clean error, a readable store, then a resume.

The filesystem really fills: the sweep runs in a subprocess inside a private
mount namespace on a 2 MiB tmpfs, and a ballast file takes every free byte
right after the first row is written. Where this machine does not allow a
mount namespace, the subprocess instead gets a file-size limit (RLIMIT_FSIZE)
below a row's size, so the same write fails with EFBIG; the output says which. The
EFBIG case also runs on its own everywhere.
"""
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from trajax import atomic, store, sweep, workdir as workdir_lib
from conftest import HANG_GUARD_S, OPT_TOKENIZER, ROOT, sweep_inputs

DRIVER = ROOT / "tests" / "faults" / "disk_full_driver.py"


def _can_mount_tmpfs(tmp_path) -> bool:
  probe = tmp_path / "probe"
  probe.mkdir()
  cmd = [
      "unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
      f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(probe))}"
  ]
  try:
    return subprocess.run(cmd, capture_output=True, timeout=HANG_GUARD_S).returncode == 0
  except OSError:  # no unshare here
    return False


@pytest.fixture
def settings(tmp_path, tiny_ckpt):
  manifest, docs = sweep_inputs(tmp_path, tiny_ckpt, 4)
  return {
      "trajectory": manifest, "tokenizer": str(OPT_TOKENIZER), "data.files": docs,
      "data.block_len": 256, "batch_size": 2
  }


def _config(settings):
  from configs import score as score_config
  config = score_config.get_config()
  config.trajectory = settings["trajectory"]
  config.tokenizer = settings["tokenizer"]
  config.data.files = settings["data.files"]
  config.data.block_len = settings["data.block_len"]
  config.batch_size = settings["batch_size"]
  return config


@pytest.mark.parametrize("want", ["enospc", "efbig"])
def test_disk_full_mid_sweep_fails_cleanly_and_resumes_bitwise(tmp_path, settings, want):
  clean = sweep.run(_config(settings), str(tmp_path / "clean"))
  (tmp_path / "settings.json").write_text(json.dumps(settings))
  full, copy = tmp_path / "full", tmp_path / "after"
  full.mkdir()
  driver = [
      sys.executable,
      str(DRIVER), f"--settings={tmp_path / 'settings.json'}", f"--workdir={full}",
      f"--copy_to={copy}"
  ]
  if want == "enospc" and _can_mount_tmpfs(tmp_path):
    fault = "enospc"
    cmd = [
        "unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
        f"mount -t tmpfs -o size=2m tmpfs {shlex.quote(str(full))} && exec " +
        shlex.join(driver + ["--fault=enospc"])
    ]
  else:
    fault = "efbig"
    cmd = driver + ["--fault=efbig"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  print(f"\ndisk-full case: {report}")
  assert report["fault"] == fault  # "enospc" falls back to "efbig" where mounts are refused

  # A clean error that names the file, says what happened and what to do.
  err = report["sweep_error"]
  assert err is not None and err.startswith("DiskFull: ")
  assert "store/m/logprobs" in err and "checkpoint 1" in err
  assert ("No space left on device" if fault == "enospc" else "File too large") in err
  assert "rerun" in err
  # An earlier output rewritten on the full disk: refused, the old file intact, no debris.
  assert report["rewrite_error"] is not None and "results.csv" in report["rewrite_error"]
  assert (copy / "results.csv").read_text() == "step,ppl\n10,3.5\n"
  assert report["leftover_tmp_files"] == []

  # The store is readable: exactly the first row done, equal to the clean run's.
  after = store.open(str(copy))
  np.testing.assert_array_equal(after.status("m"), [store.DONE] + [store.PENDING] * 3)
  assert after.logprobs("m").tobytes() == clean.logprobs("m")[:1].tobytes()

  # With room again, rerunning the same command finishes; the store is bitwise the clean one.
  resumed = sweep.run(_config(settings), str(copy))
  np.testing.assert_array_equal(resumed.status("m"), clean.status("m"))
  assert resumed.logprobs("m").tobytes() == clean.logprobs("m").tobytes()


def test_resume_checks_room_for_the_rows_still_to_write(tmp_path, settings, monkeypatch):
  workdir = str(tmp_path / "w")
  config = _config(settings)
  sweep.run(config, workdir)
  needs = []
  real_claim = workdir_lib.claim

  def spy(path, need_bytes=0):
    needs.append(need_bytes)
    return real_claim(path, need_bytes)

  monkeypatch.setattr(workdir_lib, "claim", spy)
  reader = store.open(workdir)
  row_bytes = reader.tokens.size * 4
  sweep.run(config, workdir)  # everything done: nothing left to write
  # Two rows pending again (as after a crash): room for exactly those two is required.
  rows = store.Store(reader.root, reader.dataset).model("m", reader.meta("m"))
  for i in (1, 3):
    rows.done[i].write(np.int8(store.PENDING)).result()
  sweep.run(config, workdir)
  assert needs == [0, 2 * row_bytes]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
  target = tmp_path / "out.json"
  atomic.write_json(target, {"a": 1})

  class Boom(RuntimeError):
    pass

  with pytest.raises(Boom):
    with atomic.atomic_open(target, "w") as f:
      f.write('{"a": 2, "partial')
      raise Boom()
  assert json.loads(target.read_text()) == {"a": 1}
  assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_no_space_errors_are_recognised():
  import errno
  assert atomic.is_no_space(OSError(errno.ENOSPC, "No space left on device"))
  assert atomic.is_no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
  assert not atomic.is_no_space(OSError(errno.EACCES, "Permission denied"))
  # The form tensorstore raises (seen on a full tmpfs).
  assert atomic.is_no_space(
      ValueError(
          "RESOURCE_EXHAUSTED: Error writing local file \"x/2.0\": Failed to write 158336 bytes to "
          "file 4: No space left on device [os_error_code='28']"))
  assert not atomic.is_no_space(ValueError("[os_error_code='13']"))

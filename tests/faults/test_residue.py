"""What a killed run leaves is swept when the next run claims the workdir, and nothing else."""
import os

import pytest
from absl import logging as absl_logging

from trajax import atomic, faults, orbax_checkpoints, workdir
from conftest import held_workdir


def _touch(path, text="x"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


RESIDUE = (".results.csv.tmp-4242", "icl/.fig9_groups.png.tmp-17", "store/m/logprobs/0.0.__lock",
           "store/.dataset.json.tmp-99")
KEPT = ("results.csv", "notes.tmp", "x.tmp-12", ".hidden", ".a.tmp-12x", "store/m/logprobs/0.0",
        "icl/.a.tmp-", "lock.__lock.txt")


def test_claim_removes_only_trajax_temporaries(tmp_path, caplog):
  root = str(tmp_path / "w")
  for rel in RESIDUE + KEPT:
    _touch(os.path.join(root, rel))
  os.makedirs(os.path.join(root, "orbax", ".step1.tmp-77-0af3"), exist_ok=True)  # a conversion's
  _touch(os.path.join(root, "orbax", ".step1.tmp-77-0af3", "state", "d"))
  _touch(os.path.join(root, "orbax", ".step2.tmp-78-0af4.old", "m"), "old")  # moved aside, no new
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    with caplog.at_level("INFO"):
      with workdir.claim(root):
        pass
  finally:
    absl_logging.set_verbosity(verbosity)  # no leak into later tests
  left = sorted(
      os.path.relpath(os.path.join(t, n), root) for t, ds, fs in os.walk(root) for n in ds + fs)
  for rel in RESIDUE:
    assert rel not in left
  for rel in KEPT:
    assert rel in left, rel
  assert not [p for p in left if "tmp-77" in p]
  # The checkpoint moved aside whose replacement never arrived is put back, content intact.
  assert open(os.path.join(root, "orbax", "step2", "m")).read() == "old"
  assert "removed 6 temporary file(s)" in caplog.text


def test_patterns_match_what_the_writers_make(tmp_path):
  target = tmp_path / "out.csv"
  assert atomic.is_temporary(os.path.basename(atomic.temporary_name(str(target))))
  assert atomic.is_temporary(os.path.basename(atomic.temporary_name(str(target), "0af3")))
  assert atomic.is_temporary(os.path.basename(atomic.temporary_name(str(target), "0af3")) + ".old")
  assert not atomic.is_temporary("out.csv") and not atomic.is_temporary(".trajax.lock")


def test_a_nested_workdir_held_by_a_live_run_is_left_alone(tmp_path):
  root = tmp_path / "w"
  nested = root / "trends"
  with held_workdir(nested):
    _touch(str(nested / ".fig.png.tmp-123"))  # the live run's write in progress
    _touch(str(root / ".summary.json.tmp-5"))
    with workdir.claim(str(root)):
      pass
    assert (nested / ".fig.png.tmp-123").exists()
    assert not (root / ".summary.json.tmp-5").exists()
  with workdir.claim(str(root)):  # nobody holds the nested workdir now: swept too
    pass
  assert not (nested / ".fig.png.tmp-123").exists()


def test_claims_nest_only_inside_a_study(tmp_path):
  root = str(tmp_path / "w")
  with workdir.claim(root, stages_nest=True):
    with workdir.claim(root):  # a stage of the study
      pass
  with workdir.claim(root):
    with pytest.raises(workdir.WorkdirBusy):
      with workdir.claim(root):
        pass


def test_single_conversion_sweeps_dead_converters_only(tmp_path):
  out = tmp_path / "orbax" / "step1"
  out.parent.mkdir()
  # A pid no process can have (pids stay below pid_max). The pid of a process that just
  # exited is not that: on a busy machine with a small pid_max it may be reused at once.
  with open("/proc/sys/kernel/pid_max") as f:
    dead = f.read().strip()
  (out.parent / f".step1.tmp-{dead}-00aa").mkdir()
  (out.parent / f".step1.tmp-{os.getpid()}-00bb").mkdir()  # this live process's own
  (out.parent / f".step2.tmp-{dead}-00cc").mkdir()  # another checkpoint's: not ours to judge
  assert orbax_checkpoints.sweep_conversion_residue(str(out)) == 1
  assert sorted(os.listdir(out.parent)) == sorted(
      [f".step1.tmp-{os.getpid()}-00bb", f".step2.tmp-{dead}-00cc"])


def test_fault_spec_is_checked():
  assert faults.spec("kill", "atomic:*x", 2) == "kill@atomic:*x#2"
  with pytest.raises(ValueError, match="fault action"):
    faults.spec("explode", "x")
  for bad in ("kill", "kill@", "boom@x", "kill@x#0", "kill@x#a"):
    with pytest.raises(ValueError, match="TRAJAX_FAULT"):
      faults._parse(bad)  # pylint: disable=protected-access
  assert faults._parse("stop@a#b#3") == ("stop", "a#b", 3)  # pylint: disable=protected-access

"""SIGKILL the trends stage and checkpoint conversion at seeded points; reruns equal clean runs."""
import json
import sys

import jax
import numpy as np
from flax import nnx

from trajax import orbax_checkpoints, sweep
from conftest import OPT_TOKENIZER, ROOT
import killpoints
import test_kill

SEED = 20261202


def test_sigkill_during_trends_then_resume_equals_clean_run(tmp_path, tiny_ckpt):
  config = test_kill._config(tmp_path, tiny_ckpt)  # pylint: disable=protected-access
  scored = tmp_path / "scored"
  sweep.run(config, str(scored))
  cmd = [
      sys.executable,
      str(ROOT / "launch" / "trends.py"), f"--config={ROOT}/configs/trends.py",
      f"--config.store_dir={scored}", f"--config.tokenizer={OPT_TOKENIZER}",
      "--config.selectors=('self',)", "--config.fractions=(0.1, 0.5)",
      "--config.subset_fractions=(0.1,)"
  ]
  clean, out = tmp_path / "clean", tmp_path / "killed"
  points = killpoints.traced_run(cmd + [f"--workdir={clean}"], tmp_path / "trace.txt")
  kills = killpoints.choose(
      killpoints.retarget(points, clean, out), SEED,
      required=("atomic:*/trends/*.png", "atomic:*/trends/*.csv", "atomic:*/trends/*.html",
                "atomic:*/trends/summary.json"), extra=0)
  cases = killpoints.kill_then_resume(cmd + [f"--workdir={out}"], kills)
  print(f"\ntrends fault cases (kill point, exit code): {cases}")
  killpoints.assert_same_tree(out, clean, ignore=("trends/summary.json",))
  # The summary too, but for the run's own duration.
  got, want = (json.loads(killpoints.tree(d)["trends/summary.json"]) for d in (out, clean))
  assert got.pop("seconds") > 0 and want.pop("seconds") > 0
  assert got == want


def test_sigkill_during_conversion_then_resume_equals_clean_run(tmp_path, tiny_ckpt):
  config = test_kill._config(tmp_path, tiny_ckpt)  # pylint: disable=protected-access
  cmd = [sys.executable, str(ROOT / "launch" / "convert.py"), f"--trajectory={config.trajectory}"]
  clean, out = tmp_path / "clean", tmp_path / "killed"
  points = killpoints.traced_run(cmd + [f"--out_root={clean}"], tmp_path / "trace.txt")
  kills = killpoints.choose(
      killpoints.retarget(points, clean, out), SEED,
      required=("convert.complete:*", "atomic:*/trajax_orbax.json", "atomic:*/trajectory.json"),
      extra=0)
  cases = killpoints.kill_then_resume(cmd + [f"--out_root={out}"], kills)
  # Overwriting: killed with the old checkpoint moved aside and the new one not yet in place.
  swap = killpoints.retarget(
      killpoints.traced_run(cmd + [f"--out_root={clean}", "--overwrite"], tmp_path / "t2.txt"),
      clean, out)
  cases += killpoints.kill_then_resume(cmd + [f"--out_root={out}", "--overwrite"],
                                       [next(p for p in swap if p.startswith("convert.swap:"))])
  print(f"\nconvert fault cases (kill point, exit code): {cases}")
  assert not killpoints.temporaries(out)
  # Orbax names its OCDBT data files at random: compare those through the restored weights.
  got, want = (killpoints.tree(d, ignore=("*/state/d/*", "*/state/ocdbt.process_0/d/*"))
               for d in (out, clean))
  assert sorted(got) == sorted(want)
  assert got["trajectory.json"] == want["trajectory.json"]
  for step in (10, 20, 30, 40):  # every converted checkpoint restores to the clean one's weights
    a = nnx.state(orbax_checkpoints.restore(str(out / "m" / f"step{step}")))
    b = nnx.state(orbax_checkpoints.restore(str(clean / "m" / f"step{step}")))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      assert np.asarray(x).tobytes() == np.asarray(y).tobytes()

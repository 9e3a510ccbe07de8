"""SIGKILL the trends stage and checkpoint conversion at seeded points; reruns equal clean runs."""
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
  # The summary is compared too, but for the run's own duration.
  killpoints.kill_and_compare(
      lambda workdir: cmd + [f"--workdir={workdir}"], tmp_path / "clean", tmp_path / "killed",
      seed=SEED, required=("atomic:*/trends/*.png", "atomic:*/trends/*.csv",
                           "atomic:*/trends/*.html", "atomic:*/trends/summary.json"),
      normalise={"trends/summary.json": killpoints.without_fields("seconds")})


# Orbax names its OCDBT data files at random, and its manifests list those names: they are
# compared through the restored weights. Its metadata records when the checkpoint was written
# and where (the temporary directory, named with the writer's pid and a random tag): those
# fields are normalised, the rest compared byte for byte.
ORBAX_DATA = ("*/state/d/*", "*/state/ocdbt.process_0/d/*", "*/manifest.ocdbt")
ORBAX_METADATA = {
    "*/state/_CHECKPOINT_METADATA": killpoints.without_fields("init_timestamp_nsecs",
                                                              "commit_timestamp_nsecs"),
    "*/state/commit_success.txt": killpoints.substituted(rb"\.tmp-\d+-[0-9a-f]+",
                                                         b".tmp-{pid}-{tag}"),
}


def test_sigkill_during_conversion_then_resume_equals_clean_run(tmp_path, tiny_ckpt):
  config = test_kill._config(tmp_path, tiny_ckpt)  # pylint: disable=protected-access
  cmd = [sys.executable, str(ROOT / "launch" / "convert.py"), f"--trajectory={config.trajectory}"]
  clean, out = tmp_path / "clean", tmp_path / "killed"
  killpoints.kill_and_compare(
      lambda root: cmd + [f"--out_root={root}"], clean, out, seed=SEED,
      required=("convert.complete:*", "atomic:*/trajax_orbax.json", "atomic:*/trajectory.json"),
      ignore=ORBAX_DATA, normalise=ORBAX_METADATA)
  # Overwriting: killed with the old checkpoint moved aside and the new one not yet in place.
  killpoints.kill_and_compare(lambda root: cmd + [f"--out_root={root}", "--overwrite"], clean, out,
                              seed=SEED, required=("convert.swap:*",), ignore=ORBAX_DATA,
                              normalise=ORBAX_METADATA)
  for step in (10, 20, 30, 40):  # every converted checkpoint restores to the clean one's weights
    a = nnx.state(orbax_checkpoints.restore(str(out / "m" / f"step{step}")))
    b = nnx.state(orbax_checkpoints.restore(str(clean / "m" / f"step{step}")))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      assert np.asarray(x).tobytes() == np.asarray(y).tobytes()

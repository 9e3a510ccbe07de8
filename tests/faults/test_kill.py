"""SIGKILL a scoring run at seeded points it reaches; the rerun's store is bitwise identical.

Kill points (from a traced clean run, chosen with a seed): inside the atomic
writes of the store's JSON and token files, between a row and its done flag,
and after a done flag. After each kill the next run sweeps the residue and
resumes; the final workdir equals the clean one file for file.
"""
import sys

import numpy as np

from trajax import store
from conftest import OPT_TOKENIZER, ROOT, sweep_inputs
import killpoints

SEED = 20261123


def _config(tmp_path, tiny_ckpt):
  manifest, docs = sweep_inputs(tmp_path, tiny_ckpt, 4)
  from configs import score as score_config
  config = score_config.get_config()
  config.trajectory = manifest
  config.tokenizer = str(OPT_TOKENIZER)
  config.data.files = docs
  config.data.block_len = 256
  config.batch_size = 2
  return config


def _cli(config, workdir):
  return [
      sys.executable,
      str(ROOT / "launch" / "score.py"), f"--config={ROOT}/configs/score.py",
      f"--config.trajectory={config.trajectory}", f"--config.tokenizer={config.tokenizer}",
      f"--config.data.files={config.data.files}", "--config.data.block_len=256",
      "--config.batch_size=2", f"--workdir={workdir}"
  ]


def test_sigkill_at_seeded_points_then_resume_is_bitwise_identical(tmp_path, tiny_ckpt):
  config = _config(tmp_path, tiny_ckpt)
  clean, out = tmp_path / "clean", tmp_path / "killed"
  killpoints.kill_and_compare(
      lambda workdir: _cli(config, workdir), clean, out, seed=SEED,
      required=("atomic:*/store/dataset.json", "atomic:*/store/tokens.npz",
                "atomic:*/store/m/meta.json", "store.row:m:*", "store.done:m:*"))
  resumed, want = store.open(str(out)), store.open(str(clean))
  np.testing.assert_array_equal(resumed.status("m"), want.status("m"))
  assert resumed.logprobs("m").tobytes() == want.logprobs("m").tobytes()  # NaN payloads too

"""SIGKILL a scoring run at seeded random moments; the rerun's store is bitwise identical."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from trajax import store, sweep
from conftest import OPT_TOKENIZER, ROOT, sweep_inputs

SEED = 20261123


def _config(tmp_path, tiny_ckpt):
  manifest, docs = sweep_inputs(tmp_path, tiny_ckpt, 6)
  from configs import score as score_config
  config = score_config.get_config()
  config.trajectory = manifest
  config.tokenizer = str(OPT_TOKENIZER)
  config.data.files = docs
  config.data.block_len = 256
  config.batch_size = 2
  return config


def _cli(config, workdir):
  return [sys.executable, str(ROOT / "launch" / "score.py"), f"--config={ROOT}/configs/score.py",
          f"--config.trajectory={config.trajectory}", f"--config.tokenizer={config.tokenizer}",
          f"--config.data.files={config.data.files}", "--config.data.block_len=256",
          "--config.batch_size=2", f"--workdir={workdir}"]


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(tmp_path, tiny_ckpt):
  config = _config(tmp_path, tiny_ckpt)
  clean = sweep.run(config, str(tmp_path / "clean"))
  out = tmp_path / "killed"
  rng = np.random.default_rng(SEED)
  cases = []
  done_dir = out / "store" / "m" / "done"
  def n_done():  # each done flag is its own zarr chunk file, named by checkpoint index
    return len([f for f in os.listdir(done_dir) if f.isdigit()]) if done_dir.exists() else 0
  for attempt in range(4):
    # Kill once the run has finished a random number of further checkpoints, plus a random
    # fraction of the next one: during loading, scoring or the row write.
    target = min(n_done() + int(rng.integers(0, 3)), 5)
    delay = float(rng.uniform(0.0, 0.6))
    proc = subprocess.Popen(_cli(config, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while n_done() < target and proc.poll() is None and time.time() < deadline:
      time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = 0
    if (out / "store" / "m" / "meta.json").exists():
      done = int((store.open(str(out)).status("m") == store.DONE).sum())
    cases.append((round(delay, 2), proc.returncode, done))
  final = subprocess.run(_cli(config, out), capture_output=True, text=True, timeout=300)
  assert final.returncode == 0, final.stderr[-2000:]
  print(f"\nfault cases (delay s, exit code, checkpoints done at kill): {cases}")
  resumed = store.open(str(out))
  np.testing.assert_array_equal(resumed.status("m"), clean.status("m"))
  a, b = resumed.logprobs("m"), clean.logprobs("m")
  assert a.tobytes() == b.tobytes()  # bitwise, NaN payloads included
  # Done flags never precede their rows: every done row is complete (finite where predicted).
  predicted = (resumed.mask[:, 1:] & resumed.mask[:, :-1])
  rows = a.reshape(len(a), *resumed.mask.shape)[:, :, 1:]
  assert np.isfinite(rows[:, predicted]).all()

"""Two processes on this machine (coordinator on 127.0.0.1, 4 CPU devices each)."""
import contextlib
import os
import subprocess
import sys

import numpy as np

from trajax import store, sweep
from conftest import HANG_GUARD_S, ROOT, reserved_port
from test_sweep import _setup


def test_two_process_sweep_equals_single_process(tmp_path, tiny_ckpt):
  config, _ = _setup(tmp_path, tiny_ckpt)
  single = sweep.run(config, str(tmp_path / "single"))
  out = tmp_path / "multi"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  logs = [(tmp_path / f"p{pid}.out", tmp_path / f"p{pid}.err") for pid in range(2)]
  with reserved_port() as port, contextlib.ExitStack() as files:
    procs = []
    for pid in range(2):
      cmd = [
          sys.executable,
          str(ROOT / "launch" / "score.py"), f"--config={ROOT}/configs/score.py",
          f"--config.trajectory={config.trajectory}", f"--config.tokenizer={config.tokenizer}",
          f"--config.data.files={config.data.files}", "--config.data.block_len=32",
          "--config.mesh_shape=-1,1,1", "--config.batch_size=8", f"--workdir={out}",
          f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={pid}"
      ]
      # Output to files, not pipes: a process blocked on a full pipe that nobody drains
      # (while the test waits on the other one) would stall both at their next collective.
      stdout, stderr = (files.enter_context(open(f, "w")) for f in logs[pid])
      procs.append(subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr))
    for p in procs:
      p.wait(timeout=HANG_GUARD_S)
  results = [(o.read_text(), e.read_text()) for o, e in logs]
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  assert "valid PPL" in results[0][0] and "valid PPL" not in results[1][0]  # process 0 reports
  assert "8 global devices" in results[0][1] or "8 devices in 2 process(es)" in results[0][1]
  multi = store.open(str(out))
  for m in single.models:
    a, b = single.logprobs(m), multi.logprobs(m)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=1e-5)

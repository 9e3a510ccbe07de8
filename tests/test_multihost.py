"""Two processes on this machine (coordinator on 127.0.0.1, 4 CPU devices each)."""
import os
import socket
import subprocess
import sys

import numpy as np

from trajax import store, sweep
from conftest import ROOT
from test_sweep import _setup


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_sweep_equals_single_process(tmp_path, tiny_ckpt):
  config, _ = _setup(tmp_path, tiny_ckpt)
  single = sweep.run(config, str(tmp_path / "single"))
  out = tmp_path / "multi"
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
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
    procs.append(
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  results = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  assert "valid PPL" in results[0][0] and "valid PPL" not in results[1][0]  # process 0 reports
  assert "8 global devices" in results[0][1] or "8 devices in 2 process(es)" in results[0][1]
  multi = store.open(str(out))
  for m in single.models:
    a, b = single.logprobs(m), multi.logprobs(m)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=1e-5)

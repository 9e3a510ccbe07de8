"""SIGKILL the decoding stage (paper §4) at seeded random moments; the rerun equals a clean run.

The stage writes generations_{N}.jsonl, then generated_ppl_{N}.csv once per
checkpoint, then corrupted_ppl.csv, figures and an example table; every file
is replaced atomically. Kills land while generating, between and during the
per-checkpoint CSV writes, and while plotting.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import OPT_TOKENIZER, ROOT, write_manifest

SEED = 20261124
NEW_TOKENS = 12


def _cmd(tmp_path, tiny_ckpt):
  models = {}
  for name, hidden in (("s", 16), ("l", 32)):
    ckpts = []
    for k in range(3):
      path, _ = tiny_ckpt(f"{name}/step{k + 1}", seed=10 * hidden + k, vocab_size=50272,
                          hidden_size=hidden, num_hidden_layers=2, ffn_dim=2 * hidden,
                          num_attention_heads=2, max_position_embeddings=128)
      ckpts.append(((k + 1) * 10, path))
    models[name] = (100, ckpts)
  manifest = write_manifest(str(tmp_path / "traj.json"), models)
  docs = tmp_path / "docs"
  docs.mkdir()
  for i in range(6):
    (docs / f"{i}.txt").write_text(f"Document {i} tells of the river. " * 12)
  return [sys.executable, str(ROOT / "launch" / "decode.py"), f"--config={ROOT}/configs/decode.py",
          f"--config.trajectory={manifest}", f"--config.tokenizer={OPT_TOKENIZER}",
          f"--config.data.files={docs / '*.txt'}", f"--config.max_new_tokens={NEW_TOKENS}",
          "--config.batch_size=4", "--config.score_batch_size=4",
          "--config.corrupted.max_length=24", "--config.corrupted.fractions=(0.2, 1.0)"]


def _progress(out) -> int:
  """How far a run got: 0 nothing, 1 texts, 2+k k checkpoints scored, 9 corrupted texts."""
  if (out / "corrupted_ppl.csv").exists():
    return 9
  ppl = out / f"generated_ppl_{NEW_TOKENS}.csv"
  if ppl.exists():
    return 1 + len({tuple(line.split(",")[:2]) for line in ppl.read_text().splitlines()[1:]})
  return int((out / f"generations_{NEW_TOKENS}.jsonl").exists())


def test_sigkill_during_decoding_then_resume_equals_clean_run(tmp_path, tiny_ckpt):
  cmd = _cmd(tmp_path, tiny_ckpt)
  clean = tmp_path / "clean"
  run = subprocess.run(cmd + [f"--workdir={clean}"], capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  out = tmp_path / "killed"
  rng = np.random.default_rng(SEED)
  cases = []
  for _ in range(4):
    target = min(_progress(out) + int(rng.integers(0, 3)), 9)
    delay = float(rng.uniform(0.0, 0.8))
    proc = subprocess.Popen(cmd + [f"--workdir={out}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _progress(out) < target and proc.poll() is None and time.time() < deadline:
      time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cases.append((target, round(delay, 2), proc.returncode, _progress(out)))
  final = subprocess.run(cmd + [f"--workdir={out}"], capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-3000:]
  print(f"\ndecode fault cases (progress target, delay s, exit code, progress at kill): {cases}")
  # The run was killed at least once before it had finished.
  assert any(code == -signal.SIGKILL and got < 9 for _, _, code, got in cases)
  for name in (f"generations_{NEW_TOKENS}.jsonl", f"generated_ppl_{NEW_TOKENS}.csv",
               "corrupted_ppl.csv", f"examples_{NEW_TOKENS}.md"):
    assert (out / name).read_bytes() == (clean / name).read_bytes(), name
  assert sorted(p.name for p in out.glob("*.png")) == sorted(p.name for p in clean.glob("*.png"))
  assert not [f for f in os.listdir(out) if ".tmp-" in f]

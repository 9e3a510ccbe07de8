"""Scoring a whole trajectory into the store: values, resume, refusal to mix datasets."""
import os
import subprocess
import sys

import numpy as np
import pytest

import trajax
from trajax import store, stream, sweep, trajectory
from conftest import HANG_GUARD_S, OPT_TOKENIZER, ROOT, held_workdir, torch_logprobs, write_manifest

SMALL = dict(vocab_size=50272, hidden_size=16, num_hidden_layers=2, ffn_dim=32,
             num_attention_heads=2, max_position_embeddings=64)
TEXTS = [
    "It was a bright cold day in April, and the clocks were striking thirteen. " * 3,
    "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea.", "Short one."
]


def _setup(tmp_path, tiny_ckpt):
  """Two models x 3 checkpoints, three documents; returns (config, refs)."""
  models, refs = {}, {}
  for name, layers in (("small", 1), ("large", 2)):
    ckpts = []
    for k, step in enumerate((10, 20, 40)):
      path, ref = tiny_ckpt(f"{name}/step{step}", seed=100 * layers + k,
                            **dict(SMALL, num_hidden_layers=layers))
      ckpts.append((step, path))
      refs[(name, step)] = ref
    models[name] = (1000, ckpts)
  docs = tmp_path / "docs"
  docs.mkdir()
  for i, t in enumerate(TEXTS):
    (docs / f"{i}.txt").write_text(t)
  from configs import score as score_config
  config = score_config.get_config()
  config.trajectory = write_manifest(str(tmp_path / "trajectory.json"), models)
  config.tokenizer = str(OPT_TOKENIZER)
  config.data.files = str(docs / "*.txt")
  config.data.block_len = 32
  config.batch_size = 2
  return config, refs


def test_store_values_equal_torch_reference(tmp_path, tiny_ckpt):
  config, refs = _setup(tmp_path, tiny_ckpt)
  reader = sweep.run(config, str(tmp_path / "out"))
  assert reader.models == ["large", "small"] or set(reader.models) == {"small", "large"}
  tokens, mask = reader.tokens, reader.mask
  assert tokens.shape == (3, 32) and mask[2].sum() < 32  # the short doc is padded
  for name in ("small", "large"):
    lp = reader.logprobs(name)
    assert lp.shape == (3, 3 * 32)
    np.testing.assert_array_equal(reader.done_steps(name), [10, 20, 40])
    np.testing.assert_array_equal(reader.tokens_seen(name), [10000, 20000, 40000])
    for i, step in enumerate((10, 20, 40)):
      want = torch_logprobs(refs[(name, step)], tokens, mask).reshape(-1)
      np.testing.assert_array_equal(np.isnan(lp[i]), np.isnan(want))
      np.testing.assert_allclose(lp[i], want, atol=1e-4)
      ppl = np.exp(-np.nanmean(want))
      np.testing.assert_allclose(reader.valid_ppl(name)[i], ppl, rtol=1e-5)


class _Killed(Exception):
  pass


def test_interrupted_run_resumes_to_identical_store(tmp_path, tiny_ckpt, monkeypatch):
  config, _ = _setup(tmp_path, tiny_ckpt)
  clean = sweep.run(config, str(tmp_path / "clean"))

  writes = []
  real_write = store.ModelRows.write

  def write_then_die(self, index, row):
    if len(writes) == 4:  # the 5th checkpoint is "killed" before its row is written
      raise _Killed()
    writes.append((self.name, index))
    real_write(self, index, row)

  monkeypatch.setattr(store.ModelRows, "write", write_then_die)
  with pytest.raises(_Killed):
    sweep.run(config, str(tmp_path / "resumed"))
  monkeypatch.setattr(store.ModelRows, "write", real_write)
  partial = store.open(str(tmp_path / "resumed"))
  assert sum(int((partial.status(m) == store.DONE).sum()) for m in partial.models) == 4

  scored = []
  real_score = trajax.Scorer.score_blocks

  def counting(self, *a, **k):
    scored.append(1)
    return real_score(self, *a, **k)

  monkeypatch.setattr(trajax.Scorer, "score_blocks", counting)
  resumed = sweep.run(config, str(tmp_path / "resumed"))
  assert len(scored) == 2  # only the two pending checkpoints
  for m in clean.models:
    np.testing.assert_array_equal(resumed.logprobs(m), clean.logprobs(m))  # bitwise, NaN too
    np.testing.assert_array_equal(resumed.status(m), clean.status(m))


def test_reopen_with_other_dataset_is_refused(tmp_path, tiny_ckpt):
  config, _ = _setup(tmp_path, tiny_ckpt)
  sweep.run(config, str(tmp_path / "out"))
  config.data.block_len = 16
  with pytest.raises(ValueError, match="dataset.json: this store was written for dataset_hash"):
    sweep.run(config, str(tmp_path / "out"))


def test_failed_checkpoint_reported_and_rest_continue(tmp_path, tiny_ckpt):
  config, _ = _setup(tmp_path, tiny_ckpt)
  victim = os.path.join(str(tmp_path), "small", "step20", "model.safetensors")
  with open(victim, "r+b") as f:
    f.truncate(1000)
  with pytest.raises(ValueError, match="truncated"):
    sweep.run(config, str(tmp_path / "strict"))
  config.on_error = "continue"
  reader = sweep.run(config, str(tmp_path / "lenient"))
  np.testing.assert_array_equal(reader.status("small"), [store.DONE, store.FAILED, store.DONE])
  np.testing.assert_array_equal(reader.done_steps("small"), [10, 40])
  assert np.isnan(reader.logprobs("small", done_only=False)[1]).all()


def test_manifest_validation(tmp_path, tiny_ckpt):
  path, _ = tiny_ckpt("m/a")
  good = write_manifest(str(tmp_path / "t.json"), {"m": (10, [(1, path)])})
  traj = trajectory.load(good)
  assert traj.model("m").steps == [1] and traj.problems() == []
  bad = write_manifest(str(tmp_path / "t2.json"), {"m": (10, [(5, path), (5, path)])})
  with pytest.raises(ValueError, match=r"checkpoints\[1\]: step 5 does not follow step 5"):
    trajectory.load(bad)
  escape = write_manifest(
      str(tmp_path / "sub" / "t3.json") if os.makedirs(tmp_path / "sub") is None else "",
      {"m": (10, [(1, path)])})
  with pytest.raises(ValueError, match="outside the manifest root"):
    trajectory.load(escape)
  assert trajectory.load(escape, allow_outside_root=True).model("m").steps == [1]
  missing = write_manifest(str(tmp_path / "t4.json"), {"m": (10, [(1, str(tmp_path / "nope"))])})
  assert "does not exist" in trajectory.load(missing).problems()[0]


def test_launch_score_cli(tmp_path, tiny_ckpt):
  config, _ = _setup(tmp_path, tiny_ckpt)
  out = tmp_path / "cli"
  cmd = [
      sys.executable,
      str(ROOT / "launch" / "score.py"), f"--config={ROOT}/configs/score.py",
      f"--config.trajectory={config.trajectory}", f"--config.tokenizer={config.tokenizer}",
      f"--config.data.files={config.data.files}", "--config.data.block_len=32", f"--workdir={out}"
  ]
  res = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S)
  assert res.returncode == 0, res.stderr[-2000:]
  reader = store.open(str(out))
  lines = [l for l in res.stdout.splitlines() if "valid PPL" in l]
  assert len(lines) == 6
  want = reader.valid_ppl("small")[0]
  assert f"small\tstep 10\tvalid PPL {want:.4f}" in lines


def test_second_run_on_a_workdir_is_refused_until_holder_dies(tmp_path, tiny_ckpt):
  import signal
  from trajax import workdir
  config, _ = _setup(tmp_path, tiny_ckpt)
  out = tmp_path / "locked"
  with held_workdir(out) as holder:
    with pytest.raises(workdir.WorkdirBusy, match=rf"in use by another trajax run \(pid "
                       rf"{holder.pid}\)"):
      sweep.run(config, str(out))
    holder.send_signal(signal.SIGKILL)  # dies holding the lock
    holder.wait()
  reader = sweep.run(config, str(out))  # the dead holder's lock is gone
  assert (reader.status("small") == store.DONE).all()


def test_tokenizer_larger_than_model_vocab_refused_before_work(tmp_path, tiny_ckpt):
  path, _ = tiny_ckpt("m/a", vocab_size=96)
  docs = tmp_path / "d.txt"
  docs.write_text("The quick brown fox jumps over the lazy dog.")
  from configs import score as score_config
  config = score_config.get_config()
  config.trajectory = write_manifest(str(tmp_path / "t.json"), {"m": (10, [(1, path)])})
  config.tokenizer = str(OPT_TOKENIZER)
  config.data.files = str(docs)
  config.data.block_len = 16
  with pytest.raises(ValueError, match=r"config.json: vocab_size 96 is smaller than the tokenizer"):
    sweep.run(config, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / "store")


def test_unwritable_workdir_fails_before_work(tmp_path, tiny_ckpt):
  config, _ = _setup(tmp_path, tiny_ckpt)
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(OSError, match="cannot be created"):
    sweep.run(config, str(blocker / "out"))


def test_sequential_and_prefetching_sweeps_write_the_same_store_and_report_timings(
    tmp_path, tiny_ckpt, monkeypatch):
  config, _ = _setup(tmp_path, tiny_ckpt)
  events = []
  real_start_read, real_write = stream.CheckpointStream._start_read, store.ModelRows.write

  def start_read(self, pool, key, path):  # in the sweep's thread: the order is deterministic
    events.append(("read", os.path.basename(path)))
    return real_start_read(self, pool, key, path)

  def write(self, index, row):
    real_write(self, index, row)
    events.append(("written", f"step{self.steps[index]}"))

  monkeypatch.setattr(stream.CheckpointStream, "_start_read", start_read)
  monkeypatch.setattr(store.ModelRows, "write", write)
  runs = {}
  for prefetch in (False, True):
    config.prefetch = prefetch
    events.clear()
    timings = []
    runs[prefetch] = sweep.run(config, str(tmp_path / f"prefetch_{prefetch}"), timings=timings)
    assert [(t.model, t.checkpoints, t.prefetch) for t in timings] == [("small", 3, prefetch),
                                                                       ("large", 3, prefetch)]
    for t in timings:
      paths = trajectory.load(config.trajectory).model(t.model).checkpoints
      assert t.read_bytes == sum(
          sum(os.path.getsize(os.path.join(c.path, f)) for f in os.listdir(c.path)) for c in paths)
      assert t.read_s > 0 and t.compute_s > 0 and t.wall_s > 0 and 0 <= t.overlap
    if not prefetch:  # each read is asked for only after the previous checkpoint's row is written
      small = events[:6]
      assert small == [("read", "step10"), ("written", "step10"), ("read", "step20"),
                       ("written", "step20"), ("read", "step40"), ("written", "step40")]
    else:  # the next read is asked for before this checkpoint's row is written
      assert events.index(("read", "step20")) < events.index(("written", "step10"))
  for name in ("small", "large"):
    assert runs[True].logprobs(name).tobytes() == runs[False].logprobs(name).tobytes()

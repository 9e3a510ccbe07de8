"""HF -> orbax conversion: restores equal load_hf bit for bit, sharded, atomically written."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, write_manifest
from flax import nnx

import trajax
from trajax import convert, orbax_checkpoints, sharding, sweep, trajectory

POST_LN = {"do_layer_norm_before": False, "word_embed_proj_dim": 8}  # the 350m-style variant
IDS = np.random.RandomState(0).randint(3, 96, size=(2, 16))
MASK = np.ones(IDS.shape, bool)
MASK[1, 12:] = False


def _leaves(model) -> dict:
  return {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}


def _assert_bitwise_equal(got_model, want_model):
  got, want = _leaves(got_model), _leaves(want_model)
  assert got.keys() == want.keys()
  for key, w in want.items():
    g = got[key]
    assert (g.shape, g.dtype) == (w.shape, w.dtype), key
    np.testing.assert_array_equal(
        np.asarray(g).view(np.uint8),
        np.asarray(w).view(np.uint8), err_msg=key)


@pytest.mark.parametrize("variant", [{}, POST_LN], ids=["pre_ln", "post_ln_350m"])
def test_restore_equals_load_hf_bitwise(tmp_path, tiny_ckpt, variant):
  path, _ = tiny_ckpt(**variant)
  out = str(tmp_path / "orbax")
  marker = orbax_checkpoints.convert(path, out)
  assert orbax_checkpoints.is_orbax_checkpoint(
      out) and not orbax_checkpoints.is_orbax_checkpoint(path)
  ref = trajax.load_hf(path)
  assert marker["dtype"] == "float32" and marker["source"] == os.path.abspath(path)
  assert marker["params"] == sum(a.size for a in _leaves(ref).values())
  for dtype in (jnp.float32, jnp.bfloat16):
    want = trajax.load_hf(path, dtype=dtype)
    got = orbax_checkpoints.restore(out, dtype=dtype)
    assert type(got) is type(want) and got.config == want.config
    _assert_bitwise_equal(got, want)
    scorer = trajax.Scorer(want)
    scores_want = scorer(IDS, MASK)
    scorer.set_state(got)  # as the sweep swaps checkpoints
    np.testing.assert_array_equal(scorer(IDS, MASK), scores_want)  # NaN in the same places too


def test_bfloat16_stored_checkpoint(tmp_path, tiny_ckpt):
  """Converting at bf16 (zstd-compressed) stores bf16 and restores load_hf's bf16 values exactly."""
  path, _ = tiny_ckpt(**POST_LN)
  out = str(tmp_path / "bf16")
  marker = orbax_checkpoints.convert(path, out, dtype=jnp.bfloat16, compress=True)
  assert (marker["dtype"], marker["compressed"]) == ("bfloat16", True)
  stored = ocp.PyTreeCheckpointer().metadata(os.path.join(out, "state")).item_metadata.tree
  assert {str(a.dtype) for a in jax.tree.leaves(stored)} == {"bfloat16"}
  _assert_bitwise_equal(orbax_checkpoints.restore(out, dtype=jnp.bfloat16),
                        trajax.load_hf(path, dtype=jnp.bfloat16))


@pytest.mark.skipif(jax.device_count() < 8,
                    reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
def test_sharded_restore_matches_load_hf_shardings(tmp_path, tiny_ckpt):
  path, _ = tiny_ckpt(hidden_size=32, num_attention_heads=8, ffn_dim=64, vocab_size=96)
  out = str(tmp_path / "orbax")
  orbax_checkpoints.convert(path, out)
  fn = sharding.param_sharding_fn(sharding.make_mesh((2, 2, 2)))
  want = _leaves(trajax.load_hf(path, sharding_fn=fn))
  got = _leaves(orbax_checkpoints.restore(out, sharding_fn=fn))
  n_sharded = 0
  for key, w in want.items():
    g = got[key]
    assert g.sharding == w.sharding, key
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=key)
    if any(a is not None for a in g.sharding.spec):
      n_sharded += 1
      for shard in g.addressable_shards:
        assert shard.data.shape == g.sharding.shard_shape(g.shape), key
        assert shard.data.size < g.size, key
  assert n_sharded == len(want)  # every parameter of this shape has a split axis
  fc1 = got["model.decoder.layers.fc1.kernel"]
  assert {s.data.shape for s in fc1.addressable_shards} == {(2, 16, 32)}


def test_sweep_over_converted_checkpoints_equals_hf_sweep(tmp_path, tiny_ckpt):
  from test_sweep import _setup
  config, _ = _setup(tmp_path, tiny_ckpt)
  hf_manifest = config.trajectory
  hf = sweep.run(config, str(tmp_path / "hf"))
  converted = convert.convert_trajectory(hf_manifest, str(tmp_path / "orbax"))
  traj = trajectory.load(converted)
  assert all(
      orbax_checkpoints.is_orbax_checkpoint(c.path) for m in traj.models for c in m.checkpoints)
  assert traj.problems() == []
  step = traj.models[0].checkpoints[0].path
  os.remove(os.path.join(step, orbax_checkpoints.MARKER))  # no marker: an HF dir without weights
  assert step in trajectory.load(converted).problems()[0]
  shutil.rmtree(step)
  orbax_checkpoints.convert(trajectory.load(hf_manifest).models[0].checkpoints[0].path, step)
  config.trajectory = converted
  got = sweep.run(config, str(tmp_path / "from_orbax"))
  assert sorted(got.models) == sorted(hf.models)
  for m in hf.models:
    np.testing.assert_array_equal(got.logprobs(m), hf.logprobs(m))  # bitwise, NaN too
    np.testing.assert_array_equal(got.done_steps(m), hf.done_steps(m))
    np.testing.assert_array_equal(got.tokens_seen(m), hf.tokens_seen(m))
  # A rerun keeps what is converted; a destination holding something else is refused.
  assert convert.convert_trajectory(hf_manifest, str(tmp_path / "orbax")) == converted
  with pytest.raises(FileExistsError, match="is not the conversion of"):
    convert.convert_trajectory(hf_manifest, str(tmp_path / "orbax"), dtype="bfloat16")


def test_restore_without_marker_names_the_path(tmp_path, tiny_ckpt):
  path, _ = tiny_ckpt()
  with pytest.raises(ValueError, match=f"{path}: no trajax_orbax.json"):
    orbax_checkpoints.restore(path)


def test_config_disagreeing_with_saved_tree_names_key_and_shapes(tmp_path, tiny_ckpt):
  path, _ = tiny_ckpt()
  out = str(tmp_path / "orbax")
  orbax_checkpoints.convert(path, out)
  cfg_path = os.path.join(out, "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  with open(cfg_path, "w") as f:
    json.dump(dict(cfg, hidden_size=32, word_embed_proj_dim=32), f)
  with pytest.raises(
      ValueError, match=r"orbax/state: parameter 'model\.decoder\.embed_positions"
      r"\.embedding' has shape \[66, 16\], expected \[66, 32\]"):
    orbax_checkpoints.restore(out)
  with open(cfg_path, "w") as f:
    json.dump(dict(cfg, num_hidden_layers=3), f)
  with pytest.raises(
      ValueError, match=r"orbax/state: parameter 'model\.decoder\.layers\.fc1\.bias"
      r"' has shape \[2, 32\], expected \[3, 32\]"):
    orbax_checkpoints.restore(out)
  with open(cfg_path, "w") as f:
    json.dump(dict(cfg, **POST_LN), f)  # adds project_in/project_out
  with pytest.raises(
      ValueError, match=r"orbax/state: saved parameters do not match the opt "
      r"architecture .* missing 2: .*project_in"):
    orbax_checkpoints.restore(out)


def test_existing_out_dir_needs_overwrite(tmp_path, tiny_ckpt):
  path, _ = tiny_ckpt()
  out = str(tmp_path / "orbax")
  orbax_checkpoints.convert(path, out)
  with pytest.raises(FileExistsError, match="orbax: already exists; pass overwrite=True"):
    orbax_checkpoints.convert(path, out)
  assert orbax_checkpoints.convert(path, out, overwrite=True,
                                   dtype="bfloat16")["dtype"] == ("bfloat16")
  assert orbax_checkpoints.read_marker(out)["dtype"] == "bfloat16"
  other = tmp_path / "not_a_checkpoint"
  other.mkdir()
  with pytest.raises(FileExistsError, match="is not a trajax orbax checkpoint"):
    orbax_checkpoints.convert(path, str(other), overwrite=True)
  assert other.is_dir()
  assert sorted(os.listdir(tmp_path)) == ["ckpt", "not_a_checkpoint", "orbax"]  # no temp left


class _Killed(Exception):
  pass


def test_killed_conversion_leaves_no_out_dir(tmp_path, tiny_ckpt, monkeypatch):
  path, _ = tiny_ckpt()
  out = str(tmp_path / "orbax")
  real_save = orbax_checkpoints.ocp.PyTreeCheckpointer.save

  def save_then_die(self, directory, *args, **kwargs):
    real_save(self, directory, *args, **kwargs)  # the state is fully written...
    raise _Killed()  # ...and the process dies before the marker and the rename

  monkeypatch.setattr(orbax_checkpoints.ocp.PyTreeCheckpointer, "save", save_then_die)
  with pytest.raises(_Killed):
    orbax_checkpoints.convert(path, out)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]
  # Killed while replacing an existing conversion: the old one stays whole.
  monkeypatch.setattr(orbax_checkpoints.ocp.PyTreeCheckpointer, "save", real_save)
  orbax_checkpoints.convert(path, out)
  monkeypatch.setattr(orbax_checkpoints.ocp.PyTreeCheckpointer, "save", save_then_die)
  with pytest.raises(_Killed):
    orbax_checkpoints.convert(path, out, overwrite=True, dtype="bfloat16")
  assert sorted(os.listdir(tmp_path)) == ["ckpt", "orbax"]
  assert orbax_checkpoints.read_marker(out)["dtype"] == "float32"


def test_launch_convert_cli(tmp_path, tiny_ckpt):
  path, _ = tiny_ckpt()
  out = str(tmp_path / "cli")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  res = subprocess.run([
      sys.executable,
      str(ROOT / "launch" / "convert.py"), f"--hf_dir={path}", f"--out_dir={out}",
      "--dtype=bfloat16"
  ], capture_output=True, text=True, env=env, check=False)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stdout.strip().splitlines()[-1] == out
  _assert_bitwise_equal(orbax_checkpoints.restore(out, dtype=jnp.bfloat16),
                        trajax.load_hf(path, dtype=jnp.bfloat16))
  manifest = write_manifest(str(tmp_path / "t.json"), {"m": (10, [(1, path)])})
  res = subprocess.run([
      sys.executable,
      str(ROOT / "launch" / "convert.py"), f"--hf_dir={path}", f"--trajectory={manifest}"
  ], capture_output=True, text=True, env=env, check=False)
  assert res.returncode != 0 and "give either --hf_dir and --out_dir" in res.stderr

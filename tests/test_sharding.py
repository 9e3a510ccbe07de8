"""Sharded loading and scoring on 8 fake CPU devices equal the unsharded run."""
import jax
import numpy as np
import pytest
from flax import nnx

import trajax
from trajax import sharding

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
    " (the Makefile sets it)")


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8), (-1, 2, 1)])
def test_sharded_scoring_equals_unsharded(tiny_ckpt, mesh_shape):
  path, _ = tiny_ckpt(hidden_size=32, num_attention_heads=8, ffn_dim=64, vocab_size=96)
  ids = np.random.RandomState(0).randint(3, 96, size=(8, 24))
  mask = np.ones(ids.shape, bool)
  mask[3, 10:] = False
  want = trajax.token_logprobs(trajax.load_hf(path), ids, mask)
  mesh = sharding.make_mesh(mesh_shape)
  model = trajax.load_hf(path, sharding_fn=sharding.param_sharding_fn(mesh))
  got = trajax.token_logprobs(model, ids, mask)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_no_device_holds_a_full_sharded_parameter(tiny_ckpt):
  path, _ = tiny_ckpt(hidden_size=32, num_attention_heads=8, ffn_dim=64, vocab_size=96)
  mesh = sharding.make_mesh((2, 2, 2))
  model = trajax.load_hf(path, sharding_fn=sharding.param_sharding_fn(mesh))
  fc1 = model.model.decoder.layers.fc1.kernel[...]  # [layers, embed, mlp]
  assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  for shard in fc1.addressable_shards:
    assert shard.data.shape == (2, 16, 32)
  emb = model.model.decoder.embed_tokens.embedding[...]  # [vocab, embed]
  assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  # Every parameter with a sharded axis is split, so no device holds it whole.
  for path_, var in nnx.to_flat_state(nnx.state(model)):
    arr = var[...]
    if any(a is not None for a in arr.sharding.spec):
      assert all(s.data.size < arr.size for s in arr.addressable_shards), path_


def test_mesh_shape_errors():
  with pytest.raises(ValueError, match=r"mesh \[3, 1, 1\] needs 3 devices, have 8"):
    sharding.make_mesh((3, 1, 1))
  with pytest.raises(ValueError, match="not divisible by 3"):
    sharding.make_mesh((-1, 3, 1))


@pytest.mark.parametrize("mesh_shape", ["2,2,2", "-1,1,2"])
def test_sweep_on_a_mesh_equals_single_device(tmp_path, tiny_ckpt, mesh_shape):
  from test_sweep import _setup
  from trajax import sweep
  config, _ = _setup(tmp_path, tiny_ckpt)
  plain = sweep.run(config, str(tmp_path / "plain"))
  config.mesh_shape = mesh_shape
  config.batch_size = 4
  sharded = sweep.run(config, str(tmp_path / "sharded"))
  for m in plain.models:
    a, b = plain.logprobs(m), sharded.logprobs(m)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    np.testing.assert_allclose(a, b, atol=1e-5)

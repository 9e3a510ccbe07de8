"""Tests for the toy trainer (trajax.toy.train) and HF export (trajax.toy.export).

One tiny-preset family is trained once per session (module fixture); the tests
check its trajectory against independent references: transformers' own
`OPTForCausalLM` for the exported checkpoints, the manifest reader, the logs.
"""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import trajax
from configs import toy
from trajax import data as data_lib
from trajax import trajectory
from trajax.models import opt
from trajax.toy import export
from trajax.toy import train


def _log(model_dir):
  with open(os.path.join(model_dir, "train_log.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("toy"))
  config = toy.get_config("tiny")
  path = train.train_family(config, workdir)
  return config, workdir, path


# ------------------------------------------------------------------ schedule


def test_checkpoint_steps_dense_early_sparse_late():
  steps = train.checkpoint_steps(1000, 16)
  assert len(steps) == 16 and steps[-1] == 1000
  assert all(b > a for a, b in zip(steps, steps[1:]))
  gaps = np.diff(steps)
  assert gaps[0] < gaps[-1] / 10  # OPT-like: the late interval is far wider than the early one
  assert steps[0] == 20  # first_fraction=0.02
  # Rounding collisions among the earliest steps are pushed apart, never duplicated.
  tight = train.checkpoint_steps(20, 15)
  assert tight == sorted(set(tight)) and len(tight) == 15 and tight[-1] == 20
  assert train.checkpoint_steps(5, 5) == [1, 2, 3, 4, 5]
  with pytest.raises(ValueError, match="total_steps"):
    train.checkpoint_steps(5, 6)


def test_chunk_documents_and_batch_order():
  tokens, mask = train.chunk_documents([[10, 11, 12, 13, 14], [20]], seq_len=4)
  bos, pad = train.BOS_ID, train.PAD_ID
  np.testing.assert_array_equal(tokens,
                                [[bos, 10, 11, 12], [13, 14, pad, pad], [bos, 20, pad, pad]])
  np.testing.assert_array_equal(mask.sum(1), [4, 2, 2])
  order = train.batch_order(n_rows=10, batch_size=4, steps=5, seed=0)
  # Each epoch is a permutation: the first 10 draws cover every row once.
  assert sorted(order.reshape(-1)[:10].tolist()) == list(range(10))
  np.testing.assert_array_equal(order, train.batch_order(10, 4, 5, 0))


# -------------------------------------------------------------------- export


def test_save_hf_checkpoint_round_trip(tmp_path):
  import torch
  from transformers import OPTForCausalLM
  cfg = opt.OPTConfig(vocab_size=90, hidden_size=24, num_hidden_layers=3, ffn_dim=40,
                      num_attention_heads=3, max_position_embeddings=32)
  model = opt.create(cfg, seed=3)
  # Layer norms start at ones/zeros; make them random so a swapped key would show.
  graphdef, state = nnx.split(model)
  keys = iter(jax.random.split(jax.random.key(7), 100))
  state = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape), state)
  model = nnx.merge(graphdef, state)

  out = export.save_hf_checkpoint(model, tmp_path / "ckpt")
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  assert not os.path.exists(str(tmp_path / "ckpt") + ".tmp")
  hf, info = OPTForCausalLM.from_pretrained(out, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  assert not info["mismatched_keys"]
  assert hf.dtype == torch.float32

  ids = np.random.default_rng(0).integers(0, 90, (2, 32))
  with torch.no_grad():
    ref = hf.eval()(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), ref, atol=1e-4)
  back = trajax.load_hf(out)
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(model)),
                            nnx.to_flat_state(nnx.state(back))):
    np.testing.assert_array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()),
                                  err_msg=".".join(map(str, p)))

  # Re-exporting over an existing checkpoint replaces it whole.
  export.save_hf_checkpoint(opt.create(cfg, seed=4), out)
  assert not np.array_equal(np.asarray(trajax.load_hf(out)(jnp.asarray(ids))),
                            np.asarray(model(jnp.asarray(ids))))


# ------------------------------------------------------------------- trainer


def test_workdir_layout(family):
  config, workdir, path = family
  assert path == os.path.join(workdir, "trajectory.json")
  val = data_lib.read_documents(os.path.join(workdir, "data", "validation.jsonl"))
  assert len(val) == config.world.n_validation_docs
  assert len(data_lib.read_documents(os.path.join(workdir, "data", "train.jsonl"))) == \
      config.world.n_train_docs
  tasks = sorted(os.listdir(os.path.join(workdir, "tasks")))
  assert tasks and all(
      os.path.isfile(os.path.join(workdir, "tasks", t, "task.json")) for t in tasks)
  assert os.path.isfile(os.path.join(workdir, "tokenizer", "tokenizer.json"))


def test_manifest(family):
  config, workdir, path = family
  traj = trajectory.load(path)
  assert [m.name for m in traj.models] == [m["name"] for m in config.train.models]
  expected = train.checkpoint_steps(config.train.steps, config.train.checkpoints,
                                    config.train.first_checkpoint_fraction)
  for m in traj.models:
    assert m.steps == expected and len(m.steps) >= 12 and m.steps[-1] == config.train.steps
    assert m.tokens_per_step == config.train.batch_size * config.train.seq_len
    assert m.params == train.param_count(trajax.load_hf(m.checkpoints[-1].path))
  assert traj.problems() == []
  params = [m.params for m in traj.models]
  assert params == sorted(params) and params[-1] >= 30 * params[0]


def test_loss_decreases_and_scale_helps(family):
  config, workdir, path = family
  final_val = {}
  for spec in config.train.models:
    log = _log(os.path.join(workdir, "checkpoints", spec["name"]))
    losses = [r["loss"] for r in log if "loss" in r]
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert log[-1]["done"]
    # From ~log(vocab) at init to far below it.
    assert losses[0] > np.log(500) - 0.5 and losses[-1] < losses[0] - 1.5, spec["name"]
    assert vals[-1] < vals[0] - 1.5, spec["name"]
    final_val[spec["name"]] = vals[-1]
  names = [s["name"] for s in config.train.models]
  # The extremes differ by ~38x in parameters; the largest ends clearly lower (by ~2 nats).
  assert final_val[names[-1]] < final_val[names[0]] - 0.3, final_val


def test_exported_checkpoints_match_transformers(family):
  import torch
  from transformers import AutoTokenizer, OPTForCausalLM
  config, workdir, path = family
  traj = trajectory.load(path)
  tok_dir = traj.models[0].checkpoints[0].path  # tokenizer files travel with each checkpoint
  tokenizer = AutoTokenizer.from_pretrained(tok_dir)
  docs = data_lib.read_documents(os.path.join(workdir, "data", "validation.jsonl"))
  blocks = data_lib.make_blocks(docs[:3], tokenizer, block_len=config.train.seq_len)
  assert blocks.tokens[0, 0] == train.BOS_ID and blocks.mask.all()
  for m in (traj.models[0], traj.models[-1]):
    for ckpt in (m.checkpoints[0], m.checkpoints[-1]):
      hf, info = OPTForCausalLM.from_pretrained(ckpt.path, output_loading_info=True)
      assert not info["missing_keys"] and not info["unexpected_keys"], (ckpt.path, info)
      with torch.no_grad():
        logits = hf.eval()(torch.tensor(blocks.tokens, dtype=torch.long)).logits.double()
      ref = torch.log_softmax(logits, -1)[:, :-1].gather(
          -1, torch.tensor(blocks.tokens[:, 1:, None], dtype=torch.long))[..., 0].numpy()
      ours = trajax.token_logprobs(trajax.load_hf(ckpt.path), blocks.tokens, blocks.mask)
      assert np.isnan(ours[:, 0]).all()
      np.testing.assert_allclose(ours[:, 1:], ref, atol=1e-4, err_msg=ckpt.path)


def test_rerun_reuses_trained_models(family):
  config, workdir, path = family
  files = sorted(pathlib.Path(workdir, "checkpoints").rglob("model.safetensors"))

  def identity(f):  # a rewrite (atomic: a new file renamed over it) changes the inode
    st = f.stat()
    return st.st_ino, st.st_mtime_ns

  before = {f: identity(f) for f in files}
  logs = {
      s["name"]: _log(os.path.join(workdir, "checkpoints", s["name"])) for s in config.train.models
  }
  models = trajectory.load(path).models
  assert train.train_family(config, workdir) == path
  assert {f: identity(f) for f in files} == before
  for name, log in logs.items():
    assert _log(os.path.join(workdir, "checkpoints", name)) == log
  assert trajectory.load(path).models == models


def test_interrupted_model_is_retrained(tmp_path):
  config = toy.get_config("tiny")
  config.train.models = config.train.models[:1]
  config.train.steps = 24
  config.train.checkpoints = 3
  other = str(tmp_path / "w")
  train.train_family(config, other)
  model_dir = pathlib.Path(other, "checkpoints", config.train.models[0]["name"])
  final = model_dir / "step24"
  # A run killed before its final export: the final checkpoint does not exist.
  os.rename(final, str(final) + ".tmp")
  train.train_family(config, other)
  assert final.is_dir() and not pathlib.Path(str(final) + ".tmp").exists()
  assert sum("done" in r for r in _log(model_dir)) == 1  # a fresh log, not appended
  # A changed training config is never silently reused.
  config.train.data_seed = 1  # (not an optimizer field: the compiled step is reused)
  weights = (final / "model.safetensors").read_bytes()
  train.train_family(config, other)
  # Retrained on the new data order: other weights (compared, not file times, which a fast
  # rewrite can leave equal).
  assert (final / "model.safetensors").read_bytes() != weights
  assert json.loads((model_dir / "train_config.json").read_text())["train"]["data_seed"] == 1

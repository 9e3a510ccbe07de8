"""Loading HF checkpoint directories: formats, strictness, clear errors."""
import json
import os
import pickle

import ml_dtypes
import numpy as np
import pytest
import torch

import trajax
from trajax import safetensors_io
from conftest import torch_logprobs

IDS = np.random.RandomState(0).randint(3, 96, size=(2, 16))
MASK = np.ones(IDS.shape, bool)


def _assert_matches(path, ref):
  got = trajax.token_logprobs(trajax.load_hf(path), IDS, MASK)
  np.testing.assert_allclose(got, torch_logprobs(ref, IDS, MASK), atol=1e-4, rtol=0)


def test_sharded_safetensors_index(tiny_ckpt):
  path, ref = tiny_ckpt(save_kwargs=dict(max_shard_size="20KB"))
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 1
  _assert_matches(path, ref)


def test_torch_bin_weights_only(tiny_ckpt):
  path, ref = tiny_ckpt()
  # The legacy format (transformers 5 no longer writes it): a torch state dict, tied head removed.
  os.remove(os.path.join(path, "model.safetensors"))
  state = {k: v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
  torch.save(state, os.path.join(path, "pytorch_model.bin"))
  _assert_matches(path, ref)


def test_legacy_keys_without_model_prefix(tiny_ckpt, tmp_path):
  """The hub's facebook/opt-* files store `decoder.*` keys and sometimes `lm_head.weight`."""
  path, ref = tiny_ckpt()
  f = safetensors_io.SafetensorsFile(os.path.join(path, "model.safetensors"))
  tensors = {k.removeprefix("model."): np.array(f.read(k)) for k in f.keys()}
  tensors["lm_head.weight"] = tensors["decoder.embed_tokens.weight"]
  safetensors_io.save(tensors, os.path.join(path, "model.safetensors"))
  _assert_matches(path, ref)


def test_bfloat16_checkpoint_file(tiny_ckpt):
  """A checkpoint stored in bf16 loads (as float32 or bfloat16) with the same values."""
  path, ref = tiny_ckpt()
  ref16 = ref.to(torch.bfloat16)
  ref16.save_pretrained(path)
  model = trajax.load_hf(path)
  want = ref16.model.decoder.layers[1].fc1.weight.detach().float().numpy().T
  got = np.asarray(model.model.decoder.layers.fc1.kernel[...])[1]
  np.testing.assert_array_equal(got, want)


def _rewrite(path, edit):
  fpath = os.path.join(path, "model.safetensors")
  f = safetensors_io.SafetensorsFile(fpath)
  tensors = {k: np.array(f.read(k)) for k in f.keys()}
  edit(tensors)
  safetensors_io.save(tensors, fpath)
  return fpath


def test_missing_key_is_named(tiny_ckpt):
  path, _ = tiny_ckpt()
  _rewrite(path, lambda t: t.pop("model.decoder.layers.1.fc2.bias"))
  with pytest.raises(ValueError, match=r"missing 1: \['model.decoder.layers.1.fc2.bias'\]"):
    trajax.load_hf(path)


def test_unexpected_key_is_named(tiny_ckpt):
  path, _ = tiny_ckpt()
  _rewrite(
      path,
      lambda t: t.update({"model.decoder.layers.2.fc1.weight": np.zeros((32, 16), np.float32)}))
  with pytest.raises(ValueError, match=r"unexpected 1: \['model.decoder.layers.2.fc1.weight'\]"):
    trajax.load_hf(path)


def test_wrong_shape_is_named(tiny_ckpt):
  path, _ = tiny_ckpt()
  fpath = _rewrite(
      path,
      lambda t: t.update({"model.decoder.layers.0.fc1.weight": np.zeros((31, 16), np.float32)}))
  with pytest.raises(
      ValueError, match=rf"{fpath}: tensor 'model.decoder.layers.0.fc1.weight' has "
      r"shape \[31, 16\], expected \[32, 16\]"):
    trajax.load_hf(path)


def test_truncated_file_is_named(tiny_ckpt):
  path, _ = tiny_ckpt()
  fpath = os.path.join(path, "model.safetensors")
  size = os.path.getsize(fpath)
  with open(fpath, "r+b") as f:
    f.truncate(size - 100)
  with pytest.raises(ValueError, match=rf"{fpath}: truncated: tensor .* ends at byte"):
    trajax.load_hf(path)
  with open(fpath, "r+b") as f:
    f.truncate(5)
  with pytest.raises(ValueError, match="not a safetensors file"):
    trajax.load_hf(path)


def test_missing_shard_is_named(tiny_ckpt):
  path, _ = tiny_ckpt(save_kwargs=dict(max_shard_size="20KB"))
  index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
  victim = sorted(set(index["weight_map"].values()))[1]
  os.remove(os.path.join(path, victim))
  with pytest.raises(FileNotFoundError, match=f"lists shard '{victim}', which is missing"):
    trajax.load_hf(path)


@pytest.mark.parametrize("stored", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_weights_refused(tiny_ckpt, stored, bad):
  path, _ = tiny_ckpt()

  def poison(t):
    for k in t:
      t[k] = t[k].astype(ml_dtypes.bfloat16 if stored == "bfloat16" else stored)
    t["model.decoder.layers.1.fc1.weight"][3, 4] = bad

  _rewrite(path, poison)
  with pytest.raises(ValueError, match="fc1.weight.*NaN or Inf"):
    trajax.load_hf(path)
  trajax.load_hf(path, check_finite=False)  # the check is what refuses them


def test_unknown_model_type_lists_supported(tiny_ckpt):
  path, _ = tiny_ckpt()
  cfg = json.load(open(os.path.join(path, "config.json")))
  cfg["model_type"] = "llama9"
  json.dump(cfg, open(os.path.join(path, "config.json"), "w"))
  with pytest.raises(
      ValueError, match=r"model_type 'llama9' is not supported; supported: "
      r"\['gpt_neo', 'gpt_neox', 'llama', 'olmo', 'olmo2', 'opt'\]"):
    trajax.load_hf(path)


def test_no_weights_and_no_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    trajax.load_hf(tmp_path)
  (tmp_path / "config.json").write_text(
      json.dumps(
          dict(model_type="opt", vocab_size=8, hidden_size=4, num_hidden_layers=1, ffn_dim=4,
               num_attention_heads=1, max_position_embeddings=8)))
  with pytest.raises(FileNotFoundError, match="no weights found"):
    trajax.load_hf(tmp_path)


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch pwned_marker",))


def test_malicious_pickle_never_runs(tiny_ckpt, tmp_path, monkeypatch):
  path, _ = tiny_ckpt()
  os.remove(os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "pytorch_model.bin"), "wb") as f:
    pickle.dump({"model.decoder.embed_tokens.weight": _Evil()}, f)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ValueError, match="cannot be read as a weights-only torch checkpoint"):
    trajax.load_hf(path)
  assert not os.path.exists(tmp_path / "pwned_marker")


def test_token_id_outside_vocab(tiny_ckpt):
  path, _ = tiny_ckpt()
  model = trajax.load_hf(path)
  ids = IDS.copy()
  ids[1, 5] = 96
  with pytest.raises(
      ValueError, match=r"token id 96 at \[1, 5\] is outside the model's "
      r"vocabulary \[0, 96\)"):
    trajax.token_logprobs(model, ids)
  # Out-of-range ids in padding are ignored (never read).
  mask = np.ones(ids.shape, bool)
  mask[1, 5:] = False
  assert np.isnan(trajax.token_logprobs(model, ids, mask)[1, 5:]).all()


def test_safetensors_round_trip_matches_reference_library(tmp_path):
  """Our writer/reader agree with the `safetensors` package byte for byte in values."""
  from safetensors.numpy import load_file, save_file
  rng = np.random.RandomState(0)
  tensors = {
      "a": rng.randn(3, 4).astype(np.float32), "b": rng.randint(0, 9, (5,)).astype(np.int64),
      "c": rng.randn(2, 2).astype(np.float16)
  }
  safetensors_io.save(tensors, tmp_path / "ours.safetensors")
  theirs = load_file(str(tmp_path / "ours.safetensors"))
  save_file(tensors, str(tmp_path / "theirs.safetensors"))
  ours = safetensors_io.SafetensorsFile(tmp_path / "theirs.safetensors")
  for k, v in tensors.items():
    np.testing.assert_array_equal(theirs[k], v)
    np.testing.assert_array_equal(ours.read(k), v)


def test_from_state_dict_equals_load_hf(tiny_ckpt):
  from trajax import hf_checkpoints
  path, ref = tiny_ckpt(do_layer_norm_before=False, word_embed_proj_dim=8)
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  hf_config = json.load(open(os.path.join(path, "config.json")))
  model = hf_checkpoints.from_state_dict(hf_config, state)
  _assert_matches(path, ref)
  np.testing.assert_allclose(trajax.token_logprobs(model, IDS, MASK),
                             torch_logprobs(ref, IDS, MASK), atol=1e-4)
  state.pop("model.decoder.layers.0.fc1.bias")
  with pytest.raises(ValueError, match=r"<state dict>: checkpoint keys do not match .* missing 1"):
    hf_checkpoints.from_state_dict(hf_config, state)


def test_integer_weights_are_refused(tiny_ckpt):
  path, _ = tiny_ckpt()
  fpath = _rewrite(path,
                   lambda t: t.update({"model.decoder.layers.0.fc2.bias": np.zeros(16, np.int64)}))
  with pytest.raises(
      ValueError, match=rf"{fpath}: tensor 'model.decoder.layers.0.fc2.bias' has "
      r"dtype int64, expected a floating-point weight"):
    trajax.load_hf(path)

"""trajax's Flax GPT-NeoX (Pythia) against transformers' PyTorch GPT-NeoX, same random weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import trajax
from test_gpt_neo import check_cached_decoding
from test_gpt_neo import torch_logprobs
from trajax import models
from trajax.models import gpt_neox, layers

# head_dim 16: rotary_pct 0.25 rotates 4 dims per head.
TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=48, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)

VARIANTS = {
    "pythia": dict(rotary_pct=0.25),
    "full_rotary_base_500": dict(rotary_pct=1.0, rotary_emb_base=500),
    "sequential_residual": dict(use_parallel_residual=False, rotary_pct=0.5),
    "no_attention_bias_gelu_new": dict(attention_bias=False, hidden_act="gelu_new"),
    "tied_head_eps": dict(tie_word_embeddings=True, layer_norm_eps=1e-3),
}


def test_family_is_registered():
  assert models.FAMILIES["gpt_neox"] is gpt_neox


def hf_neox(seed=0, **overrides):
  from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
  torch.manual_seed(seed)
  model = GPTNeoXForCausalLM(GPTNeoXConfig(**dict(TINY, **overrides),
                                           attn_implementation="eager")).eval()
  with torch.no_grad():  # random layer norms and biases, larger weights: every term matters
    for name, p in model.named_parameters():
      if "layernorm" in name or "layer_norm" in name or name.endswith(".bias"):
        p.add_(0.1 * torch.randn_like(p))
      elif p.dim() == 2:
        p.mul_(5.0)
  return model


def _batch(vocab, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, vocab, size=(4, 24))
  mask = np.ones(ids.shape, bool)
  mask[1, 17:] = False  # right padding
  mask[2, 3:] = False  # mostly padding
  mask[3, :6] = False  # left padding
  return ids, mask


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_logprobs_match_torch(tmp_path, variant):
  ref = hf_neox(**VARIANTS[variant])
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  assert isinstance(model, gpt_neox.GPTNeoXForCausalLM)
  ids, mask = _batch(96)
  got = trajax.token_logprobs(model, ids, mask)
  want = torch_logprobs(ref, ids, mask)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert np.isfinite(got[0, 1:]).all() and np.isnan(got[3, :7]).all()
  counts = gpt_neox.param_breakdown(model.config)
  assert counts["total"] == sum(p.numel() for p in ref.parameters())
  _, state = nnx.split(model)
  assert counts["total"] == sum(x.size for x in jax.tree.leaves(state))


def test_hf_default_positions_give_the_same_logprobs(tmp_path):
  """Rotary attention sees only position differences: HF's arange positions on a
  left-padded batch agree with trajax's numbering."""
  ref = hf_neox()
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  ids, mask = _batch(96)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(ids),
               attention_mask=torch.tensor(mask.astype(int))).logits.numpy()
  got = np.asarray(model(ids, mask))
  np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=0)


def test_fused_qkv_layout_and_rotary(tmp_path):
  """Per-layer parity (so a failure names the layer) and q/k/v split as HF's."""
  ref = hf_neox(rotary_pct=0.25)
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  x = np.random.RandomState(0).randn(2, 12, 32).astype(np.float32)
  pos = np.broadcast_to(np.arange(12), (2, 12))
  slots = jnp.arange(12)
  mask = layers.causal_mask(slots, slots, jnp.ones((2, 12), bool))
  rope = gpt_neox.rotary_tables(pos, model.config.rotary_ndims, model.config.rotary_emb_base)
  with torch.no_grad():
    cos, sin = ref.gpt_neox.rotary_emb(torch.tensor(x), torch.tensor(pos))
  np.testing.assert_allclose(np.asarray(rope[0][:, :, 0]), cos.numpy(), atol=1e-6)
  np.testing.assert_allclose(np.asarray(rope[1][:, :, 0]), sin.numpy(), atol=1e-6)
  causal = torch.full((12, 12), torch.finfo(torch.float32).min).triu(1)[None, None]
  for i in range(3):
    with torch.no_grad():
      want = ref.gpt_neox.layers[i](torch.tensor(x), attention_mask=causal,
                                    position_embeddings=(cos, sin)).numpy()
    got, _ = model.gpt_neox.layer(i)(x, rope, mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, err_msg=f"layer {i}")


def test_kv_cache_decoding_equals_recompute():
  """Cached keys are stored rotated: decoding must match the full recompute."""
  cfg = gpt_neox.GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=32, rotary_pct=0.5)
  check_cached_decoding(gpt_neox.create(cfg, seed=2))


def test_config_spellings():
  """Pythia's config.json (rotary_pct / rotary_emb_base) and transformers 5's rope_parameters."""
  pythia_410m = {
      "architectures": ["GPTNeoXForCausalLM"
                       ], "bos_token_id": 0, "eos_token_id": 0, "hidden_act": "gelu",
      "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 4096,
      "layer_norm_eps": 1e-05, "max_position_embeddings": 2048, "model_type": "gpt_neox",
      "num_attention_heads": 16, "num_hidden_layers": 24, "rotary_emb_base": 10000,
      "rotary_pct": 0.25, "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
      "use_parallel_residual": True, "vocab_size": 50304
  }
  cfg = gpt_neox.GPTNeoXConfig.from_hf_config(pythia_410m)
  assert cfg.rotary_ndims == 16 and cfg.pad_token_id == 0
  assert gpt_neox.GPTNeoXConfig.from_hf_config(cfg.to_hf_config()) == cfg
  v5 = hf_neox(rotary_pct=0.5, rotary_emb_base=500).config.to_dict()
  assert "rotary_pct" not in v5
  cfg = gpt_neox.GPTNeoXConfig.from_hf_config(v5)
  assert (cfg.rotary_pct, cfg.rotary_emb_base) == (0.5, 500.0)
  with pytest.raises(ValueError, match="rope type 'linear' is not supported"):
    gpt_neox.GPTNeoXConfig.from_hf_config(
        dict(pythia_410m, rope_scaling={"type": "linear", "factor": 2.0}))


def test_old_checkpoint_keys():
  cfg = gpt_neox.GPTNeoXConfig(**{k: v for k, v in TINY.items()})
  ignored = gpt_neox.ignored_hf_keys(cfg)
  assert "gpt_neox.layers.2.attention.rotary_emb.inv_freq" in ignored
  assert "gpt_neox.layers.0.attention.masked_bias" in ignored
  assert "embed_out.weight" not in ignored
  assert gpt_neox.normalize_hf_key("lm_head.weight") == "embed_out.weight"
  assert gpt_neox.normalize_hf_key("layers.0.mlp.dense_h_to_4h.bias") == (
      "gpt_neox.layers.0.mlp.dense_h_to_4h.bias")


# Pythia paper (Biderman et al. 2023), Table 1: total and non-embedding parameters.
PYTHIA = {  # name: (layers, hidden, heads, vocab), total, non-embedding
    "70m": ((6, 512, 8, 50304), 70_426_624, 18_915_328),
    "160m": ((12, 768, 12, 50304), 162_322_944, 85_056_000),
    "410m": ((24, 1024, 16, 50304), 405_334_016, 302_311_424),
    "1b": ((16, 2048, 8, 50304), 1_011_781_632, 805_736_448),
    "1.4b": ((24, 2048, 16, 50304), 1_414_647_808, 1_208_602_624),
    "2.8b": ((32, 2560, 32, 50304), 2_775_208_960, 2_517_652_480),
    "6.9b": ((32, 4096, 32, 50432), 6_857_302_016, 6_444_163_072),
    "12b": ((36, 5120, 40, 50688), 11_846_072_320, 11_327_027_200),
}


@pytest.mark.parametrize("name", list(PYTHIA))
def test_pythia_param_counts(name):
  (n_layers, hidden, heads, vocab), total, non_embedding = PYTHIA[name]
  cfg = gpt_neox.GPTNeoXConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=n_layers,
                               num_attention_heads=heads, intermediate_size=4 * hidden)
  counts = gpt_neox.param_breakdown(cfg)
  assert (counts["total"], counts["non_embedding"]) == (total, non_embedding)
  abstract = nnx.eval_shape(lambda: gpt_neox.create(cfg, dtype=jnp.bfloat16, seed=None))
  assert sum(x.size for x in jax.tree.leaves(nnx.split(abstract)[1])) == total

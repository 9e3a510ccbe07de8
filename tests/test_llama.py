"""trajax's Llama-architecture families (Llama, OLMo, OLMo-2) against transformers' PyTorch
models on the same random weights; here Llama and what the three share (rope, GQA, sharding)."""
import jax
import numpy as np
import pytest
import torch
from flax import nnx

import trajax
from conftest import torch_logprobs
from test_gpt_neo import check_cached_decoding
from trajax import models, sharding
from trajax.models import llama, olmo, olmo2, rope

# head_dim 8; 2 layers. Tests override fields to get each variant.
TINY = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=48, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
# llama3 with original context 32 and theta 100: head_dim 8 has one frequency in each of its
# regimes (kept, smoothed, divided by factor), so every branch is exercised.
LLAMA3 = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32
}

VARIANTS = {
    "mha_theta_500": dict(rope_theta=500.0),
    "gqa2_linear_biases": dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                               rope_scaling={"type": "linear", "factor": 2.0}),
    "mqa_llama3_tied": dict(num_key_value_heads=1, tie_word_embeddings=True, rope_theta=100.0,
                            rope_scaling=LLAMA3),
    "dynamic_head_dim_16_gelu": dict(num_key_value_heads=2, head_dim=16, hidden_act="gelu",
                                     rms_norm_eps=1e-3,
                                     rope_scaling={"rope_type": "dynamic", "factor": 4.0}),
}


def hf_model(family="llama", seed=0, **overrides):
  """A random transformers model of `family`, eval mode, eager attention; norms and biases
  perturbed and weights scaled up so that every term shows in the log-probs."""
  import transformers
  from transformers.utils import logging as hf_logging
  cls = {"llama": "Llama", "olmo": "Olmo", "olmo2": "Olmo2"}[family]
  hf_logging.set_verbosity_error()  # tiny vocabularies make transformers warn about token ids
  cfg = getattr(transformers, f"{cls}Config")(**dict(TINY, **overrides),
                                              attn_implementation="eager")
  torch.manual_seed(seed)
  model = getattr(transformers, f"{cls}ForCausalLM")(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name or name.endswith(".bias"):
        p.add_(0.1 * torch.randn_like(p))
      elif p.dim() == 2:
        p.mul_(5.0)
  return model


def batch(vocab, seed=0, length=24):
  """4 rows: full, right-padded, mostly padding, left-padded."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, size=(4, length))
  mask = np.ones(ids.shape, bool)
  mask[1, 17:] = False
  mask[2, 3:] = False
  mask[3, :6] = False
  return ids, mask


def check_round_trip(tmp_path, ref, family):
  """Per-token log-probs of the saved checkpoint equal torch's at 1e-4; counts equal HF's."""
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  assert model.config.family == family
  ids, mask = batch(ref.config.vocab_size)
  got = trajax.token_logprobs(model, ids, mask)
  want = torch_logprobs(ref, ids, mask)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert np.isfinite(got[0, 1:]).all() and np.isnan(got[3, :7]).all()
  fam = models.family(family)
  assert fam.param_count(model.config) == sum(p.numel() for p in ref.parameters())
  assert fam.param_count(model.config) == sum(x.size for x in jax.tree.leaves(nnx.split(model)[1]))
  return model


def test_families_are_registered():
  assert (models.FAMILIES["llama"], models.FAMILIES["olmo"],
          models.FAMILIES["olmo2"]) == (llama, olmo, olmo2)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_logprobs_match_torch(tmp_path, variant):
  check_round_trip(tmp_path, hf_model("llama", **VARIANTS[variant]), "llama")


@pytest.mark.parametrize("family,overrides", [
    ("llama", dict(num_key_value_heads=2, rope_scaling=LLAMA3, rope_theta=100.0)),
    ("olmo", dict(num_key_value_heads=1, clip_qkv=2.0)),
    ("olmo2", dict(num_key_value_heads=2)),
])
def test_packed_rows_match_torch_per_sequence(tmp_path, family, overrides):
  """Several sequences per row (`trajax.packing`), each scored as torch scores it alone."""
  from trajax import packing
  ref = hf_model(family, **overrides)
  ref.save_pretrained(tmp_path)
  rng = np.random.RandomState(0)
  seqs = [rng.randint(3, 96, size=rng.randint(2, 20)).tolist() for _ in range(11)]
  packed = packing.pack(seqs, row_len=40)
  assert packed.tokens_bt.shape[0] < len(seqs)
  lp_bt = trajax.Scorer(trajax.load_hf(tmp_path))(packed.tokens_bt,
                                                  segment_ids_bt=packed.segment_ids_bt)
  for seq, got in zip(seqs, packing.unpack(lp_bt, packed)):
    ids = np.asarray([seq])
    want = torch_logprobs(ref, ids, np.ones(ids.shape, bool))[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_rope_tables_equal_transformers():
  """inv_freq of every supported type against transformers' own rope init functions."""
  from transformers import LlamaConfig
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  cases = {
      "linear": {"rope_type": "linear", "factor": 3.0},
      "llama3": dict(LLAMA3),
      "dynamic": {"rope_type": "dynamic", "factor": 4.0},
  }
  for name, params in cases.items():
    hf = LlamaConfig(**dict(TINY, head_dim=16, rope_scaling=params, rope_theta=100.0))
    want, scale = ROPE_INIT_FUNCTIONS[name](hf, "cpu")
    ours = rope.from_hf(_fields(hf.to_dict()), 64)
    # Within an ulp: torch divides by a scalar as a multiplication by its reciprocal.
    np.testing.assert_allclose(ours.inv_freq(16), want.numpy(), rtol=2e-7, atol=0, err_msg=name)
    assert scale == 1.0


def _fields(hf):
  from trajax.models import hf_config
  return hf_config.HFFields(hf, "config.json")


def test_dynamic_rope_refuses_longer_than_max_positions(tmp_path):
  ref = hf_model("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0},
                 max_position_embeddings=16)
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  ids = np.random.RandomState(0).randint(3, 96, size=(1, 16))
  want = torch_logprobs(ref, ids, np.ones(ids.shape, bool))
  np.testing.assert_allclose(trajax.token_logprobs(model, ids), want, atol=1e-4)
  longer = np.concatenate([ids, ids], 1)
  with pytest.raises(ValueError, match="max_position_embeddings=16"):  # the scorer's own check
    trajax.token_logprobs(model, longer)
  with pytest.raises(ValueError, match="'dynamic': sequences of 32 tokens exceed"):
    model(longer)
  with pytest.raises(ValueError, match="'dynamic': sequences of 17 tokens exceed"):
    model.forward_cached(ids[:, :1], np.zeros((1, 1), int), np.ones((1, 17), bool),
                         model.init_cache(1, 17), 0)


def test_hf_default_positions_give_the_same_logits(tmp_path):
  """HF numbers a left-padded row from 0 at the padding; rotary sees only differences."""
  ref = hf_model("llama", num_key_value_heads=2)
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  ids, mask = batch(96)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(ids),
               attention_mask=torch.tensor(mask.astype(int))).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(ids, mask))[mask], want[mask], atol=1e-4)


def test_per_layer_parity(tmp_path):
  """One decoder layer and the rotary tables against HF's, so a failure names the piece."""
  ref = hf_model("llama", num_key_value_heads=2, rope_scaling=LLAMA3, rope_theta=100.0)
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  x = np.random.RandomState(0).randn(2, 12, 32).astype(np.float32)
  pos = np.broadcast_to(np.arange(12), (2, 12))
  cos, sin = model.model.rope_tables(pos)
  with torch.no_grad():
    want_cos, want_sin = ref.model.rotary_emb(torch.tensor(x), torch.tensor(pos))
  np.testing.assert_allclose(np.asarray(cos[:, :, 0]), want_cos.numpy(), atol=1e-6)
  np.testing.assert_allclose(np.asarray(sin[:, :, 0]), want_sin.numpy(), atol=1e-6)
  from trajax.models import layers
  slots = jax.numpy.arange(12)
  mask = layers.causal_mask(slots, slots, jax.numpy.ones((2, 12), bool))
  causal = torch.full((12, 12), torch.finfo(torch.float32).min).triu(1)[None, None]
  for i in range(2):
    with torch.no_grad():
      want = ref.model.layers[i](torch.tensor(x), attention_mask=causal,
                                 position_embeddings=(want_cos, want_sin)).numpy()
    got, _ = model.model.layer(i)(x, (cos, sin), mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, err_msg=f"layer {i}")


@pytest.mark.parametrize("family,cfg", [
    ("llama",
     llama.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       max_position_embeddings=32)),
    ("olmo",
     olmo.OlmoConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=1, head_dim=8,
                     max_position_embeddings=32, clip_qkv=0.05)),
    ("olmo2",
     olmo2.Olmo2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       max_position_embeddings=32)),
])
def test_kv_cache_decoding_equals_recompute(family, cfg):
  """The cache holds rotated key/value heads only (GQA): decoding must match recompute."""
  model = models.family(family).create(cfg, seed=3)
  assert model.init_cache(2, 8).k_lbshd.shape == (2, 2, 8, cfg.num_key_value_heads, 8)
  check_cached_decoding(model)


@pytest.mark.parametrize("family,overrides", [
    ("llama", dict(num_key_value_heads=2)),
    ("olmo", dict(num_key_value_heads=2, clip_qkv=2.0)),
    ("olmo2", dict(num_key_value_heads=2)),
])
def test_bfloat16_top1_agrees_with_torch(tmp_path, family, overrides):
  ref = hf_model(family, **overrides)
  ref.save_pretrained(tmp_path)
  bf16 = trajax.load_hf(tmp_path, dtype="bfloat16")
  assert bf16.model.embed_tokens.embedding[...].dtype.name == "bfloat16"
  ids, _ = batch(96, seed=1, length=32)
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(ids)).logits.numpy().argmax(-1)
  got = np.asarray(bf16(ids)).argmax(-1)
  assert (got == want).mean() > 0.9


@pytest.mark.skipif(jax.device_count() < 8,
                    reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
@pytest.mark.parametrize("family", ["llama", "olmo", "olmo2"])
def test_sharded_scoring_equals_unsharded(tmp_path, family):
  """(2, 2, 2) mesh: GQA projections and OLMo-2's q/k norms split over `tensor`."""
  ref = hf_model(family, num_key_value_heads=2, vocab_size=128)
  ref.save_pretrained(tmp_path)
  ids = np.random.RandomState(0).randint(3, 128, size=(8, 24))
  mask = np.ones(ids.shape, bool)
  mask[3, 10:] = False
  want = trajax.token_logprobs(trajax.load_hf(tmp_path), ids, mask)
  mesh = sharding.make_mesh((2, 2, 2))
  model = trajax.load_hf(tmp_path, sharding_fn=sharding.param_sharding_fn(mesh))
  k_proj = model.model.layers.self_attn.k_proj.kernel[...]
  assert k_proj.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  got = trajax.token_logprobs(model, ids, mask)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose(got, torch_logprobs(ref, ids, mask), atol=1e-4)


def test_config_round_trip_and_legacy_spelling():
  """transformers 5's rope_parameters and Llama 2's rope_theta + rope_scaling read alike."""
  v5 = hf_model("llama", num_key_value_heads=2, rope_scaling={"type": "linear",
                                                              "factor": 2.0}).config.to_dict()
  assert "rope_parameters" in v5 and "rope_scaling" not in v5
  cfg = llama.LlamaConfig.from_hf_config(v5)
  assert cfg.rope == rope.Rope(theta=10000.0, type="linear", factor=2.0)
  assert llama.LlamaConfig.from_hf_config(cfg.to_hf_config()) == cfg
  legacy = {k: v for k, v in v5.items() if k != "rope_parameters"}
  legacy.update(rope_theta=10000.0, rope_scaling={"type": "linear", "factor": 2.0})
  assert llama.LlamaConfig.from_hf_config(legacy) == cfg
  for cls in (olmo.OlmoConfig, olmo2.Olmo2Config):
    c = cls(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    assert cls.from_hf_config(c.to_hf_config()) == c


@pytest.mark.parametrize("edit,match", [
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope type 'yarn' is not supported"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0, "beta": 1}), r"\['beta'\]"),
    (dict(rope_scaling={"rope_type": "linear"}), "missing field 'factor'"),
    (dict(partial_rotary_factor=0.5), "'partial_rotary_factor' is 0.5"),
    (dict(sliding_window=8), r"field\(s\) \['sliding_window'\] are not supported"),
    (dict(quantization_config={"bits": 4}), r"\['quantization_config'\]"),
    (dict(num_key_value_heads=3), "not divisible by num_key_value_heads=3"),
    (dict(rope_theta=500.0, rope_parameters={"rope_type": "default", "rope_theta": 100.0
                                            }), "two names for one setting"),
    (dict(hidden_act="relu6"), "field 'hidden_act'"),
    (dict(is_encoder_decoder=True), r"\['is_encoder_decoder'\]"),
])
def test_config_errors_name_the_field(edit, match):
  hf = dict(TINY, model_type="llama", **edit)
  with pytest.raises(ValueError, match=match) as e:
    llama.LlamaConfig.from_hf_config(hf, "ckpt/config.json")
  assert "ckpt/config.json" in str(e.value)


def test_family_specific_fields_are_refused_elsewhere():
  """OLMo has no mlp_bias or head_dim, OLMo-2 no clip_qkv: present, they are errors."""
  base = dict(TINY, model_type="olmo")
  with pytest.raises(ValueError, match=r"\['mlp_bias'\] are not supported by trajax's olmo"):
    olmo.OlmoConfig.from_hf_config(dict(base, mlp_bias=True))
  with pytest.raises(ValueError, match=r"\['clip_qkv'\] are not supported by trajax's olmo2"):
    olmo2.Olmo2Config.from_hf_config(dict(base, model_type="olmo2", clip_qkv=1.0))


def test_old_checkpoint_keys():
  cfg = llama.LlamaConfig.from_hf_config(dict(TINY, tie_word_embeddings=True))
  ignored = llama.ignored_hf_keys(cfg)
  assert "model.layers.1.self_attn.rotary_emb.inv_freq" in ignored and "lm_head.weight" in ignored
  assert llama.normalize_hf_key(
      "layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
  assert llama.normalize_hf_key("lm_head.weight") == "lm_head.weight"

"""trajax's Flax OPT against transformers' PyTorch OPT on the same random weights."""
import numpy as np
import pytest
import torch

import trajax
from conftest import torch_logprobs

VARIANTS = {
    "pre_ln": {},
    "post_ln_projections": dict(do_layer_norm_before=False, word_embed_proj_dim=8),
    "pre_ln_projections": dict(word_embed_proj_dim=24),
    "odd_heads": dict(hidden_size=15, num_attention_heads=3, num_hidden_layers=3),
    "no_bias": dict(enable_bias=False),
    "no_affine_ln": dict(layer_norm_elementwise_affine=False),
    "removed_final_ln": dict(_remove_final_layer_norm=True),
    "untied_head": dict(tie_word_embeddings=False),
    "gelu": dict(activation_function="gelu"),
}


def _batch(vocab, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(3, vocab, size=(4, 24))
  mask = np.ones(ids.shape, bool)
  mask[1, 17:] = False  # right padding
  mask[2, 3:] = False  # mostly padding
  mask[3, :6] = False  # left padding
  return ids, mask


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_logprobs_match_torch(tiny_ckpt, variant):
  path, ref = tiny_ckpt(**VARIANTS[variant])
  model = trajax.load_hf(path)
  ids, mask = _batch(ref.config.vocab_size)
  got = trajax.token_logprobs(model, ids, mask)
  want = torch_logprobs(ref, ids, mask)
  assert got.dtype == np.float32 and got.shape == ids.shape
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # No prediction: position 0, padding, first real token after left padding.
  assert np.isnan(got[:, 0]).all() and np.isnan(got[3, :7]).all()
  assert np.isfinite(got[0, 1:]).all()


def test_full_logits_match_torch(tiny_ckpt):
  path, ref = tiny_ckpt(do_layer_norm_before=False, word_embed_proj_dim=8)
  model = trajax.load_hf(path)
  ids = np.random.RandomState(1).randint(0, 96, size=(2, 10))
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(ids)), want, atol=1e-4, rtol=0)


def _causal_additive_mask(t):
  m = torch.full((t, t), torch.finfo(torch.float32).min).triu(1)
  return m[None, None]


@pytest.mark.parametrize("variant", ["pre_ln", "post_ln_projections"])
def test_per_layer_parity(tiny_ckpt, variant):
  """Each stage on the same input, so a failure names the layer."""
  path, ref = tiny_ckpt(num_hidden_layers=3, **VARIANTS[variant])
  model = trajax.load_hf(path)
  dec, ref_dec = model.model.decoder, ref.model.decoder
  rng = np.random.RandomState(0)
  ids = rng.randint(0, 96, size=(2, 12))
  # Embeddings (tokens, projection in, positions with offset 2).
  with torch.no_grad():
    emb = ref_dec.embed_tokens(torch.tensor(ids))
    if ref_dec.project_in is not None:
      emb = ref_dec.project_in(emb)
    pos = ref_dec.embed_positions(torch.ones(2, 12, dtype=torch.long), 0)
  got = dec.embed_tokens(ids)
  if dec.project_in is not None:
    got = dec.project_in(got)
  got = got + dec.embed_positions(np.arange(12)[None] + 2)
  np.testing.assert_allclose(np.asarray(got), (emb + pos).numpy(), atol=1e-5, err_msg="embeddings")

  from trajax.models import layers
  x = rng.randn(2, 12, ref.config.hidden_size).astype(np.float32)
  slots = np.arange(12)
  mask = layers.causal_mask(slots, slots, np.ones((2, 12), bool))
  for i in range(3):
    with torch.no_grad():
      want = ref_dec.layers[i](torch.tensor(x), attention_mask=_causal_additive_mask(12))
      want = (want[0] if isinstance(want, tuple) else want).numpy()
      attn_want = ref_dec.layers[i].self_attn(torch.tensor(x),
                                              attention_mask=_causal_additive_mask(12))[0].numpy()
    layer = dec.layer(i)
    attn_got, _ = layer.self_attn(x, mask)
    np.testing.assert_allclose(np.asarray(attn_got), attn_want, atol=1e-5,
                               err_msg=f"layer {i} self_attn")
    got, _ = layer(x, mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, err_msg=f"layer {i}")
  if ref_dec.final_layer_norm is not None:
    with torch.no_grad():
      want = ref_dec.final_layer_norm(torch.tensor(x)).numpy()
    np.testing.assert_allclose(np.asarray(dec.final_layer_norm(x)), want, atol=1e-5,
                               err_msg="final_layer_norm")


def test_bfloat16_close_to_float32(tiny_ckpt):
  """bf16 weights: per-token KL-free check via log-prob error and top-1 agreement."""
  path, ref = tiny_ckpt(hidden_size=32, ffn_dim=64)
  ids, mask = _batch(96)
  f32 = trajax.load_hf(path)
  bf16 = trajax.load_hf(path, dtype="bfloat16")
  assert bf16.model.decoder.embed_tokens.embedding[...].dtype.name == "bfloat16"
  lp32 = trajax.token_logprobs(f32, ids, mask)
  lp16 = trajax.token_logprobs(bf16, ids, mask)
  assert lp16.dtype == np.float32
  np.testing.assert_array_equal(np.isnan(lp16), np.isnan(lp32))
  assert np.nanmax(np.abs(lp16 - lp32)) < 0.05
  top32 = np.asarray(f32(ids)).argmax(-1)
  top16 = np.asarray(bf16(ids)).argmax(-1)
  assert (top32 == top16).mean() > 0.9


def test_long_rows_through_the_cpu_kernels_match_torch(tiny_ckpt):
  """Rows longer than one attention block (CPU: `causal_rows`, and `causal_flash` past
  `ROWS_MAX_BLOCKS` blocks) with padding on either side, against torch."""
  from trajax.models import flash
  path, ref = tiny_ckpt(max_position_embeddings=400)
  model = trajax.load_hf(path)
  rng = np.random.RandomState(3)
  ids = rng.randint(3, ref.config.vocab_size, size=(3, 300))
  mask = np.ones(ids.shape, bool)
  mask[1, 211:] = False  # right padding across a block boundary
  mask[2, :140] = False  # left padding past the first block
  want = torch_logprobs(ref, ids, mask)
  got = trajax.token_logprobs(model, ids, mask)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  saved = flash.ROWS_MAX_BLOCKS
  flash.ROWS_MAX_BLOCKS = 1  # read when a shape is traced: a new length, the flash kernel
  try:
    got_flash = trajax.token_logprobs(model, ids[:, :290], mask[:, :290])
  finally:
    flash.ROWS_MAX_BLOCKS = saved
  np.testing.assert_allclose(got_flash, want[:, :290], atol=1e-4, rtol=0)

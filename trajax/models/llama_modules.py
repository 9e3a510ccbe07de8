"""The flax.nnx modules of the Llama-architecture families (Llama, OLMo, OLMo-2).

Named as transformers' `modeling_llama.py`; `trajax.models.llama` documents what
they compute and holds the config, conversion table and parameter counts. The
config's class attributes `NORM`, `POST_NORMS` and `QK_NORM` select OLMo's and
OLMo-2's norms.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from trajax.models import layers as L
from trajax.models import rope as rope_lib
from trajax.models.gpt_neox import apply_rotary

ACTIVATIONS = dict(L.ACTIVATIONS, silu=jax.nn.silu, swish=jax.nn.silu)

KVCache = L.KVCache


class RMSNorm(nnx.Module):
  """x / rms(x) * weight, in float32; `weight_first` multiplies before the cast back (OLMo-2)."""
  def __init__(self, features: int, *, eps: float, dtype, weight_first: bool = False,
               num_stacked: int | None = None, axis_name: str = "embed"):
    self.eps = eps
    self.weight_first = weight_first
    self.scale = L.stacked_param(None, L.ones, (features,), (axis_name,), dtype, num_stacked)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    if self.weight_first:
      return (self.scale[...].astype(jnp.float32) * y).astype(x.dtype)
    return self.scale[...] * y.astype(x.dtype)


def make_norm(cfg, dtype, n: int | None, features: int | None = None, axis_name: str = "embed"):
  """The family's norm over `features` (default hidden_size)."""
  features = features or cfg.hidden_size
  if cfg.NORM == "layernorm":
    return L.LayerNorm(features, elementwise_affine=False, eps=1e-5, dtype=dtype, num_stacked=n)
  return RMSNorm(features, eps=cfg.rms_norm_eps, dtype=dtype, weight_first=cfg.POST_NORMS,
                 num_stacked=n, axis_name=axis_name)


class LlamaAttention(nnx.Module):
  def __init__(self, cfg, dtype, rngs, n: int):
    d, bias, std = cfg.hidden_size, cfg.attention_bias, cfg.initializer_range
    self.num_heads, self.num_kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    self.head_dim = cfg.head_dim
    self.scaling = cfg.head_dim**-0.5
    self.clip_qkv = cfg.clip_qkv
    self.implementation = None

    def linear(i, o, axes):
      return L.Linear(i, o, axes=axes, use_bias=bias, dtype=dtype, rngs=rngs, init_std=std,
                      num_stacked=n)

    self.q_proj = linear(d, cfg.q_dim, ("embed", "heads"))
    self.k_proj = linear(d, cfg.kv_dim, ("embed", "heads"))
    self.v_proj = linear(d, cfg.kv_dim, ("embed", "heads"))
    self.o_proj = linear(cfg.q_dim, d, ("heads", "embed"))
    if cfg.QK_NORM:  # over the whole projection (all heads at once), as HF OLMo-2
      self.q_norm = make_norm(cfg, dtype, n, cfg.q_dim, "heads")
      self.k_norm = make_norm(cfg, dtype, n, cfg.kv_dim, "heads")
    else:
      self.q_norm = self.k_norm = None

  def __call__(self, x_btd, rope, mask_b1ts, kv_cache=None, cache_index=None, segments_bt=None):
    """Self-attention; `rope` = (cos, sin); the cache holds rotated key/value heads only."""
    b, t, _ = x_btd.shape
    q, k, v = self.q_proj(x_btd), self.k_proj(x_btd), self.v_proj(x_btd)
    if self.clip_qkv is not None:
      q, k, v = (jnp.clip(a, -self.clip_qkv, self.clip_qkv) for a in (q, k, v))
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    q_bthd = q.reshape(b, t, self.num_heads, self.head_dim)
    k_btgd = k.reshape(b, t, self.num_kv_heads, self.head_dim)
    v_btgd = v.reshape(b, t, self.num_kv_heads, self.head_dim)
    q_bthd = apply_rotary(q_bthd, *rope) * jnp.asarray(self.scaling, q_bthd.dtype)
    k_btgd = apply_rotary(k_btgd, *rope)
    k_bsgd, v_bsgd, kv_cache = L.write_cache(kv_cache, k_btgd, v_btgd, cache_index)
    # Each key/value head serves `group` consecutive query heads (HF repeat_kv).
    group = self.num_heads // self.num_kv_heads
    k_bshd = jnp.repeat(k_bsgd.astype(q_bthd.dtype), group, axis=2)
    v_bshd = jnp.repeat(v_bsgd.astype(q_bthd.dtype), group, axis=2)
    out_bthd = L.attention(q_bthd, k_bshd, v_bshd, mask_b1ts, self.implementation,
                           causal_segments_bt=segments_bt if kv_cache is None else None)
    return self.o_proj(out_bthd.reshape(b, t, -1)), kv_cache


class LlamaMLP(nnx.Module):
  def __init__(self, cfg, dtype, rngs, n: int):
    d, f, std, bias = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range, cfg.mlp_bias
    self.act = ACTIVATIONS[cfg.hidden_act]
    self.gate_proj = L.Linear(d, f, axes=("embed", "mlp"), use_bias=bias, dtype=dtype, rngs=rngs,
                              init_std=std, num_stacked=n)
    self.up_proj = L.Linear(d, f, axes=("embed", "mlp"), use_bias=bias, dtype=dtype, rngs=rngs,
                            init_std=std, num_stacked=n)
    self.down_proj = L.Linear(f, d, axes=("mlp", "embed"), use_bias=bias, dtype=dtype, rngs=rngs,
                              init_std=std, num_stacked=n)

  def __call__(self, x_btd):
    return self.down_proj(self.act(self.gate_proj(x_btd)) * self.up_proj(x_btd))


class LlamaDecoderLayer(nnx.Module):
  """All layers at once: parameters [layers, ...]; `__call__` sees one slice.

  Pre-norm (Llama, OLMo): h = x + attn(norm1(x)); h + mlp(norm2(h)).
  Post-norm (OLMo-2):     h = x + norm1(attn(x)); h + norm2(mlp(h)).
  """
  def __init__(self, cfg, dtype, rngs, n: int):
    self.post_norms = cfg.POST_NORMS
    self.self_attn = LlamaAttention(cfg, dtype, rngs, n)
    self.mlp = LlamaMLP(cfg, dtype, rngs, n)
    if cfg.POST_NORMS:
      self.post_attention_layernorm = make_norm(cfg, dtype, n)
      self.post_feedforward_layernorm = make_norm(cfg, dtype, n)
    else:
      self.input_layernorm = make_norm(cfg, dtype, n)
      self.post_attention_layernorm = make_norm(cfg, dtype, n)

  def __call__(self, x_btd, rope, mask_b1ts, kv_cache=None, cache_index=None, segments_bt=None):
    if self.post_norms:
      attn, kv_cache = self.self_attn(x_btd, rope, mask_b1ts, kv_cache, cache_index, segments_bt)
      h = x_btd + self.post_attention_layernorm(attn)
      return h + self.post_feedforward_layernorm(self.mlp(h)), kv_cache
    attn, kv_cache = self.self_attn(self.input_layernorm(x_btd), rope, mask_b1ts, kv_cache,
                                    cache_index, segments_bt)
    h = x_btd + attn
    return h + self.mlp(self.post_attention_layernorm(h)), kv_cache


class LlamaModel(nnx.Module):
  def __init__(self, cfg, dtype, rngs):
    self.cfg = cfg
    self.embed_tokens = L.Embed(cfg.vocab_size, cfg.hidden_size, axes=("vocab", "embed"),
                                dtype=dtype, rngs=rngs, init_std=cfg.initializer_range)
    self.layers = LlamaDecoderLayer(cfg, dtype, rngs, cfg.num_hidden_layers)
    self.norm = make_norm(cfg, dtype, None)

  def layer(self, i: int) -> LlamaDecoderLayer:
    """Layer `i` as a standalone module (for per-layer parity tests)."""
    graphdef, state = nnx.split(self.layers)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))

  def rope_tables(self, positions_bt):
    """(cos, sin) [batch, length, 1, head_dim] float32 for `positions_bt`."""
    return rope_lib.tables(positions_bt, self.cfg.rope.inv_freq(self.cfg.head_dim))

  def __call__(self, tokens_bt, positions_bt, mask_b1ts, kv_cache: KVCache | None = None,
               cache_index=None, segments_bt=None):
    """Hidden states [batch, length, hidden] (and the updated cache)."""
    cfg = self.cfg
    length = kv_cache.k_lbshd.shape[2] if kv_cache is not None else tokens_bt.shape[1]
    rope_lib.check_length(cfg.rope, length, cfg.max_position_embeddings)
    x = self.embed_tokens(tokens_bt)
    rope = self.rope_tables(positions_bt)

    def call(layer, h, _, kv):
      # Without a cache the segments let CPU attention take the causal flash path.
      return layer(h, rope, mask_b1ts, kv, cache_index, segments_bt if kv is None else None)

    x, kv_cache = L.scan_layers(self.layers, x, kv_cache, call)
    return self.norm(x), kv_cache


class LlamaForCausalLM(L.CausalLM):
  """A Llama-architecture model with a tied or untied `lm_head`."""
  def __init__(self, cfg, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.config = cfg
    self.model = LlamaModel(cfg, dtype, rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = L.Linear(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"),
                              use_bias=False, dtype=dtype, rngs=rngs,
                              init_std=cfg.initializer_range)
    else:
      self.lm_head = None

  def layer_stack(self, tokens_bt, positions_bt, mask_b1ts, segment_ids_bt):
    """The model without a cache: hidden states [batch, length, hidden]."""
    h, _ = self.model(tokens_bt, positions_bt, mask_b1ts, segments_bt=segment_ids_bt)
    return h

  def head_matrix(self):
    """The output projection as [vocab, hidden]."""
    if self.lm_head is None:
      return self.model.embed_tokens.embedding[...]
    return self.lm_head.kernel[...].T

  def cache_dims(self) -> tuple[int, int, int]:
    cfg = self.config
    return cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim

  def forward_cached(self, tokens_bt, positions_bt, key_valid_bs, cache: KVCache, cache_index):
    """Runs `tokens_bt` written at cache slots [cache_index, cache_index + length).

    Args and returns as `gpt_neox.GPTNeoXForCausalLM.forward_cached`.
    """
    attn_mask = self.cached_block_mask(tokens_bt.shape[1], key_valid_bs, cache_index)
    return self.model(tokens_bt, positions_bt, attn_mask, cache, cache_index)


def create(cfg, *, dtype=jnp.float32, seed: int | None = 0) -> "LlamaForCausalLM":
  """A randomly initialised model (seed) or a deterministic placeholder (seed=None)."""
  rngs = nnx.Rngs(params=seed) if seed is not None else None
  return LlamaForCausalLM(cfg, dtype=dtype, rngs=rngs)

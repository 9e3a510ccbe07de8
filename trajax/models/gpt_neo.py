"""GPT-Neo (Black et al. 2021) in flax.nnx, named as Hugging Face's GPTNeoForCausalLM.

Submodule names follow transformers' `modeling_gpt_neo.py` (`transformer.wte`,
`h.{i}.attn.attention.q_proj`, `mlp.c_fc`, `ln_f`, ...). What differs from OPT,
all as the reference computes it:
  * layers alternate global and local attention (`attention_layers`, expanded
    from `attention_types`). A local layer lets slot i see slot j when
    0 <= i - j < window_size (HF: `tril(ones) ^ tril(ones, -window_size)`), i.e.
    the token itself and the window_size - 1 before it. The window is on cache
    slots, as HF's `bias[key_len - query_len : key_len, :key_len]` is;
  * NO 1/sqrt(head_dim) scaling, and the attention logits in float32 whatever
    the parameter dtype (HF casts q and k to float32);
  * q/k/v projections without bias, out_proj with bias; gelu_new MLP; learned
    positions without offset; tied head.

One scan serves both attention kinds: each layer's window is a scanned input
(`window_size` for local layers, `GLOBAL_WINDOW` for global ones).

Positions. trajax numbers the real tokens of a row 0, 1, ... whatever the left
padding (`positions(mask) = max(cumsum(mask) - 1, 0)`), as HF's `generate`
does. HF's forward with only an `attention_mask` uses `arange(length)`: the same
for unpadded and right-padded rows; for left-padded rows pass HF
`position_ids = max(cumsum(mask) - 1, 0)` to get trajax's numbers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from trajax.models import layers as L

from trajax.models.gpt_neo_config import (  # noqa: F401  (re-exported: the family's config)
    ATTENTION_KINDS, GLOBAL_WINDOW, GPTNeoConfig, expand_attention_types)

KVCache = L.KVCache


def window_mask(mask_b1ts, query_at_bt, key_at_bs, window):
  """`mask_b1ts` restricted to keys at most `window - 1` before the query.

  Distances are `query_at - key_at`: cache slots when decoding or reusing a cache
  (left padding keeps them equal to position distances), positions without a cache
  (packed rows and ICL prefix trees, where slots and positions differ; for the keys a
  mask shows, slot and position distances agree in any padded or packed row).
  [1, length] coordinates broadcast over the batch.
  """
  dist_bts = query_at_bt[:, :, None] - key_at_bs[:, None, :]
  return mask_b1ts & (dist_bts < window)[:, None]


class GPTNeoSelfAttention(nnx.Module):
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs, n: int):
    d, std = cfg.hidden_size, cfg.initializer_range
    self.num_heads = cfg.num_heads
    self.implementation = None
    lin = lambda axes, bias: L.Linear(d, d, axes=axes, use_bias=bias, dtype=dtype, rngs=rngs,
                                      init_std=std, num_stacked=n)
    self.k_proj = lin(("embed", "heads"), False)
    self.v_proj = lin(("embed", "heads"), False)
    self.q_proj = lin(("embed", "heads"), False)
    self.out_proj = lin(("heads", "embed"), True)

  def _heads(self, x_btd):
    b, t, d = x_btd.shape
    return x_btd.reshape(b, t, self.num_heads, d // self.num_heads)

  def __call__(self, x_btd, mask_b1ts, kv_cache=None, cache_index=None):
    """Unscaled self-attention; with `kv_cache=(k_bshd, v_bshd)` writes this block there."""
    q_bthd = self._heads(self.q_proj(x_btd))
    k_bthd = self._heads(self.k_proj(x_btd))
    v_bthd = self._heads(self.v_proj(x_btd))
    k_bshd, v_bshd, kv_cache = L.write_cache(kv_cache, k_bthd, v_bthd, cache_index)
    # HF computes q.k in float32 (unscaled logits of GPT-Neo grow large).
    f32 = jnp.float32
    out_bthd = L.attention(q_bthd.astype(f32), k_bshd.astype(f32), v_bshd.astype(f32), mask_b1ts,
                           self.implementation)
    b, t = x_btd.shape[:2]
    return self.out_proj(out_bthd.reshape(b, t, -1).astype(x_btd.dtype)), kv_cache


class GPTNeoAttention(nnx.Module):
  """HF's wrapper (`attn.attention`); kept for the parameter names."""
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs, n: int):
    self.attention = GPTNeoSelfAttention(cfg, dtype, rngs, n)


class GPTNeoMLP(nnx.Module):
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs, n: int):
    d, f, std = cfg.hidden_size, cfg.ffn_dim, cfg.initializer_range
    self.act = cfg.activation_function
    self.c_fc = L.Linear(d, f, axes=("embed", "mlp"), use_bias=True, dtype=dtype, rngs=rngs,
                         init_std=std, num_stacked=n)
    self.c_proj = L.Linear(f, d, axes=("mlp", "embed"), use_bias=True, dtype=dtype, rngs=rngs,
                           init_std=std, num_stacked=n)

  def __call__(self, x_btd):
    return self.c_proj(L.activation(self.act)(self.c_fc(x_btd)))


class GPTNeoBlock(nnx.Module):
  """All blocks at once: parameters [layers, ...]; `__call__` sees one slice."""
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs, n: int):
    d, eps = cfg.hidden_size, cfg.layer_norm_epsilon
    self.ln_1 = L.LayerNorm(d, elementwise_affine=True, eps=eps, dtype=dtype, num_stacked=n)
    self.attn = GPTNeoAttention(cfg, dtype, rngs, n)
    self.ln_2 = L.LayerNorm(d, elementwise_affine=True, eps=eps, dtype=dtype, num_stacked=n)
    self.mlp = GPTNeoMLP(cfg, dtype, rngs, n)

  def __call__(self, x_btd, mask_b1ts, kv_cache=None, cache_index=None):
    """`mask_b1ts` already carries this layer's window (see `window_mask`)."""
    h, kv_cache = self.attn.attention(self.ln_1(x_btd), mask_b1ts, kv_cache, cache_index)
    x_btd = x_btd + h
    return x_btd + self.mlp(self.ln_2(x_btd)), kv_cache


class GPTNeoModel(nnx.Module):
  def __init__(self, cfg: GPTNeoConfig, dtype, rngs):
    self.cfg = cfg
    std = cfg.initializer_range
    self.wte = L.Embed(cfg.vocab_size, cfg.hidden_size, axes=("vocab", "embed"), dtype=dtype,
                       rngs=rngs, init_std=std)
    self.wpe = L.Embed(cfg.max_position_embeddings, cfg.hidden_size, axes=(None, "embed"),
                       dtype=dtype, rngs=rngs, init_std=std)
    self.h = GPTNeoBlock(cfg, dtype, rngs, cfg.num_layers)
    self.ln_f = L.LayerNorm(cfg.hidden_size, elementwise_affine=True, eps=cfg.layer_norm_epsilon,
                            dtype=dtype)

  def layer(self, i: int) -> GPTNeoBlock:
    """Block `i` as a standalone module (for per-layer parity tests)."""
    graphdef, state = nnx.split(self.h)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))

  def __call__(self, tokens_bt, positions_bt, mask_b1ts, query_at_bt, key_at_bs,
               kv_cache: KVCache | None = None, cache_index=None):
    """Hidden states [batch, length, hidden] (and the updated cache).

    `mask_b1ts` is the causal + padding mask; each layer's window is cut from
    `query_at - key_at` (see `window_mask`).
    """
    x = self.wte(tokens_bt)
    x = x + self.wpe(positions_bt).astype(x.dtype)
    windows_l = jnp.asarray(self.cfg.layer_windows())

    def call(layer, h, window, kv):
      return layer(h, window_mask(mask_b1ts, query_at_bt, key_at_bs, window), kv, cache_index)

    x, kv_cache = L.scan_layers(self.h, x, kv_cache, call, windows_l)
    return self.ln_f(x), kv_cache


class GPTNeoForCausalLM(L.CausalLM):
  """GPT-Neo with a (normally tied) LM head. Scoring uses `hidden_states` + `head_matrix`."""
  def __init__(self, cfg: GPTNeoConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.config = cfg
    self.transformer = GPTNeoModel(cfg, dtype, rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = L.Linear(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"),
                              use_bias=False, dtype=dtype, rngs=rngs,
                              init_std=cfg.initializer_range)
    else:
      self.lm_head = None

  def layer_stack(self, tokens_bt, positions_bt, mask_b1ts, segment_ids_bt):
    """The transformer without a cache: hidden states [batch, length, hidden]."""
    del segment_ids_bt  # in `mask_b1ts`; local layers cut their window by position
    h, _ = self.transformer(tokens_bt, positions_bt, mask_b1ts, positions_bt, positions_bt)
    return h

  def head_matrix(self):
    """The output projection as [vocab, hidden]."""
    if self.lm_head is None:
      return self.transformer.wte.embedding[...]
    return self.lm_head.kernel[...].T

  def cache_dims(self) -> tuple[int, int, int]:
    cfg = self.config
    return cfg.num_layers, cfg.num_heads, cfg.head_dim

  def forward_cached(self, tokens_bt, positions_bt, key_valid_bs, cache: KVCache, cache_index):
    """Runs `tokens_bt` written at cache slots [cache_index, cache_index + length).

    Args:
      tokens_bt: [batch, length] token ids (a prompt block or one new token).
      positions_bt: [batch, length] positions of those tokens (see `positions`).
      key_valid_bs: [batch, max_len] which cache slots hold real tokens once this
        block is written (the caller owns it, so rows may be left-padded).
      cache: the KVCache; cache_index: scalar int slot of the first token.
    Returns:
      (hidden [batch, length, hidden], updated cache).
    """
    t = tokens_bt.shape[1]
    key_slots = jnp.arange(cache.k_lbshd.shape[2])
    query_slots = cache_index + jnp.arange(t)
    attn_mask = L.causal_mask(query_slots, key_slots, key_valid_bs)
    return self.transformer(tokens_bt, positions_bt, attn_mask, query_slots[None], key_slots[None],
                            cache, cache_index)


def create(cfg: GPTNeoConfig, *, dtype=jnp.float32, seed: int | None = 0) -> GPTNeoForCausalLM:
  """A randomly initialised model (seed) or a deterministic placeholder (seed=None)."""
  rngs = nnx.Rngs(params=seed) if seed is not None else None
  return GPTNeoForCausalLM(cfg, dtype=dtype, rngs=rngs)


def param_breakdown(cfg: GPTNeoConfig) -> dict[str, int]:
  """Parameters of HF `GPTNeoForCausalLM` (a tied head counted once).

  Returns {"total", "non_embedding", "flops", ...parts}: `non_embedding`
  leaves out wte, wpe and an untied head (Kaplan et al.); `flops` (N for
  `trajax.flops`) leaves out only the lookup tables that no matmul uses — wpe,
  and wte when the head is untied.
  """
  d, f, v = cfg.hidden_size, cfg.ffn_dim, cfg.vocab_size
  per_layer = (
      3 * d * d + d * d + d  # q/k/v (no bias), out_proj
      + d * f + f + f * d + d  # c_fc, c_proj
      + 2 * 2 * d)  # ln_1, ln_2
  parts = {
      "wte": v * d, "wpe": cfg.max_position_embeddings * d, "layers": cfg.num_layers * per_layer,
      "ln_f": 2 * d, "lm_head": 0 if cfg.tie_word_embeddings else v * d
  }
  parts["total"] = sum(parts.values())
  parts["non_embedding"] = parts["layers"] + parts["ln_f"]
  parts["flops"] = parts["total"] - parts["wpe"] - (parts["wte"] if parts["lm_head"] else 0)
  return parts


# ---------------------------------------------------------------------------
# Conversion table: trajax parameter path <- HF state-dict key, hook ("T": transpose
# torch's Linear [out, in] to our kernel [in, out]); '{i}' = stacked layer index.
_LAYER_LINEARS = [("attn.attention.q_proj", False), ("attn.attention.k_proj", False),
                  ("attn.attention.v_proj", False), ("attn.attention.out_proj", True),
                  ("mlp.c_fc", True), ("mlp.c_proj", True)]


def hf_rules(cfg: GPTNeoConfig) -> list[tuple[str, str, str | None]]:
  """(our parameter path, HF key, hook) for every parameter of `cfg`'s model."""
  t = "transformer"
  rules = [(f"{t}.wte.embedding", f"{t}.wte.weight", None),
           (f"{t}.wpe.embedding", f"{t}.wpe.weight", None),
           (f"{t}.ln_f.scale", f"{t}.ln_f.weight", None),
           (f"{t}.ln_f.bias", f"{t}.ln_f.bias", None)]
  for name, bias in _LAYER_LINEARS:
    rules.append((f"{t}.h.{name}.kernel", f"{t}.h.{{i}}.{name}.weight", "T"))
    if bias:
      rules.append((f"{t}.h.{name}.bias", f"{t}.h.{{i}}.{name}.bias", None))
  for name in ("ln_1", "ln_2"):
    rules += [(f"{t}.h.{name}.scale", f"{t}.h.{{i}}.{name}.weight", None),
              (f"{t}.h.{name}.bias", f"{t}.h.{{i}}.{name}.bias", None)]
  if not cfg.tie_word_embeddings:
    rules.append(("lm_head.kernel", "lm_head.weight", "T"))
  return rules


def normalize_hf_key(key: str) -> str:
  """A bare GPTNeoModel checkpoint saves `wte.weight`, `h.0...`: add `transformer.`."""
  if key.split(".", 1)[0] in ("wte", "wpe", "h", "ln_f"):
    return "transformer." + key
  return key


def ignored_hf_keys(cfg: GPTNeoConfig) -> set[str]:
  """Keys that carry no parameter of ours: the tied head, and the causal-mask buffers
  (`attn.attention.bias`, `masked_bias`) that older transformers saved per layer."""
  keys = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
  for i in range(cfg.num_layers):
    keys |= {
        f"transformer.h.{i}.attn.attention.bias", f"transformer.h.{i}.attn.attention.masked_bias"
    }
  return keys


Config = GPTNeoConfig


def param_count(cfg) -> int:
  """All parameters, as HF's numel sum."""
  return param_breakdown(cfg)["total"]


def flops_params(cfg) -> int:
  """N of the FLOPs formulas: matmul weights (no lookup-only tables)."""
  return param_breakdown(cfg)["flops"]

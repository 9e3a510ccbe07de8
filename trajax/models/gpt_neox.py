"""GPT-NeoX (Black et al. 2022) and Pythia in flax.nnx, named as HF's GPTNeoXForCausalLM.

Submodule names follow transformers' `modeling_gpt_neox.py` (`gpt_neox.embed_in`,
`layers.{i}.attention.query_key_value`, `mlp.dense_h_to_4h`, `final_layer_norm`,
`embed_out`). As the reference computes it:
  * rotary embeddings on the first `rotary_ndims = int(head_dim * rotary_pct)`
    dims of each q/k head, rotate-half convention (the two halves of those dims
    pair up, not even/odd), inverse frequencies base^(-2i / rotary_ndims);
  * attention scaled by 1/sqrt(head_dim), softmax in float32;
  * `use_parallel_residual`: x + attn(ln1(x)) + mlp(ln2(x)), else sequential
    a = x + attn(ln1(x)); a + mlp(ln2(a));
  * untied `embed_out` head (Pythia), or tied to `embed_in` if configured.

The fused `query_key_value` stays fused: its 3*hidden outputs are laid out
[heads, 3, head_dim] (HF views them as (..., heads, 3*head_dim) and chunks q|k|v
per head), so the kernel loads with a plain transpose and is split after the
matmul by a reshape. Being head-major, sharding that axis over `tensor` keeps
each head's q, k and v on one device; and it is one matmul instead of three.

Positions: real tokens of a row are numbered 0, 1, ... whatever the left
padding (see `gpt_neo` for the HF correspondence). Rotary attention depends
only on position differences, so HF's `arange` positions give the same
log-probs up to rounding.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from trajax.models import hf_config
from trajax.models import layers as L


@dataclasses.dataclass(frozen=True)
class GPTNeoXConfig:
  """Architecture of one GPT-NeoX model (HF GPTNeoXConfig's fields that matter)."""
  vocab_size: int = 50432
  hidden_size: int = 6144
  num_hidden_layers: int = 44
  num_attention_heads: int = 64
  intermediate_size: int = 24576
  hidden_act: str = "gelu"
  max_position_embeddings: int = 2048
  rotary_pct: float = 0.25
  rotary_emb_base: float = 10000.0
  layer_norm_eps: float = 1e-5
  use_parallel_residual: bool = True
  attention_bias: bool = True
  tie_word_embeddings: bool = False
  bos_token_id: int = 0
  eos_token_id: int = 2
  pad_token_id: int = 2  # HF has None; decoding needs an id, so eos.
  initializer_range: float = 0.02

  family = "gpt_neox"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}")
    if not 0.0 <= self.rotary_pct <= 1.0:
      raise ValueError(f"rotary_pct must lie in [0, 1], got {self.rotary_pct}")
    if self.rotary_ndims % 2:
      raise ValueError(f"rotary_ndims = int(head_dim {self.head_dim} * rotary_pct "
                       f"{self.rotary_pct}) = {self.rotary_ndims} must be even")
    L.activation(self.hidden_act)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def rotary_ndims(self) -> int:
    return int(self.head_dim * self.rotary_pct)

  @property
  def ffn_dim(self) -> int:
    return self.intermediate_size

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json") -> "GPTNeoXConfig":
    """Builds the config from a parsed HF `config.json` dict.

    Rotary settings come from `rope_parameters` (transformers 5:
    `partial_rotary_factor`, `rope_theta`) or the older `rotary_pct` /
    `rotary_emb_base` (the Pythia releases); only the default rope type exists here.
    Each field must have the JSON type transformers writes (`hf_config.HFFields`);
    a bad one is a ValueError naming `source` and the field.
    """
    required = [
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"
    ]
    missing = [k for k in required if k not in hf]
    if missing:
      raise ValueError(f"{source}: missing field(s) {missing} required for a GPT-NeoX config")
    f = hf_config.HFFields(hf, source)
    rope_key = "rope_parameters" if f.mapping("rope_parameters") else "rope_scaling"
    rope = f.mapping(rope_key)
    r = hf_config.HFFields(rope, f"{source}: field {rope_key!r}")
    rope_type = r.string(("rope_type", "type"), "default")
    if rope_type != "default":
      raise ValueError(f"{source}: field {rope_key!r}: rope type {rope_type!r} is not supported "
                       f"(only 'default')")
    # The rotary settings in either spelling; when a file has both, they must agree.
    legacy = {
        "rotary_pct": f.number("rotary_pct", 0.25, hi=1.0),
        "rotary_emb_base": f.number("rotary_emb_base", 10000.0, lo_open=True)
    }
    pct_key, pct = "rotary_pct", legacy["rotary_pct"]
    base_key, base = "rotary_emb_base", legacy["rotary_emb_base"]
    if "partial_rotary_factor" in rope:
      pct_key, pct = "partial_rotary_factor", r.number("partial_rotary_factor", hi=1.0)
    if "rope_theta" in rope:
      base_key, base = "rope_theta", r.number("rope_theta", lo_open=True)
    for key, value, old in ((pct_key, pct, "rotary_pct"), (base_key, base, "rotary_emb_base")):
      if key != old and old in hf and legacy[old] != value:
        raise ValueError(f"{source}: fields {rope_key!r}.{key} = {value} and {old!r} = "
                         f"{legacy[old]} are two names for one setting and disagree")
    hidden, heads = f.integer("hidden_size"), f.integer("num_attention_heads")
    if hidden % heads == 0 and int(hidden // heads * pct) % 2:
      raise ValueError(f"{source}: fields 'hidden_size' = {hidden}, 'num_attention_heads' = "
                       f"{heads} and {pct_key!r} = {pct} give rotary_ndims = int(head_dim "
                       f"{hidden // heads} * {pct}) = {int(hidden // heads * pct)}, which must "
                       f"be even")
    d = cls()
    eos = f.token_id("eos_token_id", d.eos_token_id)
    fields = {
        "vocab_size": f.integer("vocab_size"),
        "hidden_size": hidden,
        "num_hidden_layers": f.integer("num_hidden_layers", lo=0, hi=hf_config.MAX_LAYERS),
        "num_attention_heads": heads,
        "intermediate_size": f.integer("intermediate_size"),
        "hidden_act": f.string("hidden_act", "gelu", L.ACTIVATIONS),
        "max_position_embeddings": f.integer("max_position_embeddings", 2048),
        "rotary_pct": pct,
        "rotary_emb_base": base,
        "layer_norm_eps": f.number("layer_norm_eps", 1e-5),
        "use_parallel_residual": f.boolean("use_parallel_residual", True),
        "attention_bias": f.boolean("attention_bias", True),
        "tie_word_embeddings": f.boolean("tie_word_embeddings", False),
        "bos_token_id": f.token_id("bos_token_id", d.bos_token_id),
        "eos_token_id": eos,
        "pad_token_id": f.token_id("pad_token_id", eos),
        "initializer_range": f.number("initializer_range", 0.02),
    }
    try:
      return cls(**fields)
    except ValueError as e:  # a relation between fields, e.g. heads not dividing hidden_size
      raise ValueError(f"{source}: {e}") from None

  def to_hf_config(self) -> dict[str, Any]:
    """The HF `config.json` dict (both rotary spellings, for old and new transformers)."""
    return {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "intermediate_size": self.intermediate_size,
        "hidden_act": self.hidden_act,
        "max_position_embeddings": self.max_position_embeddings,
        "rotary_pct": self.rotary_pct,
        "rotary_emb_base": self.rotary_emb_base,
        "rope_parameters": {
            "rope_type": "default", "rope_theta": self.rotary_emb_base,
            "partial_rotary_factor": self.rotary_pct
        },
        "layer_norm_eps": self.layer_norm_eps,
        "use_parallel_residual": self.use_parallel_residual,
        "attention_bias": self.attention_bias,
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "initializer_range": self.initializer_range,
        "attention_dropout": 0.0,
        "hidden_dropout": 0.0,
        "use_cache": True,
    }


KVCache = L.KVCache


def rotary_tables(positions_bt, rotary_ndims: int, base: float):
  """(cos, sin), each [batch, length, 1, rotary_ndims] float32, as HF's rotary_emb."""
  inv_freq = 1.0 / (base**(jnp.arange(0, rotary_ndims, 2, dtype=jnp.float32) / rotary_ndims))
  freqs_btr = positions_bt[..., None].astype(jnp.float32) * inv_freq
  emb_btr = jnp.concatenate([freqs_btr, freqs_btr], axis=-1)[:, :, None, :]
  return jnp.cos(emb_btr), jnp.sin(emb_btr)


def apply_rotary(x_bthd, cos_bt1r, sin_bt1r):
  """Rotate-half rotary on the first rotary_ndims dims of each head (float32 math)."""
  r = cos_bt1r.shape[-1]
  x = x_bthd.astype(jnp.float32)
  x_rot, x_pass = x[..., :r], x[..., r:]
  x1, x2 = x_rot[..., :r // 2], x_rot[..., r // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  out = jnp.concatenate([x_rot * cos_bt1r + rotated * sin_bt1r, x_pass], axis=-1)
  return out.astype(x_bthd.dtype)


class GPTNeoXAttention(nnx.Module):
  def __init__(self, cfg: GPTNeoXConfig, dtype, rngs, n: int):
    d, bias, std = cfg.hidden_size, cfg.attention_bias, cfg.initializer_range
    self.num_heads = cfg.num_attention_heads
    self.head_dim = cfg.head_dim
    self.scaling = cfg.head_dim**-0.5
    self.implementation = None
    # Output features [heads, 3, head_dim]: head-major, so "heads" shards it correctly.
    self.query_key_value = L.Linear(d, 3 * d, axes=("embed", "heads"), use_bias=bias, dtype=dtype,
                                    rngs=rngs, init_std=std, num_stacked=n)
    self.dense = L.Linear(d, d, axes=("heads", "embed"), use_bias=bias, dtype=dtype, rngs=rngs,
                          init_std=std, num_stacked=n)

  def __call__(self, x_btd, rope, mask_b1ts, kv_cache=None, cache_index=None):
    """Self-attention; `rope` = (cos, sin) from `rotary_tables`; caches rotated keys."""
    b, t, _ = x_btd.shape
    qkv_bth3k = self.query_key_value(x_btd).reshape(b, t, self.num_heads, 3, self.head_dim)
    q_bthd, k_bthd, v_bthd = (qkv_bth3k[:, :, :, j] for j in range(3))
    q_bthd = apply_rotary(q_bthd, *rope) * jnp.asarray(self.scaling, q_bthd.dtype)
    k_bthd = apply_rotary(k_bthd, *rope)
    k_bshd, v_bshd, kv_cache = L.write_cache(kv_cache, k_bthd, v_bthd, cache_index)
    out_bthd = L.attention(q_bthd, k_bshd.astype(q_bthd.dtype), v_bshd.astype(q_bthd.dtype),
                           mask_b1ts, self.implementation)
    return self.dense(out_bthd.reshape(b, t, -1)), kv_cache


class GPTNeoXMLP(nnx.Module):
  def __init__(self, cfg: GPTNeoXConfig, dtype, rngs, n: int):
    d, f, std = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range
    self.act = cfg.hidden_act
    self.dense_h_to_4h = L.Linear(d, f, axes=("embed", "mlp"), use_bias=True, dtype=dtype,
                                  rngs=rngs, init_std=std, num_stacked=n)
    self.dense_4h_to_h = L.Linear(f, d, axes=("mlp", "embed"), use_bias=True, dtype=dtype,
                                  rngs=rngs, init_std=std, num_stacked=n)

  def __call__(self, x_btd):
    return self.dense_4h_to_h(L.activation(self.act)(self.dense_h_to_4h(x_btd)))


class GPTNeoXLayer(nnx.Module):
  """All layers at once: parameters [layers, ...]; `__call__` sees one slice."""
  def __init__(self, cfg: GPTNeoXConfig, dtype, rngs, n: int):
    d, eps = cfg.hidden_size, cfg.layer_norm_eps
    self.use_parallel_residual = cfg.use_parallel_residual
    self.input_layernorm = L.LayerNorm(d, elementwise_affine=True, eps=eps, dtype=dtype,
                                       num_stacked=n)
    self.post_attention_layernorm = L.LayerNorm(d, elementwise_affine=True, eps=eps, dtype=dtype,
                                                num_stacked=n)
    self.attention = GPTNeoXAttention(cfg, dtype, rngs, n)
    self.mlp = GPTNeoXMLP(cfg, dtype, rngs, n)

  def __call__(self, x_btd, rope, mask_b1ts, kv_cache=None, cache_index=None):
    attn, kv_cache = self.attention(self.input_layernorm(x_btd), rope, mask_b1ts, kv_cache,
                                    cache_index)
    if self.use_parallel_residual:
      return self.mlp(self.post_attention_layernorm(x_btd)) + attn + x_btd, kv_cache
    h = attn + x_btd
    return self.mlp(self.post_attention_layernorm(h)) + h, kv_cache


class GPTNeoXModel(nnx.Module):
  def __init__(self, cfg: GPTNeoXConfig, dtype, rngs):
    self.cfg = cfg
    self.embed_in = L.Embed(cfg.vocab_size, cfg.hidden_size, axes=("vocab", "embed"), dtype=dtype,
                            rngs=rngs, init_std=cfg.initializer_range)
    self.layers = GPTNeoXLayer(cfg, dtype, rngs, cfg.num_hidden_layers)
    self.final_layer_norm = L.LayerNorm(cfg.hidden_size, elementwise_affine=True,
                                        eps=cfg.layer_norm_eps, dtype=dtype)

  def layer(self, i: int) -> GPTNeoXLayer:
    """Layer `i` as a standalone module (for per-layer parity tests)."""
    graphdef, state = nnx.split(self.layers)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))

  def __call__(self, tokens_bt, positions_bt, mask_b1ts, kv_cache: KVCache | None = None,
               cache_index=None):
    """Hidden states [batch, length, hidden] (and the updated cache)."""
    x = self.embed_in(tokens_bt)
    rope = rotary_tables(positions_bt, self.cfg.rotary_ndims, self.cfg.rotary_emb_base)

    def call(layer, h, _, kv):
      return layer(h, rope, mask_b1ts, kv, cache_index)

    x, kv_cache = L.scan_layers(self.layers, x, kv_cache, call)
    return self.final_layer_norm(x), kv_cache


class GPTNeoXForCausalLM(L.CausalLM):
  """GPT-NeoX with its (normally untied) `embed_out` head."""
  def __init__(self, cfg: GPTNeoXConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.config = cfg
    self.gpt_neox = GPTNeoXModel(cfg, dtype, rngs)
    if not cfg.tie_word_embeddings:
      self.embed_out = L.Linear(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"),
                                use_bias=False, dtype=dtype, rngs=rngs,
                                init_std=cfg.initializer_range)
    else:
      self.embed_out = None

  def layer_stack(self, tokens_bt, positions_bt, mask_b1ts, segment_ids_bt):
    """The model without a cache: hidden states [batch, length, hidden]."""
    del segment_ids_bt  # in `mask_b1ts`
    h, _ = self.gpt_neox(tokens_bt, positions_bt, mask_b1ts)
    return h

  def head_matrix(self):
    """The output projection as [vocab, hidden]."""
    if self.embed_out is None:
      return self.gpt_neox.embed_in.embedding[...]
    return self.embed_out.kernel[...].T

  def cache_dims(self) -> tuple[int, int, int]:
    cfg = self.config
    return cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim

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
    attn_mask = self.cached_block_mask(tokens_bt.shape[1], key_valid_bs, cache_index)
    return self.gpt_neox(tokens_bt, positions_bt, attn_mask, cache, cache_index)


def create(cfg: GPTNeoXConfig, *, dtype=jnp.float32, seed: int | None = 0) -> GPTNeoXForCausalLM:
  """A randomly initialised model (seed) or a deterministic placeholder (seed=None)."""
  rngs = nnx.Rngs(params=seed) if seed is not None else None
  return GPTNeoXForCausalLM(cfg, dtype=dtype, rngs=rngs)


def param_breakdown(cfg: GPTNeoXConfig) -> dict[str, int]:
  """Parameters of HF `GPTNeoXForCausalLM` (a tied head counted once).

  Returns {"total", "non_embedding", "flops", ...parts}. `non_embedding` leaves
  out embed_in and embed_out, as the Pythia paper's table (pythia-410m: 405,334,016
  total, 302,311,424 non-embedding); `flops` (N for `trajax.flops`) leaves out
  only embed_in when the head is untied (a lookup, no matmul).
  """
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  b = 1 if cfg.attention_bias else 0
  per_layer = (
      d * 3 * d + b * 3 * d + d * d + b * d  # query_key_value, dense
      + d * f + f + f * d + d  # dense_h_to_4h, dense_4h_to_h
      + 2 * 2 * d)  # input_layernorm, post_attention_layernorm
  parts = {
      "embed_in": v * d, "layers": cfg.num_hidden_layers * per_layer, "final_layer_norm": 2 * d,
      "embed_out": 0 if cfg.tie_word_embeddings else v * d
  }
  parts["total"] = sum(parts.values())
  parts["non_embedding"] = parts["layers"] + parts["final_layer_norm"]
  parts["flops"] = parts["total"] - (parts["embed_in"] if parts["embed_out"] else 0)
  return parts


# ---------------------------------------------------------------------------
# Conversion table: trajax parameter path <- HF state-dict key, hook ("T": transpose
# torch's Linear [out, in] to our kernel [in, out]); '{i}' = stacked layer index.
def hf_rules(cfg: GPTNeoXConfig) -> list[tuple[str, str, str | None]]:
  """(our parameter path, HF key, hook) for every parameter of `cfg`'s model."""
  m, lyr = "gpt_neox", "gpt_neox.layers"
  rules = [(f"{m}.embed_in.embedding", f"{m}.embed_in.weight", None),
           (f"{m}.final_layer_norm.scale", f"{m}.final_layer_norm.weight", None),
           (f"{m}.final_layer_norm.bias", f"{m}.final_layer_norm.bias", None)]
  linears = [("attention.query_key_value", cfg.attention_bias),
             ("attention.dense", cfg.attention_bias), ("mlp.dense_h_to_4h", True),
             ("mlp.dense_4h_to_h", True)]
  for name, bias in linears:
    rules.append((f"{lyr}.{name}.kernel", f"{lyr}.{{i}}.{name}.weight", "T"))
    if bias:
      rules.append((f"{lyr}.{name}.bias", f"{lyr}.{{i}}.{name}.bias", None))
  for name in ("input_layernorm", "post_attention_layernorm"):
    rules += [(f"{lyr}.{name}.scale", f"{lyr}.{{i}}.{name}.weight", None),
              (f"{lyr}.{name}.bias", f"{lyr}.{{i}}.{name}.bias", None)]
  if not cfg.tie_word_embeddings:
    rules.append(("embed_out.kernel", "embed_out.weight", "T"))
  return rules


def normalize_hf_key(key: str) -> str:
  """transformers 5 names the head `lm_head` in memory (it saves `embed_out`); a bare
  GPTNeoXModel checkpoint has no `gpt_neox.` prefix."""
  if key == "lm_head.weight":
    return "embed_out.weight"
  if key.split(".", 1)[0] in ("embed_in", "layers", "final_layer_norm"):
    return "gpt_neox." + key
  return key


def ignored_hf_keys(cfg: GPTNeoXConfig) -> set[str]:
  """Keys that carry no parameter of ours: a tied head, and the buffers older
  transformers saved per layer (the Pythia `.bin` files): causal mask and inv_freq."""
  keys = {"embed_out.weight"} if cfg.tie_word_embeddings else set()
  for i in range(cfg.num_hidden_layers):
    keys |= {
        f"gpt_neox.layers.{i}.attention.{name}"
        for name in ("bias", "masked_bias", "rotary_emb.inv_freq")
    }
  return keys


Config = GPTNeoXConfig


def param_count(cfg) -> int:
  """All parameters, as HF's numel sum."""
  return param_breakdown(cfg)["total"]


def flops_params(cfg) -> int:
  """N of the FLOPs formulas: matmul weights (no lookup-only tables)."""
  return param_breakdown(cfg)["flops"]

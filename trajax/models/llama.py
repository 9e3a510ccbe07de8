"""Llama (Touvron et al. 2023) in flax.nnx, named as HF's LlamaForCausalLM; also the blocks
OLMo (`olmo.py`) and OLMo-2 (`olmo2.py`) are built from.

Submodule names follow transformers' `modeling_llama.py` (`model.embed_tokens`,
`model.layers.{i}.self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`,
`model.norm`, `lm_head`), so conversion is a rename plus a transpose. As the
reference computes it:
  * RMSNorm in float32; Llama multiplies the weight after casting back to the
    activation dtype, OLMo-2 before (`RMSNorm.weight_first`);
  * SwiGLU MLP: down(act(gate(x)) * up(x)), `mlp_bias` optional;
  * grouped-query attention: `num_key_value_heads` key/value heads, each shared
    by num_attention_heads / num_key_value_heads query heads (the cache stores
    only the key/value heads); `attention_bias` optional; scores scaled by
    1/sqrt(head_dim), softmax in float32;
  * rotary embeddings over whole heads, rotate-half layout, `rope_theta` and the
    scalings of `trajax.models.rope` (linear, llama3, dynamic up to
    max_position_embeddings);
  * tied or untied `lm_head`.
The three families differ only in their norms and where they sit; the class
attributes `NORM`, `POST_NORMS` and `QK_NORM` of the config select them.

Positions: real tokens of a row are numbered 0, 1, ... whatever the left
padding; rotary attention sees only position differences, so HF's `arange`
positions give the same log-probs up to rounding (see `gpt_neox`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from trajax.models import hf_config
from trajax.models import layers as L
from trajax.models import rope as rope_lib
from trajax.models.gpt_neox import apply_rotary

ACTIVATIONS = dict(L.ACTIVATIONS, silu=jax.nn.silu, swish=jax.nn.silu)


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Architecture of one Llama model (HF LlamaConfig's fields that matter)."""
  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int = 32
  head_dim: int = 128
  hidden_act: str = "silu"
  max_position_embeddings: int = 2048
  rms_norm_eps: float = 1e-6
  rope: rope_lib.Rope = rope_lib.Rope()
  attention_bias: bool = False
  mlp_bias: bool = False
  clip_qkv: float | None = None  # OLMo only
  tie_word_embeddings: bool = False
  bos_token_id: int = 1
  eos_token_id: int = 2
  pad_token_id: int = 2  # HF has None; decoding needs an id, so eos.
  initializer_range: float = 0.02

  family = "llama"
  NORM = "rms"  # "rms" (weighted RMSNorm) or "layernorm" (OLMo: no parameters, eps 1e-5)
  POST_NORMS = False  # OLMo-2: norms on the attention and MLP outputs instead of inputs
  QK_NORM = False  # OLMo-2: RMSNorm over the q and k projections
  # config.json fields this family reads (any other non-neutral field is refused).
  HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
               "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
               "rope_parameters", "partial_rotary_factor", "attention_bias", "mlp_bias",
               "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
               "pretraining_tp")

  def __post_init__(self):
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads={self.num_attention_heads} is not divisible by "
                       f"num_key_value_heads={self.num_key_value_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even (rotary pairs dimensions)")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; expected one of "
                       f"{sorted(ACTIVATIONS)}")

  @property
  def q_dim(self) -> int:
    return self.num_attention_heads * self.head_dim

  @property
  def kv_dim(self) -> int:
    return self.num_key_value_heads * self.head_dim

  @classmethod
  def _hf_defaults(cls) -> dict[str, Any]:
    """Values transformers' config class assumes when a field is absent."""
    return {
        "bos_token_id": 1, "eos_token_id": 2, "rms_norm_eps": 1e-6, "tie_word_embeddings": False
    }

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json"):
    """Builds the config from a parsed HF `config.json` dict.

    Each field must have the JSON type transformers writes (`hf_config.HFFields`);
    a bad one, or a field this family does not implement, is a ValueError naming
    `source` and the field. `pretraining_tp` (Llama 2's tensor-parallel matmul
    split, a reordering of the same sums) is accepted and ignored.
    """
    required = [
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"
    ]
    missing = [k for k in required if k not in hf]
    if missing:
      raise ValueError(f"{source}: missing field(s) {missing} required for a {cls.family} config")
    hf_config.reject_unknown(hf, cls.HF_FIELDS, source, cls.family)
    f = hf_config.HFFields(hf, source)
    defaults = cls._hf_defaults()
    hidden, heads = f.integer("hidden_size"), f.integer("num_attention_heads")
    if "head_dim" in cls.HF_FIELDS and hf.get("head_dim") is not None:
      head_dim = f.integer("head_dim")
    elif hidden % heads:
      raise ValueError(f"{source}: field 'hidden_size' = {hidden} is not divisible by "
                       f"'num_attention_heads' = {heads}")
    else:
      head_dim = hidden // heads
    f.integer("pretraining_tp", 1, nullable=True)
    max_pos = f.integer("max_position_embeddings", 2048)
    eos = f.token_id("eos_token_id", defaults["eos_token_id"])
    bos = hf.get("bos_token_id", defaults["bos_token_id"])
    fields = {
        "vocab_size": f.integer("vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": f.integer("intermediate_size"),
        "num_hidden_layers": f.integer("num_hidden_layers", lo=0, hi=hf_config.MAX_LAYERS),
        "num_attention_heads": heads,
        "num_key_value_heads": f.integer("num_key_value_heads", heads, nullable=True) or heads,
        "head_dim": head_dim,
        "hidden_act": f.string("hidden_act", "silu", ACTIVATIONS),
        "max_position_embeddings": max_pos,
        "rope": rope_lib.from_hf(f, max_pos),
        "attention_bias": f.boolean("attention_bias", False),
        "tie_word_embeddings": f.boolean("tie_word_embeddings", defaults["tie_word_embeddings"]),
        # No BOS id (OLMo): eos stands in; the config's ids only serve decoding.
        "bos_token_id": eos if bos is None else f.token_id("bos_token_id", eos),
        "eos_token_id": eos,
        "pad_token_id": f.token_id("pad_token_id", eos),
        "initializer_range": f.number("initializer_range", 0.02),
    }
    if "rms_norm_eps" in cls.HF_FIELDS:
      fields["rms_norm_eps"] = f.number("rms_norm_eps", defaults["rms_norm_eps"], lo_open=True)
    if "mlp_bias" in cls.HF_FIELDS:
      fields["mlp_bias"] = f.boolean("mlp_bias", False)
    if "clip_qkv" in cls.HF_FIELDS and hf.get("clip_qkv") is not None:
      fields["clip_qkv"] = f.number("clip_qkv", lo_open=True)
    try:
      return cls(**fields)
    except ValueError as e:  # a relation between fields, e.g. kv heads not dividing heads
      raise ValueError(f"{source}: {e}") from None

  def to_hf_config(self) -> dict[str, Any]:
    """The HF `config.json` dict (transformers 5 spelling)."""
    out = {
        "architectures": [ARCHITECTURES[self.family]],
        "model_type": self.family,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "hidden_act": self.hidden_act,
        "max_position_embeddings": self.max_position_embeddings,
        "rope_parameters": self.rope.to_hf(),
        "attention_bias": self.attention_bias,
        "tie_word_embeddings": self.tie_word_embeddings,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
        "initializer_range": self.initializer_range,
        "attention_dropout": 0.0,
        "use_cache": True,
    }
    if "head_dim" in self.HF_FIELDS:
      out["head_dim"] = self.head_dim
    if "rms_norm_eps" in self.HF_FIELDS:
      out["rms_norm_eps"] = self.rms_norm_eps
    if "mlp_bias" in self.HF_FIELDS:
      out["mlp_bias"] = self.mlp_bias
    if "clip_qkv" in self.HF_FIELDS:
      out["clip_qkv"] = self.clip_qkv
    return out


ARCHITECTURES = {
    "llama": "LlamaForCausalLM", "olmo": "OlmoForCausalLM", "olmo2": "Olmo2ForCausalLM"
}
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


def make_norm(cfg: LlamaConfig, dtype, n: int | None, features: int | None = None,
              axis_name: str = "embed"):
  """The family's norm over `features` (default hidden_size)."""
  features = features or cfg.hidden_size
  if cfg.NORM == "layernorm":
    return L.LayerNorm(features, elementwise_affine=False, eps=1e-5, dtype=dtype, num_stacked=n)
  return RMSNorm(features, eps=cfg.rms_norm_eps, dtype=dtype, weight_first=cfg.POST_NORMS,
                 num_stacked=n, axis_name=axis_name)


class LlamaAttention(nnx.Module):
  def __init__(self, cfg: LlamaConfig, dtype, rngs, n: int):
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
  def __init__(self, cfg: LlamaConfig, dtype, rngs, n: int):
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
  def __init__(self, cfg: LlamaConfig, dtype, rngs, n: int):
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
  def __init__(self, cfg: LlamaConfig, dtype, rngs):
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
  def __init__(self, cfg: LlamaConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
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


def create(cfg: LlamaConfig, *, dtype=jnp.float32, seed: int | None = 0) -> LlamaForCausalLM:
  """A randomly initialised model (seed) or a deterministic placeholder (seed=None)."""
  rngs = nnx.Rngs(params=seed) if seed is not None else None
  return LlamaForCausalLM(cfg, dtype=dtype, rngs=rngs)


def param_breakdown(cfg: LlamaConfig) -> dict[str, int]:
  """Parameters of HF `{Llama,Olmo,Olmo2}ForCausalLM` (a tied head counted once).

  Grouped-query attention: k_proj and v_proj map hidden -> kv_heads * head_dim.
  SwiGLU: three hidden x intermediate matrices (gate, up, down).
  Returns {"total", "non_embedding", "flops", ...parts}; `flops` (N for
  `trajax.flops`) leaves out `embed_tokens` when the head is untied (a lookup,
  no matmul); tied, the matrix is the head's and stays in.
  """
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  qd, kvd = cfg.q_dim, cfg.kv_dim
  ab, mb = int(cfg.attention_bias), int(cfg.mlp_bias)
  attn = d * qd + 2 * d * kvd + qd * d + ab * (qd + 2 * kvd + d)
  mlp = 3 * d * f + mb * (2 * f + d)
  norm = 0 if cfg.NORM == "layernorm" else d
  qk_norm = qd + kvd if cfg.QK_NORM else 0
  parts = {
      "embed_tokens": v * d,
      "layers": cfg.num_hidden_layers * (attn + mlp + 2 * norm + qk_norm),
      "norm": norm,
      "lm_head": 0 if cfg.tie_word_embeddings else v * d,
  }
  parts["total"] = sum(parts.values())
  parts["non_embedding"] = parts["layers"] + parts["norm"]
  parts["flops"] = parts["total"] - (parts["embed_tokens"] if parts["lm_head"] else 0)
  return parts


def param_count(cfg) -> int:
  """All parameters, as HF's numel sum."""
  return param_breakdown(cfg)["total"]


def flops_params(cfg) -> int:
  """N of the FLOPs formulas: matmul weights (no lookup-only tables)."""
  return param_breakdown(cfg)["flops"]


# ---------------------------------------------------------------------------
# Conversion table: trajax parameter path <- HF state-dict key, hook ("T": transpose
# torch's Linear [out, in] to our kernel [in, out]); '{i}' = stacked layer index.
def hf_rules(cfg: LlamaConfig) -> list[tuple[str, str, str | None]]:
  """(our parameter path, HF key, hook) for every parameter of `cfg`'s model."""
  lyr = "model.layers"
  rules = [("model.embed_tokens.embedding", "model.embed_tokens.weight", None)]
  linears = [(f"self_attn.{p}_proj", cfg.attention_bias) for p in "qkvo"]
  linears += [(f"mlp.{p}_proj", cfg.mlp_bias) for p in ("gate", "up", "down")]
  for name, bias in linears:
    rules.append((f"{lyr}.{name}.kernel", f"{lyr}.{{i}}.{name}.weight", "T"))
    if bias:
      rules.append((f"{lyr}.{name}.bias", f"{lyr}.{{i}}.{name}.bias", None))
  if cfg.NORM != "layernorm":
    norms = (["post_attention_layernorm", "post_feedforward_layernorm"]
             if cfg.POST_NORMS else ["input_layernorm", "post_attention_layernorm"])
    norms += ["self_attn.q_norm", "self_attn.k_norm"] if cfg.QK_NORM else []
    rules += [(f"{lyr}.{name}.scale", f"{lyr}.{{i}}.{name}.weight", None) for name in norms]
    rules.append(("model.norm.scale", "model.norm.weight", None))
  if not cfg.tie_word_embeddings:
    rules.append(("lm_head.kernel", "lm_head.weight", "T"))
  return rules


def normalize_hf_key(key: str) -> str:
  """A bare `LlamaModel` checkpoint has no `model.` prefix."""
  if key.split(".", 1)[0] in ("embed_tokens", "layers", "norm"):
    return "model." + key
  return key


def ignored_hf_keys(cfg: LlamaConfig) -> set[str]:
  """Keys that carry no parameter of ours: a tied head saved anyway, and the rotary
  `inv_freq` buffers older transformers saved per layer (early Llama `.bin` files)."""
  keys = {"lm_head.weight"} if cfg.tie_word_embeddings else set()
  keys |= {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(cfg.num_hidden_layers)}
  return keys


Config = LlamaConfig

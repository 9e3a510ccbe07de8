"""OPT (Zhang et al. 2022) in flax.nnx, named as Hugging Face's OPTForCausalLM.

Submodule names follow transformers' `modeling_opt.py` (`model.decoder.layers`,
`self_attn.q_proj`, `fc1`, `final_layer_norm`, ...) so checkpoint conversion is
a rename plus a transpose (see `trajax.checkpoints`). Every released variant:
  * pre-LayerNorm (125m, 1.3b and larger) with a final decoder LayerNorm;
  * post-LayerNorm (350m) with `project_in`/`project_out` between
    `word_embed_proj_dim` and `hidden_size`;
  * learned positions with OPT's offset of 2, ReLU FFN, tied LM head.
Dropout is absent: trajax scores and decodes; the toy trainer trains without it.

The decoder layers are one module whose parameters are stacked on a leading
`layers` axis and run under `lax.scan`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from trajax.models import hf_config
from trajax.models import layers as L

# OPT's learned positional embedding table has 2 extra rows: position p uses row p + 2.
POSITION_OFFSET = 2


@dataclasses.dataclass(frozen=True)
class OPTConfig:
  """Architecture of one OPT model (the fields of HF's OPTConfig that matter)."""
  vocab_size: int = 50272
  hidden_size: int = 768
  num_hidden_layers: int = 12
  ffn_dim: int = 3072
  num_attention_heads: int = 12
  max_position_embeddings: int = 2048
  word_embed_proj_dim: int = 768
  do_layer_norm_before: bool = True
  remove_final_layer_norm: bool = False
  activation_function: str = "relu"
  enable_bias: bool = True
  layer_norm_elementwise_affine: bool = True
  tie_word_embeddings: bool = True
  pad_token_id: int = 1
  bos_token_id: int = 2
  eos_token_id: int = 2
  init_std: float = 0.02

  family = "opt"

  def __post_init__(self):
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}")
    L.activation(self.activation_function)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def has_projections(self) -> bool:
    return self.word_embed_proj_dim != self.hidden_size

  @property
  def has_final_layer_norm(self) -> bool:
    return self.do_layer_norm_before and not self.remove_final_layer_norm

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json") -> "OPTConfig":
    """Builds the config from a parsed HF `config.json` dict.

    Each field must have the JSON type transformers writes (`hf_config.HFFields`);
    a bad one is a ValueError naming `source` and the field.
    """
    required = [
        "vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
        "max_position_embeddings"
    ]
    missing = [k for k in required if k not in hf]
    if missing:
      raise ValueError(f"{source}: missing field(s) {missing} required for an OPT config")
    f = hf_config.HFFields(hf, source)
    d = cls()
    hidden = f.integer("hidden_size")
    fields = {
        "vocab_size": f.integer("vocab_size"),
        "hidden_size": hidden,
        "num_hidden_layers": f.integer("num_hidden_layers", lo=0, hi=hf_config.MAX_LAYERS),
        "ffn_dim": f.integer("ffn_dim"),
        "num_attention_heads": f.integer("num_attention_heads"),
        "max_position_embeddings": f.integer("max_position_embeddings"),
        # HF: null means hidden_size.
        "word_embed_proj_dim": f.integer("word_embed_proj_dim", None, nullable=True) or hidden,
        "do_layer_norm_before": f.boolean("do_layer_norm_before", True),
        "remove_final_layer_norm": f.boolean("_remove_final_layer_norm", False),
        "activation_function": f.string("activation_function", "relu", L.ACTIVATIONS),
        "enable_bias": f.boolean("enable_bias", True),
        "layer_norm_elementwise_affine": f.boolean("layer_norm_elementwise_affine", True),
        "tie_word_embeddings": f.boolean("tie_word_embeddings", True),
        "pad_token_id": f.token_id("pad_token_id", d.pad_token_id, null=0),
        "bos_token_id": f.token_id("bos_token_id", d.bos_token_id),
        "eos_token_id": f.token_id("eos_token_id", d.eos_token_id),
        "init_std": f.number("init_std", 0.02),
    }
    try:
      return cls(**fields)
    except ValueError as e:  # a relation between fields, e.g. heads not dividing hidden_size
      raise ValueError(f"{source}: {e}") from None

  def to_hf_config(self) -> dict[str, Any]:
    """The HF `config.json` dict for this architecture (for checkpoints trajax writes)."""
    return {
        "architectures": ["OPTForCausalLM"],
        "model_type": "opt",
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "num_hidden_layers": self.num_hidden_layers,
        "ffn_dim": self.ffn_dim,
        "num_attention_heads": self.num_attention_heads,
        "max_position_embeddings": self.max_position_embeddings,
        "word_embed_proj_dim": self.word_embed_proj_dim,
        "do_layer_norm_before": self.do_layer_norm_before,
        "_remove_final_layer_norm": self.remove_final_layer_norm,
        "activation_function": self.activation_function,
        "enable_bias": self.enable_bias,
        "layer_norm_elementwise_affine": self.layer_norm_elementwise_affine,
        "tie_word_embeddings": self.tie_word_embeddings,
        "pad_token_id": self.pad_token_id,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "init_std": self.init_std,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "layerdrop": 0.0,
        "use_cache": True,
    }


KVCache = L.KVCache


class OPTAttention(nnx.Module):
  def __init__(self, cfg: OPTConfig, dtype, rngs, n: int):
    d, bias, std = cfg.hidden_size, cfg.enable_bias, cfg.init_std
    self.num_heads = cfg.num_attention_heads
    self.scaling = cfg.head_dim**-0.5
    self.implementation = None
    self.k_proj = L.Linear(d, d, axes=("embed", "heads"), use_bias=bias, dtype=dtype, rngs=rngs,
                           init_std=std, num_stacked=n)
    self.v_proj = L.Linear(d, d, axes=("embed", "heads"), use_bias=bias, dtype=dtype, rngs=rngs,
                           init_std=std, num_stacked=n)
    self.q_proj = L.Linear(d, d, axes=("embed", "heads"), use_bias=bias, dtype=dtype, rngs=rngs,
                           init_std=std, num_stacked=n)
    self.out_proj = L.Linear(d, d, axes=("heads", "embed"), use_bias=bias, dtype=dtype, rngs=rngs,
                             init_std=std, num_stacked=n)

  def _heads(self, x_btd):
    b, t, d = x_btd.shape
    return x_btd.reshape(b, t, self.num_heads, d // self.num_heads)

  def __call__(self, x_btd, mask_b1ts, kv_cache=None, cache_index=None, segments_bt=None):
    """Self-attention; with `kv_cache=(k_bshd, v_bshd)` writes this block at `cache_index`.

    `segments_bt` (no cache only) are the segment ids `mask_b1ts` was built from;
    they let CPU attention take the causal flash path."""
    q_bthd = self._heads(self.q_proj(x_btd) * self.scaling)
    k_bthd = self._heads(self.k_proj(x_btd))
    v_bthd = self._heads(self.v_proj(x_btd))
    k_bshd, v_bshd, kv_cache = L.write_cache(kv_cache, k_bthd, v_bthd, cache_index)
    out_bthd = L.attention(q_bthd, k_bshd, v_bshd, mask_b1ts, self.implementation,
                           causal_segments_bt=segments_bt if kv_cache is None else None)
    b, t = x_btd.shape[:2]
    return self.out_proj(out_bthd.reshape(b, t, -1)), kv_cache


class OPTDecoderLayer(nnx.Module):
  """All decoder layers at once: parameters [layers, ...]; `__call__` sees one slice."""
  def __init__(self, cfg: OPTConfig, dtype, rngs, n: int):
    d, affine = cfg.hidden_size, cfg.layer_norm_elementwise_affine
    self.do_layer_norm_before = cfg.do_layer_norm_before
    self.act = cfg.activation_function
    self.self_attn = OPTAttention(cfg, dtype, rngs, n)
    self.self_attn_layer_norm = L.LayerNorm(d, elementwise_affine=affine, dtype=dtype,
                                            num_stacked=n)
    self.fc1 = L.Linear(d, cfg.ffn_dim, axes=("embed", "mlp"), use_bias=cfg.enable_bias,
                        dtype=dtype, rngs=rngs, init_std=cfg.init_std, num_stacked=n)
    self.fc2 = L.Linear(cfg.ffn_dim, d, axes=("mlp", "embed"), use_bias=cfg.enable_bias,
                        dtype=dtype, rngs=rngs, init_std=cfg.init_std, num_stacked=n)
    self.final_layer_norm = L.LayerNorm(d, elementwise_affine=affine, dtype=dtype, num_stacked=n)

  def __call__(self, x_btd, mask_b1ts, kv_cache=None, cache_index=None, segments_bt=None):
    pre = self.do_layer_norm_before
    residual = x_btd
    h = self.self_attn_layer_norm(x_btd) if pre else x_btd
    h, kv_cache = self.self_attn(h, mask_b1ts, kv_cache, cache_index, segments_bt)
    h = residual + h
    if not pre:
      h = self.self_attn_layer_norm(h)
    residual = h
    if pre:
      h = self.final_layer_norm(h)
    h = self.fc2(L.activation(self.act)(self.fc1(h)))
    h = residual + h
    if not pre:
      h = self.final_layer_norm(h)
    return h, kv_cache


class OPTDecoder(nnx.Module):
  def __init__(self, cfg: OPTConfig, dtype, rngs):
    self.cfg = cfg
    self.embed_tokens = L.Embed(cfg.vocab_size, cfg.word_embed_proj_dim, axes=("vocab", "embed"),
                                dtype=dtype, rngs=rngs, init_std=cfg.init_std)
    self.embed_positions = L.Embed(cfg.max_position_embeddings + POSITION_OFFSET, cfg.hidden_size,
                                   axes=(None, "embed"), dtype=dtype, rngs=rngs,
                                   init_std=cfg.init_std)
    if cfg.has_projections:
      self.project_in = L.Linear(cfg.word_embed_proj_dim, cfg.hidden_size, axes=(None, "embed"),
                                 use_bias=False, dtype=dtype, rngs=rngs, init_std=cfg.init_std)
      self.project_out = L.Linear(cfg.hidden_size, cfg.word_embed_proj_dim, axes=("embed", None),
                                  use_bias=False, dtype=dtype, rngs=rngs, init_std=cfg.init_std)
    else:
      self.project_in = None
      self.project_out = None
    self.final_layer_norm = (L.LayerNorm(
        cfg.hidden_size, elementwise_affine=cfg.layer_norm_elementwise_affine, dtype=dtype)
                             if cfg.has_final_layer_norm else None)
    self.layers = OPTDecoderLayer(cfg, dtype, rngs, cfg.num_hidden_layers)

  def layer(self, i: int) -> OPTDecoderLayer:
    """Layer `i` as a standalone module (for per-layer parity tests)."""
    graphdef, state = nnx.split(self.layers)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x[i], state))

  def __call__(self, tokens_bt, positions_bt, mask_b1ts, kv_cache: KVCache | None = None,
               cache_index=None, segments_bt=None):
    """Hidden states [batch, length, word_embed_proj_dim] (and the updated cache)."""
    x = self.embed_tokens(tokens_bt)
    if self.project_in is not None:
      x = self.project_in(x)
    x = x + self.embed_positions(positions_bt + POSITION_OFFSET).astype(x.dtype)

    def call(layer, h, _, kv):
      # Without a cache the segments let CPU attention take the causal flash path.
      return layer(h, mask_b1ts, kv, cache_index, segments_bt if kv is None else None)

    x, kv_cache = L.scan_layers(self.layers, x, kv_cache, call)

    if self.final_layer_norm is not None:
      x = self.final_layer_norm(x)
    if self.project_out is not None:
      x = self.project_out(x)
    return x, kv_cache


class OPTModel(nnx.Module):
  def __init__(self, cfg: OPTConfig, dtype, rngs):
    self.decoder = OPTDecoder(cfg, dtype, rngs)


class OPTForCausalLM(L.CausalLM):
  """OPT with a tied LM head. The scoring kernel uses `hidden_states` + `head_matrix`."""

  PAD_POSITION = -1

  def __init__(self, cfg: OPTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.config = cfg
    self.model = OPTModel(cfg, dtype, rngs)
    if not cfg.tie_word_embeddings:
      self.lm_head = L.Linear(cfg.word_embed_proj_dim, cfg.vocab_size, axes=("embed", "vocab"),
                              use_bias=False, dtype=dtype, rngs=rngs, init_std=cfg.init_std)
    else:
      self.lm_head = None

  @staticmethod
  def positions(mask_bt):
    """HF OPT's positions: cumsum of the mask minus one (padding gets -1)."""
    mask = mask_bt.astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask - 1

  def layer_stack(self, tokens_bt, positions_bt, mask_b1ts, segment_ids_bt):
    """The decoder without a cache: hidden states [batch, length, word_embed_proj_dim]."""
    h, _ = self.model.decoder(tokens_bt, positions_bt, mask_b1ts, segments_bt=segment_ids_bt)
    return h

  def head_matrix(self):
    """The output projection as [vocab, word_embed_proj_dim]."""
    if self.lm_head is None:
      return self.model.decoder.embed_tokens.embedding[...]
    return self.lm_head.kernel[...].T

  def cache_dims(self) -> tuple[int, int, int]:
    cfg = self.config
    return cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim

  def forward_cached(self, tokens_bt, positions_bt, key_valid_bs, cache: KVCache, cache_index):
    """Runs `tokens_bt` written at cache slots [cache_index, cache_index + length).

    Args:
      tokens_bt: [batch, length] token ids (a prompt block or one new token).
      positions_bt: [batch, length] OPT positions of those tokens (per row).
      key_valid_bs: [batch, max_len] which cache slots hold real tokens once this
        block is written (the caller owns it, so rows may be left-padded).
      cache: the KVCache; cache_index: scalar int slot of the first token.
    Returns:
      (hidden [batch, length, word_embed_proj_dim], updated cache).
    """
    attn_mask = self.cached_block_mask(tokens_bt.shape[1], key_valid_bs, cache_index)
    return self.model.decoder(tokens_bt, positions_bt, attn_mask, cache, cache_index)


def create(cfg: OPTConfig, *, dtype=jnp.float32, seed: int | None = 0) -> OPTForCausalLM:
  """A randomly initialised model (seed) or a deterministic placeholder (seed=None)."""
  rngs = nnx.Rngs(params=seed) if seed is not None else None
  return OPTForCausalLM(cfg, dtype=dtype, rngs=rngs)


# ---------------------------------------------------------------------------
# Conversion table: trajax parameter path <- HF state-dict key, hook.
# '{i}' marks a per-layer key stacked on the leading `layers` axis; "T" transposes
# torch's Linear weight [out, in] to our kernel [in, out].
_LAYER_LINEARS = [
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"
]
_LAYER_NORMS = ["self_attn_layer_norm", "final_layer_norm"]


def hf_rules(cfg: OPTConfig) -> list[tuple[str, str, str | None]]:
  """(our parameter path, HF key, hook) for every parameter of `cfg`'s model."""
  d, lyr = "model.decoder", "model.decoder.layers"
  rules = [(f"{d}.embed_tokens.embedding", f"{d}.embed_tokens.weight", None),
           (f"{d}.embed_positions.embedding", f"{d}.embed_positions.weight", None)]
  if cfg.has_projections:
    rules += [(f"{d}.project_in.kernel", f"{d}.project_in.weight", "T"),
              (f"{d}.project_out.kernel", f"{d}.project_out.weight", "T")]
  if cfg.has_final_layer_norm and cfg.layer_norm_elementwise_affine:
    rules += [(f"{d}.final_layer_norm.scale", f"{d}.final_layer_norm.weight", None),
              (f"{d}.final_layer_norm.bias", f"{d}.final_layer_norm.bias", None)]
  for name in _LAYER_LINEARS:
    rules.append((f"{lyr}.{name}.kernel", f"{lyr}.{{i}}.{name}.weight", "T"))
    if cfg.enable_bias:
      rules.append((f"{lyr}.{name}.bias", f"{lyr}.{{i}}.{name}.bias", None))
  if cfg.layer_norm_elementwise_affine:
    for name in _LAYER_NORMS:
      rules += [(f"{lyr}.{name}.scale", f"{lyr}.{{i}}.{name}.weight", None),
                (f"{lyr}.{name}.bias", f"{lyr}.{{i}}.{name}.bias", None)]
  if not cfg.tie_word_embeddings:
    rules.append(("lm_head.kernel", "lm_head.weight", "T"))
  return rules


def normalize_hf_key(key: str) -> str:
  """Older OPT checkpoints (the hub's facebook/opt-*) save OPTModel keys without `model.`."""
  return "model." + key if key.startswith("decoder.") else key


# Keys HF may save that carry no parameter of ours: the tied head is the embedding.
def ignored_hf_keys(cfg: OPTConfig) -> set[str]:
  return {"lm_head.weight"} if cfg.tie_word_embeddings else set()


Config = OPTConfig


def param_breakdown(cfg: OPTConfig) -> dict[str, int]:
  """Parameters of HF `OPTForCausalLM` per module group, the tied head counted once.

  HF's layout: embed_tokens [vocab, proj]; embed_positions [max_positions + 2,
  hidden]; bias-free project_in/project_out only when proj != hidden (350m); per
  layer q/k/v/out_proj [hidden, hidden] (+ bias), two layer norms, fc1/fc2 (+
  bias); a final layer norm for pre-LN models; an untied head [vocab, proj].

  Returns:
    {"embed_tokens", "embed_positions", "project_in", "project_out", "layers",
     "final_layer_norm", "lm_head", "total"} -> int.
  """
  d, proj, f = cfg.hidden_size, cfg.word_embed_proj_dim, cfg.ffn_dim
  bias = 1 if cfg.enable_bias else 0
  norm = 2 * d if cfg.layer_norm_elementwise_affine else 0
  per_layer = 4 * (d * d + bias * d) + 2 * norm + (d * f + bias * f) + (f * d + bias * d)
  parts = {
      "embed_tokens": cfg.vocab_size * proj,
      "embed_positions": (cfg.max_position_embeddings + POSITION_OFFSET) * d,
      "project_in": proj * d if cfg.has_projections else 0,
      "project_out": d * proj if cfg.has_projections else 0,
      "layers": cfg.num_hidden_layers * per_layer,
      "final_layer_norm": norm if cfg.has_final_layer_norm else 0,
      "lm_head": 0 if cfg.tie_word_embeddings else cfg.vocab_size * proj,
  }
  parts["total"] = sum(parts.values())
  return parts


def param_count(cfg: OPTConfig) -> int:
  """All parameters (the tied head counted once), as HF's numel sum."""
  return param_breakdown(cfg)["total"]


def flops_params(cfg: OPTConfig) -> int:
  """N of the FLOPs formulas: every matmul weight, i.e. all but the position table.

  The token embedding stays in N because it is (tied to) the LM head, whose
  matmul costs 2·V·d per token; biases and norms are < 0.1% and kept, as PaLM does.
  """
  return param_count(cfg) - param_breakdown(cfg)["embed_positions"]

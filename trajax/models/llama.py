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

from trajax.models import hf_config
from trajax.models import rope as rope_lib
from trajax.models.llama_modules import (  # noqa: F401 (the family's public names)
    ACTIVATIONS, KVCache, LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel,
    RMSNorm, create)


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

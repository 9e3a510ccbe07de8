"""OLMo 2 (OLMo et al. 2024, "2 OLMo 2 Furious") in flax.nnx, named as HF's Olmo2ForCausalLM.

The Llama blocks (`trajax.models.llama`) with OLMo-2's differences, as
transformers' `modeling_olmo2.py` computes them:
  * norms after the sublayers, not before: h = x + post_attention_layernorm(
    attn(x)); h + post_feedforward_layernorm(mlp(h)); no input norm;
  * RMSNorm on the q and k projections, each over all its heads at once
    (`self_attn.q_norm` [heads * head_dim], `k_norm` [kv_heads * head_dim]),
    before the heads are split and rotated;
  * RMSNorm multiplies its weight in float32 before casting back (Llama casts
    first); the final `model.norm` is the same RMSNorm;
  * the MLP never has biases; `attention_bias` is optional; no `clip_qkv`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from trajax.models import llama


@dataclasses.dataclass(frozen=True)
class Olmo2Config(llama.LlamaConfig):
  """Architecture of one OLMo-2 model (HF Olmo2Config's fields that matter)."""
  vocab_size: int = 100352
  rms_norm_eps: float = 1e-5
  bos_token_id: int = 100257
  eos_token_id: int = 100257
  pad_token_id: int = 100277

  family = "olmo2"
  POST_NORMS = True
  QK_NORM = True
  HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "hidden_act",
               "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
               "rope_parameters", "partial_rotary_factor", "attention_bias", "tie_word_embeddings",
               "bos_token_id", "eos_token_id", "pad_token_id")

  @classmethod
  def _hf_defaults(cls) -> dict[str, Any]:
    return {
        "bos_token_id": None, "eos_token_id": 50279, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False
    }


Config = Olmo2Config
Olmo2ForCausalLM = llama.LlamaForCausalLM


def create(cfg: Olmo2Config, *, dtype=jnp.float32, seed: int | None = 0):
  """A randomly initialised model (seed) or a deterministic placeholder (seed=None)."""
  return llama.create(cfg, dtype=dtype, seed=seed)


hf_rules = llama.hf_rules
normalize_hf_key = llama.normalize_hf_key
ignored_hf_keys = llama.ignored_hf_keys
param_breakdown = llama.param_breakdown
param_count = llama.param_count
flops_params = llama.flops_params

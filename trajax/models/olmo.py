"""OLMo (Groeneveld et al. 2024) in flax.nnx, named as HF's OlmoForCausalLM (`allenai/OLMo-*-hf`).

The Llama blocks (`trajax.models.llama`) with OLMo-1's differences, as
transformers' `modeling_olmo.py` computes them:
  * every norm is a LayerNorm without parameters (eps 1e-5, float32), so the
    checkpoint has no norm weights at all;
  * `clip_qkv`: the q, k and v projections are clamped to [-clip, clip] before
    the heads are split and rotated (OLMo-7B-0424 sets it);
  * the MLP never has biases; `attention_bias` is optional;
  * tied (OLMo-1B) or untied (OLMo-7B) head; no BOS token (`bos_token_id`
    null: the tokenizer adds nothing before a text).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from trajax.models import llama


@dataclasses.dataclass(frozen=True)
class OlmoConfig(llama.LlamaConfig):
  """Architecture of one OLMo-1 model (HF OlmoConfig's fields that matter)."""
  vocab_size: int = 50304
  bos_token_id: int = 50279
  eos_token_id: int = 50279
  pad_token_id: int = 1

  family = "olmo"
  NORM = "layernorm"
  HF_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "hidden_act",
               "max_position_embeddings", "rope_theta", "rope_scaling", "rope_parameters",
               "partial_rotary_factor", "attention_bias", "clip_qkv", "tie_word_embeddings",
               "bos_token_id", "eos_token_id", "pad_token_id")

  @classmethod
  def _hf_defaults(cls) -> dict[str, Any]:
    return {"bos_token_id": None, "eos_token_id": 50279, "tie_word_embeddings": False}


Config = OlmoConfig
OlmoForCausalLM = llama.LlamaForCausalLM


def create(cfg: OlmoConfig, *, dtype=jnp.float32, seed: int | None = 0):
  """A randomly initialised model (seed) or a deterministic placeholder (seed=None)."""
  return llama.create(cfg, dtype=dtype, seed=seed)


hf_rules = llama.hf_rules
normalize_hf_key = llama.normalize_hf_key
ignored_hf_keys = llama.ignored_hf_keys
param_breakdown = llama.param_breakdown
param_count = llama.param_count
flops_params = llama.flops_params

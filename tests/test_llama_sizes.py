"""Real Llama / OLMo / OLMo-2 configs: parameter counts against transformers on the meta device,
and `jax.eval_shape` of the 7B models (no memory, real shapes).

The config.json contents below are written from the published files on the Hugging Face hub
(repository named above each); trajax's tests run offline, so they were not re-read here.
The independent check is transformers' own model built from the same dict on the meta device.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from trajax import models

_LLAMA = {
    "model_type": "llama", "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2,
    "initializer_range": 0.02, "pretraining_tp": 1, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True,
    "architectures": ["LlamaForCausalLM"], "vocab_size": 32000
}
_OLMO2 = {
    "model_type": "olmo2", "hidden_act": "silu", "attention_bias": False, "eos_token_id": 100257,
    "pad_token_id": 100277, "max_position_embeddings": 4096, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 500000, "tie_word_embeddings": False, "vocab_size": 100352,
    "use_cache": True, "architectures": ["Olmo2ForCausalLM"]
}
_OLMO = {
    "model_type": "olmo", "hidden_act": "silu", "attention_bias": False, "bos_token_id": None,
    "clip_qkv": None, "eos_token_id": 50279, "pad_token_id": 1, "max_position_embeddings": 2048,
    "rope_scaling": None, "rope_theta": 10000.0, "vocab_size": 50304, "use_cache": True,
    "architectures": ["OlmoForCausalLM"]
}

# name: (config.json, nominal published size). Nominal sizes are the models' names / model
# cards (rounded), checked only to 6%: the exact count is transformers' own.
CONFIGS = {
    # meta-llama/Llama-2-7b-hf
    "llama-2-7b": (dict(_LLAMA, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                        num_attention_heads=32, num_key_value_heads=32,
                        max_position_embeddings=4096, rms_norm_eps=1e-05), 6.74e9),
    # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T: 4 key/value heads (GQA)
    "tinyllama-1.1b": (dict(_LLAMA, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                            num_attention_heads=32, num_key_value_heads=4,
                            max_position_embeddings=2048, rms_norm_eps=1e-05, rope_theta=10000.0,
                            torch_dtype="float32"), 1.1e9),
    # LLM360/Amber: the LLaMA-7B architecture
    "amber": (dict(_LLAMA, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                   rms_norm_eps=1e-06), 6.74e9),
    # allenai/OLMo-1B-hf: tied head
    "olmo-1b": (dict(_OLMO, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=16, num_key_value_heads=16,
                     tie_word_embeddings=True), 1.18e9),
    # allenai/OLMo-7B-hf
    "olmo-7b": (dict(_OLMO, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32,
                     tie_word_embeddings=False), 6.89e9),
    # allenai/OLMo-2-0425-1B
    "olmo-2-1b": (dict(_OLMO2, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=16, num_key_value_heads=16), 1.48e9),
    # allenai/OLMo-2-1124-7B
    "olmo-2-7b": (dict(_OLMO2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32), 7.30e9),
    # allenai/OLMo-2-1124-13B
    "olmo-2-13b": (dict(_OLMO2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40), 13.7e9),
    # allenai/OLMo-2-0325-32B: 8 key/value heads (GQA)
    "olmo-2-32b": (dict(_OLMO2, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                        num_attention_heads=40, num_key_value_heads=8), 32.2e9),
}


def _torch_count(hf):
  import transformers
  cls = {"llama": "Llama", "olmo": "Olmo", "olmo2": "Olmo2"}[hf["model_type"]]
  kwargs = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
  with torch.device("meta"):
    ref = getattr(transformers, f"{cls}ForCausalLM")(getattr(transformers,
                                                             f"{cls}Config")(**kwargs))
  return sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_param_count_matches_transformers(name):
  hf, nominal = CONFIGS[name]
  fam = models.family(hf["model_type"])
  cfg = fam.Config.from_hf_config(hf, f"{name}/config.json")
  theirs = _torch_count(hf)
  assert fam.param_count(cfg) == theirs
  assert abs(theirs / nominal - 1) < 0.06
  parts = fam.param_breakdown(cfg)
  # N for FLOPs: matmul weights; an untied input embedding is a lookup and left out.
  embed = hf["vocab_size"] * hf["hidden_size"]
  assert fam.flops_params(cfg) == theirs - (0 if hf["tie_word_embeddings"] else embed)
  assert parts["non_embedding"] == theirs - embed * (1 if hf["tie_word_embeddings"] else 2)


def test_gqa_and_swiglu_counted_by_hand():
  """TinyLlama, by hand: k/v are hidden x (4 heads x 64), the MLP three 2048 x 5632 matrices."""
  cfg = models.family("llama").Config.from_hf_config(CONFIGS["tinyllama-1.1b"][0])
  per_layer = 2 * 2048 * 2048 + 2 * 2048 * 256 + 3 * 2048 * 5632 + 2 * 2048
  assert models.family("llama").param_count(cfg) == 22 * per_layer + 2048 + 2 * 32000 * 2048
  assert models.family("llama").param_count(cfg) == 1_100_048_384


@pytest.mark.parametrize("name", ["llama-2-7b", "olmo-2-7b"])
def test_eval_shape_of_the_real_7b_models(name):
  hf, _ = CONFIGS[name]
  fam = models.family(hf["model_type"])
  cfg = fam.Config.from_hf_config(hf)
  abstract = nnx.eval_shape(lambda: fam.create(cfg, dtype=jnp.bfloat16, seed=None))
  _, state = nnx.split(abstract)
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  assert ours == _torch_count(hf) == fam.param_count(cfg)
  layers = state["model"]["layers"]
  assert layers["mlp"]["gate_proj"]["kernel"].shape == (32, 4096, 11008)

  def forward():
    model = fam.create(cfg, dtype=jnp.bfloat16, seed=None)
    return model.hidden_states(jnp.zeros((1, 4096), jnp.int32))

  out = jax.eval_shape(forward)
  assert out.shape == (1, 4096, 4096) and out.dtype == jnp.bfloat16

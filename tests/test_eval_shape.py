"""Every released OPT size, traced with jax.eval_shape: no memory, real shapes."""
import jax
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import OPTConfig as HFOPTConfig
from transformers import OPTForCausalLM as HFOPT

from trajax.models import opt

# name: (hidden, layers, heads, ffn, word_embed_proj_dim, pre-LN), published nominal size.
SIZES = {
    "125m": ((768, 12, 12, 3072, 768, True), 125e6),
    "350m": ((1024, 24, 16, 4096, 512, False), 350e6),
    "1.3b": ((2048, 24, 32, 8192, 2048, True), 1.3e9),
    "2.7b": ((2560, 32, 32, 10240, 2560, True), 2.7e9),
    "6.7b": ((4096, 32, 32, 16384, 4096, True), 6.7e9),
    "13b": ((5120, 40, 40, 20480, 5120, True), 13e9),
    "30b": ((7168, 48, 56, 28672, 7168, True), 30e9),
    "66b": ((9216, 64, 72, 36864, 9216, True), 66e9),
    "175b": ((12288, 96, 96, 49152, 12288, True), 175e9),
}


def _hf_config(name):
  (h, l, heads, ffn, proj, pre), _ = SIZES[name]
  return dict(vocab_size=50272, hidden_size=h, num_hidden_layers=l, num_attention_heads=heads,
              ffn_dim=ffn, word_embed_proj_dim=proj, do_layer_norm_before=pre,
              max_position_embeddings=2048)


@pytest.mark.parametrize("name", list(SIZES))
def test_param_count_matches_transformers_and_published_size(name):
  hf = _hf_config(name)
  cfg = opt.OPTConfig.from_hf_config(hf)
  abstract = nnx.eval_shape(lambda: opt.create(cfg, dtype="bfloat16", seed=None))
  _, state = nnx.split(abstract)
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
  # Independent count: transformers' torch model on the meta device (tied head counted once).
  with torch.device("meta"):
    ref = HFOPT(HFOPTConfig(**hf))
  theirs = sum(p.numel() for p in ref.parameters())
  assert ours == theirs == opt.param_count(cfg)
  # Published sizes are nominal; OPT-350m is 331M parameters.
  assert abs(ours / SIZES[name][1] - 1) < 0.06
  # Stacked decoder layers: leading axis is the layer count.
  assert state["model"]["decoder"]["layers"]["fc1"]["kernel"].shape == (hf["num_hidden_layers"],
                                                                        hf["hidden_size"],
                                                                        hf["ffn_dim"])


def test_hidden_states_shape_of_175b_without_memory():
  cfg = opt.OPTConfig.from_hf_config(_hf_config("175b"))

  def forward():
    model = opt.create(cfg, dtype="bfloat16", seed=None)
    return model.hidden_states(jax.numpy.zeros((2, 2048), jax.numpy.int32))

  out = jax.eval_shape(forward)
  assert out.shape == (2, 2048, 12288) and out.dtype == jax.numpy.bfloat16

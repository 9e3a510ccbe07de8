"""trajax's OLMo and OLMo-2 against transformers' OlmoForCausalLM / Olmo2ForCausalLM."""
import numpy as np
import pytest
import torch

import trajax
from test_llama import LLAMA3, check_round_trip, hf_model

OLMO = {
    "olmo1b_tied_clip": dict(tie_word_embeddings=True, clip_qkv=0.5),
    "olmo7b_untied": dict(rope_theta=500.0),
    "gqa1_bias_linear": dict(num_key_value_heads=1, attention_bias=True,
                             rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "gqa2_dynamic": dict(num_key_value_heads=2, rope_scaling={"type": "dynamic", "factor": 2.0}),
}
OLMO2 = {
    "mha_theta_500000": dict(rope_theta=500000.0, rms_norm_eps=1e-6),
    "gqa2_tied_bias": dict(num_key_value_heads=2, tie_word_embeddings=True, attention_bias=True),
    "mqa_llama3": dict(num_key_value_heads=1, rope_theta=100.0, rope_scaling=LLAMA3),
}


@pytest.mark.parametrize("variant", sorted(OLMO))
def test_olmo_round_trip_matches_torch(tmp_path, variant):
  model = check_round_trip(tmp_path, hf_model("olmo", **OLMO[variant]), "olmo")
  assert model.model.layers.input_layernorm.scale is None  # no norm parameters at all


@pytest.mark.parametrize("variant", sorted(OLMO2))
def test_olmo2_round_trip_matches_torch(tmp_path, variant):
  check_round_trip(tmp_path, hf_model("olmo2", **OLMO2[variant]), "olmo2")


def test_clip_qkv_takes_effect(tmp_path):
  """A clip below the projections' range changes the log-probs, as it does in torch."""
  ids = np.random.RandomState(0).randint(3, 96, size=(1, 16))
  out = {}
  for clip in (None, 0.1):
    ref = hf_model("olmo", clip_qkv=clip)
    ref.save_pretrained(tmp_path / str(clip))
    got = trajax.token_logprobs(trajax.load_hf(tmp_path / str(clip)), ids)
    with torch.no_grad():
      lp = torch.log_softmax(ref(input_ids=torch.tensor(ids)).logits.double(), -1)
    want = lp[0, :-1].gather(-1, torch.tensor(ids[0, 1:, None]))[:, 0].numpy()
    np.testing.assert_allclose(got[0, 1:], want, atol=1e-4)
    out[clip] = got
  assert np.nanmax(np.abs(out[None] - out[0.1])) > 1e-2


def test_olmo2_per_layer_parity(tmp_path):
  """Post-norms and q/k norms in one layer against HF's Olmo2DecoderLayer."""
  import jax
  from trajax.models import layers
  ref = hf_model("olmo2", num_key_value_heads=2)
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  x = np.random.RandomState(0).randn(2, 12, 32).astype(np.float32)
  pos = np.broadcast_to(np.arange(12), (2, 12))
  rope = model.model.rope_tables(pos)
  with torch.no_grad():
    cos, sin = ref.model.rotary_emb(torch.tensor(x), torch.tensor(pos))
  slots = jax.numpy.arange(12)
  mask = layers.causal_mask(slots, slots, jax.numpy.ones((2, 12), bool))
  causal = torch.full((12, 12), torch.finfo(torch.float32).min).triu(1)[None, None]
  for i in range(2):
    with torch.no_grad():
      want = ref.model.layers[i](torch.tensor(x), attention_mask=causal,
                                 position_embeddings=(cos, sin)).numpy()
    got, _ = model.model.layer(i)(x, rope, mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, err_msg=f"layer {i}")

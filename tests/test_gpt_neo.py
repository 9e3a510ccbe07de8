"""trajax's Flax GPT-Neo against transformers' PyTorch GPT-Neo on the same random weights."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import trajax
from trajax import models
from trajax.models import gpt_neo, layers

# A tiny model: 4 layers alternating global/local, window 3 < the 24-token sequences.
TINY = dict(vocab_size=96, hidden_size=16, num_layers=4, num_heads=4, intermediate_size=40,
            max_position_embeddings=64, attention_types=[[["global", "local"], 2]], window_size=3,
            bos_token_id=0, eos_token_id=0)

VARIANTS = {
    "global_local": {},
    "local_first_window_1": dict(attention_types=[[["local", "global"], 2]], window_size=1),
    "all_local": dict(attention_types=[[["local"], 4]], window_size=5),
    "all_global_default_ffn": dict(attention_types=[[["global"], 4]], intermediate_size=None),
    "untied_gelu": dict(tie_word_embeddings=False, activation_function="gelu"),
}


def test_family_is_registered():
  assert models.FAMILIES["gpt_neo"] is gpt_neo


def hf_neo(seed=0, **overrides):
  from transformers import GPTNeoConfig, GPTNeoForCausalLM
  torch.manual_seed(seed)
  model = GPTNeoForCausalLM(GPTNeoConfig(**dict(TINY, **overrides),
                                         attn_implementation="eager")).eval()
  with torch.no_grad():  # random layer norms, so they matter; larger weights, so logits do
    for name, p in model.named_parameters():
      if ".ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
      elif p.dim() == 2:
        p.mul_(5.0)
  return model


def _batch(vocab, seed=0):
  rng = np.random.RandomState(seed)
  ids = rng.randint(1, vocab, size=(4, 24))
  mask = np.ones(ids.shape, bool)
  mask[1, 17:] = False  # right padding
  mask[2, 3:] = False  # mostly padding
  mask[3, :6] = False  # left padding
  return ids, mask


def torch_logprobs(model, ids_bt, mask_bt):
  """Reference per-token log-probs; positions = trajax's (cumsum(mask) - 1, clipped at 0)."""
  pos = np.maximum(np.cumsum(mask_bt, 1) - 1, 0)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(ids_bt), attention_mask=torch.tensor(mask_bt.astype(int)),
                   position_ids=torch.tensor(pos)).logits.double()
  lp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, torch.tensor(ids_bt[:, 1:, None]))[..., 0]
  out = np.concatenate([np.full((ids_bt.shape[0], 1), np.nan), lp.numpy()], axis=1)
  out[:, 1:][~(mask_bt[:, 1:] & mask_bt[:, :-1])] = np.nan
  return out


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_round_trip_logprobs_match_torch(tmp_path, variant):
  ref = hf_neo(**VARIANTS[variant])
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  assert isinstance(model, gpt_neo.GPTNeoForCausalLM)
  ids, mask = _batch(96)
  got = trajax.token_logprobs(model, ids, mask)
  want = torch_logprobs(ref, ids, mask)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert np.isfinite(got[0, 1:]).all() and np.isnan(got[3, :7]).all()
  # param_count equals torch's own count (a tied head counted once).
  counts = gpt_neo.param_breakdown(model.config)
  assert counts["total"] == sum(p.numel() for p in ref.parameters())
  _, state = nnx.split(model)
  assert counts["total"] == sum(x.size for x in jax.tree.leaves(state))


def test_right_padding_matches_hf_default_positions(tmp_path):
  """With only an attention_mask HF numbers positions arange(length): same as ours
  for unpadded and right-padded rows."""
  ref = hf_neo()
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  ids, mask = _batch(96)
  ids, mask = ids[:2], mask[:2]
  with torch.no_grad():
    want = ref(input_ids=torch.tensor(ids),
               attention_mask=torch.tensor(mask.astype(int))).logits.numpy()
  got = np.asarray(model(ids, mask))
  np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=0)


def test_local_window_rule():
  """Slot i sees j iff 0 <= i - j < window_size, exactly HF's buffer."""
  ref = hf_neo(attention_types=[[["local"], 4]], window_size=3)
  want = ref.transformer.h[0].attn.attention.bias[0, 0, :10, :10].numpy()
  slots = jnp.arange(10)
  base = layers.causal_mask(slots, slots, jnp.ones((1, 10), bool))
  got = gpt_neo.window_mask(base, slots[None], slots[None], 3)[0, 0]
  np.testing.assert_array_equal(np.asarray(got), want)


def test_per_layer_parity(tmp_path):
  ref = hf_neo()
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  x = np.random.RandomState(0).randn(2, 12, 16).astype(np.float32)
  slots = jnp.arange(12)
  base = layers.causal_mask(slots, slots, jnp.ones((2, 12), bool))
  for i, window in enumerate(model.config.layer_windows()[:2]):  # one global, one local
    with torch.no_grad():
      want = ref.transformer.h[i](torch.tensor(x))[0].numpy()
    got, _ = model.transformer.layer(i)(x,
                                        gpt_neo.window_mask(base, slots[None], slots[None], window))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, err_msg=f"layer {i}")


def test_kv_cache_decoding_equals_recompute():
  """Greedy decoding through forward_cached == hidden_states on the growing prefix,
  with left padding and a local window shorter than the sequence."""
  cfg = gpt_neo.GPTNeoConfig(vocab_size=64, hidden_size=16, num_layers=4, num_heads=2,
                             max_position_embeddings=32, attention_layers=("global", "local") * 2,
                             window_size=3)
  check_cached_decoding(gpt_neo.create(cfg, seed=1))


def check_cached_decoding(model, steps=6):
  """Shared with test_gpt_neox: cached greedy steps vs full recompute, jitted once each."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def cached(state, tokens, positions, key_valid, cache, index):
    m = nnx.merge(graphdef, state)
    h, cache = m.forward_cached(tokens, positions, key_valid, cache, index)
    return h[:, -1] @ m.head_matrix().T, cache

  @jax.jit
  def full(state, tokens, mask, last):
    # The prefix right-padded to a fixed length: one compilation for every step.
    m = nnx.merge(graphdef, state)
    h = m.hidden_states(tokens, mask)
    return jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0] @ m.head_matrix().T

  prompts = np.array([[5, 9, 3, 7, 1], [0, 0, 4, 8, 2]])
  pmask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], bool)
  p = prompts.shape[1]
  max_len = p + steps
  key_valid = np.concatenate([pmask, np.ones((2, steps), bool)], 1)
  seq = np.zeros((2, max_len), np.int32)
  smask = np.zeros((2, max_len), bool)
  seq[:, :p], smask[:, :p] = prompts, pmask
  logits, cache = cached(state, prompts, model.positions(pmask), key_valid,
                         model.init_cache(2, max_len), 0)
  n_real = pmask.sum(1)
  for step in range(steps):
    want = full(state, seq, smask, np.full((2,), p + step - 1))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), atol=1e-4,
                               err_msg=f"step {step}")
    tok = np.asarray(logits).argmax(-1)
    seq[:, p + step], smask[:, p + step] = tok, True
    logits, cache = cached(state, tok[:, None], (n_real + step)[:, None], key_valid, cache,
                           p + step)


def test_config_round_trip_and_errors():
  ref = hf_neo()
  cfg = gpt_neo.GPTNeoConfig.from_hf_config(ref.config.to_dict())
  assert cfg.attention_layers == ("global", "local", "global", "local")
  assert gpt_neo.GPTNeoConfig.from_hf_config(cfg.to_hf_config()) == cfg
  hf = ref.config.to_dict()
  del hf["attention_layers"]  # only attention_types, as older config.json files
  assert gpt_neo.GPTNeoConfig.from_hf_config(hf) == cfg
  with pytest.raises(ValueError, match="attention_layers has 2 entries"):
    gpt_neo.GPTNeoConfig.from_hf_config(dict(hf, attention_types=[[["global"], 2]]), "x.json")


def test_ignored_buffers_and_bare_model_keys():
  cfg = gpt_neo.GPTNeoConfig.from_hf_config(hf_neo().config.to_dict())
  assert "transformer.h.3.attn.attention.masked_bias" in gpt_neo.ignored_hf_keys(cfg)
  assert gpt_neo.normalize_hf_key("h.0.ln_1.weight") == "transformer.h.0.ln_1.weight"
  assert gpt_neo.normalize_hf_key("lm_head.weight") == "lm_head.weight"


def test_published_sizes():
  """GPT-Neo 125M / 1.3B / 2.7B configs: counts against transformers on the meta device."""
  from transformers import GPTNeoConfig, GPTNeoForCausalLM
  for hidden, n_layers, heads in ((768, 12, 12), (2048, 24, 16), (2560, 32, 20)):
    hf = dict(vocab_size=50257, hidden_size=hidden, num_layers=n_layers, num_heads=heads,
              attention_types=[[["global", "local"], n_layers // 2]])
    with torch.device("meta"):
      ref = GPTNeoForCausalLM(GPTNeoConfig(**hf))
    cfg = gpt_neo.GPTNeoConfig.from_hf_config(hf)
    assert gpt_neo.param_count(cfg) == sum(p.numel() for p in ref.parameters())

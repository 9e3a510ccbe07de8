"""Packed scoring equals unpacked scoring, for every family; packing removes padding."""
import numpy as np
import pytest

import trajax
from trajax import packing
from conftest import hf_opt
from test_gpt_neo import hf_neo
from test_gpt_neox import hf_neox
from test_llama import hf_model

BUILDERS = {
    "opt": lambda: hf_opt(0, max_position_embeddings=64),
    "opt_post_ln": lambda: hf_opt(0, do_layer_norm_before=False, word_embed_proj_dim=8),
    "gpt_neo": lambda: hf_neo(0, window_size=5),
    "gpt_neox": lambda: hf_neox(0, rotary_pct=0.25),
}  # Llama, OLMo, OLMo-2: packed rows against torch directly, in test_llama.py


def _sequences(vocab, n=11, seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randint(1, vocab, size=rng.randint(2, 20)).tolist() for _ in range(n)]


def test_pack_places_every_sequence_once():
  seqs = _sequences(96)
  packed = packing.pack(seqs, row_len=24)
  for seq, got in zip(seqs, packing.unpack(packed.tokens_bt, packed)):
    np.testing.assert_array_equal(got, seq)
  assert (packed.segment_ids_bt > 0).sum() == sum(map(len, seqs))
  one_per_row = 1 - sum(map(len, seqs)) / (len(seqs) * 24)
  assert packed.padding_fraction < one_per_row / 2
  with pytest.raises(ValueError, match="sequence 0 has 30 tokens; packing needs 1..row_len=24"):
    packing.pack([[1] * 30], row_len=24)


def test_best_fit_hand_case():
  # Longest first: 6 -> row 0 (2 left), 4 -> row 1 (4 left), 3 -> row 1 (1 left); the 1 goes
  # to the row with the least room that holds it (row 1), where first fit would take row 0.
  assert packing.best_fit([6, 4, 3, 1], 8) == ([(0, 0), (1, 0), (1, 4), (1, 7)], 2)
  assert packing.best_fit([], 8) == ([], 0)
  with pytest.raises(ValueError, match="item 1 has 9 tokens; packing needs 1..row_len=8"):
    packing.best_fit([3, 9], 8)


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_packed_logprobs_equal_each_sequence_alone(tmp_path, family):
  ref = BUILDERS[family]()
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  seqs = _sequences(ref.config.vocab_size)
  packed = packing.pack(seqs, row_len=40)
  scorer = trajax.Scorer(model)
  got = packing.unpack(scorer(packed.tokens_bt, segment_ids_bt=packed.segment_ids_bt), packed)
  for seq, lp in zip(seqs, got):
    alone = trajax.token_logprobs(model, np.asarray([seq]))[0]
    np.testing.assert_array_equal(np.isnan(lp), np.isnan(alone))  # NaN at each start
    np.testing.assert_allclose(lp, alone, atol=2e-5)


LONG = {  # contexts longer than the CPU attention block
    "opt": lambda: hf_opt(0, max_position_embeddings=512),
    "opt_post_ln": lambda: hf_opt(0, do_layer_norm_before=False, word_embed_proj_dim=8,
                                  max_position_embeddings=512),
    "gpt_neo": lambda: hf_neo(0, window_size=5, max_position_embeddings=512),
    "gpt_neox": lambda: hf_neox(0, rotary_pct=0.25, max_position_embeddings=512),
    "llama_gqa": lambda: hf_model("llama", num_key_value_heads=2, max_position_embeddings=512),
}


@pytest.mark.parametrize("family", sorted(LONG))
def test_library_attention_path_equals_the_cpu_kernel(tmp_path, family):
  """`set_attention_implementation(model, "xla")` makes the very call the cuDNN path makes
  (mask + is_causal, `jax.nn.dot_product_attention`), only with XLA's kernel; on rows longer
  than the CPU block (the default there is the blockwise causal flash) both agree, for
  right- and left-padded rows and for packed rows."""
  from trajax.models import layers, set_attention_implementation
  ref = LONG[family]()
  ref.save_pretrained(tmp_path)
  model = trajax.load_hf(tmp_path)
  t = layers.ATTENTION_QUERY_BLOCK + 37
  rng = np.random.RandomState(1)
  tokens_bt = rng.randint(1, ref.config.vocab_size, size=(3, t))
  mask_bt = np.ones((3, t), bool)
  mask_bt[1, 200:] = False  # right padding
  mask_bt[2, :90] = False  # left padding
  segments_bt = np.zeros((2, t), np.int32)
  segments_bt[0, :100], segments_bt[0, 100:250], segments_bt[0, 250:t - 3] = 1, 2, 3
  segments_bt[1, :t] = 1
  default = trajax.Scorer(model)
  want_padded = default(tokens_bt, mask_bt)
  want_packed = default(tokens_bt[:2], segment_ids_bt=segments_bt)
  assert set_attention_implementation(model, "xla") > 0
  library = trajax.Scorer(model)
  np.testing.assert_allclose(library(tokens_bt, mask_bt), want_padded, atol=2e-5)
  np.testing.assert_allclose(library(tokens_bt[:2], segment_ids_bt=segments_bt), want_packed,
                             atol=2e-5)

"""Every family through the same engine interfaces: the sweep, two-model decoding, ICL scoring."""
import numpy as np
import pytest

import trajax
from trajax import decoding, sweep
from conftest import OPT_TOKENIZER, write_manifest
from test_gpt_neo import hf_neo
from test_gpt_neox import hf_neox
from test_llama import hf_model

# vocab 50272 so the real OPT tokenizer's ids fit every family (a shared tokenizer is what
# two-model decoding needs; real Pythia/GPT-Neo checkpoints bring their own).
VOCAB = 50272
BUILDERS = {
    "gpt_neo": lambda seed: hf_neo(seed, vocab_size=VOCAB, max_position_embeddings=64, window_size=6
                                  ),
    "gpt_neox": lambda seed: hf_neox(seed, vocab_size=VOCAB, rotary_pct=0.25, bos_token_id=2,
                                     eos_token_id=2),
    "llama": lambda seed: hf_model("llama", seed, vocab_size=VOCAB, num_key_value_heads=2,
                                   bos_token_id=2, eos_token_id=2),
    "olmo": lambda seed: hf_model("olmo", seed, vocab_size=VOCAB, clip_qkv=4.0, tie_word_embeddings=
                                  True, bos_token_id=2, eos_token_id=2),
    "olmo2": lambda seed: hf_model("olmo2", seed, vocab_size=VOCAB, num_key_value_heads=1,
                                   bos_token_id=2, eos_token_id=2),
}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_sweep_scores_any_family(tmp_path, family):
  from conftest import torch_logprobs
  refs, ckpts = [], []
  for k, step in enumerate((1, 2, 5)):
    ref = BUILDERS[family](k)
    path = tmp_path / f"{family}/step{step}"
    ref.save_pretrained(path)
    refs.append(ref)
    ckpts.append((step, str(path)))
  docs = tmp_path / "d.txt"
  docs.write_text("The river runs past the mill, and the miller sings to the fish. " * 4)
  from configs import score as score_config
  config = score_config.get_config()
  config.trajectory = write_manifest(str(tmp_path / "t.json"), {family: (10, ckpts)})
  config.tokenizer = str(OPT_TOKENIZER)
  config.data.files = str(docs)
  config.data.block_len = 32
  reader = sweep.run(config, str(tmp_path / "out"))
  lp = reader.logprobs(family)
  for i, ref in enumerate(refs):
    want = torch_logprobs(ref, reader.tokens, reader.mask).reshape(-1)
    np.testing.assert_allclose(lp[i], want, atol=1e-4)


def test_two_model_decoding_across_families(tmp_path):
  """A small OPT contrasted with a GPT-NeoX: KV-cache decoding equals full recompute."""
  from conftest import hf_opt
  small_ref = hf_opt(0, vocab_size=VOCAB)
  large_ref = BUILDERS["gpt_neox"](1)
  small_ref.save_pretrained(tmp_path / "s")
  large_ref.save_pretrained(tmp_path / "l")
  small, large = trajax.load_hf(tmp_path / "s"), trajax.load_hf(tmp_path / "l")
  prompts = np.random.RandomState(0).randint(3, 50265, size=(2, 5))
  gen = decoding.generate(small, large, prompts, max_new_tokens=6, lambdas="ps-pl",
                          stop_at_eos=False)
  # Reference: recompute both models on the full prefix at every step, numpy interpolation.
  seqs = prompts.copy()
  for _ in range(6):
    ls = np.asarray(small(seqs))[:, -1].astype(np.float64)
    ll = np.asarray(large(seqs))[:, -1].astype(np.float64)
    ps = np.exp(ls - ls.max(-1, keepdims=True))
    ps /= ps.sum(-1, keepdims=True)
    pl = np.exp(ll - ll.max(-1, keepdims=True))
    pl /= pl.sum(-1, keepdims=True)
    nxt = np.where(ps - pl > 0, ps - pl, -np.inf).argmax(-1)
    seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
  np.testing.assert_array_equal(np.asarray(gen.tokens_bn), seqs[:, 5:])

"""Training FLOPs, OPT parameter counts and the Table 2 config, against hand arithmetic and HF."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs import opt_paper  # noqa: E402
from trajax import flops  # noqa: E402
from trajax.models import opt  # noqa: E402

CFG = opt_paper.get_config()


def _config(m):
  return opt.OPTConfig.from_hf_config(opt_paper.hf_config(m))


def _count(m):
  return opt.param_count(_config(m))


def _flops(m, steps, method="palm"):
  return flops.training_flops_for_config(_config(m), steps, m.tokens_per_step, method=method,
                                         seq_len=m.seq_len)[0]


def test_opt_125m_param_count_by_hand():
  d, f, v = 768, 3072, 50272
  per_layer = (
      4 * (d * d + d)  # q, k, v, out_proj with bias
      + 2 * 2 * d  # self_attn_layer_norm, final_layer_norm
      + (d * f + f)  # fc1
      + (f * d + d))  # fc2
  assert per_layer == 7_087_872
  total = v * d + (2048 + 2) * d + 12 * per_layer + 2 * d  # + final decoder layer norm
  assert total == 125_239_296
  parts = opt.param_breakdown(opt.OPTConfig(v, d, 12, f, 12, 2048, d))
  assert parts["total"] == total and parts["embed_positions"] == 1_574_400
  assert parts["project_in"] == parts["project_out"] == 0


def test_published_opt_param_counts():
  want = {  # exact, from the formula; names as printed in the OPT paper
      "125m": 125_239_296, "350m": 331_196_416, "1.3b": 1_315_758_080, "2.7b": 2_651_596_800,
      "6.7b": 6_658_473_984, "13b": 12_853_473_280, "30b": 29_974_540_288,
      "66b": 65_719_701_504, "175b": 174_604_468_224,
  }
  got = {m.name: _count(m) for m in CFG.models.values()}
  assert got == want
  assert round(got["125m"] / 1e6, 1) == 125.2 and round(got["175b"] / 1e9, 1) == 174.6
  # 350m: post-LN (no final layer norm), 512-wide embeddings with project_in/out.
  parts = opt.param_breakdown(_config(CFG.models.opt_350m))
  assert parts["final_layer_norm"] == 0
  assert parts["project_in"] == parts["project_out"] == 512 * 1024
  assert parts["embed_tokens"] == 50272 * 512


def test_param_count_matches_hf_opt():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  for key in ("opt_125m", "opt_350m"):
    m = CFG.models[key]
    hf_config = transformers.OPTConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                                       num_hidden_layers=m.num_layers,
                                       num_attention_heads=m.num_heads, ffn_dim=m.ffn_dim,
                                       max_position_embeddings=m.max_positions,
                                       word_embed_proj_dim=m.word_embed_proj_dim,
                                       do_layer_norm_before=m.do_layer_norm_before)
    with torch.device("meta"):  # shapes only: no memory, no init time
      model = transformers.OPTForCausalLM(hf_config)
    assert sum(p.numel() for p in model.parameters()) == _count(m), key


def test_palm_flops_opt_125m_by_hand():
  m = CFG.models.opt_125m
  # tokens: 100,000 steps × 524,288 tokens/step (256 seqs × 2048) = 52,428,800,000
  # N = 125,239,296 − 2,050 × 768 (position table) = 123,664,896
  # 6N = 741,989,376;  12·L·H·Q·T = 12·12·12·64·2048 = 226,492,416
  # per token 968,481,792;  × tokens = 50,776,338,176,409,600,000 ≈ 5.0776e19
  assert m.tokens_per_step == 256 * 2048 == 524_288
  n = opt.flops_params(_config(m))
  assert n == 123_664_896
  assert flops.palm_flops_per_token(n, 12, 12, 64, 2048) == 968_481_792
  got = _flops(m, 100_000)
  assert got == pytest.approx(50_776_338_176_409_600_000, rel=1e-15)
  # 6ND with the same N: 6 × 123,664,896 × 52,428,800,000
  assert _flops(m, 100_000, method="6nd") == pytest.approx(6 * 123_664_896 * 52_428_800_000,
                                                           rel=1e-15)


def test_palm_flops_opt_175b_by_hand():
  m = CFG.models.opt_175b
  # tokens: 140,000 steps × 2,097,152 (1024 seqs × 2048) = 293,601,280,000
  # N = 174,604,468,224 − 2,050 × 12,288 = 174,579,277,824;  6N = 1,047,475,666,944
  # 12·L·H·Q·T = 12·96·96·128·2048 = 28,991,029,248;  per token 1,076,466,696,192
  # × tokens = 316,051,999,879,342,325,760,000 ≈ 3.1605e23
  assert m.tokens_per_step == 1024 * 2048
  assert _flops(m, 140_000) == pytest.approx(316_051_999_879_342_325_760_000, rel=1e-15)


def test_flops_vectorised_over_steps():
  m = CFG.models.opt_1_3b
  steps = np.asarray(m.checkpoint_steps)
  got = _flops(m, steps)
  assert got.shape == steps.shape and got.dtype == np.float64
  one = np.array([_flops(m, s) for s in steps])
  np.testing.assert_array_equal(got, one)
  np.testing.assert_array_equal(flops.tokens_seen(steps, m.tokens_per_step), steps * 1_048_576.0)
  assert np.all(np.diff(got) > 0)
  assert flops.training_flops_6nd([0, 10], 100, 3.0).tolist() == [0.0, 6 * 3 * 10 * 100]
  with pytest.raises(ValueError, match=">= 0"):
    flops.tokens_seen([-1], 10)
  with pytest.raises(ValueError, match="must be one of"):
    _flops(m, steps, method="chinchilla")


def test_table2_config():
  want = {  # name: (LR, batch M tokens, # steps, # ckpt, first, last) as printed in Table 2
      "opt_125m": (6.0e-4, 0.5, 600_000, 36, 2_000, 560_000),
      "opt_1_3b": (2.0e-4, 1.0, 300_000, 22, 2_000, 260_000),
      "opt_6_7b": (1.2e-4, 2.0, 150_000, 21, 2_000, 140_000),
      "opt_13b": (1.0e-4, 4.0, 75_000, 18, 2_000, 70_000),
      "opt_30b": (1.0e-4, 4.0, 75_000, 18, 2_000, 70_000),
      "opt_175b": (1.2e-4, 2.0, 150_000, 32, 4_000, 140_000),
  }
  assert tuple(CFG.paper_models) == tuple(want)
  for key, (lr, batch, total, n_ckpt, first, last) in want.items():
    m = CFG.models[key]
    steps = m.checkpoint_steps
    assert (m.lr, m.batch_millions, m.total_steps) == (lr, batch, total)
    assert len(steps) == m.num_checkpoints == n_ckpt
    assert (steps[0], steps[-1]) == (first, last)
    assert all(b > a for a, b in zip(steps, steps[1:]))
    assert m.tokens_per_step == int(batch * 2**20) == m.batch_sequences * 2048
  # Missing checkpoints stay missing (Appendix A: 125m has no 180K).
  assert 180_000 not in CFG.models.opt_125m.checkpoint_steps
  assert 28_000 not in CFG.models.opt_175b.checkpoint_steps


def test_palm_attention_term_uses_the_configs_head_dim():
  """A Llama with head_dim != hidden/heads (as Gemma-style configs have): Q is head_dim."""
  from trajax.models import llama
  cfg = llama.Config.from_hf_config({
      "model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
      "max_position_embeddings": 128
  })
  n = 1000
  # 6N + 12·L·H·Q·T = 6,000 + 12·2·4·32·128 = 6,000 + 393,216 per token; 10 steps × 50 tokens.
  got, _ = flops.training_flops_for_config(cfg, [10], 50, n_params=n)
  assert got.tolist() == [10 * 50 * (6 * n + 12 * 2 * 4 * 32 * 128)]

"""The scoring kernel: chunked fused head, compilation reuse, bounded memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trajax
from trajax import scoring
from trajax.models import opt
from conftest import torch_logprobs


@pytest.mark.parametrize("chunk,vocab_chunk", [(1, 0), (7, 0), (64, 0), (10_000, 0), (7, 1),
                                               (7, 16), (64, 50), (10_000, 12), (5, 64)])
def test_fused_head_equals_log_softmax(chunk, vocab_chunk):
  """Token chunks, and vocabulary blocks that divide 50 rows, leave a remainder or exceed it."""
  rng = np.random.RandomState(0)
  h = rng.randn(37, 8).astype(np.float32)
  w = rng.randn(50, 8).astype(np.float32)
  t = rng.randint(0, 50, size=37)
  got = scoring.fused_head_logprobs(jnp.asarray(h), jnp.asarray(w), jnp.asarray(t), chunk,
                                    vocab_chunk)
  logits = h.astype(np.float64) @ w.T.astype(np.float64)
  want = logits[np.arange(37), t] - np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_head_chunk_does_not_change_results(tiny_ckpt):
  path, ref = tiny_ckpt()
  model = trajax.load_hf(path)
  ids = np.random.RandomState(2).randint(0, 96, size=(3, 30))
  a = scoring.Scorer(model, head_chunk_tokens=5)(ids)
  b = scoring.Scorer(model, head_chunk_tokens=4096)(ids)
  np.testing.assert_allclose(a, b, atol=1e-6)
  for vocab_chunk in (0, 7, 96):  # the accelerator layout, and CPU blocks with and without rest
    c = scoring.Scorer(model, head_chunk_tokens=5, head_vocab_chunk=vocab_chunk)(ids)
    np.testing.assert_allclose(c, a, atol=1e-6)
  np.testing.assert_allclose(a, torch_logprobs(ref, ids, np.ones(ids.shape, bool)), atol=1e-4)


def test_new_checkpoint_reuses_compiled_kernel(tiny_ckpt):
  """Swapping weights of the same architecture must not retrace."""
  p1, r1 = tiny_ckpt("a", seed=1)
  p2, r2 = tiny_ckpt("b", seed=2)
  ids = np.random.RandomState(3).randint(0, 96, size=(2, 12))
  mask = np.ones(ids.shape, bool)
  scorer = scoring.Scorer(trajax.load_hf(p1))
  scorer(ids)
  traces = scoring._score.active()._cache_size()
  assert traces >= 1
  scorer.set_state(trajax.load_hf(p2))
  got = scorer(ids)
  assert scoring._score.active()._cache_size() == traces
  np.testing.assert_allclose(got, torch_logprobs(r2, ids, mask), atol=1e-4)


def test_set_state_rejects_other_architecture(tiny_ckpt):
  p1, _ = tiny_ckpt("a")
  p2, _ = tiny_ckpt("b", num_hidden_layers=3)
  scorer = scoring.Scorer(trajax.load_hf(p1))
  with pytest.raises(ValueError, match="architecture differs"):
    scorer.set_state(trajax.load_hf(p2))


def test_score_blocks_pads_last_batch(tiny_ckpt):
  path, _ = tiny_ckpt()
  scorer = scoring.Scorer(trajax.load_hf(path))
  ids = np.random.RandomState(4).randint(0, 96, size=(5, 10))
  np.testing.assert_allclose(scorer.score_blocks(ids, batch_size=2), scorer(ids), atol=1e-6)


@pytest.mark.parametrize("kernel", ["causal_flash", "causal_rows"])
@pytest.mark.parametrize("block,heads", [(8, 2), (16, 2), (64, 2), (16, 7)])
def test_causal_kernels_equal_full_attention(block, heads, kernel):
  """7 heads: flash tiles of 3 batch rows (`FLASH_TILE_SLICES` 24), so 4 rows pad to 6."""
  from trajax.models import layers
  rng = np.random.RandomState(1)
  q, k, v = (jnp.asarray(rng.randn(4, 45, heads, 8).astype(np.float32)) for _ in range(3))
  valid = np.ones((4, 45), bool)
  valid[1, 30:] = False  # right padding
  valid[2, :7] = False  # left padding
  valid[3, 10:] = False
  slots = np.arange(45)
  mask = layers.causal_mask(slots, slots, valid)
  whole = np.asarray(jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0))
  flash = np.asarray(getattr(layers, kernel)(q, k, v, jnp.asarray(valid), block))
  real = np.broadcast_to(valid[:, :, None, None], whole.shape)  # queries with a visible key
  real = real & (np.cumsum(valid, 1) > 0)[:, :, None, None]
  np.testing.assert_allclose(flash[real], whole[real], atol=1e-5)
  assert np.isfinite(flash).all()


@pytest.mark.parametrize("kernel", ["causal_flash", "causal_rows"])
def test_causal_kernels_keep_packed_segments_apart(kernel):
  """Three packed segments and right padding per row, against the dense segment mask."""
  from trajax.models import layers
  rng = np.random.RandomState(2)
  q, k, v = (jnp.asarray(rng.randn(3, 50, 2, 8).astype(np.float32)) for _ in range(3))
  seg = np.zeros((3, 50), np.int32)
  for row, cuts in enumerate([(11, 30, 44), (5, 6, 50), (20, 21, 37)]):
    seg[row, :cuts[0]], seg[row, cuts[0]:cuts[1]], seg[row, cuts[1]:cuts[2]] = 1, 2, 3
  seg = jnp.asarray(seg)
  whole = np.asarray(jax.nn.dot_product_attention(q, k, v, mask=layers.segment_mask(seg),
                                                  scale=1.0))
  got = np.asarray(getattr(layers, kernel)(q, k, v, seg, 16))
  real = np.broadcast_to(np.asarray(seg > 0)[:, :, None, None], whole.shape)
  np.testing.assert_allclose(got[real], whole[real], atol=1e-5)
  assert np.isfinite(got).all()


@pytest.mark.parametrize("kernel", ["causal_flash", "causal_rows", "segment_mask"])
def test_prefix_trees_see_their_prompt_and_themselves(kernel):
  """ICL prefix trees: a branch sees its tree's prompt and itself, never a sibling, another
  tree or a plain segment; the mask is written here from (group, branch) per slot."""
  from trajax.models import flash, layers
  b_ids = flash.PREFIX_TREE_BRANCHES
  # Row 0: tree 1 = prompt [0, 10), branches [10, 14) [14, 20); tree 2 = prompt [20, 30),
  # branch [30, 33); padding. Row 1: plain segment 1 [0, 12); tree 2 = prompt [12, 25),
  # branches [25, 31) [31, 40) [40, 48); padding.
  layout = [[(1, 1, 0, 0, 10), (1, 1, 1, 10, 14), (1, 1, 2, 14, 20), (2, 2, 0, 20, 30),
             (2, 2, 1, 30, 33)],
            [(1, 3, None, 0, 12), (2, 4, 0, 12, 25), (2, 4, 1, 25, 31), (2, 4, 2, 31, 40),
             (2, 4, 3, 40, 48)]]
  seg = np.zeros((2, 50), np.int32)
  group, branch = np.zeros((2, 50), int), np.zeros((2, 50), int)
  for row, spans in enumerate(layout):
    for tree, g, br, start, end in spans:
      seg[row, start:end] = tree if br is None else tree * b_ids + br
      group[row, start:end], branch[row, start:end] = g, br or 0
  want = np.zeros((2, 1, 50, 50), bool)
  for row in range(2):
    for q in range(50):
      for k in range(q + 1):
        want[row, 0, q, k] = (group[row, k] > 0 and group[row, k] == group[row, q] and
                              branch[row, k] in (0, branch[row, q]))
  np.testing.assert_array_equal(np.asarray(layers.segment_mask(jnp.asarray(seg))), want)
  if kernel == "segment_mask":
    return
  rng = np.random.RandomState(3)
  q, k, v = (jnp.asarray(rng.randn(2, 50, 2, 8).astype(np.float32)) for _ in range(3))
  whole = np.asarray(jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(want), scale=1.0))
  got = np.asarray(getattr(layers, kernel)(q, k, v, jnp.asarray(seg), 16))
  real = np.broadcast_to((seg > 0)[:, :, None, None], whole.shape)
  np.testing.assert_allclose(got[real], whole[real], atol=1e-5)


def test_blockwise_attention_is_exact():
  from trajax.models import layers
  rng = np.random.RandomState(0)
  q, k, v = (jnp.asarray(rng.randn(2, 37, 3, 4).astype(np.float32)) for _ in range(3))
  valid = np.ones((2, 37), bool)
  valid[1, 30:] = False
  slots = np.arange(37)
  mask = layers.causal_mask(slots, slots, valid)
  whole = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0)
  blocks = layers.attention(q, k, v, mask, query_block=8)
  np.testing.assert_allclose(np.asarray(blocks), np.asarray(whole), atol=1e-6)
  causal = layers.attention(q, k, v, layers.segment_mask(jnp.asarray(valid, jnp.int32)),
                            query_block=8, causal_segments_bt=jnp.asarray(valid))
  # Padding queries are masked by every caller; compare the real ones.
  np.testing.assert_allclose(np.asarray(causal)[valid], np.asarray(whole)[valid], atol=1e-6)


def test_scoring_8x2048_full_vocab_memory_bounded():
  """Compiled temp memory for batch 8 x 2048, vocab 50272: far below the 3.3 GB of logits.

  Read from XLA's memory analysis of the compiled kernel (deterministic, no timing).
  """
  cfg = opt.OPTConfig(vocab_size=50272, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                      num_attention_heads=4, word_embed_proj_dim=64)
  model = opt.create(cfg)
  scorer = scoring.Scorer(model)
  tokens = jax.ShapeDtypeStruct((8, 2048), jnp.int32)
  segments = jax.ShapeDtypeStruct((8, 2048), jnp.int32)
  compiled = scoring._score.active().lower(scorer.graphdef, scorer.state, tokens, segments,
                                           scorer.head_chunk_tokens,
                                           scorer.head_vocab_chunk).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  logits_bytes = 8 * 2048 * 50272 * 4
  assert temp < logits_bytes / 16, (temp, logits_bytes)
  # The OPT-125m shape, traced without weights: attention and head stay bounded too.
  big = opt.OPTConfig(vocab_size=50272, hidden_size=768, num_hidden_layers=12, ffn_dim=3072,
                      num_attention_heads=12, word_embed_proj_dim=768)
  from flax import nnx
  graphdef, state = nnx.split(nnx.eval_shape(lambda: opt.create(big, seed=None)))
  compiled = scoring._score.active().lower(graphdef, state, tokens, segments,
                                           scorer.head_chunk_tokens,
                                           scorer.head_vocab_chunk).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < 2**30


def test_longer_than_context_is_an_error_not_nan(tiny_ckpt):
  path, _ = tiny_ckpt(max_position_embeddings=16)
  model = trajax.load_hf(path)
  ids = np.random.RandomState(0).randint(3, 96, size=(2, 20))
  with pytest.raises(
      ValueError, match=r"row 0 has 20 real tokens but the model's context is "
      r"max_position_embeddings=16"):
    trajax.token_logprobs(model, ids)
  mask = np.zeros(ids.shape, bool)
  mask[:, :16] = True  # padding beyond the context is fine
  assert np.isfinite(trajax.token_logprobs(model, ids, mask)[:, 1:16]).all()


@pytest.mark.parametrize("groups,vocab_size", [(0, 50), (4, 50), (7, 50), (32, 50), (8, 41)])
def test_decoding_head_layouts_equal_the_plain_product(groups, vocab_size):
  """`prepare_head` pads and groups the rows (50 rows: 7 and 32 groups need padding)."""
  rng = np.random.RandomState(5)
  h = rng.randn(6, 8).astype(np.float32)
  w = rng.randn(50, 8).astype(np.float32)
  head = scoring.prepare_head(jnp.asarray(w), groups)
  got = np.asarray(scoring.head_logits(jnp.asarray(h), head, vocab_size))
  want = h.astype(np.float64) @ w[:vocab_size].T.astype(np.float64)
  assert got.shape == (6, vocab_size)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_single_query_attention_equals_full_attention():
  """One query per row over a cache with padded and unwritten slots, as a decoding step."""
  from trajax.models import layers
  rng = np.random.RandomState(3)
  q = jnp.asarray(rng.randn(3, 1, 2, 8).astype(np.float32))
  k, v = (jnp.asarray(rng.randn(3, 11, 2, 8).astype(np.float32)) for _ in range(2))
  valid = np.ones((3, 11), bool)
  valid[0, :4] = False  # left padding
  valid[2, 7:] = False  # slots not written yet
  mask = layers.causal_mask(jnp.asarray([9]), jnp.arange(11), jnp.asarray(valid))
  want = np.asarray(jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0))
  got = np.asarray(layers.single_query(q, k, v, mask))
  np.testing.assert_allclose(got, want, atol=1e-6)

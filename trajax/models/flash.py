"""Attention kernels for XLA:CPU, chosen by `layers.attention` (CPU, implementation=None).

`bench/attention_cpu.py` measures them against PyTorch's fused CPU kernel and the
alternatives that lost (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Prefix trees (ICL options sharing their prompt, `trajax.analysis.icl.plan`): segment id
# tree * PREFIX_TREE_BRANCHES + branch, branch 0 the tree's prompt, seen by every branch of the
# tree. Ids below PREFIX_TREE_BRANCHES are plain packed segments, which see only themselves.
PREFIX_TREE_BRANCHES = 1 << 12


def segments_visible(seg_q, seg_k):
  """Whether keys of segments `seg_k` are visible to queries of `seg_q` (broadcast), causality
  aside: the same segment, or the prompt of the query's prefix tree; padding (0) never."""
  return (seg_k > 0) & ((seg_q == seg_k) | (seg_k == seg_q - seg_q % PREFIX_TREE_BRANCHES))


# Block size of CPU attention over long sequences: queries per block for the general
# path, queries and keys per block for the causal flash path.
ATTENTION_QUERY_BLOCK = 128


def single_query(q_b1hd, k_bshd, v_bshd, mask_b1ts):
  """Attention of one query per row over a [batch, slots, heads, head_dim] cache.

  Products and sums over the cache's own layout, in float32: XLA fuses each into one
  pass over the cache, where a dot would first transpose it to [batch, heads, slots, dim]
  (one copy of every layer's keys and values per decoding step).
  """
  b, _, h, d = q_b1hd.shape
  s = k_bshd.shape[1]
  f32 = jnp.float32
  visible_bs1 = jnp.broadcast_to(mask_b1ts, (b, 1, 1, s))[:, 0, 0, :, None]
  scores_bsh = (q_b1hd.astype(f32) * k_bshd.astype(f32)).sum(-1)
  scores_bsh = jnp.where(visible_bs1, scores_bsh, -jnp.inf)
  m_b1h = scores_bsh.max(1, keepdims=True)
  p_bsh = jnp.exp(scores_bsh - jnp.where(jnp.isfinite(m_b1h), m_b1h, 0.0))
  l_b1h = p_bsh.sum(1, keepdims=True)
  p_bsh = p_bsh / jnp.where(l_b1h > 0, l_b1h, 1.0)
  out_bhd = (p_bsh[..., None] * v_bshd.astype(f32)).sum(1)
  return out_bhd[:, None].astype(q_b1hd.dtype)


# `layers.attention` runs `causal_rows` up to this many query blocks (its schedule is unrolled:
# compile time grows with their number) and `causal_flash` beyond.
ROWS_MAX_BLOCKS = 32


def causal_rows(q_bthd, k_bthd, v_bthd, segment_ids_bt, block: int = ATTENTION_QUERY_BLOCK):
  """Causal attention, each query block against all its earlier keys in one dot.

  Per (batch row, head) slice (`lax.map`), query block i takes one [block, (i+1) * block]
  score matrix against keys 0..(i+1) * block - 1 (static shapes, the schedule unrolled)
  and one plain softmax: the blocks above the diagonal are never computed, and there is
  no online-softmax rescaling between key blocks. On the 2-core CPU it beat `causal_flash`
  by 1.3-1.4x at 512-2048 tokens (bench/attention_cpu.py, docs/PERFORMANCE.md). Scores
  are float32; score memory is [block, length] per slice.

  Args:
    q_bthd, k_bthd, v_bthd: [batch, length, heads, head_dim]; q pre-scaled.
    segment_ids_bt: [batch, length] int; a query sees earlier keys of its own
      segment and of its prefix tree's prompt (`segments_visible`); 0 marks padding
      (a bool mask works: True = segment 1).
    block: queries per block.
  Returns:
    [batch, length, heads, head_dim] in q's dtype.
  """
  b, t, h, d = q_bthd.shape
  pad_t = -t % block
  if pad_t:  # padded keys are segment 0: no query sees them; padded queries are dropped
    widths = ((0, 0), (0, pad_t), (0, 0), (0, 0))
    q_bthd, k_bthd, v_bthd = (jnp.pad(x, widths) for x in (q_bthd, k_bthd, v_bthd))
    segment_ids_bt = jnp.pad(segment_ids_bt, ((0, 0), (0, pad_t)))
  tp = t + pad_t
  to_slices = lambda x: x.transpose(0, 2, 1, 3).reshape(b * h, tp, d)
  seg_st = jnp.repeat(segment_ids_bt.astype(jnp.int32), h, axis=0)

  def one_slice(args):
    q_td, k_td, v_td, seg_t = args
    outs = []
    for i in range(tp // block):
      start, end = i * block, (i + 1) * block
      seg_q, seg_k = seg_t[start:end], seg_t[:end]
      visible_qk = ((jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None]) &
                    segments_visible(seg_q[:, None], seg_k[None, :]))
      s_qk = jnp.einsum("qd,kd->qk", q_td[start:end], k_td[:end],
                        preferred_element_type=jnp.float32)
      s_qk = jnp.where(visible_qk, s_qk, -jnp.inf)
      m_q1 = s_qk.max(-1, keepdims=True)
      p_qk = jnp.exp(s_qk - jnp.where(jnp.isfinite(m_q1), m_q1, 0.0))
      l_q1 = p_qk.sum(-1, keepdims=True)
      v_kd = v_td[:end]
      o_qd = jnp.einsum("qk,kd->qd", p_qk.astype(v_kd.dtype), v_kd,
                        preferred_element_type=jnp.float32)
      outs.append((o_qd / jnp.where(l_q1 > 0, l_q1, 1.0)).astype(q_td.dtype))
    return jnp.concatenate(outs)

  out_std = jax.lax.map(one_slice,
                        (to_slices(q_bthd), to_slices(k_bthd), to_slices(v_bthd), seg_st))
  return out_std.reshape(b, h, tp, d).transpose(0, 2, 1, 3)[:, :t]


# Batch rows per step of `causal_flash`, as (rows x heads) slices per tile: 24 is two rows of
# OPT-125m's 12 heads, a [24, 128, 128] float32 score tile of 1.5 MiB.
FLASH_TILE_SLICES = 24


def causal_flash(q_bthd, k_bthd, v_bthd, segment_ids_bt, block: int = ATTENTION_QUERY_BLOCK):
  """Causal attention with an online softmax, tile by tile (Dao et al. 2022).

  The batch goes `rows` rows at a time (`lax.map` over groups; rows x heads about
  `FLASH_TILE_SLICES`), so a score tile [rows x heads, block, block] stays near a core's
  L2 cache whatever the batch, and its dots have one batch dimension. For query block i
  a `fori_loop` over key blocks 0..i-1, which need no causal compare, then the diagonal
  block i with it (the causal skip). Keys and values are laid out block-major once, so a
  key block is a leading index. Scores are accumulated in float32.
  `bench/attention_cpu.py` measured the alternatives.

  Args:
    q_bthd, k_bthd, v_bthd: [batch, length, heads, head_dim]; q pre-scaled.
    segment_ids_bt: [batch, length] int; a query sees earlier keys of its own
      segment and of its prefix tree's prompt (`segments_visible`); 0 marks padding
      (a bool mask works: True = segment 1).
    block: queries and keys per tile.
  Returns:
    [batch, length, heads, head_dim] in q's dtype.
  """
  b, t, h, d = q_bthd.shape
  rows = max(1, min(b, FLASH_TILE_SLICES // h))
  pad_t, pad_b = -t % block, -b % rows
  if pad_t or pad_b:  # padded rows are segment 0: they see nothing and are dropped
    widths = ((0, pad_b), (0, pad_t), (0, 0), (0, 0))
    q_bthd, k_bthd, v_bthd = (jnp.pad(x, widths) for x in (q_bthd, k_bthd, v_bthd))
    segment_ids_bt = jnp.pad(segment_ids_bt, ((0, pad_b), (0, pad_t)))
  groups, n, g = (b + pad_b) // rows, (t + pad_t) // block, rows * h
  seg_anrk = segment_ids_bt.astype(jnp.int32).reshape(groups, rows, n, block).swapaxes(1, 2)

  def tiles(x_bthd):  # [groups, n, rows x heads, block, dim]
    x = x_bthd.reshape(groups, rows, n, block, h, d).transpose(0, 2, 1, 4, 3, 5)
    return x.reshape(groups, n, g, block, d)

  causal_qk = jnp.arange(block)[None, :] <= jnp.arange(block)[:, None]

  def one_group(args):
    q_ngqd, k_ngkd, v_ngkd, seg_nrk = args

    def query_block(args):
      i, q_gqd, seg_rq = args

      def key_block(j, carry, diagonal):
        m_gq1, l_gq1, acc_gqd = carry
        s_gqk = jnp.einsum("gqd,gkd->gqk", q_gqd, k_ngkd[j], preferred_element_type=jnp.float32)
        seg_rk = seg_nrk[j]
        visible_rqk = segments_visible(seg_rq[:, :, None], seg_rk[:, None, :])
        if diagonal:
          visible_rqk = visible_rqk & causal_qk
        s_rhqk = jnp.where(visible_rqk[:, None], s_gqk.reshape(rows, h, block, block), -jnp.inf)
        s_gqk = s_rhqk.reshape(g, block, block)
        m_new = jnp.maximum(m_gq1, s_gqk.max(-1, keepdims=True))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p_gqk = jnp.exp(s_gqk - m_safe)
        rescale = jnp.exp(jnp.where(jnp.isfinite(m_gq1), m_gq1 - m_safe, -jnp.inf))
        v_gkd = v_ngkd[j]
        acc_gqd = acc_gqd * rescale + jnp.einsum("gqk,gkd->gqd", p_gqk.astype(v_gkd.dtype), v_gkd,
                                                 preferred_element_type=jnp.float32)
        return m_new, l_gq1 * rescale + p_gqk.sum(-1, keepdims=True), acc_gqd

      init = (jnp.full((g, block, 1), -jnp.inf, jnp.float32), jnp.zeros(
          (g, block, 1), jnp.float32), jnp.zeros((g, block, d), jnp.float32))
      carry = jax.lax.fori_loop(0, i, lambda j, c: key_block(j, c, False), init)
      _, l_gq1, acc_gqd = key_block(i, carry, True)
      return (acc_gqd / jnp.where(l_gq1 > 0, l_gq1, 1.0)).astype(q_gqd.dtype)

    return jax.lax.map(query_block, (jnp.arange(n), q_ngqd, seg_nrk))

  out_angqd = jax.lax.map(one_group, (tiles(q_bthd), tiles(k_bthd), tiles(v_bthd), seg_anrk))
  out = out_angqd.reshape(groups, n, rows, h, block, d).transpose(0, 2, 1, 4, 3, 5)
  return out.reshape(b + pad_b, t + pad_t, h, d)[:b, :t]

"""Attention kernels for XLA:CPU, chosen by `layers.attention` (CPU, implementation=None).

`bench/attention_cpu.py` measures them against PyTorch's fused CPU kernel and the
alternatives that lost (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

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


def causal_flash(q_bthd, k_bthd, v_bthd, segment_ids_bt, block: int = ATTENTION_QUERY_BLOCK):
  """Causal attention with an online softmax, tile by tile (Dao et al. 2022).

  One batch row at a time (`lax.map`), so a tile of scores is [heads, block, block]
  (768 KiB for 12 heads and 128) and stays in a core's L2 cache whatever the batch;
  for query block i a `fori_loop` over key blocks 0..i-1, which need no causal
  compare, then the diagonal block i with it (the causal skip). Keys and values
  are laid out block-major once, so a key block is a leading index. Scores are
  accumulated in float32. `bench/attention_cpu.py` measured the alternatives.

  Args:
    q_bthd, k_bthd, v_bthd: [batch, length, heads, head_dim]; q pre-scaled.
    segment_ids_bt: [batch, length] int; a query sees earlier keys of its own
      segment; 0 marks padding (a bool mask works: True = segment 1).
    block: queries and keys per tile.
  Returns:
    [batch, length, heads, head_dim] in q's dtype.
  """
  b, t, h, d = q_bthd.shape
  pad = -t % block
  if pad:
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    q_bthd, k_bthd, v_bthd = (jnp.pad(x, widths) for x in (q_bthd, k_bthd, v_bthd))
    segment_ids_bt = jnp.pad(segment_ids_bt, ((0, 0), (0, pad)))
  n = (t + pad) // block
  seg_bnk = segment_ids_bt.astype(jnp.int32).reshape(b, n, block)

  def tiles(x_bthd):
    return x_bthd.reshape(b, n, block, h, d).transpose(0, 1, 3, 2, 4)

  causal_qk = jnp.arange(block)[None, :] <= jnp.arange(block)[:, None]

  def one_row(args):
    q_nhqd, k_nhkd, v_nhkd, seg_nk = args

    def query_block(args):
      i, q_hqd, seg_q = args

      def key_block(j, carry, diagonal):
        m_hq1, l_hq1, acc_hqd = carry
        s_hqk = jnp.einsum("hqd,hkd->hqk", q_hqd, k_nhkd[j], preferred_element_type=jnp.float32)
        seg_k = seg_nk[j]
        visible_qk = (seg_q[:, None] == seg_k[None, :]) & (seg_k > 0)[None, :]
        if diagonal:
          visible_qk = visible_qk & causal_qk
        s_hqk = jnp.where(visible_qk[None], s_hqk, -jnp.inf)
        m_new = jnp.maximum(m_hq1, s_hqk.max(-1, keepdims=True))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p_hqk = jnp.exp(s_hqk - m_safe)
        rescale = jnp.exp(jnp.where(jnp.isfinite(m_hq1), m_hq1 - m_safe, -jnp.inf))
        v_hkd = v_nhkd[j]
        acc_hqd = acc_hqd * rescale + jnp.einsum("hqk,hkd->hqd", p_hqk.astype(v_hkd.dtype), v_hkd,
                                                 preferred_element_type=jnp.float32)
        return m_new, l_hq1 * rescale + p_hqk.sum(-1, keepdims=True), acc_hqd

      init = (jnp.full((h, block, 1), -jnp.inf, jnp.float32), jnp.zeros(
          (h, block, 1), jnp.float32), jnp.zeros((h, block, d), jnp.float32))
      carry = jax.lax.fori_loop(0, i, lambda j, c: key_block(j, c, False), init)
      _, l_hq1, acc_hqd = key_block(i, carry, True)
      return (acc_hqd / jnp.where(l_hq1 > 0, l_hq1, 1.0)).astype(q_hqd.dtype)

    return jax.lax.map(query_block, (jnp.arange(n), q_nhqd, seg_nk))

  out_bnhqd = jax.lax.map(one_row, (tiles(q_bthd), tiles(k_bthd), tiles(v_bthd), seg_bnk))
  return out_bnhqd.transpose(0, 1, 3, 2, 4).reshape(b, t + pad, h, d)[:, :t]

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
      segment; 0 marks padding (a bool mask works: True = segment 1).
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
        visible_rqk = (seg_rq[:, :, None] == seg_rk[:, None, :]) & (seg_rk > 0)[:, None, :]
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

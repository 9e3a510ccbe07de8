"""Causal self-attention on CPU: the options for trajax's kernel against torch SDPA, one process.

  python bench/attention_cpu.py                        # lengths 512, 1024, 2048; batch 2
  python bench/attention_cpu.py --lengths=1024 --rounds=7 --only=trajax,old

OPT-125m's attention shape: batch 2, 12 heads x 64, float32, q pre-scaled, every row one
segment (what scoring an unpadded batch runs). The reference is
`torch.nn.functional.scaled_dot_product_attention(is_causal=True)` (PyTorch's fused CPU
flash kernel, what transformers' "sdpa" runs). Rounds alternate: torch, then every variant;
each variant's ratio is the median over rounds of (torch time / variant time) in the same
round. The error column is max |variant - float64 reference| over the output.

Variants (all exact in float32 unless the name says bf16):
  trajax           `layers.causal_rows`, what `layers.attention` runs on CPU up to
                   `ROWS_MAX_BLOCKS` blocks: per (row, head) slice, query block i against
                   keys 0..(i+1)*128 in one dot and one plain softmax (schedule unrolled),
                   compiled with `xla_cpu.options()` (YNNPACK for reductions only).
  trajax/b256      the same with 256-query blocks.
  trajax xla-default / ynn-off   the same kernel with XLA's default CPU options / with
                   YNNPACK off entirely.
  flash            `layers.causal_flash` (online softmax; what runs beyond ROWS_MAX_BLOCKS):
                   tiles of [rows x heads, 128, 128] with rows x heads ~ 24, block-major
                   K/V, causal compare on diagonal tiles only.
  flash rows=1     the same with one batch row per tile ([heads, 128, 128]).
  flash/b64, /b256 the same with 64- or 256-token tiles.
  old/b256, old/b128   the previous kernel: the whole batch in each tile, every tile masked.
  bthd-layout      no block-major copy: tiles sliced from [length, heads, dim] per row.
  static/b256      the tile schedule unrolled in Python (static slices, no loops).
  xla-sdpa causal  `jax.nn.dot_product_attention(is_causal=True, implementation="xla")`.
  xla-sdpa mask    the same with the boolean segment mask instead of is_causal.
  precision=bf16   trajax under `jax.default_matmul_precision("bfloat16")`.
  bf16 inputs      trajax on bfloat16 q, k, v (bf16 dots, float32 accumulation and softmax).
"""
import argparse
import datetime
import functools
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEADS, HEAD_DIM = 12, 64


def old_flash(q_bthd, k_bthd, v_bthd, seg_bt, block):
  """trajax's kernel before this bench: the batch in every tile, the mask on every tile."""
  import jax
  import jax.numpy as jnp
  b, t, h, d = q_bthd.shape
  n = t // block
  seg_nbq = seg_bt.reshape(b, n, block).swapaxes(0, 1)
  q_nbhqd = q_bthd.transpose(0, 2, 1, 3).reshape(b, h, n, block, d).transpose(2, 0, 1, 3, 4)
  k_bhsd, v_bhsd = k_bthd.transpose(0, 2, 1, 3), v_bthd.transpose(0, 2, 1, 3)
  offsets = jnp.arange(block)

  def query_block(args):
    i, q_bhqd, seg_bq = args

    def key_block(j, carry):
      m, l, acc = carry
      k = jax.lax.dynamic_slice_in_dim(k_bhsd, j * block, block, axis=2)
      v = jax.lax.dynamic_slice_in_dim(v_bhsd, j * block, block, axis=2)
      s = jnp.einsum("bhqd,bhkd->bhqk", q_bhqd, k)
      seg_bk = jax.lax.dynamic_slice_in_dim(seg_bt, j * block, block, axis=1)
      vis = ((j * block + offsets)[None, :] <= (i * block + offsets)[:, None])[None]
      vis = vis & (seg_bq[:, :, None] == seg_bk[:, None, :]) & (seg_bk > 0)[:, None, :]
      return _online((m, l, acc), jnp.where(vis[:, None], s, -jnp.inf), v, "bhqk,bhkd->bhqd")

    init = _init((b, h, block), d)
    _, l, acc = jax.lax.fori_loop(0, i + 1, key_block, init)
    return acc / jnp.where(l > 0, l, 1.0)

  out = jax.lax.map(query_block, (jnp.arange(n), q_nbhqd, seg_nbq))
  return out.transpose(1, 0, 3, 2, 4).reshape(b, t, h, d)


def _init(lead, d):
  import jax.numpy as jnp
  return (jnp.full(lead + (1,), -jnp.inf), jnp.zeros(lead + (1,)), jnp.zeros(lead + (d,)))


def _online(carry, s, v, pv_eq):
  """One online-softmax step (Dao et al. 2022) on masked scores `s`."""
  import jax.numpy as jnp
  m, l, acc = carry
  m_new = jnp.maximum(m, s.max(-1, keepdims=True))
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  p = jnp.exp(s - m_safe)
  r = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
  return m_new, l * r + p.sum(-1, keepdims=True), acc * r + jnp.einsum(pv_eq, p, v)


def merged_flash(q_bthd, k_bthd, v_bthd, seg_bt, block, layout="merged"):
  """Tiles with batch x heads as one dot batch dim ("merged", as trajax for batch 2), or
  ("bthd") per row from the [length, heads, dim] layout without a block-major copy."""
  import jax
  import jax.numpy as jnp
  b, t, h, d = q_bthd.shape
  n = t // block
  causal_qk = jnp.arange(block)[None, :] <= jnp.arange(block)[:, None]
  if layout == "bthd":  # one row at a time, tiles sliced from [t, h, d] without a relayout

    def row(args):
      q_thd, k_thd, v_thd, seg_t = args

      def query_block(i):
        q = jax.lax.dynamic_slice_in_dim(q_thd, i * block, block)
        sq = jax.lax.dynamic_slice_in_dim(seg_t, i * block, block)

        def key_block(j, carry, diag):
          k = jax.lax.dynamic_slice_in_dim(k_thd, j * block, block)
          v = jax.lax.dynamic_slice_in_dim(v_thd, j * block, block)
          sk = jax.lax.dynamic_slice_in_dim(seg_t, j * block, block)
          vis = (sq[:, None] == sk[None, :]) & (sk > 0)[None, :] & (causal_qk if diag else True)
          s = jnp.where(vis[None], jnp.einsum("qhd,khd->hqk", q, k), -jnp.inf)
          return _online(carry, s, v, "hqk,khd->hqd")

        carry = jax.lax.fori_loop(0, i, lambda j, c: key_block(j, c, False), _init((h, block), d))
        _, l, acc = key_block(i, carry, True)
        return (acc / jnp.where(l > 0, l, 1.0)).transpose(1, 0, 2)

      return jax.lax.map(query_block, jnp.arange(n)).reshape(t, h, d)

    return jax.lax.map(row, (q_bthd, k_bthd, v_bthd, seg_bt))
  g = b * h

  def tiles(x):
    return x.reshape(b, n, block, h, d).transpose(1, 0, 3, 2, 4).reshape(n, g, block, d)

  q_n, k_n, v_n = tiles(q_bthd), tiles(k_bthd), tiles(v_bthd)
  seg_nbk = seg_bt.reshape(b, n, block).swapaxes(0, 1)

  def query_block(args):
    i, q, sq = args

    def key_block(j, carry, diag):
      sk = seg_nbk[j]
      vis = (sq[:, :, None] == sk[:, None, :]) & (sk > 0)[:,
                                                          None, :] & (causal_qk if diag else True)
      s = jnp.einsum("gqd,gkd->gqk", q, k_n[j]).reshape(b, h, block, block)
      s = jnp.where(vis[:, None], s, -jnp.inf).reshape(g, block, block)
      return _online(carry, s, v_n[j], "gqk,gkd->gqd")

    carry = jax.lax.fori_loop(0, i, lambda j, c: key_block(j, c, False), _init((g, block), d))
    _, l, acc = key_block(i, carry, True)
    return acc / jnp.where(l > 0, l, 1.0)

  out = jax.lax.map(query_block, (jnp.arange(n), q_n, seg_nbk))
  return out.reshape(n, b, h, block, d).transpose(1, 0, 3, 2, 4).reshape(b, t, h, d)


def static_schedule(q_bthd, k_bthd, v_bthd, seg_bt, block):
  """The causal tile schedule unrolled in Python: static slices, no loop."""
  import jax.numpy as jnp
  b, t, h, d = q_bthd.shape
  qh, kh, vh = (x.transpose(0, 2, 1, 3) for x in (q_bthd, k_bthd, v_bthd))
  causal_qk = jnp.arange(block)[None, :] <= jnp.arange(block)[:, None]
  outs = []
  for i in range(t // block):
    rows = slice(i * block, (i + 1) * block)
    carry = _init((b, h, block), d)
    for j in range(i + 1):
      cols = slice(j * block, (j + 1) * block)
      sq, sk = seg_bt[:, rows], seg_bt[:, cols]
      vis = (sq[:, :, None] == sk[:, None, :]) & (sk > 0)[:, None, :]
      if j == i:
        vis = vis & causal_qk[None]
      s = jnp.einsum("bhqd,bhkd->bhqk", qh[:, :, rows], kh[:, :, cols])
      carry = _online(carry, jnp.where(vis[:, None], s, -jnp.inf), vh[:, :, cols],
                      "bhqk,bhkd->bhqd")
    _, l, acc = carry
    outs.append(acc / jnp.where(l > 0, l, 1.0))
  return jnp.concatenate(outs, 2).transpose(0, 2, 1, 3)


def variants():
  """name -> (function of (q, k, v, seg), XLA option set name, input dtype)."""
  import jax
  import jax.numpy as jnp
  from trajax.models import flash as flash_module
  from trajax.models import layers

  def sdpa(q, k, v, seg, causal):
    mask = None if causal else layers.segment_mask(seg)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0, is_causal=causal,
                                        implementation="xla")

  def low_precision(q, k, v, seg):
    with jax.default_matmul_precision("bfloat16"):
      return layers.causal_rows(q, k, v, seg, 128)

  flash = lambda blk: (lambda q, k, v, s: layers.causal_flash(q, k, v, s, blk))

  def one_row_tiles(q, k, v, seg):
    saved = flash_module.FLASH_TILE_SLICES
    flash_module.FLASH_TILE_SLICES = 1  # read at trace time: tiles of one batch row
    try:
      return layers.causal_flash(q, k, v, seg, 128)
    finally:
      flash_module.FLASH_TILE_SLICES = saved

  shipped = lambda blk: (lambda q, k, v, s: layers.causal_rows(q, k, v, s, blk))
  return {
      "trajax": (shipped(128), "trajax", jnp.float32),
      "trajax/b256": (shipped(256), "trajax", jnp.float32),
      "flash": (flash(128), "trajax", jnp.float32),
      "flash/b64": (flash(64), "trajax", jnp.float32),
      "flash/b256": (flash(256), "trajax", jnp.float32),
      "trajax xla-default": (shipped(128), "default", jnp.float32),
      "trajax ynn-off": (shipped(128), "ynn-off", jnp.float32),
      "old/b256": (functools.partial(old_flash, block=256), "default", jnp.float32),
      "old/b128": (functools.partial(old_flash, block=128), "trajax", jnp.float32),
      "flash rows=1": (one_row_tiles, "trajax", jnp.float32),
      "bthd-layout": (functools.partial(merged_flash, block=128,
                                        layout="bthd"), "trajax", jnp.float32),
      "static/b256": (functools.partial(static_schedule, block=256), "trajax", jnp.float32),
      "xla-sdpa causal": (functools.partial(sdpa, causal=True), "default", jnp.float32),
      "xla-sdpa mask": (functools.partial(sdpa, causal=False), "default", jnp.float32),
      "precision=bf16": (low_precision, "trajax", jnp.float32),
      "bf16 inputs": (shipped(128), "trajax", jnp.bfloat16),
  }


def option_sets():
  from trajax import xla_cpu
  return {
      "trajax": xla_cpu.OPTIONS,
      "default": {},
      "ynn-off": {"xla_cpu_experimental_ynn_fusion_type": ""},
  }


def reference(q, k, v):
  """float64 causal attention [b, t, h, d]."""
  s = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k.astype(np.float64))
  t = q.shape[1]
  s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", p, v.astype(np.float64))


def bench_length(t, batch, rounds, only):
  import jax
  import jax.numpy as jnp
  import torch
  rng = np.random.RandomState(t)
  q = (rng.randn(batch, t, HEADS, HEAD_DIM) * HEAD_DIM**-0.5).astype(np.float32)
  k, v = (rng.randn(batch, t, HEADS, HEAD_DIM).astype(np.float32) for _ in range(2))
  seg = np.ones((batch, t), np.int32)
  want = reference(q, k, v)
  tq, tk, tv = (torch.tensor(x).transpose(1, 2).contiguous() for x in (q, k, v))

  def torch_sdpa():
    with torch.inference_mode():
      return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True, scale=1.0)

  err_torch = float(np.abs(torch_sdpa().transpose(1, 2).numpy() - want).max())
  opts = option_sets()
  compiled, errors = {}, {}
  for name, (fn, opt, dtype) in variants().items():
    if only and not any(name.startswith(o) for o in only):
      continue
    args = [jnp.asarray(x, dtype) for x in (q, k, v)] + [jnp.asarray(seg)]
    try:
      exe = jax.jit(fn).lower(*args).compile(compiler_options=opts[opt])
    except Exception as e:  # pylint: disable=broad-except; report and go on
      print(f"  {name}: failed to compile: {type(e).__name__}: {str(e)[:120]}")
      continue
    compiled[name] = (exe, args, opt)
    errors[name] = float(np.abs(np.asarray(exe(*args), np.float64) - want).max())
  calls = {"torch": torch_sdpa}
  calls.update(
      {n: (lambda e=e, a=a: e(*a).block_until_ready()) for n, (e, a, _) in compiled.items()})
  for f in calls.values():
    f()  # warm-up
  times = {n: [] for n in calls}
  for _ in range(rounds):
    for n, f in calls.items():
      t0 = time.perf_counter()
      f()
      times[n].append(time.perf_counter() - t0)
  ref_t = np.array(times["torch"])
  rows = [("torch SDPA (is_causal, fused CPU flash)", "-", float(np.median(ref_t)), 1.0, err_torch)]
  for n, (_, _, opt) in compiled.items():
    mine = np.array(times[n])
    rows.append((n, opt, float(np.median(mine)), float(np.median(ref_t / mine)), errors[n]))
  return rows


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--lengths", default="512,1024,2048")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--only", default="", help="comma-separated name prefixes of variants")
  args = p.parse_args()
  import jax
  import torch
  only = [o for o in args.only.split(",") if o]
  print(f"# attention_cpu {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC | "
        f"{platform.machine()} {os.cpu_count()} CPU(s) | jax {jax.__version__} | torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads) | load before "
        f"{os.getloadavg()[0]:.2f}")
  print(f"batch {args.batch}, {HEADS} heads x {HEAD_DIM}, float32 causal, one segment per row; "
        f"median of {args.rounds} alternating rounds")
  for t in [int(x) for x in args.lengths.split(",")]:
    rows = bench_length(t, args.batch, args.rounds, only)
    print(f"\nlength {t} (load {os.getloadavg()[0]:.2f}):")
    print("| variant | XLA options | ms | ratio vs torch (median) | max abs err vs f64 |")
    print("|---|---|---:|---:|---:|")
    for name, opt, sec, ratio, err in rows:
      print(f"| {name} | {opt} | {sec * 1e3:.1f} | {ratio:.2f}x | {err:.1e} |")


if __name__ == "__main__":
  main()

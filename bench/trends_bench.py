"""Benchmark: vectorised trend fit vs the per-series statsmodels loop.

Fits N series × 22 checkpoints (OPT-1.3b's Table 2 steps, start at 10%) with
`trajax.analysis.trends.fit`, and a sample of the same series with the loop the
authors ran (`statsmodels.api.OLS(y, add_constant(x)).fit()` per series),
scaled to series/s. Prints one table: throughput of both, the ratio, the
largest p-value difference on the sample, and peak extra memory (tracemalloc,
the input array excluded) for two chunk sizes.

Usage: PYTHONPATH=. python bench/trends_bench.py [--series 1000000] [--sample 2000]
"""
import argparse
import datetime
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs import opt_paper  # noqa: E402
from trajax.analysis import trends  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--series", type=int, default=1_000_000)
  ap.add_argument("--sample", type=int, default=2000)
  ap.add_argument("--chunks", type=int, nargs=2, default=(16_384, 262_144))
  ap.add_argument("--x", default="index", choices=trends.X_MODES)
  args = ap.parse_args()
  import statsmodels.api as sm

  steps = np.asarray(opt_paper.get_config().models.opt_1_3b.checkpoint_steps)
  rng = np.random.default_rng(0)
  ppl_cn = np.exp(1.0 + rng.normal(scale=0.3, size=(len(steps), args.series)) +
                  np.outer(np.arange(len(steps)), rng.normal(scale=0.05, size=args.series)))

  rows = []
  for chunk in args.chunks:
    trends.fit(ppl_cn[:, :chunk], steps, 0.1, x=args.x, chunk_size=chunk)  # warm-up
    t0 = time.perf_counter()
    res = trends.fit(ppl_cn, steps, 0.1, x=args.x, chunk_size=chunk)
    secs = time.perf_counter() - t0
    tracemalloc.start()
    trends.fit(ppl_cn, steps, 0.1, x=args.x, chunk_size=chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rows.append((chunk, secs, peak, res))

  j = rows[0][3].start_index
  xs = np.arange(len(steps) -
                 j, dtype=np.float64) if args.x == "index" else np.log(steps[j:].astype(float))
  exog = sm.add_constant(xs)
  idx = rng.choice(args.series, size=args.sample, replace=False)
  t0 = time.perf_counter()
  ref_p = np.empty(args.sample)
  for k, s in enumerate(idx):
    y = ppl_cn[j:, s] / ppl_cn[j, s]
    ref_p[k] = sm.OLS(y, exog).fit().pvalues[1]
  sm_secs = time.perf_counter() - t0
  sm_rate = args.sample / sm_secs
  max_dp = float(np.max(np.abs(rows[0][3].pvalue[idx] - ref_p)))

  print(f"# trends_bench {datetime.date.today()} | {platform.machine()} {os.cpu_count()} CPU(s) | "
        f"numpy {np.__version__} | {args.series:,} series × {len(steps)} ckpts, start 10% "
        f"(window {len(steps) - j} points), x={args.x}")
  print(
      f"| method | chunk | series/s | time for {args.series:,} | peak extra memory | ratio vs statsmodels |"
  )
  print("|---|---|---|---|---|---|")
  print(f"| statsmodels OLS loop ({args.sample:,}-series sample, scaled) | - | {sm_rate:,.0f} | "
        f"{args.series / sm_rate:,.0f} s | - | 1× |")
  for chunk, secs, peak, _ in rows:
    rate = args.series / secs
    print(
        f"| trajax trends.fit | {chunk:,} | {rate:,.0f} | {secs:.2f} s | {peak / 2**20:.1f} MiB | "
        f"{rate / sm_rate:,.0f}× |")
  print(f"max |p_trajax − p_statsmodels| on the sample: {max_dp:.2e}; "
        f"peak memory includes the [series] outputs ({args.series * 25 / 2**20:.1f} MiB)")


if __name__ == "__main__":
  main()

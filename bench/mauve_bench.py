"""Benchmark: trajax's MAUVE vs the mauve-text package on the same features.

mauve-text (with faiss and scikit-learn) is not a trajax dependency: it runs in
a separate venv (default /work/venv-mauve: `python3 -m venv /work/venv-mauve &&
/work/venv-mauve/bin/pip install mauve-text faiss-cpu scikit-learn`) through
bench/mauve_reference.py. Both get the same feature arrays:

  gauss_*    two Gaussian clouds (d = 64) whose means are `shift` apart
  pg19_*     trajax features (`mauve.last_token_features`, last token's final
             hidden state) of a random "small" OPT on 128-token passages of two
             PG-19 books: book A vs other passages of A, and A vs B

Each package runs with `--seeds` k-means seeds (25, mauve-text's default, and the
next ones). Printed: per case, the mean and standard deviation over seeds of
each MAUVE and the difference of the means (the k-means starts differ, so the
spread over seeds is the scale a difference is judged against), MAUVE* likewise,
the MAUVE of each package's curve code on trajax's own bucket counts of seed 25
(isolates the curve and area from the k-means: equal), and the mean seconds of
one call of each (features excluded; trajax's first call compiles).

Usage: PYTHONPATH=. python bench/mauve_bench.py [--n 500] [--seeds 5] [--venv /work/venv-mauve]
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench import common  # noqa: E402
from trajax.analysis import mauve  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PG19 = os.path.join(ROOT, "..", "shared", "data", "pg19")


def _gauss(n, shift, rng):
  p = rng.normal(size=(n, 64))
  q = rng.normal(size=(n, 64))
  q[:, 0] += shift
  return p, q


def _pg19_features(n, tmp):
  import trajax
  from trajax import checkpoints, data
  tok = checkpoints.load_tokenizer(os.path.join(ROOT, "..", "shared", "data", "tokenizer", "opt"))
  model = trajax.load_hf(common.make_checkpoint("small", os.path.join(tmp, "small"), seed=0))
  passages = {}
  for book in ("1342-0.txt", "3261.txt"):
    (doc,) = data.read_documents(os.path.join(PG19, book), gutenberg=True)
    ids = tok(doc.text[:2_000_000], add_special_tokens=False)["input_ids"]
    passages[book] = [[2] + ids[i:i + 127] for i in range(0, 2 * n * 127, 127)][:2 * n]
  a, b = passages["1342-0.txt"], passages["3261.txt"]
  t0 = time.perf_counter()
  fa = mauve.last_token_features(model, a, batch_size=32)
  fb = mauve.last_token_features(model, b[:n], batch_size=32)
  print(f"features: {len(a) + n} passages in {time.perf_counter() - t0:.1f}s")
  return {"pg19_same_book": (fa[:n], fa[n:]), "pg19_two_books": (fa[:n], fb)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=500)
  ap.add_argument("--seeds", type=int, default=5)
  ap.add_argument("--venv", default="/work/venv-mauve")
  args = ap.parse_args()
  rng = np.random.default_rng(0)
  cases = {f"gauss_shift{s}": _gauss(args.n, s, rng) for s in (0.0, 0.5, 1.0, 2.0)}
  with tempfile.TemporaryDirectory() as tmp:
    cases.update(_pg19_features(args.n, tmp))
    seeds = [mauve.SEED + i for i in range(args.seeds)]
    ours, arrays = {}, {}
    for name, (p, q) in cases.items():
      runs, secs = [], []
      for seed in seeds:
        t0 = time.perf_counter()
        runs.append(mauve.compute_mauve(p, q, seed=seed))
        secs.append(time.perf_counter() - t0)
      ours[name] = (runs, float(np.mean(secs)))
      res = runs[0]
      counts_p = np.round(res.p_hist * len(p)).astype(np.int64)
      counts_q = np.round(res.q_hist * len(q)).astype(np.int64)
      arrays.update(
          {f"p_{name}": p, f"q_{name}": q, f"hp_{name}": counts_p, f"hq_{name}": counts_q})
    npz, out = os.path.join(tmp, "features.npz"), os.path.join(tmp, "reference.json")
    np.savez(npz, **arrays)
    python = os.path.join(args.venv, "bin", "python")
    subprocess.run(
        [python,
         os.path.join(ROOT, "bench", "mauve_reference.py"), npz, out, *map(str, seeds)], check=True)
    ref = json.load(open(out))
  print(f"# MAUVE, trajax vs mauve-text, n = {args.n} per side, seeds {seeds}, "
        f"{platform.node()}, {datetime.date.today()}")
  print(f"{'case':<16} {'k':>3} {'trajax':>15} {'mauve-text':>15} {'diff':>7} {'trajax*':>15} "
        f"{'text*':>15} {'curve(t)':>9} {'curve(text)':>11} {'s trajax':>8} {'s text':>7}")
  ms = lambda v: f"{np.mean(v):.4f} ± {np.std(v):.4f}"
  for name, (runs, secs) in ours.items():
    r = ref[name]
    t, ts = [x.mauve for x in runs], [x.mauve_star for x in runs]
    print(f"{name:<16} {runs[0].num_buckets:>3} {ms(t):>15} {ms(r['mauve']):>15} "
          f"{np.mean(t) - np.mean(r['mauve']):>+7.4f} {ms(ts):>15} {ms(r['mauve_star']):>15} "
          f"{runs[0].mauve:>9.6f} {r['area_on_given_counts']:>11.6f} {secs:>8.2f} "
          f"{r['seconds']:>7.2f}")


if __name__ == "__main__":
  main()

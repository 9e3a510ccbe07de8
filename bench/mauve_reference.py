"""Runs mauve-text on feature sets saved by bench/mauve_bench.py (in the bench venv, not trajax's).

Usage: /work/venv-mauve/bin/python bench/mauve_reference.py IN.npz OUT.json SEED [SEED ...]
IN.npz holds p_{case}, q_{case} feature arrays and hp_{case}, hq_{case} bucket counts; OUT.json
gets, per case, mauve-text's MAUVE and MAUVE* per seed, the seconds of one call, and the MAUVE
of its curve code on the given counts.
"""
import json
import sys
import time

import numpy as np
from mauve import compute_mauve
from mauve.compute_mauve import get_divergence_curve_for_multinomials
from sklearn.metrics import auc


def _area(p, q):
  x, y = get_divergence_curve_for_multinomials(p, q, np.linspace(1e-6, 1 - 1e-6, 25), 5).T
  i1, i2 = np.argsort(x), np.argsort(y)
  return 0.5 * (auc(x[i1], y[i1]) + auc(y[i2], x[i2]))


def main():
  data = np.load(sys.argv[1])
  cases = sorted(k[2:] for k in data.files if k.startswith("p_"))
  out = {}
  seeds = [int(s) for s in sys.argv[3:]]
  for case in cases:
    runs, seconds = [], []
    for seed in seeds:
      t0 = time.perf_counter()
      res = compute_mauve(p_features=data[f"p_{case}"], q_features=data[f"q_{case}"], seed=seed)
      seconds.append(time.perf_counter() - t0)
      runs.append((float(res.mauve), float(res.mauve_star)))
    hp, hq = data[f"hp_{case}"].astype(np.float64), data[f"hq_{case}"].astype(np.float64)
    out[case] = {
        "mauve": [m for m, _ in runs], "mauve_star": [m for _, m in runs],
        "seconds": float(np.mean(seconds)),
        "area_on_given_counts": float(_area(hp / hp.sum(), hq / hq.sum()))
    }
  with open(sys.argv[2], "w") as f:
    json.dump(out, f)


if __name__ == "__main__":
  main()

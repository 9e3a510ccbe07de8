"""Numbers that test the paper's claims, from the stage outputs (pure functions).

Each function takes plain numbers (read from summaries and CSVs by
`trajax.report.findings`) and returns the measurement a finding quotes:

  * `categorised_share`: the share of tokens in some trend category (fn. 5:
    "Only around 60% tokens are captured by our criteria");
  * `asymmetry`: tokens stagnated in the largest model are still going down in
    the smaller ones, while those stagnated in a small model stay stagnated in
    larger ones (§3.2, Fig. 3 middle/right);
  * `curve_distance` / `mean_pairwise_distance`: how far apart the curves of
    different sizes lie over the x range they share (Fig. 8: "The curves overlap
    greatly in various model sizes"; App. B.5, Fig. 12), instead of one pooled
    correlation;
  * `trajectory_shape` / `fig6_trajectories`: along training, the smallest model's
    perplexity of p_s − p_l texts goes down while larger models' ends up going
    up (§4.3, Fig. 6 row 2);
  * `mauve_order`: subtracting the two distributions beats summing them under
    greedy decoding, and the reverse under nucleus sampling (App. C.3, Fig. 13).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

# A curve "goes up" or "goes down" by more than this relative change.
TOL = 0.02
# Points of the common x grid on which two curves are compared.
GRID = 64


def categorised_share(shares: Mapping[str, float]) -> float:
  """Percent of tokens that are stagnated, upward or downward (100 − "none").

  Args:
    shares: {"stagnated", "upward", "downward", "none"} percents of the categorised
      tokens' population (as `trends.TrendFit.shares`).
  """
  return float(shares["stagnated"] + shares["upward"] + shares["downward"])


def _mean(values) -> float | None:
  vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
  return float(np.mean(vals)) if vals else None


def asymmetry(large_entry: dict, small_entry: dict, order: Sequence[str]) -> dict:
  """The §3.2 asymmetry from two trend-summary subsets of stagnated tokens.

  Args:
    large_entry: the subset chosen by a large model (its `selector`), with
      `categories_in` and `window_change` per model.
    small_entry: the subset chosen by a smaller model.
    order: model names, smallest first.
  Returns:
    {"large", "small": the selectors; "down_in_smaller": {model: % of the large
    model's stagnated tokens that are downward in that smaller model};
    "stagnated_in_larger" and "down_in_larger": {model: % of the small model's
    stagnated tokens that are stagnated / downward in that larger model};
    "change_in_smaller", "change_in_larger": {model: relative PPL change of the
    subset over that model's window}; "mean_down_in_smaller", "mean_down_in_larger";
    "holds": the large model's stagnated tokens are downward in the smaller models
    more often than the small model's are in the larger ones (None when a side has
    no model)}.
  """
  large, small = large_entry["selector"], small_entry["selector"]
  rank = {m: i for i, m in enumerate(order)}
  smaller = [m for m in order if rank[m] < rank[large]]
  larger = [m for m in order if rank[m] > rank[small]]
  cats_l, cats_s = large_entry["categories_in"], small_entry["categories_in"]
  pick = lambda cats, ms, k: {m: (cats.get(m) or {}).get(k) for m in ms}
  out = {
      "large": large,
      "small": small,
      "down_in_smaller": pick(cats_l, smaller, "downward"),
      "stagnated_in_larger": pick(cats_s, larger, "stagnated"),
      "down_in_larger": pick(cats_s, larger, "downward"),
      "change_in_smaller": {m: large_entry["window_change"].get(m) for m in smaller},
      "change_in_larger": {m: small_entry["window_change"].get(m) for m in larger},
  }
  out["mean_down_in_smaller"] = _mean(out["down_in_smaller"].values())
  out["mean_down_in_larger"] = _mean(out["down_in_larger"].values())
  a, b = out["mean_down_in_smaller"], out["mean_down_in_larger"]
  out["holds"] = None if a is None or b is None else bool(a > b)
  return out


def _monotone_x(x, y) -> tuple[np.ndarray, np.ndarray]:
  """Points sorted by x; a repeated x takes the mean of its y's (interpolation needs one y)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  ux, inv = np.unique(x, return_inverse=True)
  uy = np.bincount(inv, weights=y) / np.bincount(inv)
  return ux, uy


def curve_distance(xa, ya, xb, yb, logx: bool = True, grid: int = GRID) -> float | None:
  """Mean |y_a(x) − y_b(x)| over the x range both curves cover.

  Each curve is linear between its points (in log x when `logx`); both are
  evaluated on `grid` evenly spaced x in the shared range [max of the minima,
  min of the maxima], so the distance weighs that range evenly, wherever the
  checkpoints fall.

  Args:
    xa, ya, xb, yb: the two curves' points (any order; repeated x averaged).
    logx: interpolate and space the grid in log x (perplexity, FLOPs).
    grid: points of the comparison grid.
  Returns:
    The mean absolute difference, or None when the curves share no x range.
  """
  xa, ya = _monotone_x(xa, ya)
  xb, yb = _monotone_x(xb, yb)
  if xa.size < 2 or xb.size < 2:
    return None
  if logx:
    if min(xa.min(), xb.min()) <= 0:
      raise ValueError("curve_distance: logx needs positive x")
    xa, xb = np.log(xa), np.log(xb)
  lo, hi = max(xa.min(), xb.min()), min(xa.max(), xb.max())
  if not hi > lo:
    return None
  xs = np.linspace(lo, hi, grid)
  return float(np.mean(np.abs(np.interp(xs, xa, ya) - np.interp(xs, xb, yb))))


def mean_pairwise_distance(curves: Mapping[str, tuple], logx: bool = True) -> dict:
  """`curve_distance` of every pair of curves that share an x range.

  Args:
    curves: {model: (x, y)}.
    logx: as `curve_distance`.
  Returns:
    {"pairs": {"a|b": distance}, "mean": mean over those pairs (None if none)}.
  """
  names = list(curves)
  pairs = {}
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      d = curve_distance(*curves[a], *curves[b], logx=logx)
      if d is not None:
        pairs[f"{a}|{b}"] = d
  return {"pairs": pairs, "mean": _mean(pairs.values())}


def trajectory_shape(ys: Sequence[float], tol: float = TOL) -> str:
  """How a perplexity trajectory moves: "falls", "rises", "falls then rises" or "flat".

  It "falls" when its minimum is more than `tol` below its first value, and
  "rises" after that minimum when its last value is more than `tol` above it.
  """
  y = np.asarray([v for v in ys if v is not None and math.isfinite(v)], np.float64)
  if y.size < 2:
    return "flat"
  low = y.min()
  fell = y[0] > low * (1 + tol)
  rose = y[-1] > low * (1 + tol)
  return ("falls then rises" if fell and rose else "falls" if fell else "rises" if rose else "flat")


def fig6_trajectories(ppl_by_model: Mapping[str, Sequence[float]], order: Sequence[str]) -> dict:
  """§4.3 on one configuration's trajectories (checkpoints in training order).

  Args:
    ppl_by_model: {model: [PPL of the texts at each checkpoint]}.
    order: model names, smallest first.
  Returns:
    {"shapes": {model: `trajectory_shape`}, "holds": the smallest model's ends at
    its low ("falls" or "flat") while every larger one ends above its minimum
    ("rises" or "falls then rises"); None with fewer than two models}.
  """
  names = [m for m in order if m in ppl_by_model]
  shapes = {m: trajectory_shape(ppl_by_model[m]) for m in names}
  if len(names) < 2:
    return {"shapes": shapes, "holds": None}
  holds = shapes[names[0]] in ("falls", "flat") and all(
      shapes[m] in ("rises", "falls then rises") for m in names[1:])
  return {"shapes": shapes, "holds": bool(holds)}


def mauve_order(mauve: Mapping[tuple[str, str], float]) -> dict:
  """App. C.3 on MAUVE per (config, method).

  Returns:
    {method: True when (greedy) both p_s − p_l and p_l − p_s beat p_s + p_l, or
    (nucleus) p_s + p_l beats both; None when a configuration is missing}.
  """
  out = {}
  for method in sorted({m for _, m in mauve}):
    got = [mauve.get((c, method)) for c in ("ps-pl", "pl-ps", "ps+pl")]
    if None in got:
      out[method] = None
      continue
    sub = min(got[0], got[1]) > got[2]
    summed = got[2] > max(got[0], got[1])
    out[method] = sub if method == "greedy" else summed if method == "nucleus" else None
  return out

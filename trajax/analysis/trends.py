"""Token-level perplexity trends along a training trajectory (Xia et al. 2023, §3).

For every context-token pair ("series") we have per-token perplexities at the
checkpoints m_1..m_n of one model. From the start checkpoint j (the first at or
after p% of training, `start_index`) to the last one, the paper fits, per series,

    PPL_i / PPL_j = α + β·x_i,   i = j..n,                              (Eq. 1)

with x_i = i − j (checkpoint index, the paper's Eq. 1) or, as the authors'
released notebook did, x_i = log(step_i). The series is then

  * upward     (forgetting):       β > 0 and two-sided p < 0.05,
  * downward   (still learning):   β < 0 and two-sided p < 0.05,
  * stagnated  (already learned):  neither, and 0.95 ≤ PPL_j/PPL_avg ≤ 1.05 and
                                   0.95 ≤ PPL_n/PPL_avg ≤ 1.05, with PPL_avg the
                                   geometric mean exp(mean_i log PPL_i), i = j..n,
  * none:                          everything else (wavy series).

All series are fitted at once by closed-form OLS in float64 (x is shared by all
series, so the slope is one matrix-vector product), chunked over series so that
peak memory is set by `chunk_size`, not by the number of series. The p-value is
the ordinary OLS t-test, identical to
`statsmodels.api.OLS(y, add_constant(x)).fit().pvalues[1]`.

Shapes: `ppl_cn` is [checkpoint, series]; NaN marks a missing prediction
(position 0, padding, an unscored checkpoint).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from scipy import special

# Category codes of `TrendFit.category` (int8).
EXCLUDED = -1
NONE = 0
UPWARD = 1
DOWNWARD = 2
STAGNATED = 3
CATEGORY_NAMES = {
    UPWARD: "upward",
    DOWNWARD: "downward",
    STAGNATED: "stagnated",
    NONE: "none",
    EXCLUDED: "excluded",
}

# Significance level of the slope test (paper: p-value < 0.05, strict).
P_THRESHOLD = 0.05
# Stagnation band on PPL_j/PPL_avg and PPL_n/PPL_avg, both edges inclusive.
BAND_LOW, BAND_HIGH = 0.95, 1.05
# The band is tested in log space; this slack absorbs the rounding of the
# geometric mean so that a ratio of exactly 0.95 or 1.05 counts as inside.
_BAND_LOG_TOL = 1e-12
# 16384 series × 22 checkpoints × 8 B ≈ 2.9 MB per work array (two are live):
# cache-sized chunks were fastest in bench/trends_bench.py (2-core CPU).
DEFAULT_CHUNK_SIZE = 16384
X_MODES = ("index", "log_step")
START_RULES = ("at_or_after", "nearest")
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclasses.dataclass(frozen=True, eq=False)
class TrendFit:
  """Per-series result of `fit`.

    Attributes:
      slope: [series] float64, β of Eq. 1; NaN for excluded series.
      intercept: [series] float64, α of Eq. 1; NaN for excluded series.
      pvalue: [series] float64, two-sided t-test p-value of β with `dof`
        degrees of freedom; NaN for excluded series.
      category: [series] int8, one of UPWARD, DOWNWARD, STAGNATED, NONE,
        EXCLUDED.
      start_index: j, 0-based index of the start checkpoint in `steps`.
      start_step: steps[j].
      num_points: n − j + 1 points in the window (1-based n, j).
      dof: num_points − 2, degrees of freedom of the t-test.
      x: "index" or "log_step", the regressor used.
      n_excluded: number of series with a NaN, inf or non-positive perplexity
        inside the window; they are EXCLUDED and left out of `shares()`.
    """

  slope: np.ndarray
  intercept: np.ndarray
  pvalue: np.ndarray
  category: np.ndarray
  start_index: int
  start_step: float
  num_points: int
  dof: int
  x: str
  n_excluded: int

  @property
  def n_series(self) -> int:
    return int(self.category.shape[0])

  def mask(self, category: int) -> np.ndarray:
    """[series] bool, the series of one category (e.g. `trends.UPWARD`)."""
    if category not in CATEGORY_NAMES:
      raise ValueError(f"unknown category {category!r}; expected one of {sorted(CATEGORY_NAMES)}")
    return self.category == category

  def counts(self) -> dict[str, int]:
    """Number of series per category name, excluded included."""
    return {
        name: int(np.count_nonzero(self.category == code)) for code, name in CATEGORY_NAMES.items()
    }

  def shares(self) -> dict[str, float]:
    """Percentage of series in each category, over non-excluded series.

        Returns:
          {"stagnated", "upward", "downward", "none"} → percent in [0, 100]
          (sums to 100); all NaN when every series is excluded.
        """
    counts = self.counts()
    valid = self.n_series - counts["excluded"]
    names = ("stagnated", "upward", "downward", "none")
    if valid == 0:
      return {name: math.nan for name in names}
    return {name: 100.0 * counts[name] / valid for name in names}


def _check_steps(steps, num_checkpoints: int) -> np.ndarray:
  steps = np.asarray(steps, dtype=np.float64)
  if steps.ndim != 1 or steps.shape[0] != num_checkpoints:
    raise ValueError(
        f"steps must be 1-D with one entry per checkpoint ({num_checkpoints}), got shape {steps.shape}"
    )
  if not np.all(np.isfinite(steps)) or np.any(np.diff(steps) <= 0):
    raise ValueError(f"steps must be finite and strictly increasing, got {steps.tolist()}")
  return steps


def start_index(steps: Sequence[float], start_fraction: float, total_steps: float | None = None,
                rule: str = "at_or_after") -> int:
  """Index j of the checkpoint where the trend window starts, p = start_fraction of training.

    Args:
      steps: [checkpoint] training steps, strictly increasing (uneven spacing,
        as Table 2, is fine).
      start_fraction: p in [0, 1], the fraction of training.
      total_steps: the step that counts as 100%; defaults to steps[-1], the
        last evaluated checkpoint. Pass Table 2's "# Steps" to measure p against
        the nominal training length instead.
      rule: "at_or_after" (the paper, §3: "starting from any intermediate
        checkpoint after p% of training"): the first checkpoint at or after
        p × total_steps; or "nearest": the checkpoint nearest to it, the earlier
        one on a tie (13B/30B at 10% of 70K then start at 6K, 175B at 12K).
        Both absorb float rounding of the product (1e-9 × total_steps).

    Returns:
      j, a 0-based index into `steps`.
    """
  steps = np.asarray(steps, dtype=np.float64)
  if steps.ndim != 1 or steps.size == 0:
    raise ValueError(f"steps must be a non-empty 1-D sequence, got shape {steps.shape}")
  if not 0.0 <= start_fraction <= 1.0:
    raise ValueError(f"start_fraction must be in [0, 1], got {start_fraction}")
  if rule not in START_RULES:
    raise ValueError(f"start rule must be one of {START_RULES}, got {rule!r}")
  total = float(steps[-1] if total_steps is None else total_steps)
  target, tol = start_fraction * total, 1e-9 * abs(total)
  if rule == "at_or_after":
    after = np.flatnonzero(steps >= target - tol)
    return int(after[0]) if after.size else steps.shape[0] - 1
  dist = np.abs(steps - target)
  return int(np.flatnonzero(dist <= dist.min() + tol)[0])


def _regressor(x: str, steps_window: np.ndarray) -> np.ndarray:
  if x == "index":
    return np.arange(steps_window.shape[0], dtype=np.float64)
  if x == "log_step":
    if np.any(steps_window <= 0):
      raise ValueError(
          f"x='log_step' needs positive steps in the window, got {steps_window.tolist()}")
    return np.log(steps_window)
  raise ValueError(f"x must be one of {X_MODES}, got {x!r}")


def fit(ppl_cn, steps: Sequence[float], start_fraction: float, x: str = "index",
        chunk_size: int = DEFAULT_CHUNK_SIZE, total_steps: float | None = None,
        start_rule: str = "at_or_after") -> TrendFit:
  """Fits Eq. 1 to every series and assigns the paper's trend categories.

    The window is checkpoints j..n (0-based j = `start_index(steps,
    start_fraction, total_steps)`, n the last), i.e. num_points = n − j + 1 with
    1-based n and j. Regressor: x_i = i − j for x="index" (paper, Eq. 1), or
    x_i = log(steps[i]) for x="log_step" (the authors' released notebook). The
    response is y_i = PPL_i / PPL_j. α, β are the OLS estimates; the p-value is
    the two-sided t-test of β = 0 with dof = num_points − 2 (= n − j − 1 in the
    paper's 1-based indexing), the same as statsmodels OLS.

    Zero residual variance (a perfectly linear series, SSR exactly 0) would make
    t = β/0: the p-value is defined as 0 when β ≠ 0 and 1 when β = 0 (a
    constant series), never NaN.

    Series with a NaN, ±inf or non-positive perplexity anywhere in the window
    are EXCLUDED (slope/intercept/pvalue NaN) and counted in `n_excluded`.

    Args:
      ppl_cn: [checkpoint, series] per-token perplexities (any float dtype, or
        any array-like that supports 2-D slicing, e.g. a memmap); computed in
        float64 one chunk of series at a time.
      steps: [checkpoint] training step of each checkpoint, strictly increasing.
      start_fraction: p in [0, 1]; see `start_index` for the tie rule.
      x: "index" or "log_step".
      chunk_size: series per chunk; peak extra memory ≈ 2 × chunk_size ×
        num_points × 8 bytes plus the [series] outputs.
      total_steps: step counted as 100% of training (default: steps[-1]).
      start_rule: how p picks the start checkpoint (see `start_index`).

    Returns:
      A `TrendFit`.

    Raises:
      ValueError: on bad shapes, non-increasing steps, an unknown `x`, or a
        window with fewer than 3 points (a slope test needs dof ≥ 1).
    """
  shape = tuple(np.shape(ppl_cn))
  if len(shape) != 2:
    raise ValueError(f"ppl_cn must be 2-D [checkpoint, series], got shape {shape}")
  num_ckpt, num_series = shape
  steps = _check_steps(steps, num_ckpt)
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  j = start_index(steps, start_fraction, total_steps, start_rule)
  m = num_ckpt - j
  if m < 3:
    raise ValueError(
        f"start_fraction={start_fraction} selects checkpoint {j} (step {steps[j]:g}) of {num_ckpt}: "
        f"the window has {m} point(s), a slope t-test needs at least 3")
  xs = _regressor(x, steps[j:])
  x_mean = xs.mean()
  xc = xs - x_mean
  sxx = float(xc @ xc)
  dof = m - 2

  slope = np.full(num_series, np.nan)
  intercept = np.full(num_series, np.nan)
  pvalue = np.full(num_series, np.nan)
  category = np.full(num_series, EXCLUDED, dtype=np.int8)
  log_lo, log_hi = math.log(BAND_LOW) - _BAND_LOG_TOL, math.log(BAND_HIGH) + _BAND_LOG_TOL

  for s0 in range(0, num_series, chunk_size):
    s1 = min(s0 + chunk_size, num_series)
    # Always a private float64 copy: the block is overwritten in place below.
    y = np.array(ppl_cn[j:, s0:s1], dtype=np.float64, copy=True)
    valid = np.isfinite(y).all(axis=0) & (y > 0).all(axis=0)
    if not valid.all():
      y[:, ~valid] = 1.0  # neutral values keep the maths warning-free
    work = np.log(y)
    mean_log = _rowsum(work) / m
    d_first, d_last = work[0] - mean_log, work[-1] - mean_log
    in_band = (d_first >= log_lo) & (d_first <= log_hi) & (d_last >= log_lo) & (d_last <= log_hi)

    y /= y[0]
    y_mean = _rowsum(y) / m
    y -= y_mean  # centred response
    sxy = _rowsum(y, weights=xc)
    beta = sxy / sxx
    alpha = y_mean - beta * x_mean
    np.multiply(xc[:, None], beta[None, :], out=work)
    y -= work  # residuals
    np.square(y, out=work)
    ssr = _rowsum(work)
    with np.errstate(divide="ignore", invalid="ignore"):
      t = beta / np.sqrt(ssr / dof / sxx)
    p = 2.0 * special.stdtr(dof, -np.abs(t))
    exact = ssr == 0.0
    if exact.any():
      p[exact] = np.where(beta[exact] != 0.0, 0.0, 1.0)

    significant = p < P_THRESHOLD
    cat = np.where(significant & (beta > 0), UPWARD,
                   np.where(significant & (beta < 0), DOWNWARD, np.where(in_band, STAGNATED,
                                                                         NONE))).astype(np.int8)
    cat[~valid] = EXCLUDED
    category[s0:s1] = cat
    slope[s0:s1] = np.where(valid, beta, np.nan)
    intercept[s0:s1] = np.where(valid, alpha, np.nan)
    pvalue[s0:s1] = np.where(valid, p, np.nan)

  return TrendFit(slope=slope, intercept=intercept, pvalue=pvalue, category=category, start_index=j,
                  start_step=float(steps[j]), num_points=m, dof=dof, x=x,
                  n_excluded=int(np.count_nonzero(category == EXCLUDED)))


def _rowsum(a_mc: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """Σ_k w_k·a[k] over the checkpoint axis, one row at a time.

    Neither `a.sum(axis=0)` (pairwise summation when a chunk has one column) nor
    a BLAS matvec (blocking depends on the width) keeps the order of additions
    fixed; this does, so a series' result is bit-identical for any chunk size.
    """
  out = a_mc[0] * weights[0] if weights is not None else a_mc[0].copy()
  for k in range(1, a_mc.shape[0]):
    out += a_mc[k] * weights[k] if weights is not None else a_mc[k]
  return out


def shares_vs_start(ppl_cn, steps: Sequence[float], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                    x: str = "index", chunk_size: int = DEFAULT_CHUNK_SIZE,
                    total_steps: float | None = None,
                    start_rule: str = "at_or_after") -> dict[str, np.ndarray]:
  """Percentage of tokens in each category against the start fraction (Fig. 2).

    Args:
      ppl_cn, steps, x, chunk_size, total_steps, start_rule: as in `fit`.
      fractions: start fractions p, one fit each.

    Returns:
      Dict of [fraction] arrays: "fraction", "start_index", "start_step",
      "stagnated", "upward", "downward", "none" (percent of non-excluded
      tokens), "n_excluded".
    """
  keys = ("stagnated", "upward", "downward", "none")
  out: dict[str,
            list] = {k: [] for k in ("fraction", "start_index", "start_step", *keys, "n_excluded")}
  for frac in fractions:
    res = fit(ppl_cn, steps, frac, x=x, chunk_size=chunk_size, total_steps=total_steps,
              start_rule=start_rule)
    shares = res.shares()
    out["fraction"].append(float(frac))
    out["start_index"].append(res.start_index)
    out["start_step"].append(res.start_step)
    out["n_excluded"].append(res.n_excluded)
    for k in keys:
      out[k].append(shares[k])
  return {k: np.asarray(v) for k, v in out.items()}


def subset_trajectories(selected_mask, ppl_by_model: Mapping[str, np.ndarray],
                        mean: str = "arithmetic") -> dict[str, np.ndarray]:
  """Mean perplexity of one fixed token subset along every model's trajectory.

    Select tokens with one model's fit at one start fraction (e.g.
    `fit(ppl_1p3b, steps, 0.1).mask(trends.STAGNATED)`), then follow the SAME
    tokens in every model (Fig. 3, 4, 10, 11; Fig. 12 plots it against
    validation perplexity).

    Args:
      selected_mask: [series] bool.
      ppl_by_model: model name → [checkpoint, series] perplexities; the series
        axis must be the same tokens as `selected_mask` for every model.
      mean: "arithmetic" — mean of the per-token perplexities, the paper's
        "perplexity of ... tokens"; or "geometric" — exp(mean NLL) over the
        subset, i.e. the subset's corpus-style perplexity.

    Returns:
      model name → [checkpoint] float64 mean. NaN tokens are skipped per
      checkpoint; a checkpoint (or an empty selection) with no non-NaN token
      gives NaN, without a warning.
    """
  if mean not in ("arithmetic", "geometric"):
    raise ValueError(f"mean must be 'arithmetic' or 'geometric', got {mean!r}")
  mask = np.asarray(selected_mask)
  if mask.ndim != 1 or mask.dtype != np.bool_:
    raise ValueError(
        f"selected_mask must be a 1-D bool array [series], got {mask.dtype} {mask.shape}")
  idx = np.flatnonzero(mask)
  out = {}
  for name, ppl_cn in ppl_by_model.items():
    shape = tuple(np.shape(ppl_cn))
    if len(shape) != 2 or shape[1] != mask.shape[0]:
      raise ValueError(
          f"ppl_by_model[{name!r}] must be [checkpoint, {mask.shape[0]}] to match selected_mask, got {shape}"
      )
    sub = np.asarray(np.asarray(ppl_cn)[:, idx], dtype=np.float64)
    if mean == "geometric":
      sub = np.log(sub)
    out[name] = _nanmean_rows(sub)
    if mean == "geometric":
      out[name] = np.exp(out[name])
  return out


def _nanmean_rows(a_cn: np.ndarray) -> np.ndarray:
  # Only NaN means "no prediction"; an infinite value is a real one and propagates.
  present = ~np.isnan(a_cn)
  count = present.sum(axis=1)
  total = np.where(present, a_cn, 0.0).sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def ppl_from_logprobs(logprobs_cn) -> np.ndarray:
  """Per-token perplexity exp(−log p) in float64; NaN stays NaN."""
  return np.exp(-np.asarray(logprobs_cn, dtype=np.float64))


def validation_ppl(logprobs_cn) -> np.ndarray:
  """Validation perplexity per checkpoint: exp(mean NLL over non-NaN tokens).

    Args:
      logprobs_cn: [checkpoint, token] natural-log probabilities; NaN marks
        tokens with no prediction.

    Returns:
      [checkpoint] float64; NaN for a checkpoint with no scored token.
    """
  lp = np.asarray(logprobs_cn, dtype=np.float64)
  if lp.ndim != 2:
    raise ValueError(f"logprobs_cn must be 2-D [checkpoint, token], got shape {lp.shape}")
  return np.exp(-_nanmean_rows(lp))

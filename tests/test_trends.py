"""Token-trend analysis (trajax.analysis.trends) against statsmodels and hand-built cases."""
import csv
import math
import os
import sys

import numpy as np
import pytest

sm = pytest.importorskip("statsmodels.api")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from configs import opt_paper  # noqa: E402
from trajax.analysis import trend_figures, trends  # noqa: E402

CFG = opt_paper.get_config()
STEPS_1P3B = np.asarray(CFG.models.opt_1_3b.checkpoint_steps)  # 22 uneven steps
STEPS_125M = np.asarray(CFG.models.opt_125m.checkpoint_steps)  # 36
STEPS_175B = np.asarray(CFG.models.opt_175b.checkpoint_steps)  # 32


def _random_ppl(num_ckpt, num_series, seed=0):
  rng = np.random.default_rng(seed)
  # Log-normal per-token PPL with a per-series drift, so all categories occur.
  drift = rng.normal(scale=0.05, size=num_series)
  logp = 1.0 + rng.normal(scale=0.3, size=(num_ckpt, num_series)) + np.outer(
      np.arange(num_ckpt), drift)
  return np.exp(logp)


def _statsmodels(ppl_c, steps, j, x):
  y = ppl_c[j:] / ppl_c[j]
  xs = np.arange(len(y), dtype=np.float64) if x == "index" else np.log(
      np.asarray(steps[j:], np.float64))
  return sm.OLS(y, sm.add_constant(xs)).fit()


@pytest.mark.parametrize("x", ["index", "log_step"])
@pytest.mark.parametrize("fraction",
                         [0.1, 0.5, 0.84])  # 0.84 → 218.4K → 220K: the last 3-point window
def test_matches_statsmodels_ols(x, fraction):
  ppl = _random_ppl(len(STEPS_1P3B), 300, seed=int(fraction * 10))
  res = trends.fit(ppl, STEPS_1P3B, fraction, x=x, chunk_size=64)
  j = res.start_index
  for s in range(ppl.shape[1]):
    ref = _statsmodels(ppl[:, s], STEPS_1P3B, j, x)
    assert abs(res.slope[s] - ref.params[1]) <= 1e-9
    assert abs(res.intercept[s] - ref.params[0]) <= 1e-9
    assert abs(res.pvalue[s] - ref.pvalues[1]) <= 1e-9
  assert res.dof == ref.df_resid == len(STEPS_1P3B) - j - 2
  assert res.num_points == len(STEPS_1P3B) - j
  # Categories recomputed from the statsmodels numbers and the paper's rule.
  for s in range(ppl.shape[1]):
    ref = _statsmodels(ppl[:, s], STEPS_1P3B, j, x)
    b, p = ref.params[1], ref.pvalues[1]
    w = ppl[j:, s]
    g = math.exp(np.mean(np.log(w)))
    if p < 0.05 and b > 0:
      want = trends.UPWARD
    elif p < 0.05 and b < 0:
      want = trends.DOWNWARD
    elif 0.95 <= w[0] / g <= 1.05 and 0.95 <= w[-1] / g <= 1.05:
      want = trends.STAGNATED
    else:
      want = trends.NONE
    assert res.category[s] == want
  assert set(np.unique(res.category)) >= {trends.UPWARD, trends.DOWNWARD, trends.NONE}


def _band_series(r_first, r_last, m=8, wiggle=0.03, scale=7.0):
  """Series whose first/last values are r_first/r_last times its geometric mean."""
  logs = np.empty(m)
  logs[0], logs[-1] = math.log(r_first), math.log(r_last)
  logs[1:-1] = wiggle * np.array([1.0, -1.0] * ((m - 2) // 2))
  logs[1:-1] -= logs.sum() / (m - 2)  # mean log exactly 0 up to rounding
  return scale * np.exp(logs)


@pytest.mark.parametrize("r_first,r_last,want", [
    (0.95, 1.0, trends.STAGNATED),
    (1.05, 1.0, trends.STAGNATED),
    (1.0, 0.95, trends.STAGNATED),
    (1.0, 1.05, trends.STAGNATED),
    (0.95, 1.05, trends.STAGNATED),
    (1.05, 0.95, trends.STAGNATED),
    (0.9499, 1.0, trends.NONE),
    (1.0501, 1.0, trends.NONE),
    (1.0, 0.9499, trends.NONE),
    (1.0, 1.0501, trends.NONE),
])
def test_stagnated_band_edges(r_first, r_last, want):
  s = _band_series(r_first, r_last)
  # Preconditions, by statsmodels and by hand: slope not significant, and the
  # ratios are the edge values (up to the rounding the band must tolerate).
  assert _statsmodels(s, None, 0, "index").pvalues[1] >= 0.05
  g = math.exp(np.mean(np.log(s)))
  assert s[0] / g == pytest.approx(r_first, abs=1e-14) and s[-1] / g == pytest.approx(
      r_last, abs=1e-14)
  res = trends.fit(s[:, None], np.arange(1, len(s) + 1) * 1000, 0.0)
  assert res.category[0] == want


def test_upward_downward_none_by_hand():
  rng = np.random.default_rng(3)
  i = np.arange(12.0)
  up = 10.0 + 0.5 * i + rng.normal(scale=0.05, size=12)
  down = 10.0 - 0.5 * i + rng.normal(scale=0.05, size=12)
  wavy = 10.0 * np.array([1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2.0])  # no slope, far outside the band
  res = trends.fit(np.stack([up, down, wavy], axis=1), np.arange(1, 13), 0.0)
  assert res.category.tolist() == [trends.UPWARD, trends.DOWNWARD, trends.NONE]
  assert res.category.dtype == np.int8
  assert res.pvalue[2] == pytest.approx(_statsmodels(wavy, None, 0, "index").pvalues[1], abs=1e-12)
  assert res.pvalue[2] > 0.05


def test_zero_residual_variance_defined():
  steps = np.arange(1, 6) * 1000
  ppl = np.stack(
      [
          np.array([1.0, 2.0, 3.0, 4.0, 5.0]),  # y = 1, 2, .., 5: exactly linear, β = 1
          np.array([8.0, 7.0, 6.0, 5.0, 4.0]),  # y = 1, .875, .., .5: exact in binary, β = -0.125
          np.full(5, 3.0),  # constant: β = 0, no residual
          np.array([5.0, 4.0, 3.0, 2.0, 1.0
                   ]),  # y = 1, .8, ..: linear, but .8 etc. round → tiny SSR
      ],
      axis=1)
  res = trends.fit(ppl, steps, 0.0)
  assert not np.isnan(res.pvalue).any()
  assert res.slope == pytest.approx([1.0, -0.125, 0.0, -0.2], abs=1e-15)
  assert res.pvalue[:3].tolist() == [0.0, 0.0, 1.0]
  assert 0.0 <= res.pvalue[3] < 1e-30  # an ordinary (huge) t statistic, no special case
  assert res.category.tolist() == [
      trends.UPWARD, trends.DOWNWARD, trends.STAGNATED, trends.DOWNWARD
  ]


def test_start_index_nearest_rule_uneven_table2_steps():
  near = lambda *a, **k: trends.start_index(*a, rule="nearest", **k)
  # 125m, final checkpoint 560K: 10% → 56K; neighbours 40K (|16K|), 60K (|4K|) → 60K, index 11.
  assert near(STEPS_125M, 0.1) == 11 and STEPS_125M[11] == 60_000
  # Against Table 2's nominal 600K steps: 60K exactly.
  assert near(STEPS_125M, 0.1, total_steps=600_000) == 11
  # 1.3b: 10% of 260K = 26K, a checkpoint itself (index 6).
  assert near(STEPS_1P3B, 0.1) == 6
  # 175b (no 28K/32K checkpoints): 20% of 140K = 28K → 24K (|4K|) beats 36K (|8K|).
  assert near(STEPS_175B, 0.2) == 5 and STEPS_175B[5] == 24_000
  # Tie: 30K is 6K from both 24K and 36K; 30/140 is not exact in float, the rule still
  # picks the earlier checkpoint.
  assert near(STEPS_175B, 30 / 140) == 5
  assert near([0, 10, 20], 0.25) == 0  # 5 is equidistant from 0 and 10
  assert near(STEPS_175B, 0.0) == 0 and near(STEPS_175B, 1.0) == 31
  res = trends.fit(_random_ppl(len(STEPS_175B), 5), STEPS_175B, 0.2, start_rule="nearest")
  assert (res.start_index, res.start_step, res.num_points, res.dof) == (5, 24_000.0, 27, 25)


def test_start_index_at_or_after_is_the_default_and_the_papers_rule():
  steps_13b = [s * 1000 for s in range(2, 71, 4)]  # Table 2: 2K, 6K, ..., 70K
  # 13b/30b at 10% of 70K = 7K: the first checkpoint after it is 10K (nearest would be 6K).
  assert trends.start_index(steps_13b, 0.1) == 2 and steps_13b[2] == 10_000
  assert trends.start_index(steps_13b, 0.1, rule="nearest") == 1
  # 175b at 10% of 140K = 14K: 16K (nearest: 12K and 16K tie, the earlier 12K).
  assert trends.start_index(STEPS_175B, 0.1) == 3 and STEPS_175B[3] == 16_000
  assert trends.start_index(STEPS_175B, 0.1, rule="nearest") == 2
  # 20% of 140K = 28K: 36K (index 6); an exact hit is kept: 1.3b at 26K.
  assert trends.start_index(STEPS_175B, 0.2) == 6 and STEPS_175B[6] == 36_000
  assert trends.start_index(STEPS_1P3B, 0.1) == 6
  # 3/10 × 10 is 3.0000000000000004 in float; checkpoint 3 still counts as "at".
  assert trends.start_index([0, 1, 2, 3, 4, 10], 0.3) == 3
  assert trends.start_index(STEPS_175B, 0.0) == 0 and trends.start_index(STEPS_175B, 1.0) == 31
  res = trends.fit(_random_ppl(len(STEPS_175B), 5), STEPS_175B, 0.2)
  assert (res.start_index, res.start_step, res.num_points) == (6, 36_000.0, 26)
  with pytest.raises(ValueError, match="start rule must be one of"):
    trends.start_index(STEPS_175B, 0.1, rule="closest")


def test_nan_excluded_and_counted():
  ppl = _random_ppl(len(STEPS_1P3B), 50, seed=5)
  dirty = ppl.copy()
  j = trends.start_index(STEPS_1P3B, 0.3)
  dirty[j + 2, 3] = np.nan  # inside the window → excluded
  dirty[-1, 7] = np.inf  # inside → excluded
  dirty[j, 11] = 0.0  # non-positive → excluded
  dirty[0, 20] = np.nan  # before the window → kept
  before = dirty.copy()
  res = trends.fit(dirty, STEPS_1P3B, 0.3)
  np.testing.assert_array_equal(dirty, before, err_msg="fit must not modify its input")
  assert res.n_excluded == 3
  assert np.flatnonzero(res.category == trends.EXCLUDED).tolist() == [3, 7, 11]
  assert np.isnan(res.slope[[3, 7, 11]]).all() and np.isnan(res.pvalue[[3, 7, 11]]).all()
  clean = trends.fit(ppl, STEPS_1P3B, 0.3)
  keep = np.setdiff1d(np.arange(50), [3, 7, 11])
  np.testing.assert_array_equal(res.slope[keep], clean.slope[keep])
  np.testing.assert_array_equal(res.category[keep], clean.category[keep])
  shares = res.shares()
  assert sum(shares.values()) == pytest.approx(100.0)
  counts = res.counts()
  assert shares["upward"] == pytest.approx(100.0 * counts["upward"] / 47)


def test_fewer_than_three_points_raises():
  ppl = _random_ppl(4, 6)
  steps = [10, 20, 30, 40]
  with pytest.raises(ValueError, match="at least 3"):
    trends.fit(ppl, steps, 1.0)  # window: 1 point
  with pytest.raises(ValueError, match="at least 3"):
    trends.fit(ppl, steps, 0.75)  # 30 → window of 2 points
  res = trends.fit(ppl, steps, 0.5)  # 20 → 3 points, dof 1
  assert res.dof == 1
  ref = _statsmodels(ppl[:, 0], steps, 1, "index")
  assert abs(res.pvalue[0] - ref.pvalues[1]) <= 1e-9 and ref.df_resid == 1


def test_bad_inputs_raise():
  ppl = _random_ppl(5, 3)
  with pytest.raises(ValueError, match="strictly increasing"):
    trends.fit(ppl, [1, 2, 2, 3, 4], 0.1)
  with pytest.raises(ValueError, match="one entry per checkpoint"):
    trends.fit(ppl, [1, 2, 3], 0.1)
  with pytest.raises(ValueError, match="x must be one of"):
    trends.fit(ppl, [1, 2, 3, 4, 5], 0.1, x="step")
  with pytest.raises(ValueError, match="2-D"):
    trends.fit(ppl[:, 0], [1, 2, 3, 4, 5], 0.1)


def test_chunked_equals_unchunked_and_float32():
  ppl = _random_ppl(len(STEPS_1P3B), 1000, seed=9)
  full = trends.fit(ppl, STEPS_1P3B, 0.2, chunk_size=10**6)
  for cs in (1, 7, 256):
    part = trends.fit(ppl, STEPS_1P3B, 0.2, chunk_size=cs)
    for name in ("slope", "intercept", "pvalue", "category"):
      np.testing.assert_array_equal(getattr(part, name), getattr(full, name))
  # float32 input is upcast per chunk: same as fitting the float64 copy of it.
  p32 = ppl.astype(np.float32)
  np.testing.assert_array_equal(
      trends.fit(p32, STEPS_1P3B, 0.2).pvalue,
      trends.fit(p32.astype(np.float64), STEPS_1P3B, 0.2).pvalue)


def test_shares_vs_start_matches_fits():
  ppl = _random_ppl(len(STEPS_1P3B), 400, seed=2)
  out = trends.shares_vs_start(ppl, STEPS_1P3B, fractions=(0.1, 0.4, 0.8), x="log_step")
  assert out["fraction"].tolist() == [0.1, 0.4, 0.8]
  for k, frac in enumerate((0.1, 0.4, 0.8)):
    res = trends.fit(ppl, STEPS_1P3B, frac, x="log_step")
    assert out["start_index"][k] == res.start_index
    for name in ("stagnated", "upward", "downward", "none"):
      want = 100.0 * np.count_nonzero(res.category == getattr(trends, name.upper())) / 400
      assert out[name][k] == pytest.approx(want, abs=1e-12)
    assert sum(
        out[n][k] for n in ("stagnated", "upward", "downward", "none")) == pytest.approx(100.0)


def test_subset_trajectories_means():
  a = np.array([[1.0, 2.0, 4.0, 8.0], [2.0, np.nan, 8.0, 1.0]])
  b = np.array([[3.0, 3.0, 3.0, 9.0], [1.0, 1.0, 1.0, 1.0], [np.nan, 5.0, np.nan, 7.0]])
  mask = np.array([True, False, True, False])
  arith = trends.subset_trajectories(mask, {"a": a, "b": b})
  np.testing.assert_allclose(arith["a"], [(1 + 4) / 2, (2 + 8) / 2])
  np.testing.assert_allclose(arith["b"], [3.0, 1.0, np.nan])
  geo = trends.subset_trajectories(mask, {"a": a}, mean="geometric")
  np.testing.assert_allclose(geo["a"], [2.0, 4.0])  # sqrt(1·4), sqrt(2·8)
  none = trends.subset_trajectories(np.zeros(4, bool), {"a": a})
  assert np.isnan(none["a"]).all()
  with pytest.raises(ValueError, match=r"\[checkpoint, 4\]"):
    trends.subset_trajectories(mask, {"c": np.ones((2, 5))})
  with pytest.raises(ValueError, match="bool"):
    trends.subset_trajectories(np.array([1, 0, 1, 0]), {"a": a})


def test_validation_ppl():
  lp = np.array([[-1.0, -2.0, np.nan, -3.0], [-0.5, np.nan, np.nan, -1.5], [np.nan] * 4],
                dtype=np.float32)
  got = trends.validation_ppl(lp)
  np.testing.assert_allclose(got[:2], [math.exp(2.0), math.exp(1.0)], rtol=1e-12)
  assert np.isnan(got[2])
  np.testing.assert_allclose(trends.ppl_from_logprobs([[-math.log(4.0)]]), [[4.0]])


# ----------------------------------------------------------------------------- figures


def _read_csv(path):
  with open(path) as f:
    rows = list(csv.reader(f))
  return rows[0], rows[1:]


def _curve_values(rows, model, col):
  return [float(r[col]) for r in rows if r[0] == model]


def test_figure_1_and_subsets(tmp_path):
  flops = {"125m": np.array([1e18, 2e18, 4e18]), "1.3b": np.array([1e19, 3e19])}
  vppl = {"125m": np.array([40.0, 30.5, 25.25]), "1.3b": np.array([20.0, 15.125])}
  sub = {"125m": np.array([3.0, 2.5, 2.25]), "1.3b": np.array([1.5, 1.25])}
  for fn, xs, ys, xcol, ycol in (
      (lambda p: trend_figures.validation_ppl_vs_flops(p, flops, vppl), flops, vppl, "flops",
       "valid_ppl"), (lambda p: trend_figures.subset_vs_flops(p, flops, sub, "stagnated", 12.5),
                      flops, sub, "x", "mean_ppl"),
      (lambda p: trend_figures.subset_vs_validation_ppl(p, vppl, sub, "upward"), vppl, sub, "x",
       "mean_ppl")):
    png, csv_path = fn(str(tmp_path / "fig.png"))
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 1000
    header, rows = _read_csv(csv_path)
    for model in flops:
      assert _curve_values(rows, model, header.index(xcol)) == xs[model].tolist()
      assert _curve_values(rows, model, header.index(ycol)) == ys[model].tolist()
  with pytest.raises(ValueError, match="no x values"):
    trend_figures.subset_vs_flops(str(tmp_path / "bad.png"), {"a": np.ones(2)}, {"b": np.ones(2)})


def test_figure_2_category_shares(tmp_path):
  ppl = _random_ppl(len(STEPS_1P3B), 200, seed=4)
  shares = {"1.3b": trends.shares_vs_start(ppl, STEPS_1P3B, fractions=(0.1, 0.5))}
  png, csv_path = trend_figures.category_shares(str(tmp_path / "fig2.png"), shares)
  assert os.path.getsize(png) > 1000
  header, rows = _read_csv(csv_path)
  for name in ("fraction", "stagnated", "upward", "downward", "none"):
    assert [float(r[header.index(name)]) for r in rows] == shares["1.3b"][name].tolist()


def test_token_view_html():
  tokens = ["<b>", " &amp", '"q"', "\n"]
  cats = np.array([trends.UPWARD, trends.DOWNWARD, trends.STAGNATED, trends.NONE], np.int8)
  traj = np.array([[10.0, 20.0, 30.0], [30.0, 20.0, 10.0], [5.0, 5.0, 5.0], [1.0, np.nan, np.nan]])
  page = trend_figures.token_view_html(tokens, cats, traj)
  assert page.startswith("<!DOCTYPE html>")
  assert "<b>" not in page.split("<body>")[1]  # the raw token never leaks
  assert "&lt;b&gt;" in page and "&amp;amp" in page and "&quot;q&quot;" in page
  assert page.count('class="tok c2"') == 1  # upward (code 1)
  assert page.count('class="tok c3"') == 1  # downward (code 2)
  assert ".c2 { color: #d62728; }" in page and ".c3 { color: #2ca02c; }" in page
  assert ".c4 { color: #1f77b4; }" in page
  assert 'title="upward; PPL: 10 → 20 → 30"' in page
  assert page.count("<svg") == 3  # a trajectory with < 2 finite points has none
  assert "<script" not in page and "http://" not in page.replace(
      'xmlns="http://www.w3.org/2000/svg"', "")
  with pytest.raises(ValueError, match="expected categories"):
    trend_figures.token_view_html(tokens[:2], cats, traj)

"""The measurements behind the report's findings (`trajax.report.claims`), on hand-computed cases."""
import math

import numpy as np
import pytest

from trajax.report import claims, findings_later


def test_categorised_share():
  assert claims.categorised_share(
      {"stagnated": 30.0, "upward": 10.5, "downward": 19.5, "none": 40.0}) == 60.0


def test_curve_distance_on_the_shared_range():
  # a: y = x − 1 on [1, 3]; b: y = 1 on [2, 4]. Shared x: [2, 3], where |a − b| = x − 2, whose
  # mean over an even grid of [2, 3] is 0.5.
  d = claims.curve_distance([3, 1, 2], [2, 0, 1], [2, 3, 4], [1, 1, 1], logx=False)
  assert d == pytest.approx(0.5)
  # Disjoint ranges share nothing; a single point is no curve.
  assert claims.curve_distance([1, 2], [0, 0], [3, 4], [0, 0], logx=False) is None
  assert claims.curve_distance([1], [0], [1, 2], [0, 0], logx=False) is None
  # log x: a = log x, b = 0 on x in [1, e²]: |a − b| = t on an even grid of t in [0, 2]: mean 1.
  e2 = math.exp(2)
  assert claims.curve_distance([1, e2], [0, 2], [1, e2], [0, 0]) == pytest.approx(1.0)
  # A repeated x takes the mean of its y's: a = 1 at x = 1 (mean of 0 and 2), 1 at x = 2.
  assert claims.curve_distance([1, 1, 2], [0, 2, 1], [1, 2], [1, 1], logx=False) == 0.0


def test_mean_pairwise_distance():
  curves = {"s": ([1, 2], [0, 0]), "m": ([1, 2], [1, 1]), "l": ([5, 6], [3, 3])}
  got = claims.mean_pairwise_distance(curves, logx=False)
  assert got == {"pairs": {"s|m": 1.0}, "mean": 1.0}  # l shares no x range with the others


@pytest.mark.parametrize("ys,shape", [([5, 4, 3], "falls"), ([3, 3.01, 4], "rises"),
                                      ([5, 3, 4], "falls then rises"), ([5, 5.05, 4.95], "flat"),
                                      ([5, 4, 4.05], "falls")])
def test_trajectory_shape(ys, shape):
  assert claims.trajectory_shape(ys) == shape


def test_fig6_trajectories():
  order = ["125m", "1.3b", "30b"]
  holds = {"125m": [9, 8, 7], "1.3b": [9, 8, 8.5], "30b": [9, 9.5, 10]}
  got = claims.fig6_trajectories(holds, order)
  assert got == {
      "shapes": {"125m": "falls", "1.3b": "falls then rises", "30b": "rises"}, "holds": True
  }
  assert not claims.fig6_trajectories(dict(holds, **{"30b": [9, 8, 7]}), order)["holds"]
  assert claims.fig6_trajectories({"125m": [1, 2]}, order)["holds"] is None


def test_asymmetry():
  order = ["s", "m", "l"]
  large = {
      "selector": "l",
      "categories_in": {"s": {"downward": 40.0}, "m": {"downward": 20.0},
                        "l": {"downward": 0.0}}, "window_change": {"s": -0.3, "m": -0.1, "l": 0.0}
  }
  small = {
      "selector": "s", "categories_in": {
          "m": {"stagnated": 70.0, "downward": 5.0}, "l": {"stagnated": 80.0, "downward": 15.0}
      }, "window_change": {"m": 0.0, "l": -0.01}
  }
  got = claims.asymmetry(large, small, order)
  assert got["down_in_smaller"] == {"s": 40.0, "m": 20.0}
  assert got["stagnated_in_larger"] == {"m": 70.0, "l": 80.0}
  assert got["mean_down_in_smaller"] == 30.0 and got["mean_down_in_larger"] == 10.0
  assert got["change_in_smaller"] == {"s": -0.3, "m": -0.1} and got["holds"] is True


def test_mauve_order():
  m = {("ps-pl", "greedy"): 0.5, ("pl-ps", "greedy"): 0.6, ("ps+pl", "greedy"): 0.4,
       ("ps-pl", "nucleus"): 0.5, ("pl-ps", "nucleus"): 0.9, ("ps+pl", "nucleus"): 0.7}
  assert claims.mauve_order(m) == {"greedy": True, "nucleus": False}
  del m[("ps+pl", "nucleus")]
  assert claims.mauve_order(m)["nucleus"] is None


def test_decode_findings_label_the_methods_the_run_has(tmp_path):
  # A nucleus-only run: no "(greedy)" label anywhere; sizes come from the stage's own CSV.
  rows = ["model,step,config,method,ppl,n_texts,n_tokens"]
  for model, ppls in {"big": (10.0, 12.0), "small": (10.0, 8.0)}.items():
    for step, ppl in zip((1, 2), ppls):
      rows.append(f"{model},{step},ps-pl,nucleus,{ppl},4,40")
  (tmp_path / "generated_ppl_50.csv").write_text("\n".join(rows) + "\n")
  run = {
      "new_tokens": 50, "generated_ppl": str(tmp_path / "generated_ppl_50.csv"), "examples": None,
      "figures": [], "mauve": None, "fig13": None, "cross_family_ppl": None, "fig7": None,
      "cross_family_params": {}
  }
  decode = {
      "corrupted_ppl": None, "fig5": None, "params": {"big": 2e6, "small": 1e6}, "runs": [run]
  }
  fig6, traj = findings_later._decode_sections(decode, [])
  assert "greedy" not in fig6.finding + traj.finding
  # Final PPL 8 (small) then 12 (big): inverse scaling, in size order.
  assert "ps-pl (nucleus): rises with size (inverse scaling) (8, 12)" in fig6.finding
  assert "nucleus: small falls, big rises — the claim holds" in traj.finding


def test_fig8_finding_measures_the_distance_between_curves(tmp_path):
  # s: accuracy 0.3 → 0.4 while valid PPL goes 20 → 10; l: 0.32 → 0.42 over 15 → 8.
  # Shared valid PPL range [10, 15]: in log PPL, s(x) and l(x) are lines; by hand, with
  # u = log 20 − x and v = log 15 − x (x = log PPL), s = 0.3 + 0.1 u / log 2 and
  # l = 0.32 + 0.1 v / log(15/8), averaged over x in [log 10, log 15].
  rows = ["model,params,step,flops,valid_ppl,accuracy"]
  for model, pts in {"s": [(1, 20, 0.3), (2, 10, 0.4)], "l": [(1, 15, 0.32), (2, 8, 0.42)]}.items():
    for step, vp, acc in pts:
      rows.append(f"{model},1,{step},{step * (10 if model == 'l' else 1)}e18,{vp},{acc}")
  (tmp_path / "fig8_accuracy.csv").write_text("\n".join(rows) + "\n")
  xs = np.linspace(math.log(10), math.log(15), claims.GRID)
  s = 0.3 + 0.1 * (math.log(20) - xs) / math.log(2)
  l = 0.32 + 0.1 * (math.log(15) - xs) / math.log(15 / 8)
  want = np.mean(np.abs(s - l))
  icl = {
      "models": ["s", "l"], "final_accuracy": {"s": 0.4, "l": 0.42}, "chance": 0.25,
      "final_ppl_correct": {}, "final_ppl_incorrect": {}, "figures": {
          "fig8": str(tmp_path / "fig8_accuracy.png"), "fig9": "", "fig5_right": "", "fig17_18": ""
      }
  }
  fig8 = findings_later._icl_sections(icl)[0]
  assert f"both cover: {want:.3g} (s vs l {want:.3g})" in fig8.finding
  # Against FLOPs (1e18..2e18 and 1e19..2e19) the curves share no range: n/a.
  assert "against training FLOPs: n/a" in fig8.finding and "Pearson" not in fig8.finding


def test_fig2_finding_quotes_the_categorised_share(tmp_path):
  from trajax.report import findings
  (tmp_path / "fig2.csv").write_text(
      "model,fraction,stagnated,upward,downward,none\n"
      "b,0.1,30,10,20,40\nb,0.5,50,5,10,35\na,0.1,20,20,15,45\na,0.5,40,10,5,45\n")
  trends = {
      "models": ["a", "b"], "shares_at_10pct": {
          "a": {"stagnated": 20, "upward": 20, "downward": 15, "none": 45},
          "b": {"stagnated": 30, "upward": 10, "downward": 20, "none": 40}
      }
  }
  sec = findings._fig2_section(trends, ["fig2.png", str(tmp_path / "fig2.csv")])
  assert "Only around 60% tokens are captured by our criteria" in sec.paper
  assert "after 10% of training: a 55%, b 60%; over every model and start point 55–65%." in \
      sec.finding
  assert sec.finding.index("a: stagnated 20%") < sec.finding.index("b: stagnated 30%")  # by size

"""The report's sections of §4 (sequence generation, App. C) and §5 (in-context learning, App. D).

As `trajax.report.findings`: every "this run" sentence is computed from the
stage's files, models smallest first wherever a stage recorded their sizes.
"""
from __future__ import annotations

import html
import math

from trajax.report import claims
from trajax.report.page import Section
from trajax.report.stages import read_csv as _rows


def _fmt(x: float) -> str:
  return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3g}"


def _monotone(values: list[float], decreasing: bool = True) -> bool:
  pairs = list(zip(values, values[1:]))
  return all((b < a) if decreasing else (b > a) for a, b in pairs)


def _by_size(values: dict, order: list[str]) -> dict:
  """`values` smallest model first, where the sizes of its models are known; else as is."""
  if set(values) <= set(order):
    return {m: values[m] for m in order if m in values}
  return values


def _order(decode: dict, order: list[str]) -> list[str]:
  """Model names smallest first: another stage's order, else the decode stage's own sizes."""
  if order:
    return order
  params = decode.get("params") or {}
  return sorted(params, key=lambda m: (params[m], m))


def _scaling(rows: list[dict], order: list[str]) -> list[str]:
  """Per (method, config) present: how final-checkpoint PPL moves with model size."""
  final: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
  for r in rows:
    key = (r.get("method", ""), r["config"])
    prev = final.setdefault(key, {}).get(r["model"])
    if prev is None or int(r["step"]) > prev[0]:
      final[key][r["model"]] = (int(r["step"]), float(r["ppl"]))
  lines = []
  for (method, cfg), d in sorted(final.items()):
    vals = [v for _, v in _by_size(d, order).values()]
    trend = ("rises with size (inverse scaling)" if _monotone(vals, decreasing=False) else
             "falls with size" if _monotone(vals) else "is not monotone in size")
    lines.append(f"{cfg} ({method}): {trend} ({', '.join(_fmt(v) for v in vals)})")
  return lines


def _methods(rows: list[dict]) -> str:
  return " and ".join(sorted({r.get("method", "") for r in rows})) or "no method"


def _generated_section(run: dict, suffix: str, order: list[str]) -> Section:
  rows = _rows(run["generated_ppl"])
  return Section(
      "Fig. 6 — perplexity of generated texts (final checkpoints and trajectories)" + suffix,
      "Texts decoded from p_s − p_l show inverse scaling: \"perplexity increases as model size "
      "increases\"; p_s only a modest upward trend, p_l and p_l − p_s a normal downward one.",
      f"{_methods(rows).capitalize()} texts, final checkpoints smallest → largest: " +
      "; ".join(_scaling(rows, order)) + ".", run["figures"])


def _trajectory_section(run: dict, suffix: str, order: list[str]) -> Section | None:
  """Fig. 6 row 2: along training, p_s − p_l texts get likelier for the smallest model only."""
  rows = [r for r in _rows(run["generated_ppl"]) if r["config"] == "ps-pl"]
  if not rows:
    return None
  lines = []
  for method in sorted({r["method"] for r in rows}):
    by_model: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
      if r["method"] == method:
        by_model.setdefault(r["model"], []).append((int(r["step"]), float(r["ppl"])))
    curves = {m: [p for _, p in sorted(v)] for m, v in by_model.items()}
    names = [m for m in order if m in curves] or list(curves)
    res = claims.fig6_trajectories(curves, names)
    verdict = {True: "holds", False: "does not hold", None: "n/a"}[res["holds"]]
    lines.append(f"{method}: " + ", ".join(f"{m} {res['shapes'][m]}" for m in names) +
                 f" — the claim {verdict}")
  return Section(
      "Fig. 6 (row 2) — trajectories of p_s − p_l texts" + suffix,
      "\"125M checkpoints presents a downward trend, while other checkpoints present an upward "
      "trend\"; larger models improve these texts at first, then \"shift away from this specific "
      "distribution where the 125M model stalls\" (§4.3).",
      "Perplexity of the p_s − p_l texts along each model's checkpoints (a change counts beyond "
      f"{100 * claims.TOL:g}%): " + "; ".join(lines) + ".")


def _fig7_section(run: dict, suffix: str) -> Section:
  params = run["cross_family_params"]
  order = sorted(params, key=lambda m: (params[m], m))
  rows = _rows(run["cross_family_ppl"])
  return Section(
      "Fig. 7 — the same texts under another model family" + suffix,
      "Scored by final GPT-Neo checkpoints, \"the perplexity trend aligns with OPT models\": "
      "the shift between sizes is not an artifact of one family or its data (§4.3).",
      f"Final checkpoints of {', '.join(order) or 'the other family'}, smallest → largest: " +
      "; ".join(_scaling(rows, order)) + ".", [run["fig7"]])


def _fig13_section(run: dict, suffix: str) -> Section:
  rows = _rows(run["mauve"])
  mauve = {(r["config"], r["method"]): float(r["mauve"]) for r in rows}
  order = claims.mauve_order(mauve)
  verdicts = {True: "yes", False: "no", None: "n/a"}
  text = "; ".join(f"{m}: " + ", ".join(f"{c} {_fmt(v)}" for (c, mm), v in mauve.items() if mm == m)
                   for m in sorted({m for _, m in mauve}))
  checks = []
  if "greedy" in order:
    checks.append(f"greedy, both subtractions above p_s + p_l: {verdicts[order['greedy']]}")
  if "nucleus" in order:
    checks.append(f"nucleus, p_s + p_l above both subtractions: {verdicts[order['nucleus']]}")
  n = rows[0]
  return Section(
      "Fig. 13 — MAUVE of the generated texts" + suffix,
      "\"subtraction between two distributions (p_s − p_l and p_l − p_s) leads to a better "
      "generation quality than summing the two (p_s + p_l) for greedy sampling, but vice versa "
      "for nucleus sampling\" (App. C.3).",
      f"MAUVE against the documents' own continuations ({n['n_human']} human, "
      f"{n['n_generated']} generated texts per configuration, {n['num_buckets']} buckets): "
      f"{text}. " + "; ".join(checks) + ".", [run["fig13"]] if run["fig13"] else [])


def _decode_sections(decode: dict, order: list[str]) -> list[Section]:
  """Fig. 5 (left), 6, 7, 13 and Table 1; `order`: model names smallest first, if known."""
  order = _order(decode, order)
  out = []
  corrupted = decode.get("corrupted_ppl")
  if corrupted:
    rows = _rows(corrupted)
    by_frac: dict[str, dict[str, float]] = {}
    for r in rows:
      by_frac.setdefault(r["fraction"], {})[r["model"]] = float(r["ppl"])
    by_frac = {f: _by_size(d, order) for f, d in by_frac.items()}
    models = list(next(iter(by_frac.values())).keys()) if by_frac else []
    down = [f for f, d in by_frac.items() if len(d) > 1 and _monotone([d[m] for m in d])]
    out.append(
        Section(
            "Fig. 5 (left) — corrupted texts at final checkpoints",
            "Even with 20–100% of tokens replaced by random ones, larger models reach lower "
            "perplexity: the downward scaling trend survives the noise.",
            f"Corruption levels where perplexity falls monotonically with model size "
            f"({', '.join(models)}): {len(down)} of {len(by_frac)} "
            f"({', '.join(sorted(down)) or 'none'}).", [decode["fig5"]] if decode["fig5"] else []))
  runs = decode["runs"]
  for run in runs:
    # Several runs (App. C.5: 50, 100, 500 new tokens) get one set of sections each.
    suffix = f" ({run['new_tokens']} new tokens)" if len(runs) > 1 else ""
    out.append(_generated_section(run, suffix, order))
    out.append(_trajectory_section(run, suffix, order))
    if run.get("cross_family_ppl") and run.get("fig7"):
      out.append(_fig7_section(run, suffix))
    if run.get("mauve"):
      out.append(_fig13_section(run, suffix))
    if run["examples"]:
      with open(run["examples"], encoding="utf-8") as f:
        text = f.read()
      out.append(
          Section(
              "Table 1 — example generations per configuration" + suffix,
              "p_s − p_l yields grammatical but hallucinated text; p_l − p_s reads most naturally.",
              f"The first prompts, decoded with each configuration "
              f"({_methods(_rows(run['generated_ppl']))}).",
              html=f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>"))
  return [s for s in out if s is not None]


def _fig8_distances(icl: dict) -> dict | None:
  """Curve distances of Fig. 8's accuracy curves against valid PPL and against FLOPs."""
  csv_path = icl["figures"]["fig8"][:-len(".png")] + ".csv"
  try:
    rows = _rows(csv_path)
  except FileNotFoundError:
    return None
  out = {}
  for key in ("valid_ppl", "flops"):
    curves = {}
    for r in rows:
      x, y = float(r[key] or "nan"), float(r["accuracy"] or "nan")
      if math.isfinite(x) and math.isfinite(y):
        curves.setdefault(r["model"], ([], []))
        curves[r["model"]][0].append(x)
        curves[r["model"]][1].append(y)
    out[key] = claims.mean_pairwise_distance(curves)
  return out


def _icl_sections(icl: dict) -> list[Section]:
  names = icl["models"]
  acc, chance = icl["final_accuracy"], icl.get("chance")
  d = _fig8_distances(icl)
  if d is None or d["valid_ppl"]["mean"] is None:
    overlap = "No two sizes share a validation-perplexity range (or no store): no overlap measured."
  else:
    v, f = d["valid_ppl"]["mean"], d["flops"]["mean"]
    pairs = ", ".join(
        f"{k.replace('|', ' vs ')} {_fmt(x)}" for k, x in d["valid_ppl"]["pairs"].items())
    overlap = (
        f"Mean absolute accuracy difference between the curves of every two sizes over the "
        f"validation-PPL range both cover: {_fmt(v)} ({pairs}); against training FLOPs: "
        f"{_fmt(f)}. The curves lie closer against validation perplexity than against FLOPs: "
        f"{'yes' if f is not None and v < f else 'no' if f is not None else 'n/a'}.")
  out = [
      Section(
          "Fig. 8 — 2-shot accuracy vs FLOPs and validation perplexity",
          "\"under the same amount of training FLOPs, a smaller model consistently outperforms a "
          "larger counterpart except the 125M model\"; against validation perplexity \"The curves "
          "overlap greatly in various model sizes\".",
          f"Final accuracy smallest → largest: {', '.join(f'{n} {_fmt(acc[n])}' for n in names)} "
          f"(chance {_fmt(chance)}). {overlap}", [icl["figures"]["fig8"]])
  ]
  gaps = {
      n: icl["final_ppl_incorrect"][n] - icl["final_ppl_correct"][n] for n in names if
      icl["final_ppl_incorrect"].get(n) is not None and icl["final_ppl_correct"].get(n) is not None
  }
  out.append(
      Section(
          "Fig. 9 / Fig. 5 (right) — perplexity of correct and incorrect options",
          "Both fall with scale; accuracy improves as the correct options' perplexity pulls away "
          "from the incorrect ones'.", f"Final incorrect − correct option PPL, smallest → largest: "
          f"{', '.join(f'{n} {_fmt(g)}' for n, g in gaps.items())}; the gap "
          f"{'widens' if _monotone(list(gaps.values()), decreasing=False) else 'does not widen monotonically'}"
          f" with size.", [icl["figures"]["fig9"], icl["figures"]["fig5_right"]]))
  out.append(
      Section(
          "Fig. 17/18 — per-task scaling, linearity and breakthroughness",
          "Some tasks improve smoothly with scale (linearity), others jump late (breakthroughness).",
          "; ".join(f"{t}: linearity {_fmt(v.get('linearity'))}, breakthroughness "
                    f"{_fmt(v.get('breakthroughness'))}"
                    for t, v in _by_task(icl)) or "no task scores", [icl["figures"]["fig17_18"]]))
  return out


def _by_task(icl: dict) -> list[tuple[str, dict]]:
  """Per-task scaling scores in the run's task order (summary.json's keys are sorted)."""
  scaling = icl.get("scaling", {})
  order = [t for t in icl.get("tasks", []) if t in scaling]
  return [(t, scaling[t]) for t in order + sorted(set(scaling) - set(order))]

"""The report's sections: what the paper found, and what this run's numbers show.

Every "this run" sentence is computed from the stage outputs on disk (summaries
and the CSVs behind the figures, `trajax.report.stages`), through the
measurements of `trajax.report.claims`; nothing here is written for a particular
result or a particular family. Models are named smallest first wherever a stage
recorded their sizes. This module holds the token-trend sections (§3, App. B);
`findings_later` the generation (§4, App. C) and ICL (§5, App. D) ones.
"""
from __future__ import annotations

import html
import math

from trajax.report import claims
from trajax.report.findings_later import _by_size, _decode_sections, _fmt, _icl_sections, _monotone
from trajax.report.page import Section
from trajax.report.stages import Outputs
from trajax.report.stages import read_csv as _rows

__all__ = ["sections", "_decode_sections", "_by_size"]


def _pct(x) -> str:
  return "n/a" if x is None or not math.isfinite(x) else f"{x:.0f}%"


def _fig2_section(trends: dict, fig2: list[str]) -> Section:
  by_model: dict[str, list[dict]] = {}
  for r in _rows(fig2[1]):
    by_model.setdefault(r["model"], []).append(r)
  by_model = _by_size(by_model, trends["models"])
  rising = [
      m for m, rs in by_model.items()
      if len(rs) > 1 and float(rs[-1]["stagnated"]) > float(rs[0]["stagnated"])
  ]
  detail = "; ".join(
      f"{m}: stagnated {float(rs[0]['stagnated']):.0f}% → {float(rs[-1]['stagnated']):.0f}%, "
      f"upward {float(rs[0]['upward']):.0f}% → {float(rs[-1]['upward']):.0f}%, downward "
      f"{float(rs[0]['downward']):.0f}% → {float(rs[-1]['downward']):.0f}%"
      for m, rs in by_model.items())
  at10 = {
      m: claims.categorised_share(s) for m, s in (trends.get("shares_at_10pct") or {}).items()
      if s and s.get("none") is not None
  }
  every = [100.0 - float(r["none"]) for rs in by_model.values() for r in rs]
  share = (f" Tokens in some category after 10% of training: "
           f"{', '.join(f'{m} {_pct(v)}' for m, v in _by_size(at10, trends['models']).items())}"
           f"; over every model and start point {min(every):.0f}–{max(every):.0f}%."
           if at10 and every else "")
  return Section(
      "Fig. 2 — share of tokens per trend vs the start of the fit",
      "\"Overall, the percentage of stagnated tokens increases and the percentage of the other "
      "two types of tokens decreases\" as the start point moves later; \"Only around 60% tokens "
      "are captured by our criteria\" (fn. 5).", f"From the earliest to the latest start point — "
      f"{detail}. The stagnated share grows in {len(rising)} of {len(by_model)} models.{share}",
      [fig2[0]])


def _curve(entry: dict, model: str) -> list[float]:
  """The subset's mean PPL along `model`'s checkpoints (the FLOPs figure's CSV)."""
  return [
      float(r["mean_ppl"]) for r in _rows(entry["figures"][1])
      if r["model"] == model and math.isfinite(float(r["mean_ppl"] or "nan"))
  ]


def _double_descent(ys: list[float]) -> bool:
  """Rises more than 2% above its start, then falls more than 2% below that peak."""
  if len(ys) < 3:
    return False
  k = max(range(len(ys)), key=ys.__getitem__)
  return ys[k] > ys[0] * 1.02 and min(ys[k:]) < ys[k] * 0.98


def _entry(trends: dict, selector: str, category: str, fraction: float = 0.1):
  return next((e for e in trends["subsets"]
               if e["selector"] == selector and e["category"] == category and abs(e["fraction"] -
                                                                                  fraction) < 1e-9),
              None)


def _selectors(trends: dict) -> tuple[str | None, str | None]:
  """The smallest and the largest model that selected subsets (the paper: 1.3B and 175B)."""
  names = trends["models"]
  sel = sorted({e["selector"] for e in trends["subsets"] if e["selector"] in names},
               key=names.index)
  return (sel[0], sel[-1]) if sel else (None, None)


def _followed(entry: dict, models: list[str], category: str) -> str:
  """"m1 40% (−12% PPL over its window), ..." for the subset under each model's own fit."""
  cats = entry.get("categories_in") or {}
  change = entry.get("window_change") or {}
  parts = []
  for m in models:
    share, dv = (cats.get(m) or {}).get(category), change.get(m)
    if share is None or dv is None:
      parts.append(f"{m} n/a")
    else:
      parts.append(f"{m} {_pct(share)} ({'+' if dv >= 0 else ''}{_fmt(100 * dv)}% PPL over its "
                   f"window)")
  return ", ".join(parts) or "no other model"


def _subset_sections(trends: dict) -> list[Section]:
  """Fig. 3 and 4, middle (a small selector) and right (the largest) panels; Fig. 12."""
  names = trends["models"]
  small, large = _selectors(trends)
  if small is None:
    return []
  out = []
  rank = names.index
  for is_small, cat, fig in ((True, "stagnated", "Fig. 3"), (False, "stagnated", "Fig. 3"),
                             (True, "upward", "Fig. 4"), (False, "upward", "Fig. 4")):
    sel = small if is_small else large
    if not is_small and small == large:
      continue  # one selector: its panels are the small ones
    entry = _entry(trends, sel, cat)
    if entry is None:
      continue
    larger = [m for m in names if rank(m) > rank(sel)]
    smaller = [m for m in names if rank(m) < rank(sel)]
    curves = {m: _curve(entry, m) for m in names}
    if cat == "stagnated" and is_small:
      paper = ("\"stagnated tokens after 10% of training in a small model (1.3B) also stagnate in "
               "larger models\" (Fig. 3 middle).")
      finding = f"Of them, stagnated in each larger model's own window: {_followed(entry, larger, 'stagnated')}."
    elif cat == "stagnated":
      paper = ("\"the stagnated tokens selected by a large model (175B) still show a downward "
               "trend in smaller models\": larger models' stagnated tokens are roughly a superset "
               "of smaller models' (Fig. 3 right).")
      finding = f"Of them, downward in each smaller model's own window: {_followed(entry, smaller, 'downward')}."
      other = _entry(trends, small, "stagnated")
      if other is not None and small != large:
        a = claims.asymmetry(entry, other, names)
        finding += (
            f" The asymmetry: {large}'s stagnated tokens are downward in the smaller "
            f"models {_pct(a['mean_down_in_smaller'])} of the time on average, "
            f"{small}'s in the larger models {_pct(a['mean_down_in_larger'])}: "
            f"{'holds' if a['holds'] else 'does not hold' if a['holds'] is not None else 'n/a'}.")
    elif is_small:
      paper = ("\"For tokens that present an upward trend after 10% training of a small model "
               "(1.3B), we observe a stepwise double descent ... trend in larger models' "
               "trajectories\" (Fig. 4 middle).")
      dd = [m for m in larger if _double_descent(curves[m])]
      finding = (f"Larger models whose PPL on them rises then falls: {', '.join(dd) or 'none'} "
                 f"(of {', '.join(larger) or 'none'}); upward in each larger model's own window: "
                 f"{_followed(entry, larger, 'upward')}.")
    else:
      paper = ("\"Tokens selected by a larger model (175B) present a downward trend in the "
               "smaller models\" (Fig. 4 right).")
      finding = f"Of them, downward in each smaller model's own window: {_followed(entry, smaller, 'downward')}."
    desc = "; ".join(f"{m} {_fmt(ys[0])} → {_fmt(ys[-1])}"
                     for m, ys in curves.items() if ys) or "none (the subset is empty)"
    out.append(
        Section(
            f"{fig} — {cat} tokens selected by {sel} after 10%", paper,
            f"{_fmt(entry['percent'])}% of tokens are {cat} for {sel}. {finding} Subset PPL, "
            f"first → last checkpoint: {desc}.", [entry["figures"][0], entry["figures"][2]]))
  out.append(_fig12_section(trends, small))
  return [s for s in out if s is not None]


def _fig12_section(trends: dict, small: str) -> Section | None:
  """App. B.5: subset curves of different sizes overlap against validation PPL."""
  rows, images = [], []
  for cat in ("stagnated", "upward", "downward"):
    entry = _entry(trends, small, cat)
    if entry is None:
      continue
    d = {}
    for key, csv_path in (("valid PPL", entry["figures"][3]), ("FLOPs", entry["figures"][1])):
      curves = {}
      for r in _rows(csv_path):
        if math.isfinite(float(r["mean_ppl"] or "nan")):
          curves.setdefault(r["model"], ([], []))
          curves[r["model"]][0].append(float(r["x"]))
          curves[r["model"]][1].append(math.log(float(r["mean_ppl"])))
      d[key] = claims.mean_pairwise_distance(curves)["mean"]
    rows.append(f"{cat}: {_fmt(d['valid PPL'])} against validation PPL, {_fmt(d['FLOPs'])} "
                f"against FLOPs")
    if cat == "downward":
      images.append(entry["figures"][2])
  if not rows:
    return None
  return Section(
      f"Fig. 12 — subsets chosen by {small} against validation perplexity",
      "\"given a similar level of validation perplexity, for different subsets of tokens, the "
      "trajectories of models across sizes overlap well with each other\" (App. B.5).",
      "Mean distance between the curves of every two sizes over the x range both cover (mean "
      "|Δ log PPL| on a common grid, `claims.curve_distance`): " + "; ".join(rows) + ".", images)


def _trend_sections(trends: dict) -> list[Section]:
  names = trends["models"]
  final = trends["final_valid_ppl"]
  source = trends.get("valid_ppl_source")
  out = [
      Section(
          "Fig. 1 — validation perplexity vs training FLOPs",
          "Validation perplexity falls along a power law in compute; at equal FLOPs, larger models "
          "reach lower perplexity.", f"Final validation PPL, smallest to largest: "
          f"{', '.join(f'{n} {_fmt(final[n])}' for n in names)}. Larger models reach lower final "
          f"perplexity: {'yes' if trends['larger_models_lower_final_ppl'] else 'no'}." +
          (" (Measured on the analysed tokens themselves: no validation dataset was scored.)"
           if source == "analysis" else ""), [trends["figures"]["fig1"][0]])
  ]
  if trends["figures"].get("fig2"):
    out.append(_fig2_section(trends, trends["figures"]["fig2"]))
  out += _subset_sections(trends)
  tv = trends.get("token_view")
  if tv:
    with open(tv["path"], encoding="utf-8") as f:
      page = f.read()
    c = tv["counts"]
    out.append(
        Section(
            "Table 3 — tokens coloured by trend",
            "Stagnated tokens are mostly function words, punctuation and word continuations; upward "
            "tokens resist a simple description.",
            f"Block {tv['block']} under {tv['model']} after {tv['fraction'] * 100:g}% of training: "
            f"{c.get('stagnated', 0)} stagnated, {c.get('upward', 0)} upward, "
            f"{c.get('downward', 0)} downward, {c.get('none', 0)} uncategorised tokens "
            f"(hover a token for its perplexity trajectory).",
            html=f'<iframe style="width:100%;height:420px;border:1px solid #ccc" '
            f'srcdoc="{html.escape(page, quote=True)}"></iframe>'))
  return out


def _store_section(store: dict) -> Section:
  """Validation PPL per model from the store, for a workdir whose trends were not run."""
  names = store["models"]
  final = {m: store["valid_ppl"][m][-1] if store["valid_ppl"][m] else None for m in names}
  finals = [final[m] for m in names]
  known = all(v is not None for v in finals) and len(finals) > 1
  rows = "".join(
      f"<tr><td>{html.escape(m)}</td><td>{len(store['done_steps'][m])} of "
      f"{len(store['steps'][m])}</td><td>{_fmt(store['valid_ppl'][m][0] if final[m] is not None else None)}"
      f"</td><td>{_fmt(final[m])}</td></tr>" for m in names)
  return Section(
      "Validation perplexity of the scored checkpoints",
      "Validation perplexity falls along a power law in compute; at equal FLOPs, larger models "
      "reach lower perplexity.",
      f"{len(names)} model(s) scored on {store['block_shape'][0]} blocks of "
      f"{store['block_shape'][1]} tokens. Final validation PPL, smallest to largest: "
      f"{', '.join(f'{m} {_fmt(final[m])}' for m in names)}. Larger models reach lower final "
      f"perplexity: {('yes' if _monotone(finals) else 'no') if known else 'n/a'}.",
      html="<table><tr><th>model</th><th>checkpoints scored</th><th>first valid PPL</th>"
      f"<th>final valid PPL</th></tr>{rows}</table>")


def sections(outputs: Outputs) -> list[Section]:
  """The report's sections in the paper's order, for the stages found in the workdir."""
  out = []
  if outputs.trends:
    out += _trend_sections(outputs.trends)
  elif outputs.store and outputs.store["models"]:
    out.append(_store_section(outputs.store))
  if outputs.decode:
    out += _decode_sections(outputs.decode, outputs.models())
  if outputs.icl:
    out += _icl_sections(outputs.icl)
  return out

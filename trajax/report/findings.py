"""The report's sections: what the paper found, and what this run's numbers show.

Every "this run" sentence is computed from the stage outputs on disk (summaries
and the CSVs behind the figures, `trajax.report.stages`); nothing here is written
for a particular result or a particular family.
"""
from __future__ import annotations

import html
import math

from trajax.report.page import Section
from trajax.report.stages import Outputs
from trajax.report.stages import read_csv as _rows


def _fmt(x: float) -> str:
  return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3g}"


def _monotone(values: list[float], decreasing: bool = True) -> bool:
  pairs = list(zip(values, values[1:]))
  return all((b < a) if decreasing else (b > a) for a, b in pairs)


def _trend_sections(trends: dict) -> list[Section]:
  names = trends["models"]
  final = trends["final_valid_ppl"]
  out = [
      Section(
          "Fig. 1 — validation perplexity vs training FLOPs",
          "Validation perplexity falls along a power law in compute; at equal FLOPs, larger models "
          "reach lower perplexity.", f"Final validation PPL, smallest to largest: "
          f"{', '.join(f'{n} {_fmt(final[n])}' for n in names)}. Larger models reach lower final "
          f"perplexity: {'yes' if trends['larger_models_lower_final_ppl'] else 'no'}.",
          [trends["figures"]["fig1"][0]])
  ]

  fig2 = trends["figures"].get("fig2")
  if fig2:
    by_model: dict[str, list[dict]] = {}
    for r in _rows(fig2[1]):
      by_model.setdefault(r["model"], []).append(r)
    rising = [
        m for m, rs in by_model.items()
        if len(rs) > 1 and float(rs[-1]["stagnated"]) > float(rs[0]["stagnated"])
    ]
    detail = "; ".join(
        f"{m}: stagnated {float(rs[0]['stagnated']):.0f}% → {float(rs[-1]['stagnated']):.0f}%, "
        f"upward {float(rs[0]['upward']):.0f}% → {float(rs[-1]['upward']):.0f}%"
        for m, rs in by_model.items())
    out.append(
        Section(
            "Fig. 2 — share of tokens per trend vs the start of the fit",
            "The share of stagnated tokens grows and the upward and downward shares shrink as the "
            "start point moves later in training; ~60% of tokens fall in some category.",
            f"From the earliest to the latest start point — {detail}. The stagnated share grows in "
            f"{len(rising)} of {len(by_model)} models.", [fig2[0]]))

  smallest, largest = names[0], names[-1]
  for cat, paper in (
      ("stagnated", "Tokens stagnated after 10% of a small model's training stay stagnated in "
       "larger models (Fig. 3)."),
      ("upward", "Tokens whose perplexity rises in a small model rise in larger models too, and "
       "the largest show double descent (Fig. 4)."),
      ("downward", "Tokens still being learned by one model are learned by the others (Fig. 4)."),
  ):
    entry = next(
        (e for e in trends["subsets"]
         if e["selector"] == smallest and e["category"] == cat and abs(e["fraction"] - 0.1) < 1e-9),
        None)
    if entry is None:
      continue
    curves = _rows(entry["figures"][1])  # the FLOPs figure's CSV: model, checkpoint, x, mean_ppl
    finals = entry["mean_ppl_final"]
    desc = []
    for n in names:
      ys = [
          float(r["mean_ppl"]) for r in curves
          if r["model"] == n and math.isfinite(float(r["mean_ppl"] or "nan"))
      ]
      if ys:
        peak = max(ys)
        desc.append(f"{n} {_fmt(ys[0])} → {_fmt(ys[-1])}" +
                    (" (rises then falls)" if peak > ys[0] * 1.02 and ys[-1] < peak * 0.98 else ""))
    out.append(
        Section(
            f"Fig. {3 if cat == 'stagnated' else 4} — {cat} tokens selected by {smallest} after 10%",
            paper,
            f"{_fmt(entry['percent'])}% of tokens are {cat} for {smallest}. Mean PPL of the same "
            f"tokens, first → last checkpoint: {'; '.join(desc)}. At the end, {largest} "
            f"{'is lower' if finals.get(largest, math.inf) < finals.get(smallest, -math.inf) else 'is not lower'}"
            f" than {smallest} on them.", [entry["figures"][0], entry["figures"][2]]))

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


def _by_size(values: dict[str, float], order: list[str]) -> dict[str, float]:
  """`values` smallest model first, where another stage knows every model's size; else as is."""
  if set(values) <= set(order):
    return {m: values[m] for m in order if m in values}
  return values


def _decode_sections(decode: dict, order: list[str]) -> list[Section]:
  """Fig. 5 (left), Fig. 6 and Table 1; `order`: model names smallest first, if known."""
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
    # Several runs (App. C.5: 50, 100, 500 new tokens) get one pair of sections each.
    suffix = f" ({run['new_tokens']} new tokens)" if len(runs) > 1 else ""
    out.append(_generated_section(run, suffix, order))
    if run["examples"]:
      with open(run["examples"], encoding="utf-8") as f:
        text = f.read()
      out.append(
          Section(
              "Table 1 — example generations per configuration" + suffix,
              "p_s − p_l yields grammatical but hallucinated text; p_l − p_s reads most naturally.",
              "The first prompts of the validation set, decoded with each configuration (greedy).",
              html=f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>"))
  return out


def _generated_section(run: dict, suffix: str, order: list[str]) -> Section:
  final: dict[str, dict[str, tuple[int, float]]] = {}
  for r in _rows(run["generated_ppl"]):
    if r.get("method", "greedy") != "greedy":
      continue
    key = r["config"]
    step = int(r["step"])
    prev = final.setdefault(key, {}).get(r["model"])
    if prev is None or step > prev[0]:
      final[key][r["model"]] = (step, float(r["ppl"]))
  lines = []
  for cfg, d in final.items():
    vals = [v for _, v in _by_size(d, order).values()]
    trend = ("rises with size (inverse scaling)" if _monotone(vals, decreasing=False) else
             "falls with size" if _monotone(vals) else "is not monotone in size")
    lines.append(f"{cfg}: {trend} ({', '.join(_fmt(v) for v in vals)})")
  return Section(
      "Fig. 6 — perplexity of generated texts (final checkpoints and trajectories)" + suffix,
      "Texts decoded from p_s − p_l show inverse scaling: larger models assign them higher "
      "perplexity; p_l and p_l − p_s show normal scaling.",
      "Greedy texts, final checkpoints smallest → largest: " + "; ".join(lines) + ".",
      run["figures"])


def _icl_sections(icl: dict) -> list[Section]:
  names = icl["models"]
  acc, chance = icl["final_accuracy"], icl.get("chance")
  r = icl.get("pearson_accuracy_vs_log_valid_ppl")
  out = [
      Section(
          "Fig. 8 — 2-shot accuracy vs FLOPs and validation perplexity",
          "At equal FLOPs smaller models often do better; against validation perplexity the curves "
          "of all sizes overlap: perplexity predicts in-context accuracy.",
          f"Final accuracy smallest → largest: {', '.join(f'{n} {_fmt(acc[n])}' for n in names)} "
          f"(chance {_fmt(chance)}). Pearson correlation of accuracy with log validation PPL over "
          f"all checkpoints: {_fmt(r)}"
          f"{' (lower perplexity, higher accuracy)' if r is not None and r < 0 else ''}.",
          [icl["figures"]["fig8"]])
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

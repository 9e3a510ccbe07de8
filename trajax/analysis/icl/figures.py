"""The ICL figures and summary: Fig. 5 (right), 8, 9 and 17/18 of Xia et al. (2023).

Everything here is computed from results.csv rows (numbers or the strings read
back) and the models' `common.ModelInfo`, smallest model first:

  fig8_accuracy                 mean accuracy over tasks vs training FLOPs and vs
                                validation PPL (when a store gives it)
  fig9_groups                   linearity / breakthroughness / all tasks: accuracy and
                                correct vs incorrect option PPL vs validation PPL
                                (vs FLOPs without a store)
  fig5_option_ppl_final         option PPL of the final checkpoints vs model size
  fig17_18_task_scaling         per-task scaling curves over final checkpoints, with
                                linearity and breakthroughness

`tables` computes what the figures plot (pure); `write_figures` draws each as a
PNG with its numbers in a CSV beside it; `summary` is what summary.json holds.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import matplotlib.ticker
import numpy as np

from trajax.analysis import common
from trajax.analysis.icl import metrics

GROUPS = (("linearity", metrics.LINEARITY_TASKS), ("breakthroughness",
                                                   metrics.BREAKTHROUGHNESS_TASKS))
FIGURE_STEMS = {
    "fig8": "fig8_accuracy", "fig9": "fig9_groups", "fig5_right": "fig5_option_ppl_final",
    "fig17_18": "fig17_18_task_scaling"
}
DPI = 110


def checkpoint_id(model: str, step: int) -> str:
  """The id of a checkpoint in the CSVs: "{model}@{step}" (independent of its path)."""
  return f"{model}@{step}"


def checkpoint_table(rows: Sequence[dict], infos: Sequence[common.ModelInfo], tasks: Sequence[str],
                     valid: Mapping[str, Mapping[int, float]] | None, flops_method: str,
                     group: Sequence[str] | None = None) -> list[dict]:
  """Per checkpoint (all `tasks` done): aggregate_over_tasks over `group` ∩ tasks.

  Returns:
    list of dicts: model, params, step, tokens_seen, flops, valid_ppl (NaN
    without a store), n_tasks, accuracy, chance, ppl_correct, ppl_incorrect;
    models in the order of `infos`, checkpoints in training order.
  """
  want = set(tasks) if group is None else set(tasks) & set(group)
  by_ckpt: dict[str, list[dict]] = {}
  for r in rows:
    if r.get("level", "task") == "task" and r["task"] in set(tasks):
      by_ckpt.setdefault(r["checkpoint"], []).append(r)
  out = []
  for info in infos:
    vp = (valid or {}).get(info.name, {})
    flops_at = info.flops_at(flops_method)
    for step in info.steps:
      rs = by_ckpt.get(checkpoint_id(info.name, step), [])
      if {r["task"] for r in rs} != set(tasks) or not want:
        continue
      agg = metrics.aggregate_over_tasks([r for r in rs if r["task"] in want])
      out.append({
          "model": info.name, "params": info.param_count, "step": step,
          "tokens_seen": info.tokens_seen(step), "flops": flops_at[step],
          "valid_ppl": float(vp.get(step, math.nan)), **agg
      })
  return out


def final_rows(rows: Sequence[dict], infos: Sequence[common.ModelInfo],
               tasks: Sequence[str]) -> dict[str, dict[str, dict]]:
  """model -> task -> task-level row of the model's last fully scored checkpoint."""
  out = {}
  for info in infos:
    for step in reversed(info.steps):
      cid = checkpoint_id(info.name, step)
      rs = {
          r["task"]: r for r in rows
          if r["checkpoint"] == cid and r.get("level", "task") == "task" and r["task"] in set(tasks)
      }
      if set(rs) == set(tasks):
        out[info.name] = rs
        break
  return out


def _scaling_table(final, infos, tasks) -> list[dict]:
  ordered = [i for i in infos if i.name in final]
  group_of = {t: g for g, members in GROUPS for t in members}
  table = []
  for t in tasks:
    y = [float(final[i.name][t]["accuracy"]) for i in ordered]
    row = {"task": t, "group": group_of.get(t, "")}
    row.update({f"acc_{i.name}": v for i, v in zip(ordered, y)})
    row["chance"] = float(final[ordered[0].name][t]["chance"]) if ordered else math.nan
    row["linearity"] = metrics.linearity(y) if len(y) >= 2 else math.nan
    row["breakthroughness"] = metrics.breakthroughness(y) if len(y) >= 2 else math.nan
    table.append(row)
  # Table 9 tasks first (linearity, then breakthroughness), then the rest by name.
  rank = {"linearity": 0, "breakthroughness": 1, "": 2}
  table.sort(key=lambda r: (rank[r["group"]], r["task"]))
  return table


def tables(rows: Sequence[dict], infos: Sequence[common.ModelInfo], tasks: Sequence[str],
           valid: Mapping | None, flops_method: str) -> dict:
  """What the figures plot and the summary reports, from results rows.

  Args:
    rows: results.csv rows (strings or numbers).
    infos: the models (any order; sorted smallest first here).
    tasks: task names of this run (figures average over exactly these).
    valid: model -> {step: validation PPL}, or None.
    flops_method: the FLOPs formula of the x axes.
  Returns:
    {"infos", "tasks", "checkpoints" (fig 8), "groups" (fig 9: rows and group
    names), "final", "fig5", "scaling" (fig 17/18), "has_valid"}.
  """
  infos = common.by_size(infos)
  table = checkpoint_table(rows, infos, tasks, valid, flops_method)
  has_valid = any(math.isfinite(r["valid_ppl"]) for r in table)
  groups = [(g, members) for g, members in GROUPS if set(members) & set(tasks)]
  groups.append(("all", None))
  group_rows = []
  for g, members in groups:
    group_rows += [{"group": g, **r} for r in checkpoint_table(
        rows, infos, tasks, valid if has_valid else None, flops_method, members)]
  final = final_rows(rows, infos, tasks)
  fig5 = []
  for info in infos:
    if info.name in final:
      agg = metrics.aggregate_over_tasks(list(final[info.name].values()))
      fig5.append({"model": info.name, "params": info.param_count, **agg})
  return {
      "infos": infos, "tasks": list(tasks), "checkpoints": table, "has_valid": has_valid,
      "groups": group_rows, "group_names": [g for g, _ in groups], "final": final, "fig5": fig5,
      "scaling": _scaling_table(final, infos, tasks)
  }


# ----------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------


def figure_paths(out_dir: str) -> dict[str, str]:
  """{figure key: its PNG path} under `out_dir`."""
  return {k: os.path.join(out_dir, f"{stem}.png") for k, stem in FIGURE_STEMS.items()}


def _logx(ax) -> None:
  """Log x axis without minor labels (they collide over the narrow PPL ranges of short runs)."""
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _series(table, model, xkey, ykey):
  rs = [r for r in table if r["model"] == model and math.isfinite(r[xkey])]
  return np.array([r[xkey] for r in rs], np.float64), np.array([r[ykey] for r in rs], np.float64)


def _fig8(png, t) -> None:
  table = t["checkpoints"]
  xs = [("flops", "training FLOPs")
       ] + ([("valid_ppl", "validation perplexity")] if t["has_valid"] else [])
  fig, axes = common.subplots(1, len(xs), figsize=(5 * len(xs), 3.5), squeeze=False)
  for ax, (xkey, label) in zip(axes[0], xs):
    for info in t["infos"]:
      x, y = _series(table, info.name, xkey, "accuracy")
      ax.plot(x, y, marker="o", ms=2.5, lw=1.2, label=info.name)
    if table:
      ax.axhline(float(np.mean([r["chance"] for r in table])), color="grey", ls=":", lw=1,
                 label="chance")
    _logx(ax)
    if xkey == "valid_ppl":
      ax.invert_xaxis()
    ax.set_xlabel(label)
    ax.set_ylabel("mean 2-shot accuracy")
    ax.legend(fontsize=7)
  common.save_figure(fig, png, dpi=DPI)


def _fig9(png, t) -> None:
  xkey, xlabel = (("valid_ppl", "validation perplexity") if t["has_valid"] else
                  ("flops", "training FLOPs"))
  names = t["group_names"]
  fig, axes = common.subplots(2, len(names), figsize=(4.2 * len(names), 6.4), squeeze=False)
  for j, g in enumerate(names):
    table = [r for r in t["groups"] if r["group"] == g]
    ax_acc, ax_ppl = axes[0, j], axes[1, j]
    for k, info in enumerate(t["infos"]):
      color = f"C{k % 10}"
      x, acc = _series(table, info.name, xkey, "accuracy")
      ax_acc.plot(x, acc, marker="o", ms=2.5, color=color, label=info.name)
      _, pc = _series(table, info.name, xkey, "ppl_correct")
      _, pi = _series(table, info.name, xkey, "ppl_incorrect")
      ax_ppl.plot(x, pc, marker="o", ms=2.5, color=color, label=f"{info.name} correct")
      ax_ppl.plot(x, pi, marker="x", ms=2.5, ls="--", color=color, label=f"{info.name} incorrect")
    n = table[0]["n_tasks"] if table else 0
    ax_acc.set_title(f"{g} ({n} tasks)", fontsize=9)
    ax_acc.set_ylabel("accuracy")
    ax_ppl.set_ylabel("option perplexity")
    ax_ppl.set_yscale("log")
    for ax in (ax_acc, ax_ppl):
      _logx(ax)
      ax.set_xlabel(xlabel)
      if xkey == "valid_ppl":
        ax.invert_xaxis()
    ax_acc.legend(fontsize=6)
    ax_ppl.legend(fontsize=5)
  common.save_figure(fig, png, dpi=DPI)


def _fig5(png, t) -> None:
  table = t["fig5"]
  fig, ax = common.subplots(figsize=(5, 3.5))
  x = [r["params"] for r in table]
  ax.plot(x, [r["ppl_correct"] for r in table], marker="o", label="correct options")
  ax.plot(x, [r["ppl_incorrect"] for r in table], marker="x", ls="--", label="incorrect options")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("parameters")
  ax.set_ylabel("option perplexity (final checkpoints)")
  ax.legend(fontsize=7)
  common.save_figure(fig, png, dpi=DPI)


def _fig17_18(png, t) -> None:
  table = t["scaling"]
  ordered = [i for i in t["infos"] if i.name in t["final"]]
  n = len(table)
  cols = min(6, max(n, 1))
  nrows = max(1, -(-n // cols))
  fig, axes = common.subplots(nrows, cols, figsize=(2.6 * cols, 2.2 * nrows), squeeze=False)
  x = [i.param_count for i in ordered]
  for ax, r in zip(axes.flat, table):
    ax.plot(x, [r[f"acc_{i.name}"] for i in ordered], marker="o", ms=3)
    ax.axhline(r["chance"], color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    tag = {"linearity": " [L]", "breakthroughness": " [B]"}.get(r["group"], "")
    ax.set_title(f"{r['task'][:28]}{tag}\nL={r['linearity']:.2f} B={r['breakthroughness']:.2f}",
                 fontsize=7)
    ax.tick_params(labelsize=6)
  for ax in list(axes.flat)[n:]:
    ax.axis("off")
  common.save_figure(fig, png, dpi=DPI)


def write_figures(t: dict, out_dir: str) -> dict[str, str]:
  """Draws every figure of `tables(...)` under `out_dir`, each PNG with a CSV of its numbers.

  Returns:
    {figure key: PNG path} (`figure_paths`).
  """
  paths = figure_paths(out_dir)
  for key, draw, table in (("fig8", _fig8, t["checkpoints"]), ("fig9", _fig9, t["groups"]),
                           ("fig5_right", _fig5, t["fig5"]), ("fig17_18", _fig17_18, t["scaling"])):
    png, csv_path = common.figure_paths(paths[key])
    draw(png, t)
    common.write_csv(table, csv_path)
  return paths


# ----------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------


def _pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
    return math.nan
  return float(np.corrcoef(x, y)[0, 1])


def _ranks(v) -> np.ndarray:
  v = np.asarray(v, np.float64)
  order = np.argsort(v, kind="stable")
  r = np.empty(len(v))
  r[order] = np.arange(len(v))
  for u in np.unique(v):  # average ranks of ties
    r[v == u] = r[v == u].mean()
  return r


def summary(t: dict, figures: Mapping[str, str]) -> dict:
  """summary.json: final accuracy and option PPLs per model, chance, correlations, scaling.

  Args:
    t: from `tables`.
    figures: {figure key: PNG path}.
  Returns:
    the summary dict, strict-JSON clean (`common.clean`).
  """
  infos, final = t["infos"], t["final"]
  out: dict = {
      "models": [i.name for i in infos], "params": {i.name: i.param_count for i in infos},
      "tasks": t["tasks"], "n_tasks": len(t["tasks"]), "groups": t["group_names"],
      "figures": dict(figures), "final_step": {}, "final_accuracy": {}, "final_chance": {},
      "final_ppl_correct": {}, "final_ppl_incorrect": {}
  }
  for name, rs in final.items():
    agg = metrics.aggregate_over_tasks(list(rs.values()))
    out["final_step"][name] = int(next(iter(rs.values()))["step"])
    out["final_accuracy"][name] = agg["accuracy"]
    out["final_chance"][name] = agg["chance"]
    out["final_ppl_correct"][name] = agg["ppl_correct"]
    out["final_ppl_incorrect"][name] = agg["ppl_incorrect"]
  out["chance"] = float(np.mean(list(out["final_chance"].values()))) if final else None
  pts = [r for r in t["checkpoints"] if math.isfinite(r["valid_ppl"])]
  out["n_checkpoints_with_valid_ppl"] = len(pts)
  acc = [r["accuracy"] for r in pts]
  vp = [r["valid_ppl"] for r in pts]
  out["pearson_accuracy_vs_valid_ppl"] = _pearson(vp, acc) if pts else None
  out["pearson_accuracy_vs_log_valid_ppl"] = _pearson(np.log(vp), acc) if pts else None
  out["spearman_accuracy_vs_valid_ppl"] = _pearson(_ranks(vp), _ranks(acc)) if pts else None
  out["scaling"] = {
      r["task"]: {
          "group": r["group"], "linearity": r["linearity"],
          "breakthroughness": r["breakthroughness"]
      } for r in t["scaling"]
  }
  return common.clean(out)

"""Figures and the example table of the sequence-level study (paper §4).

Fig. 5 left (corrupted texts vs size), Fig. 6 (generated texts vs size at final
checkpoints, and along trajectories against FLOPs), Fig. 7 (the same texts under
another family), Fig. 13 (MAUVE), Fig. 16 (against validation perplexity),
Table 1 (example generations). Each figure is a PNG with the CSV of
the plotted numbers beside it (`common.figure_paths`).
"""
from __future__ import annotations

import html
from typing import Mapping, Sequence

from trajax import sampling
from trajax.analysis import common

DPI = 110


def _cell(text: str) -> str:
  return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ⏎ ").strip()


def example_table(texts: Sequence[dict], n_prompts: int = 2, fmt: str = "markdown") -> str:
  """Table 1 style: for the first `n_prompts` prompts, the generation of every (method, config).

  Args:
    texts: records from `generation.generate_texts`.
    n_prompts: prompts shown.
    fmt: "markdown" or "html".
  Returns:
    The table as a string.
  """
  if fmt not in ("markdown", "html"):
    raise ValueError(f"fmt must be 'markdown' or 'html', got {fmt!r}")
  prompts = []
  for t in texts:
    key = (t["doc"], tuple(t["prompt_ids"]))
    if key not in prompts:
      prompts.append(key)
  out = []
  for key in prompts[:n_prompts]:
    sel = [t for t in texts if (t["doc"], tuple(t["prompt_ids"])) == key]
    if fmt == "markdown":
      out.append(f"**Prompt:** {_cell(sel[0]['prompt_text'])}\n")
      out.append("| method | config | generation |\n|---|---|---|")
      out += [f"| {t['method']} | {t['config']} | {_cell(t['generated_text'])} |" for t in sel]
      out.append("")
    else:
      out.append(f"<p><b>Prompt:</b> {html.escape(sel[0]['prompt_text'])}</p>")
      out.append("<table><tr><th>method</th><th>config</th><th>generation</th></tr>")
      out += [
          f"<tr><td>{html.escape(t['method'])}</td><td>{html.escape(t['config'])}</td>"
          f"<td>{html.escape(t['generated_text'])}</td></tr>" for t in sel
      ]
      out.append("</table>")
  return "\n".join(out)


def _sizes(rows, params_by_model) -> list[str]:
  """The rows' models, smallest first."""
  missing = sorted({r["model"] for r in rows} - set(params_by_model))
  if missing:
    raise ValueError(f"params_by_model lacks model(s) {missing}")
  return sorted({r["model"] for r in rows}, key=lambda m: (params_by_model[m], m))


def plot_corrupted(png_path, rows: Sequence[dict], params_by_model: Mapping[str, float]):
  """Fig. 5 left: corrupted-text PPL vs model size, one line per fraction. Returns (png, csv)."""
  png, csv_path = common.figure_paths(png_path)
  models = _sizes(rows, params_by_model)
  fig, ax = common.subplots(figsize=(4.5, 3.5))
  table = []
  for f in sorted({r["fraction"] for r in rows}):
    by = {r["model"]: r["ppl"] for r in rows if r["fraction"] == f}
    xs = [params_by_model[m] for m in models if m in by]
    ys = [by[m] for m in models if m in by]
    ax.plot(xs, ys, marker="o", label=f"{round(100 * f)}%")
    table += [{"model": m, "params": params_by_model[m], "fraction": f, "ppl": by[m]}
              for m in models if m in by]
  ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="perplexity",
         title="Corrupted texts (final checkpoints)")
  ax.legend(fontsize=7)
  common.save_figure(fig, png, dpi=DPI)
  common.write_csv(table, csv_path, ("model", "params", "fraction", "ppl"))
  return png, csv_path


def _final_rows(rows):
  last = {}
  for r in rows:
    last[r["model"]] = max(last.get(r["model"], r["step"]), r["step"])
  return [r for r in rows if r["step"] == last[r["model"]]]


def _configs(rows):
  order = list(sampling.CONFIGS)
  return sorted({r["config"] for r in rows}, key=lambda c: order.index(c) if c in order else 99)


def plot_generated_scaling(png_path, rows: Sequence[dict], params_by_model: Mapping[str, float],
                           title: str = ""):
  """Fig. 6 row 1 (and Fig. 7): PPL of generated texts vs model size at final checkpoints.

  One panel per config, one line per method; `title` above the panels. Returns (png, csv).
  """
  png, csv_path = common.figure_paths(png_path)
  rows = _final_rows(rows)
  models = _sizes(rows, params_by_model)
  configs = _configs(rows)
  fig, axes = common.subplots(1, len(configs), figsize=(3 * len(configs), 3), squeeze=False)
  table = []
  for ax, config in zip(axes[0], configs):
    for method in sorted({r["method"] for r in rows}):
      by = {r["model"]: r["ppl"] for r in rows if r["config"] == config and r["method"] == method}
      ms = [m for m in models if m in by]
      ax.plot([params_by_model[m] for m in ms], [by[m] for m in ms], marker="o", label=method)
      table += [{
          "config": config, "method": method, "model": m, "params": params_by_model[m], "ppl": by[m]
      } for m in ms]
    ax.set(xscale="log", title=config, xlabel="parameters")
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("perplexity")
  if title:
    fig.suptitle(title, fontsize=9)
  common.save_figure(fig, png, dpi=DPI)
  common.write_csv(table, csv_path, ("config", "method", "model", "params", "ppl"))
  return png, csv_path


def plot_mauve(png_path, rows: Sequence[dict]):
  """Fig. 13: MAUVE per configuration, one bar per decoding method. Returns (png, csv)."""
  png, csv_path = common.figure_paths(png_path)
  configs = _configs(rows)
  methods = sorted({r["method"] for r in rows})
  fig, ax = common.subplots(figsize=(1.2 * len(configs) + 2, 3))
  width = 0.8 / max(1, len(methods))
  for k, method in enumerate(methods):
    by = {r["config"]: r["mauve"] for r in rows if r["method"] == method}
    xs = [i + k * width for i, c in enumerate(configs) if c in by]
    ax.bar(xs, [by[c] for c in configs if c in by], width, label=method)
  ax.set_xticks([i + 0.4 - width / 2 for i in range(len(configs))], configs)
  ax.set(ylabel="MAUVE", ylim=(0, 1), title="MAUVE of generated texts")
  ax.legend(fontsize=7)
  common.save_figure(fig, png, dpi=DPI)
  common.write_csv([{k: r[k] for k in ("config", "method", "mauve", "num_buckets")} for r in rows],
                   csv_path, ("config", "method", "mauve", "num_buckets"))
  return png, csv_path


def plot_generated_trajectory(png_path, rows: Sequence[dict],
                              x_by_model: Mapping[str, Mapping[int, float]], method: str,
                              xlabel: str = "training FLOPs", logx: bool = True):
  """Fig. 6 row 2 (x = FLOPs) or Fig. 16 (x = validation PPL): PPL along trajectories.

  Args:
    rows: `generation.score_texts` rows.
    x_by_model: {model: {step: x}}, one line per model in this order; checkpoints
      without an x are left out.
    method: which decoding method's texts.
    xlabel, logx: the x axis.
  Returns:
    (png, csv).
  """
  png, csv_path = common.figure_paths(png_path)
  rows = [r for r in rows if r["method"] == method and r["model"] in x_by_model]
  if not rows:
    raise ValueError(f"no rows for method {method!r} and models {sorted(x_by_model)}")
  configs = _configs(rows)
  fig, axes = common.subplots(1, len(configs), figsize=(3 * len(configs), 3), squeeze=False)
  table = []
  for ax, config in zip(axes[0], configs):
    for model in x_by_model:
      pts = sorted(
          (r["step"], r["ppl"]) for r in rows
          if r["config"] == config and r["model"] == model and r["step"] in x_by_model[model])
      if not pts:
        continue
      xs = [x_by_model[model][s] for s, _ in pts]
      ax.plot(xs, [p for _, p in pts], marker=".", label=model)
      table += [{"config": config, "model": model, "step": s, "x": x_by_model[model][s], "ppl": p}
                for s, p in pts]
    ax.set(xscale="log" if logx else "linear", title=f"{config} ({method})", xlabel=xlabel)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("perplexity")
  common.save_figure(fig, png, dpi=DPI)
  common.write_csv(table, csv_path, ("config", "model", "step", "x", "ppl"))
  return png, csv_path

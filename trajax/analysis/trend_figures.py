"""Figures of the token-trend analysis (Xia et al. 2023, Fig. 1, 2, 3/4, 10-12).

Every figure function writes a PNG and, next to it, the CSV of the exact numbers
drawn (same path, `.csv` suffix), and returns both paths. Figures go through
`trajax.analysis.common` (Agg backend, atomic writes); nothing is shown. `token_view_html` renders Table 3 style
coloured text.
"""
from __future__ import annotations

import html
from typing import Mapping, Sequence

import numpy as np

from trajax.analysis import common, trends

# Table 3 of the paper: upward red, downward green, stagnated blue, others black.
CATEGORY_COLORS = {
    trends.UPWARD: "#d62728",
    trends.DOWNWARD: "#2ca02c",
    trends.STAGNATED: "#1f77b4",
    trends.NONE: "#000000",
    trends.EXCLUDED: "#7f7f7f",
}


def _curves(ax, x_by_model, y_by_model, xlabel, ylabel, logx):
  rows = []
  for name, y in y_by_model.items():
    if name not in x_by_model:
      raise ValueError(
          f"model {name!r} has y values but no x values; x models: {sorted(x_by_model)}")
    x, y = np.asarray(x_by_model[name], np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
      raise ValueError(
          f"model {name!r}: x {x.shape} and y {y.shape} must be equal 1-D [checkpoint] shapes")
    ax.plot(x, y, marker="o", ms=2.5, lw=1.2, label=name)
    rows += [(name, i, xi, yi) for i, (xi, yi) in enumerate(zip(x, y))]
  if logx:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=7)
  return rows


def validation_ppl_vs_flops(png_path, flops_by_model: Mapping[str, np.ndarray],
                            valid_ppl_by_model: Mapping[str, np.ndarray]) -> tuple[str, str]:
  """Fig. 1: validation perplexity against training FLOPs, one curve per model.

    Args:
      png_path: output .png; the CSV goes next to it.
      flops_by_model: model → [checkpoint] training FLOPs.
      valid_ppl_by_model: model → [checkpoint] validation perplexity.

    Returns:
      (png path, csv path); CSV columns model, checkpoint, flops, valid_ppl.
    """
  png, csv_path = common.figure_paths(png_path)
  fig, ax = common.subplots(figsize=(5, 3.5))
  rows = _curves(ax, flops_by_model, valid_ppl_by_model, "training FLOPs", "validation perplexity",
                 True)
  ax.set_yscale("log")
  common.save_figure(fig, png)
  common.write_table(csv_path, ("model", "checkpoint", "flops", "valid_ppl"), rows)
  return png, csv_path


def category_shares(png_path,
                    shares_by_model: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[str, str]:
  """Fig. 2: percent of stagnated / upward / downward tokens against start fraction.

    Args:
      png_path: output .png.
      shares_by_model: model → the dict returned by `trends.shares_vs_start`.

    Returns:
      (png path, csv path); CSV columns model, fraction, start_step,
      stagnated, upward, downward, none, n_excluded.
    """
  png, csv_path = common.figure_paths(png_path)
  kinds = ("stagnated", "upward", "downward")
  fig, axes = common.subplots(1, 3, figsize=(11, 3.3))
  rows = []
  for name, sh in shares_by_model.items():
    frac = 100.0 * np.asarray(sh["fraction"], np.float64)
    for ax, kind in zip(axes, kinds):
      ax.plot(frac, sh[kind], marker="o", ms=3, label=name)
    for i in range(frac.shape[0]):
      rows.append((name, float(sh["fraction"][i]), float(sh["start_step"][i]),
                   *(float(sh[k][i]) for k in (*kinds, "none")), int(sh["n_excluded"][i])))
  for ax, kind in zip(axes, kinds):
    ax.set_title(kind)
    ax.set_xlabel("start of trend (% of training)")
    ax.set_ylabel("% of tokens")
  axes[-1].legend(fontsize=7)
  common.save_figure(fig, png)
  common.write_table(
      csv_path,
      ("model", "fraction", "start_step", "stagnated", "upward", "downward", "none", "n_excluded"),
      rows)
  return png, csv_path


def _subset(png_path, x_by_model, mean_ppl_by_model, title, xlabel, selected_percent,
            invert_x=False):
  png, csv_path = common.figure_paths(png_path)
  fig, ax = common.subplots(figsize=(5, 3.5))
  rows = _curves(ax, x_by_model, mean_ppl_by_model, xlabel, "mean perplexity of selected tokens",
                 True)
  if invert_x:
    ax.invert_xaxis()
  if selected_percent is not None:
    title = f"{title} ({selected_percent:.1f}% of tokens)"
  ax.set_title(title, fontsize=9)
  common.save_figure(fig, png)
  common.write_table(csv_path, ("model", "checkpoint", "x", "mean_ppl"), rows)
  return png, csv_path


def subset_vs_flops(png_path, flops_by_model: Mapping[str, np.ndarray],
                    mean_ppl_by_model: Mapping[str, np.ndarray], title: str = "",
                    selected_percent: float | None = None) -> tuple[str, str]:
  """Fig. 3, 4, 10, 11: a token subset's mean perplexity against training FLOPs.

    Args:
      png_path: output .png.
      flops_by_model: model → [checkpoint] training FLOPs.
      mean_ppl_by_model: model → [checkpoint] mean perplexity of the subset
        (`trends.subset_trajectories`).
      title: e.g. "stagnated after 10% of 1.3b".
      selected_percent: share of tokens selected, shown in the title (the
        paper's number next to the dashed line).

    Returns:
      (png path, csv path); CSV columns model, checkpoint, x (FLOPs), mean_ppl.
    """
  return _subset(png_path, flops_by_model, mean_ppl_by_model, title, "training FLOPs",
                 selected_percent)


def subset_vs_validation_ppl(png_path, valid_ppl_by_model: Mapping[str, np.ndarray],
                             mean_ppl_by_model: Mapping[str, np.ndarray], title: str = "",
                             selected_percent: float | None = None) -> tuple[str, str]:
  """Fig. 12: as `subset_vs_flops` with validation perplexity on the x axis.

    The x axis is inverted (high perplexity, early training, on the left).

    Returns:
      (png path, csv path); CSV columns model, checkpoint, x (validation PPL),
      mean_ppl.
    """
  return _subset(png_path, valid_ppl_by_model, mean_ppl_by_model, title, "validation perplexity",
                 selected_percent, invert_x=True)


def _sparkline(values: np.ndarray, width: int = 120, height: int = 32) -> str:
  v = np.asarray(values, np.float64)
  ok = np.isfinite(v) & (v > 0)
  if ok.sum() < 2:
    return ""
  lv = np.log(v[ok])
  xs = np.flatnonzero(ok) / max(v.shape[0] - 1, 1) * (width - 4) + 2
  span = lv.max() - lv.min()
  ys = (height - 2) - (lv - lv.min()) / (span if span > 0 else 1.0) * (height - 4)
  pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys))
  return (f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">'
          f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{pts}"/></svg>')


def token_view_html(tokens: Sequence[str], categories, ppl_trajectory_tn,
                    title: str = "Token trends") -> str:
  """Self-contained HTML page of coloured tokens (the paper's Table 3).

    Each token is coloured by its category (upward red, downward green,
    stagnated blue, none black, excluded grey). Hovering shows its perplexity
    trajectory: the numbers in the `title` attribute and a small inline SVG
    line (log-PPL against checkpoint). Everything is HTML-escaped; no scripts,
    no external resources.

    Args:
      tokens: [token] decoded strings.
      categories: [token] category codes (`trends.UPWARD`, ...).
      ppl_trajectory_tn: [token, checkpoint] perplexities (note: token-major,
        i.e. `ppl_cn.T`).
      title: page title.

    Returns:
      The HTML document as a string.
    """
  cats = np.asarray(categories)
  traj = np.asarray(ppl_trajectory_tn, np.float64)
  if cats.shape != (len(tokens),) or traj.ndim != 2 or traj.shape[0] != len(tokens):
    raise ValueError(
        f"expected categories [{len(tokens)}] and ppl_trajectory_tn [{len(tokens)}, checkpoint], "
        f"got {cats.shape} and {traj.shape}")
  spans = []
  for tok, cat, row in zip(tokens, cats.tolist(), traj):
    if cat not in CATEGORY_COLORS:
      raise ValueError(f"unknown category code {cat!r}; expected one of {sorted(CATEGORY_COLORS)}")
    tip = f"{trends.CATEGORY_NAMES[cat]}; PPL: " + " → ".join(f"{p:.3g}" for p in row)
    spans.append(f'<span class="tok c{cat + 1}" title="{html.escape(tip, quote=True)}">'
                 f'{html.escape(tok, quote=True)}<span class="tip">{_sparkline(row)}</span></span>')
  css = "\n".join(f".c{code + 1} {{ color: {color}; }}" for code, color in CATEGORY_COLORS.items())
  legend = " ".join(f'<span class="c{code + 1}">{html.escape(trends.CATEGORY_NAMES[code])}</span>'
                    for code in (trends.UPWARD, trends.DOWNWARD, trends.STAGNATED, trends.NONE))
  return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
          f"<title>{html.escape(title)}</title>\n<style>\n"
          "body { font-family: serif; max-width: 60em; margin: 2em auto; }\n"
          ".text { white-space: pre-wrap; line-height: 1.8; }\n"
          ".tok { position: relative; }\n"
          ".tok .tip { display: none; position: absolute; left: 0; top: 1.4em; z-index: 1;"
          " background: #fff; border: 1px solid #ccc; }\n"
          ".tok:hover .tip { display: block; }\n"
          f"{css}\n</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
          f"<p>{legend}</p>\n<div class=\"text\">{''.join(spans)}</div>\n</body></html>\n")

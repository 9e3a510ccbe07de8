"""Token subsets of the trend study: chosen by one model, followed in every model (§3.2).

Fig. 3, 4, 10, 11 (and, against validation PPL, Fig. 12): the tokens of one
category after p of one model's training ("self": each model its own), their
perplexity along every model's trajectory, and how each other model
categorises them in its own window (`categories_in`, `window_change`: the
asymmetry the paper reports, that tokens stagnated in the largest model are
still learned by the smaller ones).
"""
from __future__ import annotations

import math
import os

import numpy as np
from absl import logging

from trajax.analysis import trend_figures, trends

CATEGORY_CODES = {
    "stagnated": trends.STAGNATED, "upward": trends.UPWARD, "downward": trends.DOWNWARD,
    "none": trends.NONE
}
SELECTOR_KEYWORDS = ("self", "smallest", "largest")


def resolve(selector: str, names: list[str]) -> str:
  """The model a selector names: "smallest", "largest" or a model of `names` (smallest first)."""
  if selector == "smallest":
    return names[0]
  if selector == "largest":
    return names[-1]
  if selector not in names:
    raise ValueError(f"selector {selector!r} is neither one of {SELECTOR_KEYWORDS} nor a model "
                     f"in the store ({names})")
  return selector


def percent(category_n: np.ndarray, code: int) -> tuple[float, int]:
  """(percent of the non-excluded series with `code`, their count)."""
  valid = int(np.count_nonzero(category_n != trends.EXCLUDED))
  n = int(np.count_nonzero(category_n == code))
  return (100.0 * n / valid if valid else math.nan), n


def category_percents(category_n: np.ndarray) -> dict[str, float]:
  """Percent of the non-excluded series in each category ({} when none is left).

  Args:
    category_n: [series] category codes (`trends.fit(...).category`), e.g. of one
      model for the tokens another model selected.
  """
  valid = int(np.count_nonzero(category_n != trends.EXCLUDED))
  if not valid:
    return {}
  return {
      name: 100.0 * int(np.count_nonzero(category_n == code)) / valid
      for name, code in CATEGORY_CODES.items()
  }


def _followed(models, fits, p: float, mask_n: np.ndarray, traj: dict) -> dict:
  """How every model treats one selected subset in its own window after p of its training.

  Returns:
    {"categories_in": {model: percent per category of the subset under that model's
    own fit at p}, "window_change": {model: the subset's PPL at the model's last
    checkpoint over its PPL at the window's start, minus 1}} (None where the model
    has no window at p).
  """
  cats, change = {}, {}
  for m in models:
    f = fits[(m.name, p)]
    if f is None:
      cats[m.name] = change[m.name] = None
      continue
    cats[m.name] = category_percents(f.category_n[mask_n])
    ys = traj[m.name]
    change[m.name] = float(ys[-1] / ys[f.start_index] - 1.0)
  return {"categories_in": cats, "window_change": change}


def subsets(config, models, by_name, fits, out_dir, flops_by, vppl_by) -> list[dict]:
  """Every selector × fraction × category subset: figures and summary entries."""
  names = [m.name for m in models]
  selectors, entries = [], []
  for sel in config.selectors:
    key = "self" if sel == "self" else resolve(sel, names)
    if key not in selectors:
      selectors.append(key)
  for sel in selectors:
    for p in config.subset_fractions:
      p = float(p)
      for cat in config.categories:
        code = CATEGORY_CODES[cat]
        stem = os.path.join(out_dir, "subsets", f"{sel}_{cat}_p{round(100 * p):02d}")
        entry = {"selector": sel, "category": cat, "fraction": p}
        if sel == "self":
          traj, pct = {}, {}
          for m in models:
            f = fits[(m.name, p)]
            if f is None:
              continue
            traj.update(
                trends.subset_trajectories(f.category_n == code, {m.name: m.ppl_cn},
                                           mean=config.subset_mean))
            pct[m.name] = percent(f.category_n, code)[0]
          if not traj:
            logging.info("subset self/%s at %g: no model has a window of >= 3 points", cat, p)
            continue
          entry.update(percent=pct, start_step={n: fits[(n, p)].start_step for n in traj})
          title, shown = f"{cat} after {100 * p:g}% of each model", None
        else:
          f = fits[(sel, p)]
          if f is None:
            logging.info("subset %s/%s at %g skipped: the window has < 3 points", sel, cat, p)
            continue
          mask_n = f.category_n == code
          traj = trends.subset_trajectories(mask_n, {m.name: m.ppl_cn for m in models},
                                            mean=config.subset_mean)
          shown, count = percent(f.category_n, code)
          if count == 0:
            logging.info("subset %s/%s at %g is empty: its curves are NaN", sel, cat, p)
          entry.update(percent=shown, n_tokens=count, start_step=f.start_step)
          # What the other models do with these tokens (the asymmetry of §3.2: tokens
          # stagnated in the largest model still go down in the smaller ones).
          entry.update(_followed(models, fits, p, mask_n, traj))
          title = f"{cat} after {100 * p:g}% of {sel}"
        fx = trend_figures.subset_vs_flops(f"{stem}_flops.png", {n: flops_by[n] for n in traj}, traj,
                                           title, shown)
        fv = trend_figures.subset_vs_validation_ppl(f"{stem}_valid_ppl.png",
                                                    {n: vppl_by[n] for n in traj}, traj, title,
                                                    shown)
        entry["mean_ppl_final"] = {n: float(v[-1]) for n, v in traj.items()}
        entry["figures"] = [*fx, *fv]
        entries.append(entry)
  return entries

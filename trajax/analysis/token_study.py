"""The token-trend study of a result store (Xia et al. 2023, §3 and App. B).

`run(config, workdir)` is what `launch/trends.py` calls. It reads the store
written by `trajax.sweep` (under `config.store_dir`, or `workdir`) and writes
under `{workdir}/trends/`:

  checkpoints.csv                  model, step, tokens_seen, flops, valid_ppl
  fig1_valid_ppl_vs_flops.png/csv  validation PPL against training FLOPs
  fig2_category_shares.png/csv     % stagnated/upward/downward vs start fraction
  subsets/{sel}_{cat}_p{NN}_flops.png/csv       Fig. 3, 4, 10, 11: mean PPL of
  subsets/{sel}_{cat}_p{NN}_valid_ppl.png/csv   one token subset along every
                                   model's trajectory, against FLOPs and (Fig. 12)
                                   validation PPL; {sel} is the selecting model,
                                   or "self" when each model selects its own
                                   tokens (the left panels of Fig. 3/4, Fig. 10)
  token_view.html                  Table 3: one block, coloured by category
  summary.json                     the numbers a report quotes (also returned)

Models are ordered by size (smallest first); sizes and training FLOPs are the
store's records (`trajax.sweep.model_meta`: the manifest's `params` when set,
else counted from config.json by the model's family). Every model is scored on the same blocks (the
store holds one dataset), so the series axis — token k is block row
k // block_len, position k % block_len — is shared, and a subset chosen by one
model can be followed in all of them. Only done checkpoints take part; 100% of
training is a model's last done step.
"""
from __future__ import annotations

import os
import time
from typing import NamedTuple

import numpy as np
from absl import logging

from trajax import atomic, checkpoints, data, flops, store
from trajax import workdir as workdir_lib
from trajax.analysis import common, token_subsets, trend_figures, trends
from trajax.analysis.token_subsets import CATEGORY_CODES, SELECTOR_KEYWORDS  # noqa: F401  (re-exported)

FLOPS_METHODS = flops.FLOPS_METHODS
SUMMARY_FRACTION = 0.1  # the paper quotes category shares after 10% of training


class ModelTrajectory(NamedTuple):
  """One model's done checkpoints.

  Attributes:
    name: model name in the store.
    n_params: N used for FLOPs.
    steps_c: [checkpoint] training steps.
    tokens_seen_c: [checkpoint] float64 tokens seen.
    flops_c: [checkpoint] float64 cumulative training FLOPs.
    valid_ppl_c: [checkpoint] float64 validation perplexity.
    ppl_cn: [checkpoint, series] float64 per-token perplexity, NaN where none.
  """
  name: str
  n_params: int
  steps_c: np.ndarray
  tokens_seen_c: np.ndarray
  flops_c: np.ndarray
  valid_ppl_c: np.ndarray
  ppl_cn: np.ndarray


class FitSummary(NamedTuple):
  """What the study keeps of a `trends.TrendFit` (its [series] floats are dropped)."""
  category_n: np.ndarray  # [series] int8
  shares: dict
  start_index: int
  start_step: float
  n_excluded: int


def load_models(reader: store.StoreReader, method: str = "palm") -> list[ModelTrajectory]:
  """Every model with at least one done checkpoint, smallest first.

  Sizes and FLOPs are the store's records (written by the sweep from each
  model's config.json): no checkpoint directory is opened.
  """
  out = []
  for name in reader.models:
    lp_cn = reader.logprobs(name)
    if lp_cn.shape[0] == 0:
      logging.warning("model %s: no done checkpoint; left out of the study", name)
      continue
    steps_c = reader.done_steps(name)
    flops_c, n_params = reader.flops(name, method), reader.flops_params(name)
    out.append(
        ModelTrajectory(
            name=name, n_params=n_params, steps_c=steps_c,
            tokens_seen_c=flops.tokens_seen(steps_c, int(reader.meta(name)["tokens_per_step"])),
            flops_c=flops_c, valid_ppl_c=reader.valid_ppl(name),
            ppl_cn=trends.ppl_from_logprobs(lp_cn)))
    logging.info("model %s: N=%d, %d done checkpoints, final valid PPL %.4f", name, n_params,
                 steps_c.shape[0], out[-1].valid_ppl_c[-1])
  if not out:
    raise ValueError(f"{reader.root}: no model has a done checkpoint; run the scoring first")
  return sorted(out, key=lambda m: (m.n_params, m.name))


def _fit(model: ModelTrajectory, fraction: float, config) -> FitSummary | None:
  """The model's categories at `fraction`, or None when the window has < 3 points."""
  j = trends.start_index(model.steps_c, fraction, rule=config.start_rule)
  if model.steps_c.shape[0] - j < 3:
    logging.info(
        "model %s: start fraction %g selects step %d, leaving %d point(s) in the "
        "window (< 3): skipped", model.name, fraction, model.steps_c[j], model.steps_c.shape[0] - j)
    return None
  res = trends.fit(model.ppl_cn, model.steps_c, fraction, x=config.x, chunk_size=config.chunk_size,
                   start_rule=config.start_rule)
  return FitSummary(res.category, res.shares(), res.start_index, res.start_step, res.n_excluded)


def _write_checkpoints_csv(path: str, models: list[ModelTrajectory]) -> None:
  common.write_table(path,
                     ("model", "params", "checkpoint", "step", "tokens_seen", "flops", "valid_ppl"),
                     [(m.name, m.n_params, i, int(
                         m.steps_c[i]), m.tokens_seen_c[i], m.flops_c[i], m.valid_ppl_c[i])
                      for m in models for i in range(m.steps_c.shape[0])])


def _check_config(config) -> None:
  if config.start_rule not in trends.START_RULES:
    raise ValueError(f"config.start_rule must be one of {trends.START_RULES}, got "
                     f"{config.start_rule!r}")
  if config.x not in trends.X_MODES:
    raise ValueError(f"config.x must be one of {trends.X_MODES}, got {config.x!r}")
  if config.flops_method not in FLOPS_METHODS:
    raise ValueError(f"config.flops_method must be one of {FLOPS_METHODS}, got "
                     f"{config.flops_method!r}")
  bad = [c for c in config.categories if c not in CATEGORY_CODES]
  if bad:
    raise ValueError(f"config.categories: unknown {bad}; expected some of {list(CATEGORY_CODES)}")
  for field in ("fractions", "subset_fractions"):
    bad = [p for p in getattr(config, field) if not 0.0 <= p <= 1.0]
    if bad:
      raise ValueError(f"config.{field}: fractions must be in [0, 1], got {bad}")


def run(config, workdir: str) -> dict:
  """Runs the study on the store under `config.store_dir or workdir`.

  Args:
    config: a `configs/trends.py` ConfigDict.
    workdir: outputs go to `{workdir}/trends/`.

  Returns:
    The summary dict also written to `{workdir}/trends/summary.json`.
  """
  with workdir_lib.claim(os.path.join(workdir, "trends")):
    return _run_unlocked(config, workdir)


def _run_unlocked(config, workdir: str) -> dict:
  _check_config(config)
  t_start = time.perf_counter()
  reader = store.open(config.store_dir or workdir)
  out_dir = os.path.join(workdir, "trends")
  os.makedirs(os.path.join(out_dir, "subsets"), exist_ok=True)
  models = load_models(reader, config.flops_method)
  if reader.valid_ppl_source != "validation":
    logging.warning(
        "%s has no validation dataset: validation PPL is measured on the analysed "
        "tokens themselves (score with config.validation.files to avoid that)", reader.root)
  names = [m.name for m in models]
  by_name = {m.name: m for m in models}
  for sel in (*[s for s in config.selectors if s != "self"], config.token_view_model):
    token_subsets.resolve(sel, names)  # fail on a bad name before any work
  logging.info("loaded %d model(s) in %.1fs: %s", len(models), time.perf_counter() - t_start, names)

  # Fig. 1 and the per-checkpoint table.
  _write_checkpoints_csv(os.path.join(out_dir, "checkpoints.csv"), models)
  flops_by = {m.name: m.flops_c for m in models}
  vppl_by = {m.name: m.valid_ppl_c for m in models}
  fig1 = trend_figures.validation_ppl_vs_flops(os.path.join(out_dir, "fig1_valid_ppl_vs_flops.png"),
                                               flops_by, vppl_by)

  # One fit per (model, fraction) that any output needs.
  t0 = time.perf_counter()
  wanted = sorted({
      float(p) for p in (*config.fractions, *config.subset_fractions, config.token_view_fraction,
                         SUMMARY_FRACTION)
  })
  fits = {(m.name, p): _fit(m, p, config) for m in models for p in wanted}
  logging.info("fitted %d model x fraction windows (%d skipped) in %.1fs", len(fits),
               sum(f is None for f in fits.values()),
               time.perf_counter() - t0)

  # Fig. 2.
  shares_by = {}
  for m in models:
    kept = [(p, fits[(m.name, float(p))]) for p in config.fractions
            if fits[(m.name, float(p))] is not None]
    skipped = [p for p in config.fractions if fits[(m.name, float(p))] is None]
    if skipped:
      logging.info("Fig. 2, model %s: fractions %s skipped (window < 3 points)", m.name, skipped)
    if not kept:
      continue
    sh = {
        "fraction": np.array([p for p, _ in kept],
                             np.float64), "start_index": np.array([f.start_index for _, f in kept]),
        "start_step": np.array([f.start_step for _, f in kept]),
        "n_excluded": np.array([f.n_excluded for _, f in kept])
    }
    for k in ("stagnated", "upward", "downward", "none"):
      sh[k] = np.array([f.shares[k] for _, f in kept])
    shares_by[m.name] = sh
  fig2 = (trend_figures.category_shares(os.path.join(out_dir, "fig2_category_shares.png"),
                                        shares_by) if shares_by else None)

  # Fig. 3, 4, 10, 11 and 12.
  t0 = time.perf_counter()
  subsets = token_subsets.subsets(config, models, by_name, fits, out_dir, flops_by, vppl_by)
  logging.info("%d subset figure pairs in %.1fs", len(subsets), time.perf_counter() - t0)

  token_view = _token_view(config, reader, by_name, names, fits, out_dir)

  final = {m.name: float(m.valid_ppl_c[-1]) for m in models}
  finals = [final[n] for n in names]
  summary = {
      "store": reader.root,
      "models": names,
      "params": {m.name: m.n_params for m in models},
      "flops_method": config.flops_method,
      "x": config.x,
      "start_rule": config.start_rule,
      "subset_mean": config.subset_mean,
      # "validation": measured on the store's validation dataset; "analysis": on the
      # analysed tokens themselves (no validation data was scored), circular for Fig. 12.
      "valid_ppl_source": reader.valid_ppl_source,
      "final_step": {m.name: int(m.steps_c[-1]) for m in models},
      "final_tokens_seen": {m.name: float(m.tokens_seen_c[-1]) for m in models},
      "final_flops": {m.name: float(m.flops_c[-1]) for m in models},
      "final_valid_ppl": final,
      "larger_models_lower_final_ppl": bool(all(b < a for a, b in zip(finals, finals[1:]))),
      "shares_at_10pct": {
          n: (None if fits[(n, SUMMARY_FRACTION)] is None else fits[(n, SUMMARY_FRACTION)].shares)
          for n in names
      },
      "start_step_at_10pct": {
          n: (None if fits[(n, SUMMARY_FRACTION)] is None else fits[(n,
                                                                     SUMMARY_FRACTION)].start_step
             ) for n in names
      },
      "subsets": subsets,
      "token_view": token_view,
      "figures": {
          "fig1": list(fig1), "fig2": None if fig2 is None else list(fig2),
          "checkpoints_csv": os.path.join(out_dir, "checkpoints.csv")
      },
      "seconds": time.perf_counter() - t_start,
  }
  summary = common.write_summary(os.path.join(out_dir, "summary.json"), summary)
  logging.info("token study done in %.1fs: %s", summary["seconds"], out_dir)
  return summary


def _token_view(config, reader, by_name, names, fits, out_dir) -> dict | None:
  """Table 3: one block's tokens coloured by one model's categories."""
  model = by_name[token_subsets.resolve(config.token_view_model, names)]
  p = float(config.token_view_fraction)
  f = fits[(model.name, p)]
  if f is None:
    logging.warning("token view skipped: model %s has < 3 checkpoints after %g of training",
                    model.name, p)
    return None
  rows, block_len = reader.tokens.shape
  b = int(config.token_view_block)
  if not 0 <= b < rows:
    raise ValueError(f"config.token_view_block={b} is out of range: the store has {rows} blocks")
  tok_path = config.tokenizer or reader.tokenizer_path
  if not tok_path:
    raise ValueError(f"no tokenizer for the token view: {reader.root} does not record one (a "
                     f"store written by an older trajax); set config.tokenizer")
  try:
    tokenizer = checkpoints.load_tokenizer(tok_path)
  except (OSError, ValueError) as e:
    raise ValueError(f"token view: cannot load the tokenizer ({e}); set config.tokenizer to "
                     f"the directory of the tokenizer used for scoring") from None
  want = reader.dataset.get("tokenizer_hash")
  if want is not None and data.tokenizer_hash(tokenizer) != want:
    raise ValueError(f"token view: the tokenizer in {tok_path!r} is not the one the store was "
                     f"scored with (tokenizer hash differs); set config.tokenizer")
  keep_t = np.flatnonzero(reader.mask[b])  # padding is not text
  ids_t = reader.tokens[b][keep_t]
  series_t = b * block_len + keep_t
  pieces = [tokenizer.decode([int(t)]) for t in ids_t]
  title = (f"Token trends after {100 * p:g}% of training of {model.name} "
           f"(block {b}: {reader.dataset.get('documents', ['?'] * rows)[b]})")
  page = trend_figures.token_view_html(pieces, f.category_n[series_t], model.ppl_cn[:, series_t].T,
                                       title=title)
  path = os.path.join(out_dir, "token_view.html")
  atomic.write_text(path, page)
  counts = {
      name: int(np.count_nonzero(f.category_n[series_t] == code))
      for name, code in CATEGORY_CODES.items()
  }
  logging.info("token view: %s (%d tokens, %s)", path, len(pieces), counts)
  return {
      "path": path, "model": model.name, "fraction": p, "block": b, "n_tokens": len(pieces),
      "counts": counts, "tokenizer": tok_path
  }

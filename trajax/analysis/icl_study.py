"""The ICL study: every checkpoint of a trajectory on BIG-bench 2-shot tasks (§5, App. D).

`run(config, workdir)` is what `launch/icl.py` calls. Outputs under `{workdir}/icl/`:

  results.csv                       one row per (checkpoint, task) and per subtask:
                                    model, checkpoint, step, tokens_seen, flops, params,
                                    task, part, level, accuracy, chance, option PPLs, ...
  options/{model}/step{step}.csv    one row per (example, option): log-prob, tokens,
                                    normalised score, predicted flag (for audits)
  run_config.json                   the settings results.csv was computed with
  fig8_accuracy.png/csv             mean accuracy over tasks vs FLOPs and vs valid PPL
  fig9_groups.png/csv               linearity / breakthroughness / all tasks: accuracy
                                    and correct vs incorrect option PPL vs valid PPL
                                    (vs FLOPs without a store)
  fig5_option_ppl_final.png/csv     option PPL of the final checkpoints vs model size
  fig17_18_task_scaling.png/csv     per-task scaling curves over final checkpoints,
                                    with linearity and breakthroughness
  summary.json                      final accuracy per model, chance, correlations

Prompts and requests (the tokenisation, the slow host part) are built once per
task and context length and reused for every checkpoint. Each checkpoint
scores all its pending tasks in one `score_options` call (rows of every task
sorted by length together, so batches stay full), then grades per task.
(checkpoint, task) pairs already in results.csv are skipped, so an interrupted
run resumes; results.csv is rewritten atomically after every checkpoint.
Checkpoint k+1 is read in a background thread while k is scored. One `Scorer`
per architecture: the next checkpoint is a `set_state`, no recompilation.

The checkpoint id in the CSV is "{model}@{step}" (independent of where the
checkpoint lives on disk). Rerunning a workdir with other shots, seed,
max_examples, normalization, dtype or tokenizer is an error (the skipped rows
would silently mix settings); adding tasks or checkpoints is fine.
"""
from __future__ import annotations

import concurrent.futures
import json
import math
import os
import time
from typing import Mapping, Sequence

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from trajax import atomic, checkpoints, data, flops, models, store, trajectory  # noqa: E402
from trajax import workdir as workdir_lib  # noqa: E402
from trajax.analysis import icl  # noqa: E402
from trajax.scoring import Scorer  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
FLOPS_METHODS = flops.FLOPS_METHODS
# Settings that change the numbers of a (checkpoint, task) row.
FINGERPRINT_FIELDS = ("shots", "seed", "max_examples", "normalization", "dtype")
GROUPS = (("linearity", icl.LINEARITY_TASKS), ("breakthroughness", icl.BREAKTHROUGHNESS_TASKS))

# ----------------------------------------------------------------------------
# Models: architecture, size, FLOPs
# ----------------------------------------------------------------------------


class ModelInfo:
  """A manifest model with what the study needs: config, N, FLOPs per step."""
  def __init__(self, m: trajectory.Model, flops_method: str, seq_len: int):
    self.model = m
    self.name = m.name
    path = m.checkpoints[0].path
    try:
      _, self.config = checkpoints.model_config(path)
    except (OSError, ValueError) as e:
      raise ValueError(f"model {m.name!r}: cannot read the architecture of {path} ({e})") from None
    c = self.config
    self.max_length = int(c.max_position_embeddings)
    fam = models.family(c.family)
    self.params = int(m.params or fam.param_count(c))
    self.flops_c, _ = flops.training_flops_for_config(c, m.steps, m.tokens_per_step, m.params,
                                                      flops_method, seq_len)
    self.flops_by_step = dict(zip(m.steps, self.flops_c.tolist()))


def checkpoint_id(model: str, step: int) -> str:
  return f"{model}@{step}"


# ----------------------------------------------------------------------------
# Requests, built once
# ----------------------------------------------------------------------------


class RequestCache:
  """Prompts and tokenised option requests per (task, context length), built on first use."""
  def __init__(self, tasks: Sequence[icl.BigBenchTask], tokenizer, shots: int, seed: int,
               max_examples: int | None):
    self.tasks = {t.name: t for t in tasks}
    self.tokenizer = tokenizer
    self.shots, self.seed, self.max_examples = shots, seed, max_examples
    self._prompts: dict[str, list[icl.Prompt]] = {}
    self._requests: dict[tuple[str, int], list[icl.OptionRequest]] = {}
    self.build_s = 0.0

  def prompts(self, task: str) -> list[icl.Prompt]:
    if task not in self._prompts:
      self._prompts[task] = icl.make_task_prompts(self.tasks[task], self.shots, self.seed,
                                                  self.max_examples)
    return self._prompts[task]

  def requests(self, task: str, max_length: int) -> list[icl.OptionRequest]:
    key = (task, max_length)
    if key not in self._requests:
      t0 = time.perf_counter()
      prompts = self.prompts(task)
      self._requests[key] = icl.build_requests(prompts, self.tokenizer, max_length=max_length)
      dt = time.perf_counter() - t0
      self.build_s += dt
      reqs = self._requests[key]
      n_tok = sum(len(r.tokens) for r in reqs)
      logging.info(
          "requests %s: %d examples, %d options, %d tokens, built in %.1fs "
          "(%.0f options/s)", task, len(prompts), len(reqs), n_tok, dt,
          len(reqs) / max(dt, 1e-9))
    return self._requests[key]


# ----------------------------------------------------------------------------
# Scoring one checkpoint
# ----------------------------------------------------------------------------


def _load(path: str, dtype):
  t0 = time.perf_counter()
  model = checkpoints.load(path, dtype=dtype)
  return model, time.perf_counter() - t0


def _option_rows(requests, scores: icl.OptionScores, normalization: str,
                 graded: Sequence[dict]) -> list[dict]:
  norm = scores.normalized(normalization)
  preds = {(g["task"], g["example_index"]): g["pred"] for g in graded}
  out = []
  for i, r in enumerate(requests):
    task, _, part = r.task.partition(":")
    out.append({
        "task": task, "part": part, "example_index": r.example_index,
        "option_index": r.option_index, "target_score": r.target_score,
        "logprob": float(scores.logprob[i]), "n_tokens": int(scores.n_tokens[i]),
        "score": float(norm[i]), "pred": int(preds[(r.task, r.example_index)] == r.option_index)
    })
  return out


def score_checkpoint(scorer: Scorer, requests_by_task: Mapping[str, list[icl.OptionRequest]],
                     config, pad_id: int, max_length: int,
                     extra: dict) -> tuple[list[dict], list[dict], int]:
  """Scores and grades the given tasks with the scorer's current checkpoint.

  Args:
    scorer: a Scorer holding the checkpoint.
    requests_by_task: task name -> its requests (from RequestCache).
    config: the study config (batch_size, pad_to_multiple, normalization).
    pad_id: padding token id.
    max_length: the model's context length.
    extra: constant columns of the result rows (model, checkpoint, step, ...).
  Returns:
    (task rows for results.csv, option rows, number of option rows scored).
  """
  flat = [r for reqs in requests_by_task.values() for r in reqs]
  scores = icl.score_options(flat, scorer, batch_size=config.batch_size, pad_id=pad_id,
                             pad_to_multiple=config.pad_to_multiple, max_length=max_length)
  graded = icl.grade_examples(flat, scores, config.normalization)
  rows = icl.task_rows(graded, config.normalization, **extra)
  return rows, _option_rows(flat, scores, config.normalization, graded), len(flat)


# ----------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------


def _check_config(config) -> None:
  if not config.trajectory:
    raise ValueError("config.trajectory: a trajectory manifest path is required")
  if not config.tasks_dir or not os.path.isdir(config.tasks_dir):
    raise ValueError(f"config.tasks_dir: {config.tasks_dir!r} is not a directory")
  if config.normalization not in icl.NORMALIZATIONS:
    raise ValueError(f"config.normalization must be one of {icl.NORMALIZATIONS}, "
                     f"got {config.normalization!r}")
  if config.dtype not in DTYPES:
    raise ValueError(f"config.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}")
  if config.flops_method not in FLOPS_METHODS:
    raise ValueError(f"config.flops_method must be one of {FLOPS_METHODS}, "
                     f"got {config.flops_method!r}")
  if config.pad_to_multiple < 1:
    raise ValueError(f"config.pad_to_multiple must be >= 1, got {config.pad_to_multiple}")
  if config.shots < 0 or config.max_examples < 0 or config.batch_size < 1:
    raise ValueError(f"config.shots={config.shots}, config.max_examples={config.max_examples} "
                     f"must be >= 0 and config.batch_size={config.batch_size} >= 1")


def _load_tasks(config) -> list[icl.BigBenchTask]:
  names = list(config.task_names) if config.task_names else None
  if names:
    missing = [
        n for n in names if not os.path.isfile(os.path.join(config.tasks_dir, n, "task.json"))
    ]
    if missing:
      raise ValueError(f"config.task_names: no {config.tasks_dir}/<task>/task.json for {missing}")
  tasks = icl.load_tasks(config.tasks_dir, names)
  if not tasks:
    raise ValueError(f"config.tasks_dir: no <task>/task.json under {config.tasks_dir}")
  for t in tasks:
    for s in t.skipped:
      logging.warning("task %s: part %s skipped: %s", t.name, s["part"], s["reason"])
  empty = [t.name for t in tasks if not t.parts]
  if empty:
    logging.warning("tasks without multiple-choice examples, skipped: %s", empty)
  return [t for t in tasks if t.parts]


def _check_fingerprint(out_dir: str, fingerprint: dict) -> None:
  path = os.path.join(out_dir, "run_config.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    diff = {k: (old.get(k), v) for k, v in fingerprint.items() if old.get(k) != v}
    if diff:
      raise ValueError(f"{path}: results in this workdir were computed with other settings "
                       f"(field: (stored, now)) {diff}; use a new workdir")
    return
  atomic.write_json(path, fingerprint)


def _valid_ppl(config, workdir: str) -> dict[str, dict[int, float]] | None:
  """model -> {step: validation PPL} from the store, or None without one."""
  root = config.store_dir or workdir
  try:
    reader = store.open(root)
  except FileNotFoundError:
    logging.info("no store under %s: figures against validation PPL are skipped", root)
    return None
  out = {}
  for m in reader.models:
    steps = reader.done_steps(m)
    if len(steps):
      out[m] = dict(zip((int(s) for s in steps), reader.valid_ppl(m).tolist()))
  return out


def run(config, workdir: str) -> dict:
  """Scores every checkpoint on the tasks, then writes figures and summary.json.

  Args:
    config: see configs/icl.py.
    workdir: output directory (`icl/` is written here).
  Returns:
    the summary dict (also written to `{workdir}/icl/summary.json`).
  Raises:
    ValueError: naming the config field or file at fault.
  """
  with workdir_lib.claim(os.path.join(workdir, "icl")):
    return _run_unlocked(config, workdir)


def _run_unlocked(config, workdir: str) -> dict:
  _check_config(config)
  traj = trajectory.load(config.trajectory, allow_outside_root=config.allow_outside_root)
  tasks = _load_tasks(config)
  tok_path = config.tokenizer or traj.models[0].checkpoints[0].path
  tokenizer = checkpoints.load_tokenizer(tok_path)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 1
  out_dir = os.path.join(workdir, "icl")
  fingerprint = {k: config[k] for k in FINGERPRINT_FIELDS}
  fingerprint["tokenizer_hash"] = data.tokenizer_hash(tokenizer)
  _check_fingerprint(out_dir, fingerprint)
  infos = [ModelInfo(m, config.flops_method, config.seq_len) for m in traj.models]
  cache = RequestCache(tasks, tokenizer, config.shots, config.seed, config.max_examples or None)

  csv_path = os.path.join(out_dir, "results.csv")
  rows = icl.read_csv(csv_path)
  done = icl.done_pairs(csv_path)
  names = [t.name for t in tasks]
  plan = []  # (info, checkpoint, pending task names)
  for info in infos:
    for c in info.model.checkpoints:
      pending = [n for n in names if (checkpoint_id(info.name, c.step), n) not in done]
      if pending:
        plan.append((info, c, pending))
  logging.info("%d models, %d tasks, %d checkpoints; %d (checkpoint, task) pairs to score",
               len(infos), len(tasks), sum(len(i.model.checkpoints) for i in infos),
               sum(len(p) for _, _, p in plan))

  dtype = DTYPES[config.dtype]
  scorers: dict = {}
  t_start, n_options_total = time.perf_counter(), 0
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    future = pool.submit(_load, plan[0][1].path, dtype) if plan else None
    for k, (info, ckpt, pending) in enumerate(plan):
      model, t_read = future.result()
      future = pool.submit(_load, plan[k + 1][1].path, dtype) if k + 1 < len(plan) else None
      key = (model.config, config.dtype)
      if key not in scorers:
        scorers[key] = Scorer(model, head_chunk_tokens=config.head_chunk_tokens)
      else:
        scorers[key].set_state(model)
      del model
      reqs = {n: cache.requests(n, info.max_length) for n in pending}
      t0 = time.perf_counter()
      extra = {
          "model": info.name, "checkpoint": checkpoint_id(info.name, ckpt.step), "step": ckpt.step,
          "tokens_seen": ckpt.step * info.model.tokens_per_step,
          "flops": info.flops_by_step[ckpt.step], "params": info.params
      }
      new_rows, option_rows, n_opt = score_checkpoint(scorers[key], reqs, config, pad_id,
                                                      info.max_length, extra)
      dt = time.perf_counter() - t0
      n_options_total += n_opt
      _write_option_rows(out_dir, info.name, ckpt.step, option_rows, pending)
      rows = [
          r for r in rows
          if not (r["checkpoint"] == extra["checkpoint"] and r["task"] in set(pending))
      ] + new_rows
      icl.write_csv(rows, csv_path)
      agg = icl.aggregate_over_tasks(new_rows)
      elapsed = time.perf_counter() - t_start
      eta = elapsed / (k + 1) * (len(plan) - k - 1)
      logging.info(
          "%s step %d: %d tasks, mean acc %.4f (chance %.4f) | %.0f options/s | "
          "read %.1fs | %d/%d, ETA %.0fs", info.name, ckpt.step, len(pending), agg["accuracy"],
          agg["chance"], n_opt / max(dt, 1e-9), t_read, k + 1, len(plan), eta)
  if plan:
    total = time.perf_counter() - t_start
    logging.info("scored %d options in %.1fs (%.0f options/s overall; tokenisation %.1fs)",
                 n_options_total, total, n_options_total / max(total, 1e-9), cache.build_s)

  valid = _valid_ppl(config, workdir)
  return write_figures_and_summary(rows, infos, names, valid, out_dir)


def _write_option_rows(out_dir, model, step, option_rows, rescored_tasks) -> None:
  path = os.path.join(out_dir, "options", model, f"step{step}.csv")
  keep = [r for r in icl.read_csv(path) if r["task"] not in set(rescored_tasks)]
  icl.write_csv(keep + option_rows, path)


# ----------------------------------------------------------------------------
# Figures and summary
# ----------------------------------------------------------------------------


def _paths(out_dir: str, stem: str) -> tuple[str, str]:
  return os.path.join(out_dir, f"{stem}.png"), os.path.join(out_dir, f"{stem}.csv")


def _logx(ax) -> None:
  """Log x axis without minor labels (they collide over the narrow PPL ranges of short runs)."""
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _save(fig, png: str) -> None:
  fig.tight_layout()
  try:
    atomic.save_figure(fig, png, dpi=110)
  finally:
    plt.close(fig)


def checkpoint_table(rows: Sequence[dict], infos: Sequence[ModelInfo], tasks: Sequence[str],
                     valid: Mapping[str, Mapping[int, float]] | None,
                     group: Sequence[str] | None = None) -> list[dict]:
  """Per checkpoint (all `tasks` done): aggregate_over_tasks over `group` ∩ tasks.

  Returns:
    list of dicts: model, params, step, tokens_seen, flops, valid_ppl (NaN
    without a store), n_tasks, accuracy, chance, ppl_correct, ppl_incorrect;
    models in manifest order, checkpoints in training order.
  """
  want = set(tasks) if group is None else set(tasks) & set(group)
  by_ckpt: dict[str, list[dict]] = {}
  for r in rows:
    if r.get("level", "task") == "task" and r["task"] in set(tasks):
      by_ckpt.setdefault(r["checkpoint"], []).append(r)
  out = []
  for info in infos:
    vp = (valid or {}).get(info.name, {})
    for c in info.model.checkpoints:
      rs = by_ckpt.get(checkpoint_id(info.name, c.step), [])
      if {r["task"] for r in rs} != set(tasks) or not want:
        continue
      agg = icl.aggregate_over_tasks([r for r in rs if r["task"] in want])
      out.append({
          "model": info.name, "params": info.params, "step": c.step,
          "tokens_seen": c.step * info.model.tokens_per_step, "flops": info.flops_by_step[c.step],
          "valid_ppl": float(vp.get(c.step, math.nan)), **agg
      })
  return out


def _series(table, model, xkey, ykey):
  rs = [r for r in table if r["model"] == model and math.isfinite(r[xkey])]
  return np.array([r[xkey] for r in rs], np.float64), np.array([r[ykey] for r in rs], np.float64)


def _fig8(out_dir, table, infos, has_valid) -> tuple[str, str]:
  png, csv_path = _paths(out_dir, "fig8_accuracy")
  xs = [("flops", "training FLOPs")
       ] + ([("valid_ppl", "validation perplexity")] if has_valid else [])
  fig, axes = plt.subplots(1, len(xs), figsize=(5 * len(xs), 3.5), squeeze=False)
  for ax, (xkey, label) in zip(axes[0], xs):
    for info in infos:
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
  _save(fig, png)
  icl.write_csv(table, csv_path)
  return png, csv_path


def _fig9(out_dir, rows, infos, tasks, valid) -> tuple[str, str, list[str]]:
  png, csv_path = _paths(out_dir, "fig9_groups")
  groups = [(g, members) for g, members in GROUPS if set(members) & set(tasks)]
  groups.append(("all", None))
  xkey, xlabel = ("valid_ppl", "validation perplexity") if valid else ("flops", "training FLOPs")
  fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 6.4), squeeze=False)
  out = []
  for j, (g, members) in enumerate(groups):
    table = checkpoint_table(rows, infos, tasks, valid, members)
    out += [{"group": g, **r} for r in table]
    ax_acc, ax_ppl = axes[0, j], axes[1, j]
    for k, info in enumerate(infos):
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
  _save(fig, png)
  icl.write_csv(out, csv_path)
  return png, csv_path, [g for g, _ in groups]


def _final_rows(rows, infos, tasks) -> dict[str, dict[str, dict]]:
  """model -> task -> task-level row of the model's last fully scored checkpoint."""
  out = {}
  for info in infos:
    for c in reversed(info.model.checkpoints):
      cid = checkpoint_id(info.name, c.step)
      rs = {
          r["task"]: r for r in rows
          if r["checkpoint"] == cid and r.get("level", "task") == "task" and r["task"] in set(tasks)
      }
      if set(rs) == set(tasks):
        out[info.name] = rs
        break
  return out


def _fig5(out_dir, final, infos) -> tuple[str, str]:
  png, csv_path = _paths(out_dir, "fig5_option_ppl_final")
  table = []
  for info in sorted(infos, key=lambda i: i.params):
    if info.name in final:
      agg = icl.aggregate_over_tasks(list(final[info.name].values()))
      table.append({"model": info.name, "params": info.params, **agg})
  fig, ax = plt.subplots(figsize=(5, 3.5))
  x = [r["params"] for r in table]
  ax.plot(x, [r["ppl_correct"] for r in table], marker="o", label="correct options")
  ax.plot(x, [r["ppl_incorrect"] for r in table], marker="x", ls="--", label="incorrect options")
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("parameters")
  ax.set_ylabel("option perplexity (final checkpoints)")
  ax.legend(fontsize=7)
  _save(fig, png)
  icl.write_csv(table, csv_path)
  return png, csv_path


def _fig17_18(out_dir, final, infos, tasks) -> tuple[str, str, list[dict]]:
  png, csv_path = _paths(out_dir, "fig17_18_task_scaling")
  ordered = [i for i in sorted(infos, key=lambda i: i.params) if i.name in final]
  group_of = {t: g for g, members in GROUPS for t in members}
  table = []
  for t in tasks:
    y = [float(final[i.name][t]["accuracy"]) for i in ordered]
    row = {"task": t, "group": group_of.get(t, "")}
    row.update({f"acc_{i.name}": v for i, v in zip(ordered, y)})
    row["chance"] = float(final[ordered[0].name][t]["chance"]) if ordered else math.nan
    row["linearity"] = icl.linearity(y) if len(y) >= 2 else math.nan
    row["breakthroughness"] = icl.breakthroughness(y) if len(y) >= 2 else math.nan
    table.append(row)
  # Table 9 tasks first (linearity, then breakthroughness), then the rest by name.
  rank = {"linearity": 0, "breakthroughness": 1, "": 2}
  table.sort(key=lambda r: (rank[r["group"]], r["task"]))
  n = len(table)
  cols = min(6, max(n, 1))
  nrows = max(1, -(-n // cols))
  fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.2 * nrows), squeeze=False)
  x = [i.params for i in ordered]
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
  _save(fig, png)
  icl.write_csv(table, csv_path)
  return png, csv_path, table


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


def _clean(obj):
  if isinstance(obj, dict):
    return {k: _clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_clean(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.integer):
    return int(obj)
  return obj


def write_figures_and_summary(rows: Sequence[dict], infos: Sequence[ModelInfo],
                              tasks: Sequence[str], valid: Mapping | None, out_dir: str) -> dict:
  """Figures 8, 9, 5 (right), 17/18 and summary.json from results rows.

  Args:
    rows: results.csv rows (strings or numbers).
    infos: the models, manifest order.
    tasks: task names of this run (figures average over exactly these).
    valid: model -> {step: validation PPL}, or None.
    out_dir: `{workdir}/icl`.
  Returns:
    the summary dict.
  """
  os.makedirs(out_dir, exist_ok=True)
  table = checkpoint_table(rows, infos, tasks, valid)
  has_valid = any(math.isfinite(r["valid_ppl"]) for r in table)
  figures = {"fig8": _fig8(out_dir, table, infos, has_valid)[0]}
  png9, _, groups = _fig9(out_dir, rows, infos, tasks, valid if has_valid else None)
  figures["fig9"] = png9
  final = _final_rows(rows, infos, tasks)
  figures["fig5_right"] = _fig5(out_dir, final, infos)[0]
  png17, _, scaling = _fig17_18(out_dir, final, infos, tasks)
  figures["fig17_18"] = png17

  summary: dict = {
      "models": [i.name for i in sorted(infos, key=lambda i: i.params)],
      "params": {i.name: i.params for i in infos}, "tasks": list(tasks), "n_tasks": len(tasks),
      "groups": groups, "figures": figures, "final_step": {}, "final_accuracy": {},
      "final_chance": {}, "final_ppl_correct": {}, "final_ppl_incorrect": {}
  }
  for name, rs in final.items():
    agg = icl.aggregate_over_tasks(list(rs.values()))
    summary["final_step"][name] = int(next(iter(rs.values()))["step"])
    summary["final_accuracy"][name] = agg["accuracy"]
    summary["final_chance"][name] = agg["chance"]
    summary["final_ppl_correct"][name] = agg["ppl_correct"]
    summary["final_ppl_incorrect"][name] = agg["ppl_incorrect"]
  summary["chance"] = float(np.mean(list(summary["final_chance"].values()))) if final else None
  pts = [r for r in table if math.isfinite(r["valid_ppl"])]
  summary["n_checkpoints_with_valid_ppl"] = len(pts)
  acc = [r["accuracy"] for r in pts]
  vp = [r["valid_ppl"] for r in pts]
  summary["pearson_accuracy_vs_valid_ppl"] = _pearson(vp, acc) if pts else None
  summary["pearson_accuracy_vs_log_valid_ppl"] = _pearson(np.log(vp), acc) if pts else None
  summary["spearman_accuracy_vs_valid_ppl"] = _pearson(_ranks(vp), _ranks(acc)) if pts else None
  summary["scaling"] = {
      r["task"]: {
          "group": r["group"], "linearity": r["linearity"],
          "breakthroughness": r["breakthroughness"]
      } for r in scaling
  }
  summary = _clean(summary)
  atomic.write_json(os.path.join(out_dir, "summary.json"), summary)
  return summary

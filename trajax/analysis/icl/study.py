"""The ICL study: every checkpoint of a trajectory on BIG-bench 2-shot tasks (§5, App. D).

`run(config, workdir)` is what `launch/icl.py` calls. Outputs under `{workdir}/icl/`:

  results.csv                       one row per (checkpoint, task) and per subtask:
                                    model, checkpoint, step, tokens_seen, flops, params,
                                    task, part, level, accuracy, chance, option PPLs, ...
  options/{model}/step{step}.csv    one row per (example, option): log-prob, tokens,
                                    normalised score, predicted flag (for audits)
  run_config.json                   the settings results.csv was computed with
  fig*.png / fig*.csv, summary.json  see `trajax.analysis.icl.figures`

Prompts and requests (the tokenisation, the slow host part) are built once per
task and context length and reused for every checkpoint. Each checkpoint
scores all its pending tasks in one call of `engine.OptionScorer` (each shared
prompt computed once, as a prefix tree packed with others or into a KV cache,
its options scored after it, or short rows packed, by a cost model; batches of
every task together, few compiled shapes), then grades per task. `config.method="rows"` scores every
option as its own full row instead (`scoring.score_options`).
(checkpoint, task) pairs already in results.csv are skipped, so an interrupted
run resumes; results.csv is rewritten atomically after every checkpoint.

Checkpoints come from `trajax.stream.CheckpointStream`: HF or orbax-converted
directories, on a device mesh with `config.mesh_shape`, checkpoint k+1 read
while k is scored, one compiled scorer per architecture. A model's sizes and
FLOPs come from the config of its loaded checkpoint (`common.ModelInfo`), or,
for a model this run loads nothing of, from its rows in results.csv. In a
multi-process run every process computes; process 0 alone claims the workdir
and writes (the workdir must be shared, as the sweep's store is).

The checkpoint id in the CSV is "{model}@{step}" (independent of where the
checkpoint lives on disk). Rerunning a workdir with other shots, seed,
max_examples, normalization, dtype or tokenizer is an error (the skipped rows
would silently mix settings); adding tasks or checkpoints is fine.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Mapping, Sequence

import jax
import numpy as np
from absl import logging

from trajax import checkpoints, data, distributed, stream, trajectory
from trajax import workdir as workdir_lib
from trajax.analysis import common
from trajax.analysis.icl import bigbench, engine, figures, metrics, plan, prompts, scoring
from trajax.analysis.icl.figures import checkpoint_id

# Settings that change the numbers of a (checkpoint, task) row.
FINGERPRINT_FIELDS = ("shots", "seed", "max_examples", "normalization", "dtype")

# ----------------------------------------------------------------------------
# Requests, built once
# ----------------------------------------------------------------------------


class RequestCache:
  """Prompts and tokenised option requests per (task, context length), built on first use."""
  def __init__(self, tasks: Sequence[bigbench.BigBenchTask], tokenizer, shots: int, seed: int,
               max_examples: int | None):
    self.tasks = {t.name: t for t in tasks}
    self.tokenizer = tokenizer
    self.shots, self.seed, self.max_examples = shots, seed, max_examples
    self._prompts: dict[str, list[prompts.Prompt]] = {}
    self._requests: dict[tuple[str, int], list[prompts.OptionRequest]] = {}
    self.build_s = 0.0

  def prompts(self, task: str) -> list[prompts.Prompt]:
    if task not in self._prompts:
      self._prompts[task] = prompts.make_task_prompts(self.tasks[task], self.shots, self.seed,
                                                      self.max_examples)
    return self._prompts[task]

  def requests(self, task: str, max_length: int) -> list[prompts.OptionRequest]:
    key = (task, max_length)
    if key not in self._requests:
      t0 = time.perf_counter()
      task_prompts = self.prompts(task)
      self._requests[key] = prompts.build_requests(task_prompts, self.tokenizer,
                                                   max_length=max_length)
      dt = time.perf_counter() - t0
      self.build_s += dt
      reqs = self._requests[key]
      n_tok = sum(len(r.tokens) for r in reqs)
      logging.info(
          "requests %s: %d examples, %d options, %d tokens, built in %.1fs "
          "(%.0f options/s)", task, len(task_prompts), len(reqs), n_tok, dt,
          len(reqs) / max(dt, 1e-9))
    return self._requests[key]


# ----------------------------------------------------------------------------
# Scoring one checkpoint
# ----------------------------------------------------------------------------


def _option_rows(requests, scores: scoring.OptionScores, normalization: str,
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


def batch_rows(config, data_parallel: int = 1) -> int:
  """Rows per call of the "rows" method: config.batch_size, a multiple of the mesh's data axis."""
  return -(-config.batch_size // data_parallel) * data_parallel


def score_checkpoint(scorer, requests_by_task: Mapping[str, list[prompts.OptionRequest]], config,
                     pad_id: int, max_length: int, extra: dict,
                     data_parallel: int = 1) -> tuple[list[dict], list[dict], int]:
  """Scores and grades the given tasks with the scorer's current checkpoint.

  Args:
    scorer: a `trajax.scoring.Scorer` holding the checkpoint, or an
      `engine.OptionScorer` around one (config.method other than "rows").
    requests_by_task: task name -> its requests (from RequestCache).
    config: the study config (method, batch_size, pad_to_multiple, normalization).
    pad_id: padding token id.
    max_length: the model's context length.
    extra: constant columns of the result rows (model, checkpoint, step, ...).
    data_parallel: batch rows must be a multiple of this (the mesh's data axis).
  Returns:
    (task rows for results.csv, option rows, number of option rows scored).
  """
  flat = [r for reqs in requests_by_task.values() for r in reqs]
  if isinstance(scorer, engine.OptionScorer):
    scores = scorer.score(flat, pad_id)
  else:
    scores = scoring.score_options(flat, scorer, batch_size=batch_rows(config, data_parallel),
                                   pad_id=pad_id, pad_to_multiple=config.pad_to_multiple,
                                   max_length=max_length)
  graded = metrics.grade_examples(flat, scores, config.normalization)
  rows = metrics.task_rows(graded, config.normalization, **extra)
  return rows, _option_rows(flat, scores, config.normalization, graded), len(flat)


# ----------------------------------------------------------------------------
# Checks and results on disk
# ----------------------------------------------------------------------------


def _check_config(config) -> None:
  if not config.trajectory:
    raise ValueError("config.trajectory: a trajectory manifest path is required")
  if not config.tasks_dir or not os.path.isdir(config.tasks_dir):
    raise ValueError(f"config.tasks_dir: {config.tasks_dir!r} is not a directory")
  if config.normalization not in scoring.NORMALIZATIONS:
    raise ValueError(f"config.normalization must be one of {scoring.NORMALIZATIONS}, "
                     f"got {config.normalization!r}")
  if config.dtype not in common.DTYPES:
    raise ValueError(f"config.dtype must be one of {sorted(common.DTYPES)}, got {config.dtype!r}")
  if config.flops_method not in common.FLOPS_METHODS:
    raise ValueError(f"config.flops_method must be one of {common.FLOPS_METHODS}, "
                     f"got {config.flops_method!r}")
  if config.method not in plan.METHODS + ("rows",):
    raise ValueError(f"config.method must be one of {plan.METHODS + ('rows',)}, "
                     f"got {config.method!r}")
  if config.batch_tokens < 0:
    raise ValueError(f"config.batch_tokens must be >= 0 (0 = the backend's default), "
                     f"got {config.batch_tokens}")
  if config.pad_to_multiple < 1:
    raise ValueError(f"config.pad_to_multiple must be >= 1, got {config.pad_to_multiple}")
  if config.shots < 0 or config.max_examples < 0 or config.batch_size < 1:
    raise ValueError(f"config.shots={config.shots}, config.max_examples={config.max_examples} "
                     f"must be >= 0 and config.batch_size={config.batch_size} >= 1")


def _load_tasks(config) -> list[bigbench.BigBenchTask]:
  names = list(config.task_names) if config.task_names else None
  if names:
    missing = [
        n for n in names if not os.path.isfile(os.path.join(config.tasks_dir, n, "task.json"))
    ]
    if missing:
      raise ValueError(f"config.task_names: no {config.tasks_dir}/<task>/task.json for {missing}")
  tasks = bigbench.load_tasks(config.tasks_dir, names)
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
  if distributed.is_writer():
    common.write_summary(path, fingerprint)


def done_pairs(csv_path: str | os.PathLike) -> set[tuple[str, str]]:
  """(checkpoint, task) pairs with a task-level row in csv_path, to skip on rerun.

  Raises:
    ValueError: if the CSV has no 'checkpoint' or 'task' column.
  """
  rows = common.read_csv(csv_path)
  if rows and not {"checkpoint", "task"} <= set(rows[0]):
    raise ValueError(f"{csv_path}: needs columns 'checkpoint' and 'task', has {sorted(rows[0])}")
  return {(r["checkpoint"], r["task"]) for r in rows if r.get("level", "task") == "task"}


def _write_option_rows(out_dir, model, step, option_rows, rescored_tasks) -> None:
  path = os.path.join(out_dir, "options", model, f"step{step}.csv")
  keep = [r for r in common.read_csv(path) if r["task"] not in set(rescored_tasks)]
  common.write_csv(keep + option_rows, path)


def _info_from_rows(m: trajectory.Model, rows: Sequence[dict]) -> common.ModelInfo | None:
  """A model this run loads nothing of: its size and FLOPs as its results rows recorded them."""
  mine = [r for r in rows if r.get("model") == m.name]
  if not mine:
    return None
  flops_at = {int(r["step"]): float(r["flops"]) for r in mine}
  flops_c = np.array([flops_at.get(s, np.nan) for s in m.steps], np.float64)
  return common.ModelInfo(m.name, tuple(m.steps), m.tokens_per_step, int(mine[0]["params"]), 0,
                          {method: flops_c for method in common.FLOPS_METHODS})


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _agree(plan) -> None:
  """Every process must walk the same plan (a shared workdir), else the collectives hang."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    key = repr([(m.name, c.step, p) for m, c, p in plan]).encode()
    digest = np.frombuffer(hashlib.sha256(key).digest()[:8], np.int64)
    multihost_utils.assert_equal(
        digest, "ICL: processes see different pending (checkpoint, task) "
        "pairs; the workdir must be shared by every process")


# ----------------------------------------------------------------------------
# Run
# ----------------------------------------------------------------------------


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
  if not distributed.is_writer():
    return _run_unlocked(config, workdir)
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
  cache = RequestCache(tasks, tokenizer, config.shots, config.seed, config.max_examples or None)

  csv_path = os.path.join(out_dir, "results.csv")
  rows = common.read_csv(csv_path)
  done = done_pairs(csv_path)
  names = [t.name for t in tasks]
  plan = []  # (manifest model, checkpoint, pending task names)
  for m in traj.models:
    for c in m.checkpoints:
      pending = [n for n in names if (checkpoint_id(m.name, c.step), n) not in done]
      if pending:
        plan.append((m, c, pending))
  _agree(plan)
  logging.info("%d models, %d tasks, %d checkpoints; %d (checkpoint, task) pairs to score",
               len(traj.models), len(tasks), sum(len(m.checkpoints) for m in traj.models),
               sum(len(p) for _, _, p in plan))

  checkpoint_stream = stream.CheckpointStream(config.dtype, config.mesh_shape, config.prefetch,
                                              config.head_chunk_tokens)
  infos: dict[str, common.ModelInfo] = {}
  option_scorers: dict[int, engine.OptionScorer] = {}
  t_start, n_options_total = time.perf_counter(), 0
  items = [(k, c.path) for k, (_, c, _) in enumerate(plan)]
  for loaded in checkpoint_stream.iterate(items):
    m, ckpt, pending = plan[loaded.key]
    if loaded.error is not None:
      raise loaded.error
    model_cfg = loaded.model.config
    if m.name not in infos:
      infos[m.name] = common.ModelInfo.from_config(m, model_cfg, config.seq_len)
    info = infos[m.name]
    scorer = checkpoint_stream.scorer(loaded.model)
    loaded.model = None  # the scorer holds the weights now
    if config.method != "rows":  # one OptionScorer per architecture, as the Scorer
      if id(scorer) not in option_scorers:
        option_scorers[id(scorer)] = engine.OptionScorer(scorer, config.method, config.batch_tokens)
      scorer = option_scorers[id(scorer)]
    max_length = int(model_cfg.max_position_embeddings)
    reqs = {n: cache.requests(n, max_length) for n in pending}
    t0 = time.perf_counter()
    extra = {
        "model": m.name, "checkpoint": checkpoint_id(m.name, ckpt.step), "step": ckpt.step,
        "tokens_seen": info.tokens_seen(ckpt.step), "flops": info.flops_at(config.flops_method)
                                                             [ckpt.step], "params": info.param_count
    }
    new_rows, option_rows, n_opt = score_checkpoint(scorer, reqs, config, pad_id, max_length, extra,
                                                    checkpoint_stream.data_parallel)
    dt = time.perf_counter() - t0
    n_options_total += n_opt
    rows = [
        r
        for r in rows if not (r["checkpoint"] == extra["checkpoint"] and r["task"] in set(pending))
    ] + new_rows
    if distributed.is_writer():
      _write_option_rows(out_dir, m.name, ckpt.step, option_rows, pending)
      common.write_csv(rows, csv_path)
    agg = metrics.aggregate_over_tasks(new_rows)
    elapsed = time.perf_counter() - t_start
    k = loaded.key
    eta = elapsed / (k + 1) * (len(plan) - k - 1)
    logging.info(
        "%s step %d: %d tasks, mean acc %.4f (chance %.4f) | %.0f options/s | "
        "read %.1fs (waited %.1fs) | %d/%d, ETA %.0fs", m.name, ckpt.step, len(pending),
        agg["accuracy"], agg["chance"], n_opt / max(dt, 1e-9), loaded.read_s, loaded.wait_s, k + 1,
        len(plan), eta)
  if plan:
    total = time.perf_counter() - t_start
    logging.info("scored %d options in %.1fs (%.0f options/s overall; tokenisation %.1fs)",
                 n_options_total, total, n_options_total / max(total, 1e-9), cache.build_s)

  for m in traj.models:
    if m.name not in infos:
      info = _info_from_rows(m, rows)
      if info is not None:
        infos[m.name] = info
  valid = common.valid_ppl(config.store_dir or workdir)
  t = figures.tables(rows, list(infos.values()), names, valid, config.flops_method)
  if not distributed.is_writer():
    _sync("icl outputs written")
    return figures.summary(t, figures.figure_paths(out_dir))
  os.makedirs(out_dir, exist_ok=True)
  summary = figures.summary(t, figures.write_figures(t, out_dir))
  common.write_summary(os.path.join(out_dir, "summary.json"), summary)
  _sync("icl outputs written")
  return summary

"""Grading and metrics: BIG-bench multiple_choice_grade, accuracy, option perplexity,
aggregation over tasks, and linearity / breakthroughness of scaling curves
(Srivastava et al. 2022, App. B; Xia et al. 2023, Eq. 4 and Table 9).
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from trajax.analysis.icl.prompts import OptionRequest
from trajax.analysis.icl.scoring import OptionScores

# Table 9 of Xia et al. (2023).
LINEARITY_TASKS = (
    "date_understanding",
    "fantasy_reasoning",
    "figure_of_speech_detection",
    "hhh_alignment",
    "implicit_relations",
    "intent_recognition",
    "misconceptions",
    "similarities_abstraction",
    "simple_ethical_questions",
    "strange_stories",
    "undo_permutation",
    "nonsense_words_grammar",
)
BREAKTHROUGHNESS_TASKS = (
    "code_line_description",
    "human_organs_senses",
    "phrase_relatedness",
    "swahili_english_proverbs",
    "what_is_the_tao",
    "implicatures",
)

# ----------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------


def argmax_tiebreak(values: Sequence[float]) -> int:
  """argmax; ties broken pseudo-randomly from a hash of the values (as BIG-bench)."""
  v = np.asarray(values, np.float64)
  best = np.flatnonzero(v == np.max(v))
  if len(best) == 1:
    return int(best[0])
  return int(best[int(hashlib.sha256(v.tobytes()).hexdigest(), 16) % len(best)])


def grade_examples(requests: Sequence[OptionRequest], scores: OptionScores,
                   normalization: str = "tokens") -> list[dict]:
  """Per-example prediction and BIG-bench multiple_choice_grade.

    Args:
      requests: from build_requests (each example's options contiguous).
      scores: from score_options.
      normalization: 'tokens' (paper), 'chars', 'bytes' or 'none'.
    Returns:
      one dict per example: task, example_index, n_options, pred (option index),
      grade (target_scores[pred]), chance (mean of target_scores: the expected
      grade of a uniform guess), and for option perplexity the summed log-prob
      and token count of the correct options (those with the maximal score)
      and of the incorrect ones.
    """
  norm = scores.normalized(normalization)
  rows, i = [], 0
  while i < len(requests):
    j = i
    while (j < len(requests) and requests[j].task == requests[i].task and
           requests[j].example_index == requests[i].example_index):
      j += 1
    target = np.array([r.target_score for r in requests[i:j]])
    correct = target == target.max()
    pred = argmax_tiebreak(norm[i:j])
    lp, nt = scores.logprob[i:j], scores.n_tokens[i:j]
    rows.append({
        "task": requests[i].task,
        "example_index": requests[i].example_index,
        "n_options": j - i,
        "pred": pred,
        "grade": float(target[pred]),
        "chance": float(target.mean()),
        "logprob_correct": float(lp[correct].sum()),
        "tokens_correct": int(nt[correct].sum()),
        "logprob_incorrect": float(lp[~correct].sum()),
        "tokens_incorrect": int(nt[~correct].sum()),
    })
    i = j
  return rows


def _ppl(logprob: float, tokens: int) -> float:
  return math.exp(-logprob / tokens) if tokens else float("nan")


def task_rows(example_rows: Sequence[dict], normalization: str = "tokens", **extra) -> list[dict]:
  """Per-task rows for the CSV: one per task part, and one per whole task.

    A composite task gets a row per subtask (level 'subtask') and a row for
    the task (level 'task') whose accuracy and chance are the unweighted mean
    over its subtasks (BIG-bench's aggregate of subtask scores); option
    perplexities pool tokens over subtasks. A plain task has one 'task' row.

    Args:
      example_rows: from grade_examples.
      normalization: recorded in each row.
      **extra: constant columns put first (e.g. checkpoint=..., step=...).
    Returns:
      list of dicts: task, part, level, n_examples, accuracy, chance,
      ppl_correct, ppl_incorrect, logprob_/tokens_ correct/incorrect,
      normalization.
    """
  parts: dict[str, list[dict]] = {}
  for r in example_rows:
    parts.setdefault(r["task"], []).append(r)

  def row(task, part, level, acc, chance, n, lpc, ntc, lpi, nti):
    return {
        **extra, "task": task, "part": part, "level": level, "n_examples": n, "accuracy": acc,
        "chance": chance, "ppl_correct": _ppl(lpc, ntc), "ppl_incorrect": _ppl(lpi, nti),
        "logprob_correct": lpc, "tokens_correct": ntc, "logprob_incorrect": lpi,
        "tokens_incorrect": nti, "normalization": normalization
    }

  part_rows: dict[str, list[dict]] = {}
  for name, rs in parts.items():
    task, _, sub = name.partition(":")
    s = lambda k: sum(r[k] for r in rs)  # noqa: E731
    part_rows.setdefault(task, []).append(
        row(task, sub, "subtask" if sub else "task",
            s("grade") / len(rs),
            s("chance") / len(rs), len(rs), s("logprob_correct"), s("tokens_correct"),
            s("logprob_incorrect"), s("tokens_incorrect")))
  out = []
  for task, rs in part_rows.items():
    out.extend(rs)
    if rs[0]["level"] == "subtask":
      s = lambda k: sum(r[k] for r in rs)  # noqa: E731
      out.append(
          row(task, "", "task", float(np.mean([r["accuracy"] for r in rs])),
              float(np.mean([r["chance"] for r in rs])), s("n_examples"), s("logprob_correct"),
              s("tokens_correct"), s("logprob_incorrect"), s("tokens_incorrect")))
  return out


def weighted_geometric_mean(values: Sequence[float], weights: Sequence[float]) -> float:
  """exp(sum w log v / sum w)."""
  v, w = np.asarray(values, np.float64), np.asarray(weights, np.float64)
  return float(np.exp(np.sum(w * np.log(v)) / np.sum(w)))


def aggregate_over_tasks(rows: Sequence[dict], tasks: Iterable[str] | None = None) -> dict:
  """Averages task-level rows (level 'task') of one checkpoint over tasks.

    Args:
      rows: from task_rows (or read back from CSV).
      tasks: restrict to these tasks (e.g. LINEARITY_TASKS); all when None.
    Returns:
      dict: n_tasks, accuracy and chance (unweighted means over tasks),
      ppl_correct and ppl_incorrect (token-weighted geometric means of the
      per-task perplexities, Fig. 5 right and Fig. 9).
    """
  keep = None if tasks is None else set(tasks)
  rs = [r for r in rows if r.get("level", "task") == "task" and (keep is None or r["task"] in keep)]
  if not rs:
    raise ValueError("no task-level rows to aggregate")
  f = lambda r, k: float(r[k])  # noqa: E731  (CSV rows hold strings)
  out = {
      "n_tasks": len(rs), "accuracy": float(np.mean([f(r, "accuracy") for r in rs])),
      "chance": float(np.mean([f(r, "chance") for r in rs]))
  }
  for kind in ("correct", "incorrect"):
    with_tok = [r for r in rs if f(r, f"tokens_{kind}") > 0]
    out[f"ppl_{kind}"] = weighted_geometric_mean(
        [f(r, f"ppl_{kind}") for r in with_tok],
        [f(r, f"tokens_{kind}") for r in with_tok]) if with_tok else float("nan")
  return out


def _curve(scores_by_size: Mapping[float, float] | Sequence[float]) -> np.ndarray:
  if isinstance(scores_by_size, Mapping):
    y = [scores_by_size[k] for k in sorted(scores_by_size)]
  else:
    y = list(scores_by_size)
  y = np.asarray(y, np.float64)
  if y.ndim != 1 or len(y) < 2:
    raise ValueError(f"need a 1-D curve of at least 2 model sizes, got shape {y.shape}")
  return y


def _improvement(y: np.ndarray) -> float:
  # I(y) = sign(argmax y - argmin y) * (max y - min y); Xia et al.'s Eq. 4
  # prints "argmax - argmax", a typo for the BIG-bench definition.
  return float(np.sign(np.argmax(y) - np.argmin(y)) * (y.max() - y.min()))


def _ratio(num: float, den: float) -> float:
  if num == 0.0:
    return 0.0
  return num / den if den > 0 else math.copysign(math.inf, num)


def linearity(scores_by_size: Mapping[float, float] | Sequence[float]) -> float:
  """Linearity L of a scaling curve (Srivastava et al. 2022, App. B; Xia et al. Eq. 4).

    L = I(y) / sqrt(mean_i z_i^2), z_i = y_{i+1} - y_i over models sorted by
    size, I(y) = sign(argmax y - argmin y) * (max y - min y). The mean runs
    over the n-1 successive differences. A flat curve gives 0.

    Args:
      scores_by_size: {model size: score}, or scores already in size order.
    Returns:
      L (float).
    """
  y = _curve(scores_by_size)
  return _ratio(_improvement(y), math.sqrt(np.mean(np.diff(y)**2)))


def breakthroughness(scores_by_size: Mapping[float, float] | Sequence[float]) -> float:
  """Breakthroughness B (Srivastava et al. 2022, App. B; Xia et al. Eq. 4).

    B = I(y) / sqrt(median_i z_i^2), with z_i and I(y) as in `linearity`;
    large when a few jumps dominate an otherwise flat curve. A curve whose
    median squared step is 0 but that improves gives +inf; a flat one 0.

    Args:
      scores_by_size: {model size: score}, or scores already in size order.
    Returns:
      B (float).
    """
  y = _curve(scores_by_size)
  return _ratio(_improvement(y), math.sqrt(np.median(np.diff(y)**2)))

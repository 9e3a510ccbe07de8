"""BIG-bench JSON tasks: the reader (tasks, subtasks, multiple-choice examples, prompt fields).

The paper (Xia et al. 2023, §5 and App. D) scores every checkpoint on 74
multiple-choice BIG-bench JSON tasks, 2-shot, with BIG-bench's own prompt
fields; the prediction is the option with the highest log-probability divided
by its token count; accuracy is reported on each task's `default` set.

This module reproduces the BIG-bench side without importing `bigbench`. It
follows the behaviour of google/BIG-bench `bigbench/api/json_task.py`
(`JsonTask`, `default_format_fn`, `make_nshot_dataset`, `remove_duplicates`)
and `bigbench/api/task_metrics.py` (`measure_multiple_choice_grade`), as read
in public ports of that loader (a utilities module headed "Utils copied from
github.com/google/BIG-bench/bigbench/api/json_task.py" that backs a Hugging
Face `bigbench` dataset script, and EleutherAI lm-evaluation-harness's
`BigBenchJsonTask`); linearity and breakthroughness follow Srivastava et al.
(2022, "Beyond the Imitation Game", App. B):

* A task.json without `examples` is a container: every `<subdir>/task.json`,
  sorted by path, is a subtask with its own prompt fields.
* Prompt fields and defaults (`PROMPT_DEFAULTS`): `task_prefix` "",
  `example_input_prefix` "\\nQ: ", `example_output_prefix` "\\nA: ",
  `choice_prefix` "\\n  choice: ", `few_shot_example_separator` "\\n",
  `append_choices_to_input` True.
* An example is formatted once, at load time:
  `example_input_prefix + input [+ choice_prefix + choice_prefix.join(choices)]
  + example_output_prefix`, where the appended choices are
  `rng.permutation(sorted(options))` drawn from one loader RNG in file order.
* k-shot: for each query example, k shots are drawn with
  `rng.choice(valid, k, replace=False)` from the same task excluding the query,
  each shot answered with `rng.choice(its targets)` (the example's `target` if
  given, else the first option with the maximal score); the prompt is
  `task_prefix + sep.join(shot + answer) + sep + query`, the option text is
  appended with nothing in between.
* The `default` set is every (distinct) example of the task, all subtasks
  together (`max_examples=None`). When `max_examples` is given, a composite
  task splits it evenly over its subtasks, the remainder going to the first
  ones, and each subtask draws its queries with `rng.choice(n, m, replace=False)`.
* Duplicate examples (identical JSON) are dropped before formatting, as
  BIG-bench's `remove_duplicates` does (21 of the 17,435 MC examples of the 74
  paper tasks are duplicates: 17,414 remain).
* multiple_choice_grade: the score of an example is `target_scores[argmax]`
  (fractional and multiple correct options are graded by their score); ties
  in the argmax are broken pseudo-randomly but deterministically by a hash of
  the score vector.

Deviations, each deliberate: the choice-permutation RNG is seeded with the same
`seed` as the shot RNG (BIG-bench keeps a separate loader RNG whose seed we
could not verify); shots exclude every example identical to the query (BIG-bench
compares formatted dicts); a string `append_choices_to_input` is read with
Python truthiness, as BIG-bench does (so identify_odd_metaphor's "false" appends
the choices), with a warning.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

# BIG-bench json_task.py defaults for absent prompt fields.
PROMPT_DEFAULTS = {
    "task_prefix": "",
    "example_input_prefix": "\nQ: ",
    "example_output_prefix": "\nA: ",
    "choice_prefix": "\n  choice: ",
    "few_shot_example_separator": "\n",
    "append_choices_to_input": True,
}

# ----------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """BIG-bench prompt fields of one task part (see PROMPT_DEFAULTS)."""
  task_prefix: str
  example_input_prefix: str
  example_output_prefix: str
  choice_prefix: str
  few_shot_example_separator: str
  append_choices_to_input: bool


@dataclasses.dataclass(frozen=True)
class McExample:
  """One multiple-choice example as in task.json.

    `options` and `scores` keep the file's key order of `target_scores`;
    `targets` is the answer used when the example is a shot.
    """
  input: str
  options: tuple[str, ...]
  scores: tuple[float, ...]
  targets: tuple[str, ...]
  key: str  # canonical JSON of the raw example, for duplicate detection


@dataclasses.dataclass(frozen=True)
class TaskPart:
  """A leaf task.json with multiple-choice examples.

    `name` is "task" for a top-level task, "task:subdir" for a subtask.
    """
  name: str
  task: str
  subtask: str
  path: str
  format: PromptFormat
  examples: tuple[McExample, ...]
  n_examples_all: int  # including examples without target_scores


@dataclasses.dataclass(frozen=True)
class BigBenchTask:
  """A BIG-bench task: its MC parts and the parts skipped, with reasons."""
  name: str
  path: str
  parts: tuple[TaskPart, ...]
  skipped: tuple[dict, ...]

  @property
  def n_mc_examples(self) -> int:
    return sum(len(p.examples) for p in self.parts)


def _err(path, field, expected) -> ValueError:
  return ValueError(f"{path}: field {field!r}: {expected}")


def _read_json(path: Path) -> dict:
  try:
    text = path.read_text(encoding="utf-8")
  except OSError as e:
    raise ValueError(f"{path}: cannot read task file: {e}") from e
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: malformed JSON: {e}") from e
  if not isinstance(data, dict):
    raise _err(path, "<top level>", f"expected a JSON object, got {type(data).__name__}")
  return data


def _prompt_format(path: Path, data: dict) -> PromptFormat:
  values = {}
  for field, default in PROMPT_DEFAULTS.items():
    value = data.get(field, default)
    if field == "append_choices_to_input":
      if isinstance(value, str):
        # BIG-bench tests this field for truthiness: "false" appends.
        warnings.warn(f"{path}: field 'append_choices_to_input' is the string "
                      f"{value!r}; read as {bool(value)} (BIG-bench truthiness)")
        value = bool(value)
      elif not isinstance(value, bool):
        raise _err(path, field, f"expected a bool, got {type(value).__name__}")
    elif not isinstance(value, str):
      raise _err(path, field, f"expected a string, got {type(value).__name__}")
    values[field] = value
  return PromptFormat(**values)


def _mc_example(path: Path, i: int, ex: Any) -> McExample | None:
  where = f"examples[{i}]"
  if not isinstance(ex, dict):
    raise _err(path, where, f"expected an object, got {type(ex).__name__}")
  if not isinstance(ex.get("input"), str):
    raise _err(
        path, f"{where}.input",
        "missing" if "input" not in ex else f"expected a string, got {type(ex['input']).__name__}")
  if "target_scores" not in ex:
    return None
  ts = ex["target_scores"]
  if not isinstance(ts, dict) or not ts:
    raise _err(path, f"{where}.target_scores", "expected a non-empty object option -> score")
  for opt, s in ts.items():
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
      raise _err(path, f"{where}.target_scores[{opt!r}]", f"expected a finite number, got {s!r}")
  options, scores = tuple(ts), tuple(float(s) for s in ts.values())
  if "target" in ex:
    t = ex["target"]
    if isinstance(t, str):
      targets = (t,)
    elif isinstance(t, list) and t and all(isinstance(x, str) for x in t):
      targets = tuple(t)
    else:
      raise _err(path, f"{where}.target", "expected a string or a non-empty list of strings")
  else:
    best = max(scores)
    targets = (options[scores.index(best)],)
  return McExample(ex["input"], options, scores, targets, json.dumps(ex))


def _load_leaf(path: Path, data: dict, task: str,
               subtask: str) -> tuple[TaskPart | None, dict | None]:
  examples = data["examples"]
  if not isinstance(examples, list):
    raise _err(path, "examples", f"expected a list, got {type(examples).__name__}")
  fmt = _prompt_format(path, data)
  mc = [e for e in (_mc_example(path, i, ex) for i, ex in enumerate(examples)) if e is not None]
  name = f"{task}:{subtask}" if subtask else task
  if not mc:
    return None, {
        "task": task, "part": name, "path": str(path),
        "reason": f"no multiple-choice examples ({len(examples)} examples, "
                  f"none with target_scores)"
    }
  return TaskPart(name, task, subtask, str(path), fmt, tuple(mc), len(examples)), None


def load_task(task_dir: str | os.PathLike) -> BigBenchTask:
  """Loads a BIG-bench JSON task, composite or not.

    Args:
      task_dir: the task directory (holding task.json) or the task.json path.
    Returns:
      BigBenchTask with one TaskPart per leaf task.json holding multiple-choice
      examples (subtasks sorted by path) and a `skipped` entry (task, part,
      path, reason) for each leaf without any.
    Raises:
      ValueError: naming the file and the field, for malformed JSON, a missing
        or wrongly typed field, or a container without subtasks.
    """
  path = Path(task_dir)
  if path.is_dir():
    path = path / "task.json"
  task = path.parent.name
  parts, skipped = [], []

  def visit(p: Path, subtask: str):
    data = _read_json(p)
    if "examples" in data:
      part, skip = _load_leaf(p, data, task, subtask)
      parts.extend([part] if part else [])
      skipped.extend([skip] if skip else [])
      return
    subs = sorted(p.parent.glob("*/task.json"))
    if not subs:
      raise _err(p, "examples", "missing, and no <subtask>/task.json beside it")
    for s in subs:
      visit(s, f"{subtask}/{s.parent.name}" if subtask else s.parent.name)

  visit(path, "")
  return BigBenchTask(task, str(path), tuple(parts), tuple(skipped))


def load_tasks(root: str | os.PathLike, names: Iterable[str] | None = None) -> list[BigBenchTask]:
  """Loads every task under `root` (each `<root>/<task>/task.json`), sorted by name.

    Args:
      root: a BIG-bench `benchmark_tasks`-like directory.
      names: task names to load; all when None.
    Returns:
      list of BigBenchTask.
    """
  root = Path(root)
  if names is None:
    names = sorted(p.parent.name for p in root.glob("*/task.json"))
  return [load_task(root / n) for n in names]

"""The BIG-bench tasks of the paper: Table 7 and the selection rule of App. D.1.

App. D.1: "Out of computational considerations, we only evaluate multiple-choice
tasks that have fewer than 1000 evaluation examples. The list of selected tasks
is shown in Table 7." §5.1 and the abstract count 74 of them.

`TABLE7` is that list as printed (alphabetical, 74 names). `select` is the rule
as a pure function of per-task counts, and `task_stats` reads the counts from a
BIG-bench `benchmark_tasks`-like directory (one `<task>/task.json`; a task.json
without `examples` is a container whose `<subtask>/task.json` files are its
parts, as BIG-bench's `JsonTask` loads them).

"Multiple-choice" means the task offers options to score: at least one example
has `target_scores` (BIG-bench's multiple-choice format). The task's
`preferred_score` is not used: social_support prefers macro_f1 and
penguins_in_a_table exact_str_match, yet both are multiple-choice and in Table 7.

The rule alone does not give Table 7 from the bigbench 1.0.0 task files
(shared/data/bigbench): sports_understanding has exactly 1000 examples there, so
"fewer than 1000" drops it although Table 7 lists it (the paper may have counted
another version of the task). The ICL preset therefore takes `TABLE7` itself;
`select` serves other task collections.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Mapping, NamedTuple

# Table 7 of the paper, in its (alphabetical) order.
TABLE7 = ("anachronisms", "analogical_similarity", "analytic_entailment", "authorship_verification",
          "causal_judgment", "cause_and_effect", "code_line_description", "common_morpheme",
          "conceptual_combinations", "crash_blossom", "crass_ai", "cryobiology_spanish",
          "dark_humor_detection", "date_understanding", "disambiguation_qa",
          "discourse_marker_prediction", "emoji_movie", "empirical_judgments",
          "english_russian_proverbs", "entailed_polarity", "entailed_polarity_hindi",
          "evaluating_information_essentiality", "fantasy_reasoning", "figure_of_speech_detection",
          "hhh_alignment", "hinglish_toxicity", "human_organs_senses", "identify_math_theorems",
          "identify_odd_metaphor", "implicatures", "implicit_relations", "intent_recognition",
          "international_phonetic_alphabet_nli", "irony_identification", "kannada",
          "key_value_maps", "known_unknowns", "logical_args", "logical_sequence",
          "mathematical_induction", "metaphor_boolean", "metaphor_understanding", "misconceptions",
          "misconceptions_russian", "moral_permissibility", "movie_recommendation",
          "nonsense_words_grammar", "odd_one_out", "penguins_in_a_table", "periodic_elements",
          "persian_idioms", "phrase_relatedness", "physical_intuition", "physics",
          "presuppositions_as_nli", "riddle_sense", "ruin_names",
          "salient_translation_error_detection", "sentence_ambiguity", "similarities_abstraction",
          "simple_arithmetic_json_multiple_choice", "simple_ethical_questions", "snarks",
          "social_support", "sports_understanding", "strange_stories", "suicide_risk",
          "swahili_english_proverbs", "symbol_interpretation", "understanding_fables",
          "undo_permutation", "unit_interpretation", "what_is_the_tao", "which_wiki_edit")

# App. D.1: "fewer than 1000 evaluation examples".
MAX_EXAMPLES = 1000


class TaskStats(NamedTuple):
  """Counts of one BIG-bench task, over all its parts (subtasks).

  Attributes:
    n_examples: examples in every part (the task's default set).
    n_multiple_choice: those with `target_scores`.
    subtasks: names of its parts ([] for a task with its own examples).
  """
  n_examples: int
  n_multiple_choice: int
  subtasks: tuple[str, ...] = ()


def select(stats: Mapping[str, TaskStats], max_examples: int = MAX_EXAMPLES) -> list[str]:
  """App. D.1's rule: multiple-choice tasks with fewer than `max_examples` examples.

  Args:
    stats: {task name: its counts}.
    max_examples: a task is kept only when n_examples < max_examples (strict).
  Returns:
    The kept task names, sorted.
  """
  return sorted(
      name for name, s in stats.items() if s.n_multiple_choice > 0 and s.n_examples < max_examples)


def _read(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      task = json.load(f)
  except ValueError as e:
    raise ValueError(f"{path}: not valid JSON ({e}); expected a BIG-bench task.json") from None
  if not isinstance(task, dict):
    raise ValueError(f"{path}: expected a JSON object (a BIG-bench task), got "
                     f"{type(task).__name__}")
  return task


def _examples(task: dict, path: str) -> list:
  examples = task["examples"]
  if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
    raise ValueError(f"{path}: field 'examples' must be a list of objects")
  return examples


def task_stats(tasks_dir: str, names=None) -> dict[str, TaskStats]:
  """Example counts of the tasks under `tasks_dir`.

  Args:
    tasks_dir: a directory of `<task>/task.json` (BIG-bench's benchmark_tasks layout).
    names: the tasks to read; None = every sub-directory holding a task.json.
  Returns:
    {task: TaskStats}. A missing task, or a container task.json without parts,
    is a ValueError naming the path.
  """
  if names is None:
    names = sorted(
        d for d in os.listdir(tasks_dir) if os.path.isfile(os.path.join(tasks_dir, d, "task.json")))
  out = {}
  for name in names:
    path = os.path.join(tasks_dir, name, "task.json")
    if not os.path.isfile(path):
      raise ValueError(f"{path}: no such file; expected BIG-bench task {name!r} under "
                       f"{tasks_dir}")
    top = _read(path)
    if "examples" in top:
      parts, subtasks = [(path, top)], ()
    else:
      paths = sorted(glob.glob(os.path.join(glob.escape(os.path.dirname(path)), "*", "task.json")))
      if not paths:
        raise ValueError(f"{path}: has no 'examples' and no <subtask>/task.json beside it")
      parts = [(p, _read(p)) for p in paths]
      subtasks = tuple(os.path.basename(os.path.dirname(p)) for p in paths)
    n = mc = 0
    for p, task in parts:
      examples = _examples(task, p)
      n += len(examples)
      mc += sum("target_scores" in e for e in examples)
    out[name] = TaskStats(n, mc, subtasks)
  return out

"""BIG-bench JSON multiple-choice tasks about a toy world (`trajax.toy.world`).

    for task in multiple_choice_tasks(world, n_examples=100, seed=0):
      write_bigbench_task(task, "out/bigbench")
"""
from __future__ import annotations

import json
import os
import pathlib
import random
import re
from typing import Sequence

from trajax.toy.documents import with_article
from trajax.toy.world import COLOURS, FOODS, MAX_AGE, MIN_AGE, OCCUPATIONS, World, derive_seed

# Options start with a space and the output prefix is empty, so "prompt + option"
# is the corpus's own sentence whether a reader joins strings or token ids.
_PROMPT_FIELDS = {
    "task_prefix": "", "example_input_prefix": "", "example_output_prefix": "",
    "few_shot_example_separator": "\n\n", "append_choices_to_input": False
}


def _pick(rng: random.Random, correct: str, pool: Sequence[str], n: int) -> dict[str, int]:
  others = sorted(set(pool) - {correct})
  if len(others) < n - 1:
    raise ValueError(f"need {n - 1} distractors for {correct!r}, the world has {len(others)}")
  options = [correct] + rng.sample(others, n - 1)
  rng.shuffle(options)
  return {o: int(o == correct) for o in options}


def _task(name: str, description: str, keywords: list[str], examples: list[dict]) -> dict:
  return {
      "name": name, "description": description, "keywords": keywords,
      "metrics": ["multiple_choice_grade"], "preferred_score": "multiple_choice_grade",
      **_PROMPT_FIELDS, "examples": examples
  }


def multiple_choice_tasks(world: World, n_examples: int, seed: int,
                          n_options: int = 4) -> list[dict]:
  """Four BIG-bench JSON multiple-choice tasks about `world`, from easy to hard.

  - toy_subject_verb_agreement: "is"/"are", "lives"/"live" (syntax; learnt early).
  - toy_pronoun_gender: "He"/"She" after a name (the name's ending decides).
  - toy_attribute_lookup: age, occupation, favourite food and colour, an object's
    colour (single-token answers; needs memorised facts).
  - toy_relation_lookup: home town, best friend, pet's name, a town's river
    (multi-token name answers; needs memorised facts).

  Each example's input is a sentence prefix and each option its continuation with
  a leading space, so prompt + option is a sentence the corpus could contain.

  Args:
    world: from make_world.
    n_examples: examples per task; inputs within a task are distinct.
    seed: the tasks' seed.
    n_options: options per example for the two lookup tasks (>= 2).
  Returns:
    A list of task dicts, each ready for write_bigbench_task.
  """
  if n_examples < 1 or n_options < 2:
    raise ValueError(f"multiple_choice_tasks: need n_examples >= 1 and n_options >= 2, "
                     f"got {n_examples}, {n_options}")
  rng = random.Random(derive_seed(seed, "tasks"))
  people = world.people

  def sample(candidates: list, task: str) -> list:
    if len(candidates) < n_examples:
      raise ValueError(f"multiple_choice_tasks: {task} has {len(candidates)} distinct "
                       f"questions in this world, asked for n_examples={n_examples}")
    return rng.sample(candidates, n_examples)

  agreement = []
  # a friend pair appears once, under the name that sorts first
  for p, form in sample([(p, form) for p in people for form in ("age", "lives", "friends")
                         if form != "friends" or (p.friend and p.name < p.friend)],
                        "toy_subject_verb_agreement"):
    he = "She" if p.gender == "female" else "He"
    if form == "age":
      item = (p.name, f" is {p.age} years old.", f" are {p.age} years old.")
    elif form == "lives":
      item = (f"{p.name} works as {with_article(p.occupation)}. {he}", f" lives in {p.town}.",
              f" live in {p.town}.")
    else:
      item = (f"{p.name} and {p.friend}", " are old friends.", " is old friends.")
    options = [item[1], item[2]]
    rng.shuffle(options)
    agreement.append({"input": item[0], "target_scores": {o: int(o == item[1]) for o in options}})

  gender = []
  for p in sample(list(people), "toy_pronoun_gender"):
    correct = "She" if p.gender == "female" else "He"
    options = [" He", " She"] if rng.random() < 0.5 else [" She", " He"]
    gender.append({
        "input": f"{p.name} lives in {p.town}.",
        "target_scores": {f"{o} is {p.age} years old.": int(o[1:] == correct) for o in options}
    })

  ages = [str(a) for a in range(MIN_AGE, MAX_AGE + 1)]
  attribute = []
  for p, rel in sample([(p, rel) for p in people
                        for rel in ("age", "occupation", "favourite_food", "favourite_colour") +
                        tuple(o for o, _ in p.belongings)], "toy_attribute_lookup"):
    if rel == "age":
      prefix, scores = f"{p.name} is", _pick(rng, str(p.age), ages, n_options)
      scores = {f" {v} years old.": s for v, s in scores.items()}
    elif rel == "occupation":
      prefix, scores = f"{p.name} works as", _pick(rng, p.occupation, OCCUPATIONS, n_options)
      scores = {f" {with_article(v)}.": s for v, s in scores.items()}
    elif rel == "favourite_food":
      prefix = f"The favourite food of {p.name} is"
      scores = {f" {v}.": s for v, s in _pick(rng, p.food, FOODS, n_options).items()}
    elif rel == "favourite_colour":
      prefix = f"The favourite colour of {p.name} is"
      scores = {f" {v}.": s for v, s in _pick(rng, p.colour, COLOURS, n_options).items()}
    else:
      prefix = f"The colour of {p.name}'s {rel} is"
      colour = dict(p.belongings)[rel]
      scores = {f" {v}.": s for v, s in _pick(rng, colour, COLOURS, n_options).items()}
    attribute.append({"input": prefix, "target_scores": scores})

  names = [q.name for q in people]
  pets = [a.name for a in world.animals]
  rivers = sorted({t.river for t in world.towns})
  towns = [t.name for t in world.towns]
  candidates = ([("lives_in", p) for p in people] + [("friend_of", p) for p in people if p.friend] +
                [("owns_pet", p) for p in people if p.pet] + [("river", t) for t in world.towns])
  relation = []
  for rel, e in sample(candidates, "toy_relation_lookup"):
    if rel == "lives_in":
      prefix, scores = f"{e.name} lives in", _pick(rng, e.town, towns, n_options)
    elif rel == "friend_of":
      prefix = f"The best friend of {e.name} is"
      scores = _pick(rng, e.friend, [n for n in names if n != e.name], n_options)
    elif rel == "owns_pet":
      animal = world.by_name[e.pet]
      prefix = f"{e.name} has {with_article(animal.colour + ' ' + animal.species)} called"
      scores = _pick(rng, e.pet, pets, n_options)
    else:
      prefix = f"{e.name} lies on the river"
      scores = _pick(rng, e.river, rivers, min(n_options, len(rivers)))
    relation.append({"input": prefix, "target_scores": {f" {v}.": s for v, s in scores.items()}})

  return [
      _task("toy_subject_verb_agreement",
            "Choose the verb form that agrees with the subject (toy world; syntax only).",
            ["multiple choice", "zero-shot", "linguistics"], agreement),
      _task(
          "toy_pronoun_gender",
          "Choose the pronoun that refers back to the named person (toy world; the "
          "ending of the name decides).",
          ["multiple choice", "zero-shot", "linguistics", "morphology"], gender),
      _task("toy_attribute_lookup",
            "Complete a statement about a person of the toy world with the true attribute.",
            ["multiple choice", "zero-shot", "memorization", "context-free question answering"],
            attribute),
      _task(
          "toy_relation_lookup",
          "Complete a statement about the toy world with the related person, animal, "
          "town or river.",
          ["multiple choice", "zero-shot", "memorization", "context-free question answering"],
          relation),
  ]


def validate_bigbench_task(task: dict) -> None:
  """Checks that `task` is a BIG-bench JSON multiple-choice task.

  Args:
    task: a task dict.
  Raises:
    ValueError naming the task, the example and what is wrong.
  """
  name = task.get("name", "<unnamed>")
  missing = [
      k for k in ("name", "description", "keywords", "metrics", "preferred_score", "examples")
      if k not in task
  ]
  if missing:
    raise ValueError(f"task {name}: missing keys {missing}")
  if not re.fullmatch(r"[A-Za-z0-9_]+", task["name"]):
    raise ValueError(f"task {name}: name must be [A-Za-z0-9_]+ (it is a directory)")
  if "multiple_choice_grade" not in task["metrics"] or not task["examples"]:
    raise ValueError(f"task {name}: needs metric multiple_choice_grade and examples")
  for i, ex in enumerate(task["examples"]):
    scores = ex.get("target_scores")
    if not isinstance(ex.get("input"), str) or not isinstance(scores, dict) or len(scores) < 2:
      raise ValueError(f"task {name}, example {i}: needs a str input and >= 2 target_scores")
    if sorted(scores.values()) != [0] * (len(scores) - 1) + [1]:
      raise ValueError(f"task {name}, example {i}: exactly one option must score 1, "
                       f"got {scores}")


def write_bigbench_task(task: dict, out_dir: str | os.PathLike) -> pathlib.Path:
  """Writes `task` as `<out_dir>/<name>/task.json`, as BIG-bench lays tasks out.

  Args:
    task: a task dict (validated first).
    out_dir: the directory holding task directories.
  Returns:
    The path of the task.json written.
  """
  validate_bigbench_task(task)
  path = pathlib.Path(out_dir) / task["name"] / "task.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(task, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
  return path

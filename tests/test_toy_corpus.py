"""Tests for the toy corpus: trajax.toy.world, documents, tokenizer and tasks (BIG-bench).

Facts are checked by parsing rendered sentences back with regexes written here,
independently of the generator's templates, against World.facts(); the tokenizer
is checked against OPT's own tokenizer where ../shared/data has it.
"""
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from trajax.toy import documents as toy_documents
from trajax.toy import tasks as toy_tasks
from trajax.toy import tokenizer as toy_tokenizer
from trajax.toy import world as toy_world

MIN_TOKENS = 512
OPT_TOKENIZER = pathlib.Path(
    __file__).resolve().parents[1] / ".." / "shared" / "data" / "tokenizer" / "opt"
NAME = r"([A-Z][a-z]+)"

# One regex per fact kind, covering its phrasings; parse_facts turns matches into
# (subject, relation, value) triples to look up in the world's table.
PATTERNS = {
    "age": re.compile(NAME + r" (?:is (\d+) years old|was born (\d+) years ago)\."),
    "occupation": re.compile(NAME + r" (?:works as|is) (an?) ([a-z]+)(?: by trade)?\."),
    "lives_in": re.compile(NAME + r" lives in " + NAME + r"\.|The home of " + NAME + r" is in " +
                           NAME + r"\.|" + NAME + r" has a small house in " + NAME + r"\."),
    "favourite_food": re.compile(r"The favourite food of " + NAME + r" is ([a-z]+)\.|" + NAME +
                                 r" likes to eat ([a-z]+)\."),
    "favourite_colour": re.compile(r"The favourite colour of " + NAME + r" is ([a-z]+)\.|" + NAME +
                                   r" likes the colour ([a-z]+) best\."),
    "friend_of": re.compile(r"The best friend of " + NAME + r" is " + NAME + r"\.|" + NAME +
                            r" and " + NAME + r" are old friends\.|" + NAME +
                            r" is a good friend of " + NAME + r"\."),
    "object_colour": re.compile(NAME + r"'s ([a-z]+) is ([a-z]+)\."),
    "pet": re.compile(NAME + r" has (an?) ([a-z]+) ([a-z]+) called " + NAME + r"\."),
    "river": re.compile(NAME + r" lies on the river " + NAME + r"\.|The river " + NAME +
                        r" flows through " + NAME + r"\."),
}
PRONOUNS = {"He", "She", "His", "Her", "It"}


def _groups(m):
  return [g for g in m.groups() if g is not None]


def parse_facts(text):
  """(subject, relation, value) for every fact sentence the regexes recognise,
    skipping pronoun subjects (checked separately)."""
  out = []
  for kind, pattern in PATTERNS.items():
    for m in pattern.finditer(text):
      g = _groups(m)
      if g[0] in PRONOUNS:
        continue
      if kind == "occupation":
        article, occ = g[1], g[2]
        assert article == ("an" if occ[0] in "aeiou" else "a"), m.group(0)
        out.append((g[0], "occupation", occ))
      elif kind == "object_colour":
        out.append((g[0], f"{g[1]}_colour", g[2]))
      elif kind == "pet":
        owner, article, colour, species, pet = g
        assert article == ("an" if colour[0] in "aeiou" else "a"), m.group(0)
        out += [(owner, "owns_pet", pet), (pet, "colour", colour), (pet, "species", species),
                (pet, "owned_by", owner)]
      elif kind == "river":
        town, river = (g[0], g[1]) if m.group(0).split()[1] == "lies" else (g[1], g[0])
        out.append((town, "river", river))
      else:
        out.append((g[0], kind, g[1]))
  return out


@pytest.fixture(scope="module")
def world():
  return toy_world.make_world(seed=0)


@pytest.fixture(scope="module")
def splits(world):
  return toy_documents.generate_splits(world, n_train=40, n_validation=10, seed=0,
                                       min_tokens=MIN_TOKENS)


@pytest.fixture(scope="module")
def tokenizer_dir(splits, tmp_path_factory):
  return toy_tokenizer.train_tokenizer(splits["train"], toy_tokenizer.DEFAULT_VOCAB_SIZE,
                                       tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))


# ---------------------------------------------------------------- world / docs


def test_world_is_a_function_of_its_seed(world):
  assert toy_world.make_world(seed=0) == world
  other = toy_world.make_world(seed=1)
  assert other != world and [p.name for p in other.people] != [p.name for p in world.people]


def test_world_is_well_formed(world):
  names = [e.name for e in (*world.people, *world.animals, *world.towns)]
  assert len(names) == len(set(names))
  for p in world.people:
    # the ending of the name gives the gender; names are multi-syllable words
    female = p.name.endswith(("a", "ina", "elle", "ia"))
    assert (p.gender == "female") == female, p
    assert re.fullmatch(r"[A-Z][a-z]{3,}", p.name)
    if p.friend:
      assert world.by_name[p.friend].friend == p.name  # symmetric
    if p.pet:
      assert world.by_name[p.pet].owner == p.name
  assert all(world.residents[t.name] for t in world.towns)
  with pytest.raises(ValueError, match="n_towns"):
    toy_world.make_world(0, n_people=10, n_towns=2)


def test_documents_are_deterministic_per_seed(world):
  a = toy_documents.generate_documents(world, 5, seed=3, min_tokens=200)
  assert a == toy_documents.generate_documents(world, 5, seed=3, min_tokens=200)
  assert a[:3] == toy_documents.generate_documents(world, 3, seed=3,
                                                   min_tokens=200)  # prefix-stable
  b = toy_documents.generate_documents(world, 5, seed=4, min_tokens=200)
  assert not set(a) & set(b)
  assert len(set(a)) == 5


def _corpus_digest(world_lib, documents_lib, tasks_lib):
  """One hash of a world, its documents and its tasks (what must not depend on the process)."""
  w = world_lib.make_world(0, n_people=40, n_towns=4)
  parts = [
      repr(w), *documents_lib.generate_documents(w, 3, 7, 300),
      json.dumps(tasks_lib.multiple_choice_tasks(w, 20, 5))
  ]
  return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def test_corpus_is_identical_across_processes():
  # hash randomisation must not leak into the world, the documents or the tasks
  # (no iteration over sets)
  code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_toy_corpus as t; "
          "from trajax.toy import documents, tasks, world; "
          "print(t._corpus_digest(world, documents, tasks))")
  digests = set()
  for hash_seed in ("1", "2"):
    env = dict(os.environ, PYTHONHASHSEED=hash_seed,
               PYTHONPATH=str(pathlib.Path(toy_world.__file__).resolve().parents[2]))
    digests.add(
        subprocess.run(
            [sys.executable, "-c", code, os.path.dirname(__file__)], env=env, check=True,
            capture_output=True, text=True).stdout.strip())
  assert digests == {_corpus_digest(toy_world, toy_documents, toy_tasks)}


def test_tokenizer_is_a_function_of_its_texts(splits, tokenizer_dir, tmp_path):
  again = toy_tokenizer.train_tokenizer(splits["train"], toy_tokenizer.DEFAULT_VOCAB_SIZE, tmp_path)
  names = sorted(os.listdir(tokenizer_dir))
  assert names == sorted(os.listdir(again))
  for name in names:
    assert (again / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name


def test_rendered_facts_agree_with_the_world(world, splits):
  table = world.facts()
  seen = {}
  for doc in splits["train"] + splits["validation"]:
    for subject, relation, value in parse_facts(doc):
      assert subject in world.by_name, (subject, relation, value)
      if relation == "friend_of" and (subject, relation) not in table:
        pytest.fail(f"{subject} has no friend but the text says {value}")
      assert table[subject, relation] == value, (subject, relation, value)
      seen[relation.split("_colour")[0] if relation.endswith("_colour") and relation !=
           "favourite_colour" else relation] = True
  # every phrasing family was actually exercised
  assert {
      "age", "occupation", "lives_in", "favourite_food", "favourite_colour", "friend_of",
      "owns_pet", "species", "river"
  } <= set(seen)
  assert any(o in seen for o in toy_world.OBJECTS)


def test_pronouns_agree_with_the_paragraph_subject(world, splits):
  intro = re.compile(r"^(?:There is an? [a-z]+ in [A-Z][a-z]+ called ([A-Z][a-z]+)\.|"
                     r"([A-Z][a-z]+) (?:lives in|works as) )")
  checked = 0
  for doc in splits["train"]:
    for paragraph in doc.split("\n\n"):
      m = intro.match(paragraph)
      if not m:
        continue
      person = world.by_name[_groups(m)[0]]
      wrong = {"female": r"\b(?:[Hh]e|[Hh]is)\b", "male": r"\b(?:[Ss]he|[Hh]er)\b"}
      assert not re.search(wrong[person.gender], paragraph), paragraph
      checked += 1
  assert checked > 50


def test_validation_split_is_held_out(world, splits):
  train, valid = splits["train"], splits["validation"]
  assert len(train) == 40 and len(valid) == 10
  assert not set(train) & set(valid)
  # no validation paragraph is copied wholesale from training (beyond short, generic ones)
  train_paragraphs = {p for d in train for p in d.split("\n\n")}
  long_valid = [p for d in valid for p in d.split("\n\n")[1:] if len(p) > 200]
  assert sum(p in train_paragraphs for p in long_valid) < 0.05 * len(long_valid)
  # same world: validation facts parse and agree (checked above) and name the same people
  assert {s for s, _, _ in parse_facts("\n".join(valid))} <= set(world.by_name)


def test_held_out_splits_are_apart_and_leave_the_others_unchanged(world, splits):
  more = toy_documents.generate_splits(world, n_train=40, n_validation=10, seed=0,
                                       min_tokens=MIN_TOKENS, n_analysis=3, n_corrupted=4)
  assert list(more) == ["train", "validation", "analysis", "corrupted"]
  assert more["train"] == splits["train"] and more["validation"] == splits["validation"]
  assert len(more["analysis"]) == 3 and len(more["corrupted"]) == 4
  texts = [t for split in more.values() for t in split]
  assert len(set(texts)) == len(texts)  # no document in two splits


# ------------------------------------------------------------------- tokenizer


def test_documents_have_at_least_min_tokens(splits, hf_tokenizer):
  for doc in splits["train"] + splits["validation"]:
    n = len(hf_tokenizer(doc, add_special_tokens=False)["input_ids"])
    assert n >= MIN_TOKENS
    assert n >= toy_documents.count_pieces(doc)  # the generator's bound is a lower bound
    assert n < 2 * MIN_TOKENS  # and not wildly above it


def test_tokenizer_files_and_special_tokens(tokenizer_dir, hf_tokenizer):
  for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    assert (tokenizer_dir / name).is_file()
  tok = hf_tokenizer
  assert len(tok) == toy_tokenizer.DEFAULT_VOCAB_SIZE
  assert [tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
  assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("</s>", "</s>", "<pad>")
  assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 2, 1)
  assert tok("hello")["input_ids"][0] == 2
  assert tok("hello", add_special_tokens=False)["input_ids"][0] != 2
  batch = tok(["hi", "hello there, world"], padding=True)
  short = batch["input_ids"][0]
  assert short[0] == 2 and short[-1] == 1  # right padding with <pad>=1
  assert batch["attention_mask"][0][-1] == 0


def test_tokenizer_matches_opt_conventions(hf_tokenizer):
  if not OPT_TOKENIZER.is_dir():
    pytest.skip(f"no OPT tokenizer at {OPT_TOKENIZER}")
  from transformers import AutoTokenizer
  opt = AutoTokenizer.from_pretrained(str(OPT_TOKENIZER))
  toy = hf_tokenizer
  for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "bos_token_id", "eos_token_id",
               "pad_token_id", "unk_token_id", "padding_side"):
    assert getattr(toy, attr) == getattr(opt, attr), attr
  # same layout of special tokens for one text and for a pair
  for tok in (toy, opt):
    ids = tok("a b", "c")["input_ids"]
    assert ids[0] == 2 and ids.count(2) == 2
    assert tok.decode(tok("The hat is red.")["input_ids"]) == "</s>The hat is red."


@pytest.mark.parametrize("text", [
    "Hello world.", "  two  spaces\n\nand\ttabs ",
    "caf\u00e9, na\u00efve \u2014 \u6f22\u5b57 \U0001f600", "'s 's don't 123456 3.14"
])
def test_tokenizer_round_trips_any_text(hf_tokenizer, text):
  ids = hf_tokenizer(text)["input_ids"]
  assert hf_tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_round_trips_documents(splits, hf_tokenizer):
  for doc in splits["validation"]:
    ids = hf_tokenizer(doc)["input_ids"]
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == doc


def test_names_are_multi_token_and_common_words_are_not(world, hf_tokenizer):
  def n_tokens(word):
    return len(hf_tokenizer(" " + word, add_special_tokens=False)["input_ids"])

  name_lengths = [n_tokens(p.name) for p in world.people]
  assert sum(n > 1 for n in name_lengths) > 0.6 * len(name_lengths)
  common = ("the", "of", "is", "lives", "in", "years", "old", "friend", "colour", "favourite")
  assert all(n_tokens(w) == 1 for w in common)


def test_train_tokenizer_rejects_tiny_vocab(tmp_path):
  with pytest.raises(ValueError, match="vocab_size"):
    toy_tokenizer.train_tokenizer(["abc"], 200, tmp_path)


# ------------------------------------------------------------- BIG-bench tasks


@pytest.fixture(scope="module")
def tasks(world):
  return toy_tasks.multiple_choice_tasks(world, n_examples=60, seed=0)


def test_tasks_are_valid_bigbench_json(tasks, tmp_path):
  assert len(tasks) >= 3
  assert len({t["name"] for t in tasks}) == len(tasks)
  for task in tasks:
    for key in ("name", "description", "keywords", "metrics", "preferred_score", "examples",
                "example_input_prefix", "example_output_prefix", "append_choices_to_input"):
      assert key in task, (task["name"], key)
    assert task["metrics"] == ["multiple_choice_grade"]
    assert task["preferred_score"] == "multiple_choice_grade"
    assert len(task["examples"]) == 60
    inputs = [ex["input"] for ex in task["examples"]]
    assert len(set(inputs)) == len(inputs), task["name"]
    for ex in task["examples"]:
      scores = ex["target_scores"]
      assert sorted(scores.values()).count(1) == 1 and set(scores.values()) <= {0, 1}
      stripped = [o.strip().lower() for o in scores]
      assert len(set(stripped)) == len(stripped)
      assert all(o.startswith(" ") for o in scores)  # continuation of the input
    path = toy_tasks.write_bigbench_task(task, tmp_path)
    assert path == tmp_path / task["name"] / "task.json"
    assert json.loads(path.read_text(encoding="utf-8")) == task


def test_tasks_are_deterministic(world, tasks):
  assert toy_tasks.multiple_choice_tasks(world, n_examples=60, seed=0) == tasks
  assert toy_tasks.multiple_choice_tasks(world, n_examples=60, seed=1) != tasks


def _correct(ex):
  return next(o for o, s in ex["target_scores"].items() if s == 1)


def test_fact_task_answers_agree_with_the_world(world, tasks):
  table = world.facts()
  by_name = {t["name"]: t for t in tasks}
  for name in ("toy_attribute_lookup", "toy_relation_lookup"):
    for ex in by_name[name]["examples"]:
      for option, score in ex["target_scores"].items():
        facts = parse_facts(ex["input"] + option)
        assert facts, ex["input"] + option
        agrees = all(table.get((s, r)) == v for s, r, v in facts)
        assert agrees == bool(score), (ex["input"], option, score)


def test_grammar_task_answers(world, tasks):
  by_name = {t["name"]: t for t in tasks}
  for ex in by_name["toy_subject_verb_agreement"]["examples"]:
    plural = " and " in ex["input"]
    verb = _correct(ex).split()[0]
    assert verb in (("are",) if plural else ("is", "lives")), ex
    if ex["input"].endswith((" He", " She")):  # "X works as a baker. She" -> lives
      person = world.by_name[ex["input"].split()[0]]
      assert ex["input"].split()[-1] == ("She" if person.gender == "female" else "He")
    # the correct sentence is also a true one
    assert all(world.facts()[s, r] == v for s, r, v in parse_facts(ex["input"] + _correct(ex))
               if s not in PRONOUNS)
  for ex in by_name["toy_pronoun_gender"]["examples"]:
    person = world.by_name[ex["input"].split()[0]]
    assert _correct(ex).split()[0] == ("She" if person.gender == "female" else "He")


def test_bigbench_prompt_is_corpus_text(tasks):
  # BIG-bench's few-shot prompt: shots joined by the separator, each
  # prefix + input + output prefix + target; here that yields corpus sentences.
  task = next(t for t in tasks if t["name"] == "toy_attribute_lookup")
  shots = task["examples"][:2]
  sep = task["few_shot_example_separator"]
  prompt = sep.join(task["example_input_prefix"] + s["input"] + task["example_output_prefix"] +
                    _correct(s) for s in shots)
  assert len(parse_facts(prompt)) == 2


def test_invalid_tasks_are_rejected(tasks, tmp_path):
  bad = json.loads(json.dumps(tasks[0]))
  bad["examples"][0]["target_scores"] = {" a": 1, " b": 1}
  with pytest.raises(ValueError, match="exactly one"):
    toy_tasks.write_bigbench_task(bad, tmp_path)
  del bad["metrics"]
  with pytest.raises(ValueError, match="metrics"):
    toy_tasks.validate_bigbench_task(bad)
  with pytest.raises(ValueError, match="n_examples"):
    toy_tasks.multiple_choice_tasks(toy_world.make_world(0, n_people=6, n_towns=4), 100, 0)

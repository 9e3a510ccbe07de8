"""A seeded toy world, English-like documents about it, a small tokenizer, BIG-bench tasks.

The toy study needs text whose tokens range from trivially predictable to
"needs knowledge": function words, punctuation and the continuation of a
multi-syllable name are easy; the value after "The colour of Dolvena's hat is"
can only be predicted by a model that has memorised the world. Every fact is
drawn once, in `make_world`, so all documents (train and validation) agree,
and the multiple-choice tasks ask about the same facts.

    world = make_world(seed=0)
    splits = generate_splits(world, n_train=200, n_validation=50, seed=0, min_tokens=1024)
    train_tokenizer(splits["train"], DEFAULT_VOCAB_SIZE, "out/tokenizer")
    for task in multiple_choice_tasks(world, n_examples=100, seed=0):
        write_bigbench_task(task, "out/bigbench")

Everything is a pure function of its seeds (Python's `random.Random`, never the
global state, never iteration over sets), so a corpus is reproducible across
processes and machines.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import random
import re
from typing import Iterable, Sequence

# --------------------------------------------------------------------- lexicon

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
           "kl", "st", "tr", "sh", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_CODAS = ("", "", "", "n", "r", "l", "s", "m")  # "" repeated: mostly open syllables
# The ending of a person's name gives their gender, so "he"/"she" after a name is
# learnable from morphology alone, before any fact is memorised.
_FEMALE_ENDINGS = ("a", "ina", "elle", "ia")
_MALE_ENDINGS = ("o", "ar", "en", "us")
_TOWN_ENDINGS = ("ford", "ton", "wick", "by", "dale", "mouth")
_PET_ENDINGS = ("y", "ie", "kin", "bo")

OCCUPATIONS = ("baker", "farmer", "teacher", "doctor", "fisher", "miller", "weaver", "potter",
               "carpenter", "tailor", "builder", "singer", "painter", "artist", "engineer",
               "astronomer", "innkeeper", "officer", "author", "archer")
FOODS = ("bread", "cheese", "apples", "soup", "rice", "fish", "honey", "plums", "onions", "pears",
         "beans", "cake", "eggs", "carrots", "noodles", "olives")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "grey", "orange", "purple",
           "pink")
SPECIES = ("cat", "dog", "horse", "goat", "sheep", "owl", "rabbit", "duck", "pig", "donkey",
           "parrot", "eagle")
SIZES = ("small", "large", "tiny", "huge")
OBJECTS = ("hat", "coat", "scarf", "boat", "cart", "lamp", "bicycle", "umbrella")
TOWN_KINDS = ("village", "town", "city", "port")
REGIONS = ("north", "south", "east", "west", "hills", "valley", "marshes", "highlands")
MIN_AGE, MAX_AGE = 18, 89

#: Every (subject, relation) pair in `World.facts()` uses one of these relations.
PERSON_RELATIONS = ("gender", "age", "occupation", "lives_in", "favourite_food", "favourite_colour",
                    "friend_of", "owns_pet") + tuple(f"{obj}_colour" for obj in OBJECTS)
ANIMAL_RELATIONS = ("species", "colour", "size", "owned_by")
TOWN_RELATIONS = ("kind", "region", "river")

# ----------------------------------------------------------------------- world


@dataclasses.dataclass(frozen=True)
class Person:
  name: str
  gender: str  # "female" | "male"
  age: int
  occupation: str
  town: str  # name of a Town
  food: str  # favourite food
  colour: str  # favourite colour
  friend: str | None  # best friend; symmetric
  belongings: tuple[tuple[str, str], ...]  # (object, its colour)
  pet: str | None  # name of an Animal


@dataclasses.dataclass(frozen=True)
class Animal:
  name: str
  species: str
  colour: str
  size: str
  owner: str


@dataclasses.dataclass(frozen=True)
class Town:
  name: str
  kind: str
  region: str
  river: str


@dataclasses.dataclass(frozen=True)
class World:
  """All entities of one toy world; the single source of truth for every fact."""
  seed: int
  people: tuple[Person, ...]
  animals: tuple[Animal, ...]
  towns: tuple[Town, ...]

  @functools.cached_property
  def by_name(self) -> dict[str, Person | Animal | Town]:
    return {e.name: e for e in (*self.people, *self.animals, *self.towns)}

  @functools.cached_property
  def residents(self) -> dict[str, tuple[Person, ...]]:
    return {t.name: tuple(p for p in self.people if p.town == t.name) for t in self.towns}

  def facts(self) -> dict[tuple[str, str], str]:
    """The fact table.

        Returns:
          {(subject name, relation): value as it is written in text}; relations are
          those of PERSON_RELATIONS / ANIMAL_RELATIONS / TOWN_RELATIONS (a person
          has `<object>_colour` only for objects they own, `friend_of` and
          `owns_pet` only when they have one).
        """
    table = {}
    for p in self.people:
      table.update({(p.name, "gender"): p.gender, (p.name, "age"): str(p.age),
                    (p.name, "occupation"): p.occupation, (p.name, "lives_in"): p.town,
                    (p.name, "favourite_food"): p.food, (p.name, "favourite_colour"): p.colour})
      if p.friend:
        table[p.name, "friend_of"] = p.friend
      if p.pet:
        table[p.name, "owns_pet"] = p.pet
      for obj, colour in p.belongings:
        table[p.name, f"{obj}_colour"] = colour
    for a in self.animals:
      table.update({(a.name, "species"): a.species, (a.name, "colour"): a.colour,
                    (a.name, "size"): a.size, (a.name, "owned_by"): a.owner})
    for t in self.towns:
      table.update({(t.name, "kind"): t.kind, (t.name, "region"): t.region,
                    (t.name, "river"): t.river})
    return table


def _derive_seed(*parts) -> int:
  """A 63-bit seed from any tuple of seeds and tags, stable across processes."""
  digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") >> 1


def _new_name(rng: random.Random, used: set[str], n_syllables: tuple[int, int],
              endings: Sequence[str]) -> str:
  for _ in range(1000):
    stem = "".join(
        rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
        for _ in range(rng.randint(*n_syllables)))
    name = (stem + rng.choice(endings)).capitalize() if endings else stem.capitalize()
    if name not in used and len(name) >= 4:
      used.add(name)
      return name
  raise RuntimeError("could not draw a fresh name in 1000 tries; the world is too large")


def make_world(seed: int, n_people: int = 480, n_towns: int = 12,
               pet_fraction: float = 0.6) -> World:
  """Draws a toy world.

    Args:
      seed: any int; the same seed gives the same world.
      n_people: number of people (>= 5: tasks need four distinct names besides one).
      n_towns: number of towns (>= 4: tasks need four distinct towns).
      pet_fraction: probability that a person owns an animal.
    Returns:
      A World. People are spread round-robin over towns, so every town has residents;
      best friends are a random pairing (with an odd count, one person has none).
    """
  if n_people < 5 or n_towns < 4 or n_towns > n_people:
    raise ValueError(f"make_world: need n_people >= 5 and 4 <= n_towns <= n_people, "
                     f"got n_people={n_people}, n_towns={n_towns}")
  if not 0.0 <= pet_fraction <= 1.0:
    raise ValueError(f"make_world: pet_fraction must be in [0, 1], got {pet_fraction}")
  rng = random.Random(_derive_seed(seed, "world"))
  used: set[str] = set()
  rivers = [_new_name(rng, used, (2, 2), ()) for _ in range(max(2, n_towns // 2))]
  towns = tuple(
      Town(_new_name(rng, used, (
          1, 2), _TOWN_ENDINGS), rng.choice(TOWN_KINDS), rng.choice(REGIONS), rng.choice(rivers))
      for _ in range(n_towns))
  order = list(range(n_people))
  rng.shuffle(order)
  friend_of = {}
  for a, b in zip(order[0::2], order[1::2]):
    friend_of[a], friend_of[b] = b, a
  genders = [rng.choice(("female", "male")) for _ in range(n_people)]
  names = [
      _new_name(rng, used, (2, 2), _FEMALE_ENDINGS if g == "female" else _MALE_ENDINGS)
      for g in genders
  ]
  people, animals = [], []
  for i, (name, gender) in enumerate(zip(names, genders)):
    pet = None
    if rng.random() < pet_fraction:
      pet = _new_name(rng, used, (1, 1), _PET_ENDINGS)
      animals.append(Animal(pet, rng.choice(SPECIES), rng.choice(COLOURS), rng.choice(SIZES), name))
    belongings = tuple((obj, rng.choice(COLOURS)) for obj in rng.sample(OBJECTS, 2))
    people.append(
        Person(name=name, gender=gender, age=rng.randint(MIN_AGE, MAX_AGE),
               occupation=rng.choice(OCCUPATIONS), town=towns[i % n_towns].name,
               food=rng.choice(FOODS), colour=rng.choice(COLOURS),
               friend=names[friend_of[i]] if i in friend_of else None, belongings=belongings,
               pet=pet))
  return World(seed, tuple(people), tuple(animals), towns)


# ------------------------------------------------------------------- rendering


def _a(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


# relation -> (templates naming the subject, templates with a pronoun). Fields:
# S subject, He/he/His pronouns, and the value fields of _person_fields.
_PERSON_TEMPLATES = {
    "age": (("{S} is {age} years old.", "{S} was born {age} years ago."),
            ("{He} is {age} years old.", "{He} was born {age} years ago.")),
    "occupation": (
        ("{S} works as {a_occ}.", "{S} is {a_occ} by trade.",
         "By trade, {S} is {a_occ}."), ("{He} works as {a_occ}.", "{He} is {a_occ} by trade.")),
    "lives_in": (
        ("{S} lives in {town}.", "{S} has a small house in {town}.",
         "The home of {S} is in {town}."), ("{He} lives in {town}.", "{His} home is in {town}.")),
    "favourite_food": (("The favourite food of {S} is {food}.", "{S} likes to eat {food}.",
                        "Of all foods, {S} likes {food} best."), ("{His} favourite food is {food}.",
                                                                  "{He} likes to eat {food}.")),
    "favourite_colour": (
        ("The favourite colour of {S} is {colour}.",
         "{S} likes the colour {colour} best."), ("{His} favourite colour is {colour}.",)),
    "friend_of": (("{S} and {friend} are old friends.", "{S} is a good friend of {friend}.",
                   "The best friend of {S} is {friend}."), ("{His} best friend is {friend}.",
                                                            "{He} is a good friend of {friend}.")),
    "owns_pet": (("{S} has {a_pet} called {pet}.", "The {species} of {S} is called {pet}."),
                 ("{He} has {a_pet} called {pet}.",)),
}
_OBJECT_TEMPLATES = (("The colour of {S}'s {obj} is {col}.", "{S}'s {obj} is {col}.",
                      "{S} has {a_colobj}."), ("{His} {obj} is {col}.", "{He} has {a_colobj}."))
_PET_FOLLOWUPS = (("{pet} is {a_size_species}.", "{pet} belongs to {S}."),
                  ("It is {a_size_species}.",))
_TOWN_TEMPLATES = ("{T} is {a_kind} in the {region}.", "{T} lies on the river {river}.",
                   "The river {river} flows through {T}.",
                   "In the {region} lies the {kind} of {T}.")
_INTRO_TEMPLATES = ("{S} lives in {town}.", "{S} works as {a_occ}.",
                    "There is {a_occ} in {town} called {S}.")
_TITLES = ("The people of {T}", "Notes from {T}", "A story from {T}", "Life in {T}")
_CONNECTIVES = ("Also, ", "In addition, ", "As everyone knows, ", "Of course, ", "Besides, ")

# Narrative sentences with names: true to the world but no fact template.
_NARRATIVE = ("One day, {S} went to the market with {friend}.",
              "\"Good morning,\" said {S} to {friend}.",
              "{S} and {friend} often walk along the river {river}.",
              "{S} cooked {food} for {friend} that evening.", "\"Where is {pet}?\" asked {S}.",
              "Every morning, {S} feeds {pet}.")
_NOUNS = ("man", "woman", "child", "boy", "girl", "bird", "road", "house", "tree", "market",
          "garden", "hill", "door", "window", "bell", "wind", "rain", "sun", "moon", "fire",
          "field", "bridge", "well", "path", "gate", "stone", "wall", "sky")
_ADJECTIVES = ("old", "young", "tall", "quiet", "big", "dark", "bright", "cold", "warm", "long",
               "little", "busy", "empty", "wet", "strange")
_VERBS = ("walked", "ran", "waited", "sat", "stood", "slept", "sang", "looked", "turned", "stopped",
          "moved")
_PREPOSITIONS = ("to", "along", "near", "behind", "under", "over", "by", "across", "towards",
                 "into")
_TIMES = ("In the morning", "Later that day", "After a while", "At noon", "In the evening",
          "That night", "Soon after", "Once again")
_FILLER_PATTERNS = ("{Time}, the {adj} {noun} {verb} {prep} the {noun2}.",
                    "The {noun} was {adj}, and the {noun2} was {adj2}.",
                    "There was {a_adj_noun} {prep} the {noun2}.",
                    "Nobody knew why the {noun} {verb} {prep} the {noun2}.",
                    "It was {a_adj} day, and the {noun} {verb} {prep} the {noun2}.",
                    "It was a quiet day.", "Nothing much happened after that.",
                    "People still talk about it.", "That was how it had always been.")

# Word pieces as GPT-2's byte-level pre-tokenizer cuts them, whitespace left out:
# every BPE token lies inside one piece, so the count is a lower bound on tokens.
_PIECE_RE = re.compile(r"'(?:s|t|re|ve|m|ll|d)|[A-Za-z]+|[0-9]+|[^\sA-Za-z0-9]+")


def count_pieces(text: str) -> int:
  """Lower bound on the byte-level BPE token count of `text` (any vocabulary).

    Args:
      text: a string.
    Returns:
      The number of non-whitespace GPT-2 pre-tokenizer pieces.
    """
  return len(_PIECE_RE.findall(text))


def _person_fields(world: World, p: Person) -> dict[str, str]:
  female = p.gender == "female"
  fields = dict(S=p.name, He="She" if female else "He", His="Her" if female else "His",
                age=str(p.age), a_occ=_a(p.occupation), town=p.town, food=p.food, colour=p.colour,
                friend=p.friend or "", pet=p.pet or "", river=world.by_name[p.town].river)
  if p.pet:
    animal = world.by_name[p.pet]
    fields.update(species=animal.species, a_pet=_a(f"{animal.colour} {animal.species}"),
                  a_size_species=_a(f"{animal.size} {animal.species}"))
  return fields


def _join(connective: str, sentence: str, names: dict) -> str:
  if not connective:
    return sentence
  first = re.match(r"[A-Za-z]*", sentence).group()
  return connective + (sentence if first in names else sentence[0].lower() + sentence[1:])


def _filler(rng: random.Random) -> str:
  noun, noun2 = rng.sample(_NOUNS, 2)
  adj, adj2 = rng.sample(_ADJECTIVES, 2)
  return rng.choice(_FILLER_PATTERNS).format(Time=rng.choice(_TIMES), adj=adj, adj2=adj2, noun=noun,
                                             noun2=noun2, verb=rng.choice(_VERBS),
                                             prep=rng.choice(_PREPOSITIONS),
                                             a_adj_noun=_a(f"{adj} {noun}"), a_adj=_a(adj))


def _person_paragraph(rng: random.Random, world: World, p: Person) -> str:
  f = _person_fields(world, p)
  sentences = [rng.choice(_INTRO_TEMPLATES).format(**f)]
  pronoun_ok = True  # the previous sentence was about p, so "he"/"she" resolves
  items = [
      r for r in _PERSON_TEMPLATES if (r != "friend_of" or p.friend) and (r != "owns_pet" or p.pet)
  ] + [("obj", o, c) for o, c in p.belongings]
  for item in rng.sample(items, rng.randint(3, min(7, len(items)))):
    if rng.random() < 0.3:
      narrative = [
          t for t in _NARRATIVE if ("{friend}" not in t or p.friend) and ("{pet}" not in t or p.pet)
      ]
      sentences.append(rng.choice(narrative).format(**f) if rng.random() < 0.5 else _filler(rng))
      pronoun_ok = False  # another person or thing may have been the last subject
    if isinstance(item, tuple):
      named, pronoun = _OBJECT_TEMPLATES
      fields = dict(f, obj=item[1], col=item[2], a_colobj=_a(f"{item[2]} {item[1]}"))
    else:
      named, pronoun = _PERSON_TEMPLATES[item]
      fields = f
    use_pronoun = pronoun_ok and rng.random() < 0.5
    sentence = rng.choice(pronoun if use_pronoun else named).format(**fields)
    connective = rng.choice(_CONNECTIVES) if rng.random() < 0.2 else ""
    sentences.append(_join(connective, sentence, world.by_name))
    pronoun_ok = True
    if item == "owns_pet" and rng.random() < 0.6:
      followups = _PET_FOLLOWUPS[1] if rng.random() < 0.5 else _PET_FOLLOWUPS[0]
      sentences.append(rng.choice(followups).format(**f))
      pronoun_ok = False  # "it" was the last subject
  return " ".join(sentences)


def _town_paragraph(rng: random.Random, world: World, town: Town) -> str:
  fields = dict(T=town.name, a_kind=_a(town.kind), kind=town.kind, region=town.region,
                river=town.river)
  sentences = [t.format(**fields) for t in rng.sample(_TOWN_TEMPLATES, rng.randint(2, 3))]
  if rng.random() < 0.5:
    sentences.append(_filler(rng))
  residents = world.residents[town.name]
  named = rng.sample(residents, min(len(residents), rng.randint(2, 3)))
  if len(named) == 1:
    sentences.append(f"Among the people who live there is {named[0].name}.")
  else:
    listed = ", ".join(p.name for p in named[:-1]) + " and " + named[-1].name
    sentences.append(f"Many people live there, among them {listed}.")
  return " ".join(sentences)


def render_document(world: World, seed: int, min_tokens: int) -> str:
  """One document: a title, then paragraphs about towns, residents and nothing much.

    Args:
      world: the World whose facts the document states.
      seed: the document's own seed.
      min_tokens: the document has at least this many BPE tokens under any
        byte-level BPE tokenizer (counted by `count_pieces`, without BOS).
    Returns:
      Plain text; paragraphs separated by a blank line, no trailing newline.
    """
  rng = random.Random(seed)
  town = rng.choice(world.towns)
  parts = [rng.choice(_TITLES).format(T=town.name)]
  n = count_pieces(parts[0])
  while n < min_tokens:
    r = rng.random()
    if r < 0.12:
      town = rng.choice(world.towns)
      paragraph = _town_paragraph(rng, world, town)
    elif r < 0.22:
      paragraph = " ".join(_filler(rng) for _ in range(rng.randint(2, 5)))
    else:
      local = world.residents[town.name]
      person = rng.choice(local if rng.random() < 0.8 else world.people)
      paragraph = _person_paragraph(rng, world, person)
    parts.append(paragraph)
    n += count_pieces(paragraph)
  return "\n\n".join(parts)


def generate_documents(world: World, n_docs: int, seed: int, min_tokens: int = 1024) -> list[str]:
  """Documents about `world`.

    Document i depends only on (seed, i), so the first k documents do not change
    when n_docs grows.

    Args:
      world: from make_world.
      n_docs: number of documents (>= 0).
      seed: the stream's seed; different seeds give different documents.
      min_tokens: lower bound on each document's BPE token count (no BOS), e.g.
        the block length 512-2048 the documents will be cut to.
    Returns:
      A list of n_docs strings.
    """
  if n_docs < 0 or min_tokens < 1:
    raise ValueError(f"generate_documents: need n_docs >= 0 and min_tokens >= 1, "
                     f"got n_docs={n_docs}, min_tokens={min_tokens}")
  return [render_document(world, _derive_seed(seed, "doc", i), min_tokens) for i in range(n_docs)]


def generate_splits(world: World, n_train: int, n_validation: int, seed: int,
                    min_tokens: int = 1024) -> dict[str, list[str]]:
  """Train and held-out validation documents: same world, independent seed streams.

    Args:
      world: from make_world.
      n_train, n_validation: documents per split.
      seed: one seed for both; each split derives its own stream from it.
      min_tokens: as in generate_documents.
    Returns:
      {"train": [...], "validation": [...]}; no text appears in both.
    """
  splits = {
      name: generate_documents(world, n, _derive_seed(seed, name), min_tokens)
      for name, n in (("train", n_train), ("validation", n_validation))
  }
  overlap = set(splits["train"]) & set(splits["validation"])
  if overlap:  # astronomically unlikely with real lengths; never hand out a leaky split
    raise RuntimeError(f"generate_splits: {len(overlap)} documents in both splits; "
                       f"raise min_tokens")
  return splits


# ------------------------------------------------------------------- tokenizer

# With 480 people a 2048 vocabulary turns half the names into single tokens (they
# are as frequent as the common words); at 1536 a name is ~3 tokens and every
# common word is still one, so names give the easy "continue the word" tokens.
DEFAULT_VOCAB_SIZE = 1536
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as OPT (fairseq order)

# OPT's own tokenizer_config/special_tokens_map values (bos = eos = unk = "</s>").
_TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "errors": "replace",
    "bos_token": "</s>",
    "eos_token": "</s>",
    "unk_token": "</s>",
    "pad_token": "<pad>",
    "add_prefix_space": False,
    "add_bos_token": True,
    "model_max_length": 2048,
    "padding_side": "right",
    "clean_up_tokenization_spaces": False,
}
_SPECIAL_TOKENS_MAP = {
    "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>", "pad_token": "<pad>"
}


def train_tokenizer(texts: Iterable[str], vocab_size: int,
                    out_dir: str | os.PathLike) -> pathlib.Path:
  """Trains a byte-level BPE tokenizer that loads and behaves like OPT's.

    `transformers.AutoTokenizer.from_pretrained(out_dir)` gives `<s>`=0, `<pad>`=1,
    `</s>`=2, `<unk>`=3, prepends BOS `</s>` when encoding, pads right with 1, and
    decode(encode(text)) == text for any text (byte-level: no unknown tokens).

    Args:
      texts: training documents.
      vocab_size: total vocabulary including the 4 special tokens and the 256
        byte tokens (> 260). The result is smaller if the texts run out of merges.
    Returns:
      out_dir, holding tokenizer.json, tokenizer_config.json, special_tokens_map.json,
      vocab.json and merges.txt.
    """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  if vocab_size <= 256 + len(SPECIAL_TOKENS):
    raise ValueError(f"train_tokenizer: vocab_size must exceed 260 (256 bytes + 4 "
                     f"special tokens), got {vocab_size}")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  bos = SPECIAL_TOKENS.index("</s>")
  if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != [0, 1, 2, 3]:
    raise RuntimeError(f"train_tokenizer: special tokens got ids "
                       f"{[tok.token_to_id(t) for t in SPECIAL_TOKENS]}, expected 0..3")
  # As OPT's: "</s> A" for one text, "</s> A </s> B" for a pair.
  tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s>:1 $B:1",
                                                     special_tokens=[("</s>", bos)])
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tok.save(str(out / "tokenizer.json"))
  tok.model.save(str(out))  # vocab.json + merges.txt, for readers without tokenizer.json
  for name, content in (("tokenizer_config.json", _TOKENIZER_CONFIG), ("special_tokens_map.json",
                                                                       _SPECIAL_TOKENS_MAP)):
    (out / name).write_text(json.dumps(content, indent=2) + "\n")
  return out


# ------------------------------------------------------------- BIG-bench tasks

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
  rng = random.Random(_derive_seed(seed, "tasks"))
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
      item = (f"{p.name} works as {_a(p.occupation)}. {he}", f" lives in {p.town}.",
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
      scores = {f" {_a(v)}.": s for v, s in scores.items()}
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
      prefix = f"{e.name} has {_a(animal.colour + ' ' + animal.species)} called"
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

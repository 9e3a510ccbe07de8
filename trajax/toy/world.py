"""The toy world: people, animals and towns, every fact drawn once from a seed.

The toy study needs text whose tokens range from trivially predictable to
"needs knowledge": function words, punctuation and the continuation of a
multi-syllable name are easy; the value after "The colour of Dolvena's hat is"
can only be predicted by a model that has memorised the world. Every fact is
drawn once, in `make_world`, so all documents (train and validation,
`trajax.toy.documents`) agree, and the multiple-choice tasks (`trajax.toy.tasks`)
ask about the same facts.

    world = make_world(seed=0)
    world.facts()[("Dolvena", "hat_colour")]

Everything is a pure function of its seeds (Python's `random.Random`, never the
global state, never iteration over sets), so a world is reproducible across
processes and machines.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import random
from typing import Sequence

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


def derive_seed(*parts) -> int:
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
  rng = random.Random(derive_seed(seed, "world"))
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

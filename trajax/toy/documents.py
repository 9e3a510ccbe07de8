"""English-like documents about a toy world (`trajax.toy.world`).

    splits = generate_splits(world, n_train=200, n_validation=50, seed=0, min_tokens=1024)

A document is a title and paragraphs about towns, their residents and nothing
much, every fact true to the world. Document i of a stream depends only on
(seed, i), through Python's `random.Random`, so documents are reproducible across
processes and machines.
"""
from __future__ import annotations

import random
import re

from trajax.toy.world import Person, Town, World, derive_seed


def with_article(phrase: str) -> str:
  """"a phrase" or "an phrase"."""
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
                age=str(p.age), a_occ=with_article(p.occupation), town=p.town, food=p.food,
                colour=p.colour, friend=p.friend or "", pet=p.pet or "",
                river=world.by_name[p.town].river)
  if p.pet:
    animal = world.by_name[p.pet]
    fields.update(species=animal.species, a_pet=with_article(f"{animal.colour} {animal.species}"),
                  a_size_species=with_article(f"{animal.size} {animal.species}"))
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
                                             a_adj_noun=with_article(f"{adj} {noun}"),
                                             a_adj=with_article(adj))


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
      fields = dict(f, obj=item[1], col=item[2], a_colobj=with_article(f"{item[2]} {item[1]}"))
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
  fields = dict(T=town.name, a_kind=with_article(town.kind), kind=town.kind, region=town.region,
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
  return [render_document(world, derive_seed(seed, "doc", i), min_tokens) for i in range(n_docs)]


def generate_splits(world: World, n_train: int, n_validation: int, seed: int,
                    min_tokens: int = 1024, n_analysis: int = 0,
                    n_corrupted: int = 0) -> dict[str, list[str]]:
  """Train and held-out documents: same world, independent seed streams.

  Args:
    world: from make_world.
    n_train, n_validation: documents per split.
    seed: one seed for every split; each derives its own stream from it.
    min_tokens: as in generate_documents.
    n_analysis: documents of a third held-out split, the tokens a study analyses
      (kept apart from the validation split its perplexity is measured on).
    n_corrupted: documents of a fourth held-out split, the corpus the corrupted-text
      experiment corrupts (the paper's opensubtitles subset, App. C.1: apart from the
      documents the decoding prompts come from).
  Returns:
    {"train": [...], "validation": [...]} (+ "analysis", "corrupted" when asked
    for); no text appears in two splits.
  """
  sizes = (("train", n_train), ("validation", n_validation)) + tuple(
      (name, n) for name, n in (("analysis", n_analysis), ("corrupted", n_corrupted)) if n > 0)
  splits = {
      name: generate_documents(world, n, derive_seed(seed, name), min_tokens) for name, n in sizes
  }
  names = list(splits)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      overlap = set(splits[a]) & set(splits[b])
      if overlap:  # astronomically unlikely with real lengths; never hand out a leaky split
        raise RuntimeError(f"generate_splits: {len(overlap)} documents in both {a} and {b}; "
                           f"raise min_tokens")
  return splits

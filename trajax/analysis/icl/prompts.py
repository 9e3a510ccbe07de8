"""k-shot prompts (BIG-bench's make_nshot_dataset) and their tokenised (prompt, option) requests.

`make_prompts` builds the prompt text of every query example of a task part as
`trajax.analysis.icl.bigbench` describes; `build_requests` tokenises each
prompt+option once and locates the option span through character offsets, so
scoring is model-independent.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from trajax.analysis.icl.bigbench import BigBenchTask, McExample, PromptFormat, TaskPart

# ----------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A k-shot prompt for one example; options are appended to `text` as is."""
  task: str  # TaskPart.name
  example_index: int  # index into default_set(part)
  text: str
  options: tuple[str, ...]
  scores: tuple[float, ...]  # target_scores, aligned with options
  shot_indices: tuple[int, ...]


def default_set(part: TaskPart, dedupe: bool = True) -> list[McExample]:
  """The part's examples as BIG-bench evaluates them: file order, duplicates dropped."""
  if not dedupe:
    return list(part.examples)
  seen, out = set(), []
  for ex in part.examples:
    if ex.key not in seen:
      seen.add(ex.key)
      out.append(ex)
  return out


def format_example(ex: McExample, fmt: PromptFormat, rng: np.random.RandomState) -> str:
  """BIG-bench's default_format_fn for one MC example (consumes rng iff choices are appended)."""
  text = ex.input
  if fmt.append_choices_to_input:
    permuted = rng.permutation(sorted(ex.options))
    text = text + fmt.choice_prefix + fmt.choice_prefix.join(str(c) for c in permuted)
  return fmt.example_input_prefix + text + fmt.example_output_prefix


def split_max_examples(max_examples: int | None, n_parts: int) -> list[int | None]:
  """BIG-bench's even split of a composite task's max_examples over its subtasks."""
  if max_examples is None:
    return [None] * n_parts
  per, rest = divmod(max_examples, n_parts)
  if per < 1:
    raise ValueError(f"max_examples={max_examples} is fewer than the {n_parts} subtasks")
  return [per + (i < rest) for i in range(n_parts)]


def make_prompts(part: TaskPart, shots: int = 2, seed: int = 42, max_examples: int | None = None,
                 dedupe: bool = True) -> list[Prompt]:
  """k-shot prompts for one task part, as BIG-bench's make_nshot_dataset builds them.

    Args:
      part: the task part.
      shots: number of in-context examples (the paper: 2).
      seed: seeds the choice-permutation RNG and, separately, the shot RNG;
        the same seed gives the same prompts.
      max_examples: queries drawn at random from the default set; None = all.
      dedupe: drop duplicate examples first (BIG-bench does).
    Returns:
      list of Prompt, in query order.
    Raises:
      ValueError: if the part has fewer than shots + 1 examples.
    """
  examples = default_set(part, dedupe)
  fmt = part.format
  fmt_rng = np.random.RandomState(seed)
  texts = [format_example(ex, fmt, fmt_rng) for ex in examples]
  rng = np.random.RandomState(seed)
  n = len(examples)
  if shots and n < shots + 1:
    raise ValueError(f"{part.path}: {n} examples, too few for {shots} shots")
  if max_examples is not None and max_examples < n:
    queries = [int(i) for i in rng.choice(n, max_examples, replace=False)]
  else:
    queries = list(range(n))
  sep = fmt.few_shot_example_separator
  prompts = []
  for i in queries:
    shot_idx: list[int] = []
    context = ""
    if shots:
      valid = [j for j in range(n) if examples[j].key != examples[i].key]
      shot_idx = [valid[int(p)] for p in rng.choice(len(valid), shots, replace=False)]
      answers = [str(rng.choice(list(examples[j].targets))) for j in shot_idx]
      context = sep.join(texts[j] + a for j, a in zip(shot_idx, answers)) + sep
    ex = examples[i]
    prompts.append(
        Prompt(part.name, i, fmt.task_prefix + context + texts[i], ex.options, ex.scores,
               tuple(shot_idx)))
  return prompts


def make_task_prompts(task: BigBenchTask, shots: int = 2, seed: int = 42,
                      max_examples: int | None = None, dedupe: bool = True) -> list[Prompt]:
  """make_prompts over all parts of a task, splitting max_examples as BIG-bench does."""
  limits = split_max_examples(max_examples, len(task.parts)) if task.parts else []
  return [
      p for part, m in zip(task.parts, limits) for p in make_prompts(part, shots, seed, m, dedupe)
  ]


# ----------------------------------------------------------------------------
# Tokenised requests
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptionRequest:
  """One (example, option) row: prompt+option tokenised once.

    tokens[option_start:] are the option's tokens (a token straddling the
    prompt/option boundary, e.g. " True" after "A:", belongs to the option).
    """
  task: str
  example_index: int
  option_index: int
  option: str
  target_score: float
  tokens: np.ndarray  # int32 [length], BOS included as the tokenizer adds it
  option_start: int
  prompt_chars_dropped: int  # prompt characters cut from the left to fit max_length

  @property
  def n_option_tokens(self) -> int:
    return len(self.tokens) - self.option_start


# Characters per token budget for pre-cutting very long prompts (OPT's BPE
# averages ~4 characters per token on English; a cut that leaves too few
# tokens falls back to the whole prompt).
_CHARS_PER_TOKEN_CUT = 8


def _safe_cut(text: str, max_length: int | None) -> int:
  """A character index where byte-level BPE pre-tokenisation must split.

    GPT-2-style pre-tokenisers only join a whitespace character to the next
    word when it is a plain space, so a cut just after any other whitespace
    character (newline, tab) that precedes a non-space leaves every later
    token unchanged. Returns 0 (no cut) for short texts or when none is found.
    """
  if max_length is None or len(text) <= _CHARS_PER_TOKEN_CUT * max_length:
    return 0
  s = len(text) - _CHARS_PER_TOKEN_CUT * max_length
  while s > 0:
    if text[s - 1].isspace() and text[s - 1] != " " and not text[s].isspace():
      return s
    s -= 1
  return 0


def build_requests(prompts: Sequence[Prompt], tokenizer, max_length: int | None = 2048,
                   chunk: int = 256) -> list[OptionRequest]:
  """Tokenises every prompt+option and finds where the option's tokens start.

    The concatenated string is tokenised once (no boundary artefacts); the
    option span starts at the first non-special token whose character span
    ends after the prompt. Special tokens the tokenizer adds (OPT's BOS `</s>`)
    are kept in front; trailing ones (an EOS some tokenizers add) are dropped.
    Sequences longer than max_length lose prompt tokens from the left, after
    the leading special tokens (which_wiki_edit's 2-shot prompts exceed 2048
    tokens). Prompts far longer than max_length are first cut at a
    pre-tokenisation boundary (`_safe_cut`), which gives the same tokens as
    tokenising the whole text and truncating, much faster.

    Args:
      prompts: from make_prompts.
      tokenizer: a fast Hugging Face byte-level BPE tokenizer (offsets needed).
      max_length: model context length; None = no limit.
      chunk: strings per tokenizer call.
    Returns:
      list of OptionRequest, prompts in order, options in file order.
    Raises:
      ValueError: if the tokenizer is not fast or an option alone exceeds max_length.
    """
  if not getattr(tokenizer, "is_fast", False):
    raise ValueError("build_requests needs a fast tokenizer (offsets mapping)")
  cuts = [_safe_cut(p.text, max_length) for p in prompts]
  flat = [(p, k, c) for p, c in zip(prompts, cuts) for k in range(len(p.options))]
  out: dict[int, OptionRequest] = {}
  todo = list(range(len(flat)))
  while todo:
    retry = []
    for c0 in range(0, len(todo), chunk):
      idx = todo[c0:c0 + chunk]
      enc = tokenizer([flat[i][0].text[flat[i][2]:] + flat[i][0].options[flat[i][1]] for i in idx],
                      return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False)
      for i, ids, offs, special in zip(idx, enc["input_ids"], enc["offset_mapping"],
                                       enc["special_tokens_mask"]):
        p, k, cut = flat[i]
        n_lead = 0
        while n_lead < len(ids) and special[n_lead]:
          n_lead += 1
        stop = len(ids)
        while stop > n_lead and special[stop - 1]:
          stop -= 1
        if cut and stop <= max_length:
          retry.append(i)  # the cut left too few tokens: use the whole prompt
          flat[i] = (p, k, 0)
          continue
        boundary = len(p.text) - cut
        start = next((t for t in range(n_lead, stop) if offs[t][1] > boundary), stop)
        ids = np.asarray(ids[:stop], np.int32)
        dropped = 0
        if max_length is not None and len(ids) > max_length:
          dropped = len(ids) - max_length
          if start - dropped < n_lead:
            raise ValueError(f"{p.task} example {p.example_index}: option {k} has "
                             f"{stop - start} tokens, more than max_length={max_length}")
          ids = np.concatenate([ids[:n_lead], ids[n_lead + dropped:]])
          start -= dropped
        chars = cut + (offs[n_lead + dropped][0] if dropped else 0)
        out[i] = OptionRequest(p.task, p.example_index, k, p.options[k], p.scores[k], ids, start,
                               chars)
    todo = retry
  return [out[i] for i in range(len(flat))]

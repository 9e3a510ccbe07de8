"""BIG-bench k-shot multiple-choice evaluation: tasks, prompts, option scoring.

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

Scoring is model-independent: `build_requests` tokenises each prompt+option
once and locates the option span through character offsets; `score_options`
batches all rows, sorted by length, through any
`logprob_fn(tokens_bt, mask_bt) -> logprobs_bt` (the engine's
`trajax.token_logprobs` signature).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from trajax import atomic

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

# BIG-bench json_task.py defaults for absent prompt fields.
PROMPT_DEFAULTS = {
    "task_prefix": "",
    "example_input_prefix": "\nQ: ",
    "example_output_prefix": "\nA: ",
    "choice_prefix": "\n  choice: ",
    "few_shot_example_separator": "\n",
    "append_choices_to_input": True,
}

NORMALIZATIONS = ("tokens", "chars", "bytes", "none")

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
# Tokenisation and scoring
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


@dataclasses.dataclass(frozen=True)
class OptionScores:
  """Per-request option log-probs (aligned with the request list).

    logprob: sum of log p(option token | prefix), float64 [n]; 0 for an empty option.
    n_tokens / n_chars / n_bytes: option length in tokens, characters, UTF-8 bytes.
    """
  logprob: np.ndarray
  n_tokens: np.ndarray
  n_chars: np.ndarray
  n_bytes: np.ndarray

  def normalized(self, by: str = "tokens") -> np.ndarray:
    """Score used for the prediction: logprob / length ('tokens' is the paper's).

        An empty option (length 0) scores -inf, i.e. is never predicted,
        except with by='none' (raw sum, BIG-bench's multiple_choice_grade).
        """
    if by == "none":
      return self.logprob.copy()
    if by not in NORMALIZATIONS:
      raise ValueError(f"normalization {by!r} not in {NORMALIZATIONS}")
    length = {"tokens": self.n_tokens, "chars": self.n_chars, "bytes": self.n_bytes}[by]
    with np.errstate(divide="ignore", invalid="ignore"):
      return np.where(length > 0, self.logprob / np.maximum(length, 1), -np.inf)


def score_options(requests: Sequence[OptionRequest], logprob_fn: Callable[[np.ndarray, np.ndarray],
                                                                          np.ndarray],
                  batch_size: int = 16, pad_id: int = 1, pad_to_multiple: int = 64,
                  max_length: int | None = None) -> OptionScores:
  """Scores every option row with a per-token log-prob function.

    Rows are sorted by length (longest first, so memory problems show at
    once) and cut into batches of `batch_size`; each batch is right-padded
    with `pad_id` to a multiple of `pad_to_multiple` (capped at max_length)
    and filled up to `batch_size` rows (a lone BOS), so a jitted logprob_fn
    sees few distinct shapes. Rows of one example share their prompt text,
    but each row is still its own full sequence: reusing the prompt's KV
    cache across options is a later optimisation.

    Args:
      requests: from build_requests.
      logprob_fn: (tokens_bt int32 [batch, length], mask_bt bool [batch, length])
        -> float [batch, length], log p(token_i | tokens_<i), NaN at position 0
        and at padding (the engine's trajax.token_logprobs signature).
      batch_size: rows per call.
      pad_id: padding token id (OPT: 1).
      pad_to_multiple: length bucket.
      max_length: cap for the padded length (the model's context).
    Returns:
      OptionScores aligned with `requests`.
    Raises:
      ValueError: if logprob_fn returns a wrong shape or a non-finite log-prob
        inside an option span.
    """
  n = len(requests)
  logprob = np.zeros(n, np.float64)
  order = sorted(range(n), key=lambda r: -len(requests[r].tokens))
  for b in range(0, n, batch_size):
    rows = order[b:b + batch_size]
    longest = len(requests[rows[0]].tokens)
    length = -(-longest // pad_to_multiple) * pad_to_multiple
    if max_length is not None:
      length = max(min(length, max_length), longest)
    tokens_bt = np.full((batch_size, length), pad_id, np.int32)
    mask_bt = np.zeros((batch_size, length), bool)
    for i, r in enumerate(rows):
      t = requests[r].tokens
      tokens_bt[i, :len(t)] = t
      mask_bt[i, :len(t)] = True
    tokens_bt[len(rows):, 0] = requests[rows[0]].tokens[0]
    mask_bt[len(rows):, 0] = True
    logprobs_bt = np.asarray(logprob_fn(tokens_bt, mask_bt), np.float32)
    if logprobs_bt.shape != tokens_bt.shape:
      raise ValueError(f"logprob_fn returned shape {logprobs_bt.shape}, "
                       f"expected {tokens_bt.shape}")
    for i, r in enumerate(rows):
      req = requests[r]
      span = logprobs_bt[i, req.option_start:len(req.tokens)]
      if not np.all(np.isfinite(span)):
        raise ValueError(f"{req.task} example {req.example_index} option "
                         f"{req.option_index}: non-finite log-prob in the option span")
      logprob[r] = float(np.sum(span, dtype=np.float64))
  return OptionScores(logprob=logprob, n_tokens=np.array([r.n_option_tokens for r in requests],
                                                         np.int64),
                      n_chars=np.array([len(r.option) for r in requests], np.int64),
                      n_bytes=np.array([len(r.option.encode("utf-8")) for r in requests], np.int64))


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


# ----------------------------------------------------------------------------
# Results on disk
# ----------------------------------------------------------------------------


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
  """Writes rows atomically (temporary file + os.replace); columns in first-seen order."""
  fields: dict[str, None] = {}
  for r in rows:
    fields.update(dict.fromkeys(r))
  with atomic.atomic_open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(fields))
    w.writeheader()
    w.writerows(rows)


def read_csv(path: str | os.PathLike) -> list[dict]:
  """Rows of a CSV written by write_csv (values as strings); [] if it does not exist."""
  path = Path(path)
  if not path.exists():
    return []
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def done_pairs(csv_path: str | os.PathLike) -> set[tuple[str, str]]:
  """(checkpoint, task) pairs with a task-level row in csv_path, to skip on rerun.

    Raises:
      ValueError: if the CSV has no 'checkpoint' or 'task' column.
    """
  rows = read_csv(csv_path)
  if rows and not {"checkpoint", "task"} <= set(rows[0]):
    raise ValueError(f"{csv_path}: needs columns 'checkpoint' and 'task', "
                     f"has {sorted(rows[0])}")
  return {(r["checkpoint"], r["task"]) for r in rows if r.get("level", "task") == "task"}

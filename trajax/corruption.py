"""Seeded corruptions of token sequences (paper §4.1 and Appendix C.1).

The paper replaces p% of the subwords of each sequence with random subwords,
p ∈ {20, 40, 60, 80, 100}, on sequences capped at 100 tokens, and reports that
deleting, inserting and repeating tokens or spans give similar scaling trends.

Every function takes a 1-D sequence of token ids (list or integer array), first
keeps only its first `max_length` tokens (the paper's cap; None for no cap),
then corrupts that capped sequence. A count derived from a fraction is
round(fraction · n), rounding halves up, where n is the capped length. `rng` is
an int seed or a `numpy.random.Generator`; the same seed gives the same output.
Inputs are never modified; outputs are new 1-D arrays of the input's dtype.
"""
from __future__ import annotations

import math

import numpy as np

PAPER_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_MAX_LENGTH = 100


def candidate_ids(vocab_size, exclude=()):
  """Token ids 0..vocab_size−1 without `exclude` (e.g. a tokenizer's special ids).

    Args:
      vocab_size: number of ids the tokenizer defines.
      exclude: ids never to draw (BOS/EOS/PAD/UNK, ids the tokenizer cannot produce).

    Returns:
      Sorted 1-D int64 array of candidate replacement ids.
    """
  if int(vocab_size) != vocab_size or vocab_size < 1:
    raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
  return np.setdiff1d(np.arange(int(vocab_size), dtype=np.int64), np.asarray(exclude, np.int64))


def _tokens(tokens, max_length):
  arr = np.asarray(tokens)
  if arr.ndim != 1:
    raise ValueError(f"tokens must be a 1-D sequence of ids, got shape {arr.shape}")
  if arr.size == 0:
    arr = arr.astype(np.int64)
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"tokens must be integer ids, got dtype {arr.dtype}")
  if max_length is not None:
    if int(max_length) != max_length or max_length < 1:
      raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
    arr = arr[:int(max_length)]
  return arr.copy()


def _count(fraction, n):
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.integer, np.floating)):
    raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
  if not (0.0 <= float(fraction) <= 1.0):
    raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
  return int(math.floor(float(fraction) * n + 0.5))


def _vocab(vocab_ids):
  ids = np.asarray(vocab_ids)
  if ids.ndim != 1 or ids.size == 0:
    raise ValueError(f"vocab_ids must be a non-empty 1-D sequence of ids, got shape {ids.shape}")
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"vocab_ids must be integer ids, got dtype {ids.dtype}")
  if np.unique(ids).size != ids.size:
    raise ValueError("vocab_ids must not repeat an id (draws are uniform over its entries)")
  return ids


def _positive_int(value, name):
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def replace(tokens, fraction, vocab_ids, rng, max_length=PAPER_MAX_LENGTH):
  """Replaces a fraction of the positions with uniformly random ids (paper App. C.1).

    Exactly k = round(fraction · n) positions, chosen uniformly without
    replacement, each get an id drawn uniformly (with replacement) from
    `vocab_ids`. A draw may by chance equal the token it replaces (probability
    1/len(vocab_ids)); it still counts as replaced, as in the paper.

    Args:
      tokens: 1-D sequence of token ids.
      fraction: share of positions to replace, in [0, 1] (paper: 0.2 … 1.0).
      vocab_ids: ids a replacement may take (see `candidate_ids`), no repeats.
      rng: int seed or numpy Generator.
      max_length: keep only the first max_length tokens first (paper: 100); None: all.

    Returns:
      Array of the capped length n.
    """
  arr = _tokens(tokens, max_length)
  k = _count(fraction, arr.size)
  ids = _vocab(vocab_ids)
  gen = np.random.default_rng(rng)
  positions = gen.choice(arr.size, size=k, replace=False)
  arr[positions] = gen.choice(ids, size=k, replace=True).astype(arr.dtype)
  return arr


def delete_spans(tokens, fraction, rng, span_length=1, max_length=PAPER_MAX_LENGTH):
  """Deletes round(fraction · n) tokens, in spans of span_length consecutive tokens.

    The d = round(fraction · n) deleted tokens form ⌈d / span_length⌉ spans, all of
    span_length tokens except one shorter span of the remainder when d is not a
    multiple (which span is shorter is random). Spans never overlap; their places
    are drawn uniformly among all arrangements of the spans between the n − d kept
    tokens (adjacent spans may touch). With span_length = 1 this deletes d
    distinct positions chosen uniformly.

    Args:
      tokens: 1-D sequence of token ids.
      fraction: share of tokens to delete, in [0, 1].
      rng: int seed or numpy Generator.
      span_length: tokens per span, ≥ 1.
      max_length: cap applied before deleting (paper: 100); None: no cap.

    Returns:
      Array of length n − d, the kept tokens in their order.
    """
  arr = _tokens(tokens, max_length)
  span_length = _positive_int(span_length, "span_length")
  d = _count(fraction, arr.size)
  gen = np.random.default_rng(rng)
  n_spans = -(-d // span_length)
  lengths = np.full(n_spans, span_length, dtype=np.int64)
  if n_spans and d % span_length:
    lengths[-1] = d % span_length
    gen.shuffle(lengths)
  # Lay out n − d kept tokens and n_spans span markers in a row; choose the
  # markers' slots uniformly, then expand each marker into its span.
  n_items = arr.size - d + n_spans
  is_span = np.zeros(n_items, dtype=bool)
  is_span[gen.choice(n_items, size=n_spans, replace=False)] = True
  item_lengths = np.ones(n_items, dtype=np.int64)
  item_lengths[is_span] = lengths
  keep = np.repeat(~is_span, item_lengths)
  return arr[keep]


def insert_random(tokens, fraction, vocab_ids, rng, max_length=PAPER_MAX_LENGTH):
  """Inserts round(fraction · n) uniformly random ids at uniformly random places.

    The output has n + k slots, k = round(fraction · n); k of them, chosen
    uniformly without replacement, hold ids drawn uniformly (with replacement)
    from `vocab_ids`, and the n original tokens fill the others in their order.

    Args:
      tokens: 1-D sequence of token ids.
      fraction: inserted tokens per original token, in [0, 1].
      vocab_ids: ids an inserted token may take, no repeats.
      rng: int seed or numpy Generator.
      max_length: cap applied to the input before inserting (paper: 100); None: no
        cap. The output is longer than the cap when k > 0.

    Returns:
      Array of length n + k.
    """
  arr = _tokens(tokens, max_length)
  k = _count(fraction, arr.size)
  ids = _vocab(vocab_ids)
  gen = np.random.default_rng(rng)
  out = np.empty(arr.size + k, dtype=arr.dtype)
  inserted = np.zeros(out.size, dtype=bool)
  inserted[gen.choice(out.size, size=k, replace=False)] = True
  out[inserted] = gen.choice(ids, size=k, replace=True).astype(arr.dtype)
  out[~inserted] = arr
  return out


def repeat_span(tokens, fraction, rng, times=1, max_length=PAPER_MAX_LENGTH):
  """Repeats one random contiguous span right after itself.

    The span has L = round(fraction · n) tokens and starts at s, drawn uniformly
    from 0 … n − L; the output is tokens[:s+L] + tokens[s:s+L] · times +
    tokens[s+L:]. L = 0 returns the capped tokens unchanged (no draw is made).

    Args:
      tokens: 1-D sequence of token ids.
      fraction: span length as a share of n, in [0, 1].
      rng: int seed or numpy Generator.
      times: extra copies of the span, ≥ 1.
      max_length: cap applied to the input before repeating (paper: 100); None:
        no cap. The output is longer than the cap when L > 0.

    Returns:
      Array of length n + times · L.
    """
  arr = _tokens(tokens, max_length)
  times = _positive_int(times, "times")
  span = _count(fraction, arr.size)
  if span == 0:
    return arr
  gen = np.random.default_rng(rng)
  start = int(gen.integers(0, arr.size - span + 1))
  piece = arr[start:start + span]
  return np.concatenate([arr[:start + span]] + [piece] * times + [arr[start + span:]])

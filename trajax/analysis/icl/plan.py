"""How one checkpoint's option requests are scored: prefix groups, a cost model, batches.

Host code only (numpy), decided before anything runs, from the requests alone, so
the same requests always give the same plan (and the same bits):

  * **prefix groups** (`prefix_groups`): the options of an example whose token rows
    share their first C tokens (usually the whole 2-shot prompt but its last token).
    The shared C tokens are run once into a KV cache; each option row then feeds
    only `tokens[C:len-1]` against that cache ("reuse").
  * **packing**: a group may instead be scored as whole (prompt + option) rows,
    several packed into one sequence with `trajax.packing` ("pack"): cheaper when
    the prompt is short and the options long or uneven.
  * **the cost model** (`CostModel`): estimated FLOPs of each way for the shapes it
    would actually run (bucketed lengths, padding, attention, the LM head only where
    a log-prob is wanted), weighted by factors measured once per backend
    (`engine.calibrate`, numbers in `CALIBRATION`). Each group takes the cheaper way.
  * **batches**: groups sorted by length bucket and cut into batches whose shapes
    depend only on the bucket, so one compiled kernel serves every task of a
    checkpoint and every checkpoint of an architecture.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from trajax.analysis.icl.prompts import OptionRequest

METHODS = ("auto", "reuse", "pack")

# Tokens per call by backend (prefill slots of a reuse batch, row slots of a pack batch):
# enough for large matmuls, small enough that a call's activations stay in memory.
BATCH_TOKENS = {"cpu": 4096, "gpu": 32768, "tpu": 32768}
# KV-cache slots of the option rows of a reuse batch, as a multiple of BATCH_TOKENS.
CACHE_SLOTS_PER_TOKEN = 4
MIN_OPTION_ROWS = 8
# Packed rows are at least this long, so that several short (prompt + option) rows share one.
PACK_ROW_TOKENS = 512


@dataclasses.dataclass(frozen=True)
class Weights:
  """Measured seconds per estimated FLOP of each kind of call, relative to a packed row.

  `reuse` < 1 means a reuse batch runs its FLOPs faster than a pack batch does;
  `cache` is the cost of copying one cached slot of every layer, in FLOPs of a
  packed row; `fill` the share of packed-row slots that hold real tokens.
  """
  reuse: float = 1.0
  cache: float = 0.0
  fill: float = 0.9


# Measured by `bench/icl_bench.py --calibrate` (docs/PERFORMANCE.md): CPU, 2026-12-03, OPT-125m
# shape, float32, 2 examples of each of the bench's 5 tasks: a reuse call ran 1.41x the seconds
# per estimated FLOP of a packed row, and packed rows held 62% real tokens. Elsewhere: FLOPs alone.
CALIBRATION = {"cpu": Weights(reuse=1.41, cache=0.0, fill=0.62)}


def length_bucket(n: int, per_octave: int = 4, minimum: int = 8) -> int:
  """`n` rounded up to a ladder with `per_octave` steps per power of two (>= minimum).

  E.g. per_octave=4: ..., 64, 80, 96, 112, 128, 160, ...: at most 25% padding.
  """
  n = max(int(n), 1)
  if n <= minimum:
    return minimum
  step = max(1, 2**(math.floor(math.log2(n)) - int(math.log2(per_octave))))
  return -(-n // step) * step


@dataclasses.dataclass(frozen=True)
class Group:
  """Options of one example whose token rows share their first `prefix_len` tokens.

  Attributes:
    requests: indices into the request list (the group's option rows).
    prefix_len: C, the shared tokens run once (may be 0); option row k feeds
      tokens[C:len_k - 1] and scores its option span.
  """
  requests: tuple[int, ...]
  prefix_len: int


def _common_prefix(rows: Sequence[np.ndarray]) -> int:
  n = min(len(r) for r in rows)
  first = rows[0][:n]
  for r in rows[1:]:
    diff = np.flatnonzero(r[:n] != first)
    n = int(diff[0]) if len(diff) else n
    first = first[:n]
  return n


def prefix_groups(requests: Sequence[OptionRequest]) -> list[Group]:
  """Prefix groups of the requests (each example's options contiguous, as built).

  An example's options form one group sharing C = min(common prefix, first
  option token - 1) tokens. When that is less than half the prompt (the prompt
  was cut from the left by a different amount for options of different lengths),
  options are grouped by where their option starts instead: those rows share the
  same cut.
  """
  out = []
  i = 0
  while i < len(requests):
    j = i
    while j < len(requests) and (requests[j].task,
                                 requests[j].example_index) == (requests[i].task,
                                                                requests[i].example_index):
      j += 1
    idx = list(range(i, j))
    c = min(_common_prefix([requests[k].tokens for k in idx]),
            min(requests[k].option_start for k in idx) - 1)
    if c >= (min(requests[k].option_start for k in idx) - 1) / 2:
      out.append(Group(tuple(idx), max(c, 0)))
    else:
      by_start: dict[int, list[int]] = {}
      for k in idx:
        by_start.setdefault(requests[k].option_start, []).append(k)
      for start, ks in by_start.items():
        c = min(_common_prefix([requests[k].tokens for k in ks]), start - 1)
        out.append(Group(tuple(ks), max(c, 0)))
    i = j
  return out


@dataclasses.dataclass(frozen=True)
class CostModel:
  """Estimated cost of the two ways of scoring a group, in FLOPs of a packed row.

  Attributes:
    body: FLOPs per token slot in the decoder layers (2 x their weights).
    head: FLOPs per token slot where the LM head runs (2 x vocab x dim).
    attention: FLOPs per (query, key) pair over all layers (4 x layers x width).
    cache_slot: values in one cached slot of every layer (keys and values).
    weights: the measured factors (`Weights`).
  """
  body: float
  head: float
  attention: float
  cache_slot: float
  weights: Weights = Weights()

  @classmethod
  def for_model(cls, model, weights: Weights | None = None) -> "CostModel":
    """From a trajax model (its family's N, head shape and cache dimensions)."""
    from trajax import models  # pylint: disable=g-import-not-at-top
    vocab, dim = model.head_matrix().shape
    layers, heads, head_dim = model.cache_dims()
    n_body = max(models.family(model.config.family).flops_params(model.config) - vocab * dim, 0)
    width = heads * head_dim
    return cls(2.0 * n_body, 2.0 * vocab * dim, 4.0 * layers * width, 2.0 * layers * width,
               weights or Weights())

  def reuse(self, prefix_slots: int, option_slots: int, n_rows: int) -> float:
    """One group by reuse: a prefill row of `prefix_slots`, `n_rows` option rows of
    `option_slots` (each attending to prefix + itself, its cache copied in)."""
    prefill = prefix_slots * (self.body + self.attention * prefix_slots / 2)
    keys = prefix_slots + option_slots
    rows = n_rows * option_slots * (self.body + self.head + self.attention * keys)
    copy = n_rows * keys * self.cache_slot * self.weights.cache
    return self.weights.reuse * (prefill + rows) + copy

  def batch_flops(self, batch) -> float:
    """Estimated FLOPs of one call as it runs (padding included), unweighted."""
    if isinstance(batch, ReuseBatch):
      c, s = batch.prefix_slots, batch.option_slots
      return (batch.examples * c * (self.body + self.attention * c / 2) + batch.rows * s *
              (self.body + self.head + self.attention * (c + s)))
    rows, n = batch.tokens_bt.shape
    return rows * n * (self.body + self.head + self.attention * n / 2)

  def pack(self, lengths: Sequence[int]) -> float:
    """Whole rows packed: every slot through the body and the head."""
    return sum(
        n * (self.body + self.head + self.attention * n / 2) for n in lengths) / self.weights.fill


@dataclasses.dataclass(frozen=True)
class ReuseBatch:
  """Groups scored by reuse in one call: [examples, prefix] and [rows, option] shapes."""
  groups: tuple[Group, ...]
  prefix_slots: int  # C_b: every prefix left-padded to this
  option_slots: int  # S_b: every option row right-padded to this
  examples: int  # E_b: rows of the prefill
  rows: int  # R_b: option rows

  @property
  def requests(self) -> list[int]:
    return [k for g in self.groups for k in g.requests]


@dataclasses.dataclass(frozen=True)
class PackBatch:
  """Whole (prompt + option) rows packed into sequences of `row_len` tokens.

  Attributes:
    tokens_bt, segment_ids_bt: [rows, row_len] (`trajax.packing`; 0 = padding).
    placement: per request: (request index, row, start, length).
  """
  tokens_bt: np.ndarray
  segment_ids_bt: np.ndarray
  placement: tuple[tuple[int, int, int, int], ...]

  @property
  def requests(self) -> list[int]:
    return [p[0] for p in self.placement]


@dataclasses.dataclass
class Plan:
  """A checkpoint's work: reuse batches and pack batches."""
  reuse: list[ReuseBatch]
  pack: list[PackBatch]

  def shapes(self) -> set[tuple]:
    """The distinct call shapes (one compilation each)."""
    return ({("reuse", b.examples, b.prefix_slots, b.rows, b.option_slots) for b in self.reuse} |
            {("pack",) + b.tokens_bt.shape for b in self.pack})

  def slots(self, requests: Sequence[OptionRequest]) -> dict[str, int]:
    """Token slots each kind of call computes, and how many hold real tokens."""
    out = {
        "prefill": 0, "prefill_real": 0, "option": 0, "option_real": 0, "pack": 0, "pack_real": 0
    }
    for b in self.reuse:
      out["prefill"] += b.examples * b.prefix_slots
      out["option"] += b.rows * b.option_slots
      out["prefill_real"] += sum(g.prefix_len for g in b.groups)
      out["option_real"] += sum(
          len(requests[k].tokens) - 1 - g.prefix_len for g in b.groups for k in g.requests)
    for b in self.pack:
      out["pack"] += b.tokens_bt.size
      out["pack_real"] += int((b.segment_ids_bt > 0).sum())
    return out


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


def reuse_shape(c_b: int, s_b: int, batch_tokens: int, dp: int = 1) -> tuple[int, int]:
  """(examples, option rows) of a reuse call with prefix bucket c_b and option bucket s_b."""
  examples = _round_up(max(1, batch_tokens // max(c_b, 1)), dp)
  rows = max(MIN_OPTION_ROWS, CACHE_SLOTS_PER_TOKEN * batch_tokens // (c_b + s_b))
  return examples, _round_up(rows, dp)


def make_plan(requests: Sequence[OptionRequest], cost: CostModel, method: str = "auto",
              batch_tokens: int = 4096, data_parallel: int = 1, max_length: int | None = None,
              pad_id: int = 1) -> Plan:
  """Chooses reuse or pack per group and cuts the work into fixed-shape batches.

  Args:
    requests: from `prompts.build_requests` (each example's options contiguous).
    cost: the model's `CostModel`.
    method: "auto" (the cheaper per group), "reuse" or "pack" (every group).
    batch_tokens: prefill tokens of a reuse call, row tokens of a pack call.
    data_parallel: every batch dimension is a multiple of this (the mesh's data axis).
    max_length: the model's context (no bucket exceeds it).
    pad_id: token written into padding slots of packed rows.
  Returns:
    the Plan.
  """
  if method not in METHODS:
    raise ValueError(f"method {method!r}: expected one of {METHODS}")
  cap = (lambda n: n) if max_length is None else (lambda n: min(n, max_length))
  reuse_groups: dict[tuple[int, int], list[Group]] = {}
  packed: dict[int, list[int]] = {}
  for g in prefix_groups(requests):
    lengths = [len(requests[k].tokens) for k in g.requests]
    c_b = cap(length_bucket(g.prefix_len, 4, 16))
    s_b = length_bucket(max(n - 1 - g.prefix_len for n in lengths), 1, 4)
    r_b = reuse_shape(c_b, s_b, batch_tokens, data_parallel)[1]
    chunks = [g.requests[k:k + r_b] for k in range(0, len(g.requests), r_b)]
    reuse_cost = sum(cost.reuse(c_b, s_b, len(c)) for c in chunks)
    if method == "reuse" or (method == "auto" and reuse_cost <= cost.pack(lengths)):
      # An example with more options than a call has rows is cut (each part refills).
      reuse_groups.setdefault((c_b, s_b), []).extend(Group(c, g.prefix_len) for c in chunks)
    else:
      for k in g.requests:
        row_len = max(length_bucket(len(requests[k].tokens), 2, 64), PACK_ROW_TOKENS)
        packed.setdefault(cap(row_len), []).append(k)
  plan = Plan([], [])
  for (c_b, s_b), groups in sorted(reuse_groups.items()):
    e_b, r_b = reuse_shape(c_b, s_b, batch_tokens, data_parallel)
    batches: list[list[Group]] = [[]]
    n_rows = 0
    for g in groups:
      if batches[-1] and (len(batches[-1]) == e_b or n_rows + len(g.requests) > r_b):
        batches.append([])
        n_rows = 0
      batches[-1].append(g)
      n_rows += len(g.requests)
    for i, batch in enumerate(batches):
      e, r = e_b, r_b
      if i == len(batches) - 1:  # the last one shrinks to powers of two: less padding
        e = min(e_b, _round_up(_pow2(len(batch)), data_parallel))
        r = min(r_b, _round_up(_pow2(n_rows), data_parallel))
      plan.reuse.append(ReuseBatch(tuple(batch), c_b, s_b, e, r))
  for row_len, idx in sorted(packed.items()):
    plan.pack += _pack_batches(requests, idx, row_len, batch_tokens, data_parallel, pad_id)
  return plan


def _pack_batches(requests, idx, row_len, batch_tokens, dp, pad_id) -> list[PackBatch]:
  """The sequences `idx` packed into rows of `row_len`, cut into calls of a fixed row count."""
  from trajax import packing  # pylint: disable=g-import-not-at-top
  rows = _round_up(max(1, batch_tokens // row_len), dp)
  packed = packing.pack([requests[k].tokens for k in idx], row_len, pad_id)
  n_rows = packed.tokens_bt.shape[0]
  out = []
  for r0 in range(0, n_rows, rows):
    tokens = np.full((rows, row_len), pad_id, np.int32)
    segments = np.zeros((rows, row_len), np.int32)
    part = slice(r0, min(r0 + rows, n_rows))
    tokens[:part.stop - r0] = packed.tokens_bt[part]
    segments[:part.stop - r0] = packed.segment_ids_bt[part]
    placement = tuple(
        (k, r - r0, s, n) for k, (r, s, n) in zip(idx, packed.placement) if r0 <= r < part.stop)
    out.append(PackBatch(tokens, segments, placement))
  return out

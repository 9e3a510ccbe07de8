"""How one checkpoint's option requests are scored: prefix groups, a cost model, batches.

Host code only (numpy), decided before anything runs, from the requests alone, so
the same requests always give the same plan (and the same bits):

  * **prefix groups** (`groups.prefix_groups`): the options of an example whose token rows
    share their first C tokens (usually the whole 2-shot prompt but its last token).
    The shared C tokens are run once into a KV cache; each option row then feeds
    only `tokens[C:len-1]` against that cache ("reuse").
  * **prefix trees** ("tree"): a group as one sequence, its shared C tokens once and
    then each option row's `tokens[C:len-1]` as a branch that sees the prompt and
    itself (positions continue the prompt, as in the full row;
    `trajax.analysis.icl.trees`), trees packed best-fit into rows: no
    length-bucket padding and one kernel for prompt and options, but attention
    over the whole packed row.
  * **packing**: a group may instead be scored as whole (prompt + option) rows,
    several packed into one sequence with `trajax.packing` ("pack"): cheaper when
    the prompt is short and the options long or uneven.
  * **the cost model** (`CostModel`): estimated FLOPs of each way for the shapes it
    would actually run (bucketed lengths, padding, attention, the LM head only where
    a log-prob is wanted), weighted by factors measured once per backend
    (`engine.calibrate`, numbers in `CALIBRATION`). Each group takes the cheapest way.
  * **batches**: reuse groups sorted by length bucket and cut into batches whose
    shapes depend only on the bucket; all trees in rows of one length (the cheapest
    packed, `trees.choose_row_len`), a fixed row count per call and a power-of-two
    count of scored slots. So one compiled kernel serves every task of a checkpoint
    and every checkpoint of an architecture.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from trajax.analysis.icl import trees as trees_lib
from trajax.analysis.icl.groups import (  # noqa: F401  (re-exported)
    Group, length_bucket, pow2, prefix_groups, round_up)
from trajax.analysis.icl.prompts import OptionRequest
from trajax.analysis.icl.trees import TreeBatch

METHODS = ("auto", "reuse", "tree", "pack")

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

  `reuse` < 1 means a reuse batch runs its FLOPs faster than a pack batch does,
  `tree` the same for prefix-tree rows; `cache` is the cost of copying one cached
  slot of every layer, in FLOPs of a packed row; `fill` the share of packed-row
  slots that hold real tokens, `tree_fill` of prefix-tree rows.
  """
  reuse: float = 1.0
  cache: float = 0.0
  fill: float = 0.9
  tree: float = 1.0
  tree_fill: float = 0.9


# Measured by `bench/icl_bench.py --calibrate --repeats=2` (docs/PERFORMANCE.md): CPU, 2026-12-03,
# OPT-125m shape, float32, the bench's 91 options (6 examples of each of its 5 tasks): per
# estimated FLOP (padding included) a reuse call ran 1.34x the seconds of a packed row and a
# prefix-tree call 0.98x; packed rows held 78% real tokens, tree rows 93%. Elsewhere: FLOPs alone.
CALIBRATION = {"cpu": Weights(reuse=1.34, cache=0.0, fill=0.78, tree=0.98, tree_fill=0.93)}


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

  def tree(self, tree_lens: Sequence[int], head_slots: int) -> float:
    """Prefix trees of `tree_lens` tokens packed into rows (`trees.row_len_for` each), the LM
    head on `head_slots` scored slots."""
    rows = sum(n * (self.body + self.attention * trees_lib.row_len_for(n) / 2) for n in tree_lens)
    return self.weights.tree * (rows / self.weights.tree_fill + head_slots * self.head)

  def batch_flops(self, batch) -> float:
    """Estimated FLOPs of one call as it runs (padding included), unweighted."""
    if isinstance(batch, ReuseBatch):
      c, s = batch.prefix_slots, batch.option_slots
      return (batch.examples * c * (self.body + self.attention * c / 2) + batch.rows * s *
              (self.body + self.head + self.attention * (c + s)))
    rows, n = batch.tokens_bt.shape
    if isinstance(batch, TreeBatch):
      return (rows * n * (self.body + self.attention * n / 2) +
              batch.head_slots_bk.size * self.head)
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
  """A checkpoint's work: reuse batches, prefix-tree batches and pack batches."""
  reuse: list[ReuseBatch]
  pack: list[PackBatch]
  tree: list[TreeBatch] = dataclasses.field(default_factory=list)

  def shapes(self) -> set[tuple]:
    """The distinct call shapes (one compilation each)."""
    return ({("reuse", b.examples, b.prefix_slots, b.rows, b.option_slots) for b in self.reuse} |
            {("tree",) + b.tokens_bt.shape + b.head_slots_bk.shape[1:] for b in self.tree} |
            {("pack",) + b.tokens_bt.shape for b in self.pack})

  def slots(self, requests: Sequence[OptionRequest]) -> dict[str, int]:
    """Token slots each kind of call computes, and how many hold real tokens."""
    out = {
        "prefill": 0, "prefill_real": 0, "option": 0, "option_real": 0, "pack": 0, "pack_real": 0,
        "tree": 0, "tree_real": 0
    }
    for b in self.tree:
      out["tree"] += b.tokens_bt.size
      out["tree_real"] += int((b.segment_ids_bt > 0).sum())
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


def reuse_shape(c_b: int, s_b: int, batch_tokens: int, dp: int = 1) -> tuple[int, int]:
  """(examples, option rows) of a reuse call with prefix bucket c_b and option bucket s_b."""
  examples = round_up(max(1, batch_tokens // max(c_b, 1)), dp)
  rows = max(MIN_OPTION_ROWS, CACHE_SLOTS_PER_TOKEN * batch_tokens // (c_b + s_b))
  return examples, round_up(rows, dp)


def make_plan(requests: Sequence[OptionRequest], cost: CostModel, method: str = "auto",
              batch_tokens: int = 4096, data_parallel: int = 1, max_length: int | None = None,
              pad_id: int = 1) -> Plan:
  """Chooses reuse or pack per group and cuts the work into fixed-shape batches.

  Args:
    requests: from `prompts.build_requests` (each example's options contiguous).
    cost: the model's `CostModel`.
    method: "auto" (the cheapest per group), "reuse", "tree" or "pack" (every group).
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
  trees: list[Group] = []
  for g in prefix_groups(requests):
    lengths = [len(requests[k].tokens) for k in g.requests]
    c_b = cap(length_bucket(g.prefix_len, 4, 16))
    s_b = length_bucket(max(n - 1 - g.prefix_len for n in lengths), 1, 4)
    r_b = reuse_shape(c_b, s_b, batch_tokens, data_parallel)[1]
    chunks = [g.requests[k:k + r_b] for k in range(0, len(g.requests), r_b)]
    tree_chunks = trees_lib.chunks(requests, g)
    costs = {
        "reuse": sum(cost.reuse(c_b, s_b, len(c)) for c in chunks),
        "tree": cost.tree([trees_lib.tree_len(requests, t) for t in tree_chunks],
                          sum(lengths) - len(lengths) * (1 + g.prefix_len)),
        "pack": cost.pack(lengths)
    }
    way = method if method != "auto" else min(costs, key=costs.get)
    if way == "reuse":
      # An example with more options than a call has rows is cut (each part refills).
      reuse_groups.setdefault((c_b, s_b), []).extend(Group(c, g.prefix_len) for c in chunks)
    elif way == "tree":
      trees += tree_chunks
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
        e = min(e_b, round_up(pow2(len(batch)), data_parallel))
        r = min(r_b, round_up(pow2(n_rows), data_parallel))
      plan.reuse.append(ReuseBatch(tuple(batch), c_b, s_b, e, r))
  for row_len, idx in sorted(packed.items()):
    plan.pack += _pack_batches(requests, idx, row_len, batch_tokens, data_parallel, pad_id)
  if trees:
    row_len = trees_lib.choose_row_len([trees_lib.tree_len(requests, t) for t in trees], cost)
    plan.tree = trees_lib.batches(requests, trees, row_len, batch_tokens, data_parallel, pad_id)
  return plan


def _pack_batches(requests, idx, row_len, batch_tokens, dp, pad_id) -> list[PackBatch]:
  """The sequences `idx` packed into rows of `row_len`, cut into calls of a fixed row count."""
  from trajax import packing  # pylint: disable=g-import-not-at-top
  rows = round_up(max(1, batch_tokens // row_len), dp)
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

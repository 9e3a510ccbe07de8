"""Prefix trees: each example's prompt once, then its options' tokens, packed into rows.

A tree is one prefix group (`groups.Group`) as one sequence: its shared tokens[:C],
then each option row's tokens[C:len - 1] as a branch at positions C, C + 1, ...
Branches see the prompt and themselves, never each other
(`trajax.models.flash.segments_visible`), so every option's log-probs equal those
of its full row; trees are packed best-fit (`trajax.packing.best_fit`) into rows of
one length, chosen by the cost model. Host code only (numpy).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from trajax import packing
from trajax.analysis.icl.groups import Group, length_bucket, pow2, round_up
from trajax.analysis.icl.prompts import OptionRequest

# Rows are at least ROW_TOKENS long; a tree over ROW_MAX tokens is cut into several (each with
# the prompt), since every query of a row attends over the row before it (causally).
ROW_TOKENS = 512
ROW_MAX = 1024


@dataclasses.dataclass(frozen=True)
class TreeBatch:
  """Prefix trees packed into rows of `row_len` tokens, scored in one call.

  A tree is one group's shared tokens[:C] (its prompt), then for each of its option
  rows the block tokens[C:len - 1] at positions C, C + 1, ... (continuing the prompt,
  as in the row alone). Segment ids are tree * `flash.PREFIX_TREE_BRANCHES` + branch
  (0: the prompt, k: the k-th block; trees numbered from 1 in each row), so a block
  sees its prompt and itself and its log-probs are those of its full row.

  Attributes:
    tokens_bt, positions_bt, segment_ids_bt: [rows, row_len] (segment 0 = padding).
    head_slots_bk, targets_bk, head_mask_bk: [rows, K]: the slots whose next token is
      scored (every block slot), that token, and which columns are real.
    placement: per request: (request index, row, first head column of its block).
    groups: the trees, as groups.
  """
  tokens_bt: np.ndarray
  positions_bt: np.ndarray
  segment_ids_bt: np.ndarray
  head_slots_bk: np.ndarray
  targets_bk: np.ndarray
  head_mask_bk: np.ndarray
  placement: tuple[tuple[int, int, int], ...]
  groups: tuple[Group, ...]

  @property
  def requests(self) -> list[int]:
    return [p[0] for p in self.placement]


def tree_len(requests: Sequence[OptionRequest], g: Group) -> int:
  """Tokens of `g` as one prefix tree: its prompt once, then every row's block."""
  return g.prefix_len + sum(len(requests[k].tokens) - 1 - g.prefix_len for k in g.requests)


def row_len_for(n: int) -> int:
  """Shortest row length for a prefix tree of `n` tokens (a ladder step, >= ROW_TOKENS)."""
  return max(length_bucket(n, 2, 64), ROW_TOKENS)


def choose_row_len(tree_lens: Sequence[int], cost) -> int:
  """The row length for these prefix trees that `cost` (a `plan.CostModel`) finds cheapest.

  Candidates: the ladder step of the longest tree and the next three steps; each is
  packed (`packing.best_fit`) and costed as its rows x length slots through the
  decoder, attention over the row included (longer rows: less padding, more attention).
  """
  base = row_len_for(max(tree_lens))
  candidates = [base]
  for _ in range(3):
    candidates.append(length_bucket(candidates[-1] + 1, 2, 64))
  row_cost = {
      r: packing.best_fit(tree_lens, r)[1] * r * (cost.body + cost.attention * r / 2)
      for r in candidates
  }
  return min(candidates, key=row_cost.get)


def chunks(requests: Sequence[OptionRequest], g: Group) -> list[Group]:
  """`g` cut so that each tree has at most ROW_MAX tokens (or one block, when a
  single prompt + block is longer) and fewer branches than a segment id can number."""
  from trajax.models.flash import PREFIX_TREE_BRANCHES  # pylint: disable=g-import-not-at-top
  parts: list[list[int]] = [[]]
  n = g.prefix_len
  for k in g.requests:
    m = len(requests[k].tokens) - 1 - g.prefix_len
    if parts[-1] and (n + m > ROW_MAX or len(parts[-1]) + 1 >= PREFIX_TREE_BRANCHES):
      parts.append([])
      n = g.prefix_len
    parts[-1].append(k)
    n += m
  return [Group(tuple(p), g.prefix_len) for p in parts]


def batches(requests, groups, row_len, batch_tokens, dp, pad_id) -> list[TreeBatch]:
  """The prefix trees `groups` packed best-fit into rows of `row_len`, cut into calls of a
  fixed row count; the head columns K of a call are a power of two (few shapes)."""
  from trajax.models.flash import PREFIX_TREE_BRANCHES  # pylint: disable=g-import-not-at-top
  trees = []  # per group: tokens, positions, branch ids; and (request, slot offset, targets)
  for g in groups:
    c = g.prefix_len
    first = requests[g.requests[0]].tokens
    tokens, positions, branches, heads = [first[:c]], [np.arange(c)], [np.zeros(c, np.int32)], []
    offset = c
    for branch, k in enumerate(g.requests, 1):
      t = requests[k].tokens
      m = len(t) - 1 - c
      tokens.append(t[c:len(t) - 1])
      positions.append(np.arange(c, c + m))
      branches.append(np.full(m, branch, np.int32))
      heads.append((k, offset, t[c + 1:]))
      offset += m
    trees.append(
        (np.concatenate(tokens), np.concatenate(positions), np.concatenate(branches), heads))
  placement, n_rows = packing.best_fit([len(t[0]) for t in trees], row_len)
  tokens_bt = np.full((n_rows, row_len), pad_id, np.int32)
  positions_bt = np.zeros((n_rows, row_len), np.int32)
  segment_ids_bt = np.zeros((n_rows, row_len), np.int32)
  row_heads: list[list] = [[] for _ in range(n_rows)]
  row_trees = [0] * n_rows
  row_groups: list[list[Group]] = [[] for _ in range(n_rows)]
  for (tokens, pos, branch, heads), g, (r, start) in zip(trees, groups, placement):
    n = len(tokens)
    row_trees[r] += 1
    tokens_bt[r, start:start + n] = tokens
    positions_bt[r, start:start + n] = pos
    segment_ids_bt[r, start:start + n] = row_trees[r] * PREFIX_TREE_BRANCHES + branch
    row_heads[r] += [(k, start + offset, targets) for k, offset, targets in heads]
    row_groups[r].append(g)
  # Rows with the most scored slots first, so that a call's head columns K fit its rows.
  row_cols = [sum(len(h[2]) for h in heads) for heads in row_heads]
  order = sorted(range(n_rows), key=lambda r: -row_cols[r])
  tokens_bt, positions_bt, segment_ids_bt = (
      x[order] for x in (tokens_bt, positions_bt, segment_ids_bt))
  row_heads, row_groups = [row_heads[r] for r in order], [row_groups[r] for r in order]
  rows = round_up(max(1, batch_tokens // row_len), dp)
  out = []
  for r0 in range(0, n_rows, rows):
    part = range(r0, min(r0 + rows, n_rows))
    call_rows = rows if part.stop < n_rows else min(rows, round_up(pow2(len(part)), dp))
    k_cols = length_bucket(row_cols[order[r0]], 1, 16)
    shape = (call_rows, row_len)
    tokens, positions, segments = (np.full(shape, pad_id,
                                           np.int32), np.zeros(shape,
                                                               np.int32), np.zeros(shape, np.int32))
    tokens[:len(part)] = tokens_bt[part.start:part.stop]
    positions[:len(part)] = positions_bt[part.start:part.stop]
    segments[:len(part)] = segment_ids_bt[part.start:part.stop]
    slots, targets, mask = (np.zeros(
        (call_rows, k_cols), np.int32), np.zeros((call_rows, k_cols),
                                                 np.int32), np.zeros((call_rows, k_cols), bool))
    placement = []
    for i, r in enumerate(part):
      col = 0
      for k, slot, tgt in row_heads[r]:
        m = len(tgt)
        slots[i, col:col + m] = slot + np.arange(m)
        targets[i, col:col + m] = tgt
        mask[i, col:col + m] = True
        placement.append((k, i, col))
        col += m
    out.append(
        TreeBatch(tokens, positions, segments, slots, targets, mask, tuple(placement),
                  tuple(g for r in part for g in row_groups[r])))
  return out

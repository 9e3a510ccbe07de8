"""Packing short sequences into rows, so padding does not cost compute.

Scoring many short sequences (ICL options, generated texts, corrupted texts)
one per row wastes the padding. `pack` places whole sequences into rows of
`row_len` tokens (first fit, longest first) and numbers them per row with
segment ids (1, 2, ...; 0 = padding); the models then let each sequence attend
only to itself, with positions restarting at 0, so a packed sequence's
log-probs equal its log-probs alone (`tests/test_packing.py` checks this for
every family).
"""
from __future__ import annotations

import bisect
import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class Packed:
  """Rows of packed sequences and where each input sequence went."""
  tokens_bt: np.ndarray  # [rows, row_len] int32
  segment_ids_bt: np.ndarray  # [rows, row_len] int32, 0 = padding
  placement: list[tuple[int, int, int]]  # per input sequence: (row, start, length)

  @property
  def padding_fraction(self) -> float:
    return float((self.segment_ids_bt == 0).mean()) if self.segment_ids_bt.size else 0.0


def pack(sequences: Sequence[Sequence[int]], row_len: int, pad_id: int = 1,
         min_rows: int = 0) -> Packed:
  """First-fit-decreasing packing of whole sequences into rows of `row_len` tokens.

  Args:
    sequences: token id sequences, each 1..row_len long.
    row_len: tokens per row.
    pad_id: id written into padding slots.
    min_rows: at least this many rows (e.g. a fixed batch size).
  Returns:
    Packed; `unpack` maps per-token values back to the sequences.
  """
  order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
  free: list[int] = []  # tokens left per row
  rows: list[list[int]] = []  # sequence indices per row
  for i in order:
    n = len(sequences[i])
    if not 0 < n <= row_len:
      raise ValueError(f"sequence {i} has {n} tokens; packing needs 1..row_len={row_len}")
    for r, left in enumerate(free):
      if left >= n:
        rows[r].append(i)
        free[r] -= n
        break
    else:
      rows.append([i])
      free.append(row_len - n)
  n_rows = max(len(rows), min_rows)
  tokens = np.full((n_rows, row_len), pad_id, np.int32)
  segments = np.zeros((n_rows, row_len), np.int32)
  placement: list[tuple[int, int, int]] = [(0, 0, 0)] * len(sequences)
  for r, members in enumerate(rows):
    start = 0
    for seg, i in enumerate(members, 1):
      n = len(sequences[i])
      tokens[r, start:start + n] = sequences[i]
      segments[r, start:start + n] = seg
      placement[i] = (r, start, n)
      start += n
  return Packed(tokens, segments, placement)


def unpack(values_bt: np.ndarray, packed: Packed) -> list[np.ndarray]:
  """Per-sequence slices of a [rows, row_len] array, in input order."""
  return [values_bt[r, s:s + n] for r, s, n in packed.placement]


def best_fit(lengths: Sequence[int], row_len: int) -> tuple[list[tuple[int, int]], int]:
  """Best-fit-decreasing placement of items of `lengths` tokens into rows of `row_len`.

  Longest first, each item goes to the row with the least room that still holds it
  (a new row if none does); ties go to the lower row. O(n log n) with a sorted list of
  the rows' room, for the tens of thousands of prefix trees of a whole study.

  Returns:
    ((row, start) per item, in input order; the number of rows).
  """
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
  room: list[tuple[int, int]] = []  # (tokens left, row), sorted
  used: list[int] = []
  out = [(0, 0)] * len(lengths)
  for i in order:
    n = int(lengths[i])
    if not 0 < n <= row_len:
      raise ValueError(f"item {i} has {n} tokens; packing needs 1..row_len={row_len}")
    j = bisect.bisect_left(room, (n, -1))
    if j < len(room):
      r = room.pop(j)[1]
    else:
      r = len(used)
      used.append(0)
    out[i] = (r, used[r])
    used[r] += n
    if used[r] < row_len:
      bisect.insort(room, (row_len - used[r], r))
  return out, len(used)

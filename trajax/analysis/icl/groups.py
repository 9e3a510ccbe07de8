"""Prefix groups of option requests, and the length ladder their shapes are rounded to.

An example's options usually share their whole 2-shot prompt but its last token
(`prefix_groups`); the shared tokens are what `trajax.analysis.icl.plan` computes
once. Host code only (numpy).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from trajax.analysis.icl.prompts import OptionRequest


def length_bucket(n: int, per_octave: int = 4, minimum: int = 8) -> int:
  """`n` rounded up to a ladder with `per_octave` steps per power of two (>= minimum).

  E.g. per_octave=4: ..., 64, 80, 96, 112, 128, 160, ...: at most 25% padding.
  """
  n = max(int(n), 1)
  if n <= minimum:
    return minimum
  step = max(1, 2**(math.floor(math.log2(n)) - int(math.log2(per_octave))))
  return -(-n // step) * step


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def pow2(n: int) -> int:
  return 1 << max(n - 1, 0).bit_length()


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

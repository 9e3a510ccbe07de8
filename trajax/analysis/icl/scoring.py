"""Option scoring: the log-probability of every option given its prompt.

`score_options` batches all (prompt + option) rows, sorted by length, through
any `logprob_fn(tokens_bt, mask_bt) -> logprobs_bt` (the engine's
`trajax.token_logprobs` signature): every row is its own full sequence.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from trajax.analysis.icl.prompts import OptionRequest

NORMALIZATIONS = ("tokens", "chars", "bytes", "none")


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
  spans: list = [None] * n
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
      spans[r] = logprobs_bt[i, requests[r].option_start:len(requests[r].tokens)]
  return option_scores(requests, spans)


def option_scores(requests: Sequence[OptionRequest], spans: Sequence[np.ndarray]) -> OptionScores:
  """OptionScores from each request's per-token log-probs of its option span.

  Args:
    requests: the requests.
    spans: per request, float [n_option_tokens] log p(option token | what precedes).
  Returns:
    OptionScores aligned with `requests` (sums in float64).
  Raises:
    ValueError: a span of the wrong length or with a non-finite log-prob, naming the option.
  """
  logprob = np.zeros(len(requests), np.float64)
  for r, (req, span) in enumerate(zip(requests, spans)):
    if span is None or len(span) != req.n_option_tokens or not np.all(np.isfinite(span)):
      raise ValueError(f"{req.task} example {req.example_index} option "
                       f"{req.option_index}: non-finite log-prob in the option span")
    logprob[r] = float(np.sum(span, dtype=np.float64))
  return OptionScores(logprob=logprob, n_tokens=np.array([r.n_option_tokens for r in requests],
                                                         np.int64),
                      n_chars=np.array([len(r.option) for r in requests], np.int64),
                      n_bytes=np.array([len(r.option.encode("utf-8")) for r in requests], np.int64))

"""Fast option scoring: each shared prompt computed once, its options scored against it.

`OptionScorer(scorer).score(requests)` runs a `plan.Plan` with the checkpoint a
`trajax.scoring.Scorer` holds and returns `scoring.OptionScores` equal to
`scoring.score_options` (every option as its own full row) to float32 rounding.

The reuse kernel, for E examples and R option rows (one jitted call):

  1. prefill: the E shared prefixes, left-padded to C slots, through the model's
     `forward_cached` into an empty KV cache (no LM head: nothing is scored there);
  2. each option row runs `tokens[C:len-1]` at slots C.. with positions continuing
     its prefix, through the same `forward_cached`, attending to its example's
     cached prefix (`trajax.models.layers.SharedPrefix`: each layer gathers the
     rows' prefixes as it runs, so no [rows, C] copy of the whole cache exists);
  3. the fused, chunked LM head (`trajax.scoring.fused_head_logprobs`) on the
     R x S option slots only.

Left padding puts every prefix's last token at slot C-1, so a query's distance to a
key in slots is its distance in positions: windowed attention (GPT-Neo's local
layers) sees the same keys as in the full row. Padded prefix slots and padded option
slots are invalid keys; their own outputs are dropped.

The tree kernel runs packed prefix trees (`trees.TreeBatch`: each example's prompt
once, its options' blocks after it, seeing the prompt and themselves) through the
model's `layer_stack`, the LM head on the scored slots only. The pack kernel is the
engine's own `Scorer` on packed rows (`trajax.packing`).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from trajax import xla_cpu
from trajax.analysis.icl import plan as plan_lib
from trajax.analysis.icl import trees
from trajax.analysis.icl.prompts import OptionRequest
from trajax.analysis.icl.scoring import OptionScores, option_scores
from trajax.models import layers
from trajax.scoring import Scorer, fused_head_logprobs


def _reuse_logprobs_fn(graphdef, state, prefix_ec, prefix_mask_ec, example_r, block_rs, targets_rs,
                       chunk_tokens, block_mask_rs):
  """log p(targets_rs | prefix of example_r, block_rs[:, :<=s]) [R, S] float32, NaN off-mask."""
  model = nnx.merge(graphdef, state)
  e, c = prefix_ec.shape
  r, s = block_rs.shape
  cache = model.init_cache(e, c)
  positions_ec = jnp.where(prefix_mask_ec, model.positions(prefix_mask_ec), model.PAD_POSITION)
  _, cache = model.forward_cached(prefix_ec, positions_ec, prefix_mask_ec, cache, 0)
  pad = ((0, 0), (0, 0), (0, s), (0, 0), (0, 0))  # slots for each row's own block
  shared = layers.SharedPrefix(*(jnp.pad(x, pad) for x in cache), example_r)
  n_prefix_r = prefix_mask_ec.sum(1).astype(jnp.int32)[example_r]
  positions_rs = jnp.where(block_mask_rs, n_prefix_r[:, None] + jnp.arange(s)[None, :],
                           model.PAD_POSITION)
  key_valid_rs = jnp.concatenate([prefix_mask_ec[example_r], block_mask_rs], axis=1)
  h_rsd, _ = model.forward_cached(block_rs, positions_rs, key_valid_rs, shared, c)
  lp = fused_head_logprobs(h_rsd.reshape(r * s, -1), model.head_matrix(), targets_rs.reshape(-1),
                           chunk_tokens).reshape(r, s)
  return jnp.where(block_mask_rs, lp, jnp.nan)


def _tree_logprobs_fn(graphdef, state, tokens_bt, positions_bt, segment_ids_bt, head_slots_bk,
                      targets_bk, chunk_tokens, head_mask_bk):
  """log p(targets_bk | its branch and prompt) [rows, K] float32 of prefix-tree rows
  (`trees.TreeBatch`), NaN off-mask: the decoder over the packed rows, the LM head on the
  scored slots only."""
  model = nnx.merge(graphdef, state)
  positions_bt = jnp.where(segment_ids_bt > 0, positions_bt, model.PAD_POSITION)
  h_btd = model.layer_stack(tokens_bt, positions_bt, layers.segment_mask(segment_ids_bt),
                            segment_ids_bt)
  h_bkd = jnp.take_along_axis(h_btd, head_slots_bk[:, :, None], axis=1)
  b, k = head_slots_bk.shape
  lp = fused_head_logprobs(h_bkd.reshape(b * k, -1), model.head_matrix(), targets_bk.reshape(-1),
                           chunk_tokens).reshape(b, k)
  return jnp.where(head_mask_bk, lp, jnp.nan)


# Compiled with `xla_cpu.options()` on a CPU, as the scoring kernel: 1.00-1.09x faster per call
# than XLA's default options on the OPT-125m shape (docs/PERFORMANCE.md, ICL option scoring).
_reuse_logprobs = xla_cpu.jit(_reuse_logprobs_fn, static_argnums=(0, 7))
_tree_logprobs = xla_cpu.jit(_tree_logprobs_fn, static_argnums=(0, 7))


def compilations() -> int:
  """Reuse- and tree-kernel compilations so far in this process (one per call shape)."""
  return sum(f.active()._cache_size() for f in (_reuse_logprobs, _tree_logprobs))  # pylint: disable=protected-access


class OptionScorer:
  """Scores option requests with the checkpoint a `Scorer` holds, by a cost-model plan.

  Args:
    scorer: the engine's `Scorer` (its weights, mesh and head chunk are used;
      `set_state` on it moves this to the next checkpoint).
    method: "auto", "reuse", "tree" or "pack" (`plan.METHODS`).
    batch_tokens: tokens per call (0: `plan.BATCH_TOKENS` of the backend).
    weights: cost-model factors (default: `plan.CALIBRATION` of the backend).
  """
  def __init__(self, scorer: Scorer, method: str = "auto", batch_tokens: int = 0,
               weights: plan_lib.Weights | None = None):
    if method not in plan_lib.METHODS:
      raise ValueError(f"method {method!r}: expected one of {plan_lib.METHODS}")
    self.scorer = scorer
    self.method = method
    backend = jax.default_backend()
    self.batch_tokens = batch_tokens or plan_lib.BATCH_TOKENS.get(backend, 32768)
    model = nnx.merge(scorer.graphdef, scorer.state)
    self.cost = plan_lib.CostModel.for_model(
        model, weights or plan_lib.CALIBRATION.get(backend, plan_lib.Weights()))
    self.data_parallel = 1 if scorer.mesh is None else int(scorer.mesh.shape["data"])
    self.stats: dict = {}

  def plan(self, requests: Sequence[OptionRequest], pad_id: int = 1) -> plan_lib.Plan:
    return plan_lib.make_plan(requests, self.cost, self.method, self.batch_tokens,
                              self.data_parallel, self.scorer.config.max_position_embeddings,
                              pad_id)

  def _put(self, host: np.ndarray) -> jax.Array:
    if self.scorer.mesh is None:
      return jnp.asarray(host)
    from trajax import sharding  # pylint: disable=g-import-not-at-top
    return jax.make_array_from_callback(host.shape, sharding.batch_sharding(self.scorer.mesh),
                                        lambda index: host[index])

  def _gather(self, x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)

  def _run_reuse(self, b: plan_lib.ReuseBatch, requests) -> np.ndarray:
    """One reuse call: [rows, option_slots] log-probs, row order = the batch's requests."""
    c, s = b.prefix_slots, b.option_slots
    prefix = np.zeros((b.examples, c), np.int32)
    prefix_mask = np.zeros((b.examples, c), bool)
    block = np.zeros((b.rows, s), np.int32)
    targets = np.zeros((b.rows, s), np.int32)
    block_mask = np.zeros((b.rows, s), bool)
    example = np.zeros((b.rows,), np.int32)
    row = 0
    for e, g in enumerate(b.groups):
      n = g.prefix_len
      if n:  # left-padded: the last prefix token at slot c - 1
        prefix[e, c - n:] = requests[g.requests[0]].tokens[:n]
        prefix_mask[e, c - n:] = True
      for k in g.requests:
        t = requests[k].tokens
        m = len(t) - 1 - n
        block[row, :m] = t[n:len(t) - 1]
        targets[row, :m] = t[n + 1:]
        block_mask[row, :m] = True
        example[row] = e
        row += 1
    lp = _reuse_logprobs(self.scorer.graphdef, self.scorer.state, self._put(prefix),
                         self._put(prefix_mask), self._put(example), self._put(block),
                         self._put(targets), self.scorer.head_chunk_tokens, self._put(block_mask))
    return self._gather(lp)

  def _run_tree(self, b: trees.TreeBatch) -> np.ndarray:
    """One prefix-tree call: [rows, K] log-probs at the batch's head columns."""
    lp = _tree_logprobs(self.scorer.graphdef, self.scorer.state, self._put(b.tokens_bt),
                        self._put(b.positions_bt), self._put(b.segment_ids_bt),
                        self._put(b.head_slots_bk), self._put(b.targets_bk),
                        self.scorer.head_chunk_tokens, self._put(b.head_mask_bk))
    return self._gather(lp)

  def score(self, requests: Sequence[OptionRequest], pad_id: int = 1,
            plan: plan_lib.Plan | None = None) -> OptionScores:
    """Log-probs of every option (the same numbers as `scoring.score_options`).

    Args:
      requests: from `prompts.build_requests`.
      pad_id: padding token id of packed rows.
      plan: a plan of these requests (default: `self.plan(requests, pad_id)`).
    Returns:
      OptionScores aligned with `requests`; `self.stats` says what was computed.
    Raises:
      ValueError: a non-finite log-prob inside an option span, naming the option.
    """
    t0 = time.perf_counter()
    plan = plan or self.plan(requests, pad_id)
    t_plan = time.perf_counter() - t0
    spans: list = [None] * len(requests)
    for b in plan.reuse:
      lp_rs = self._run_reuse(b, requests)
      row = 0
      for g in b.groups:
        for k in g.requests:
          start = requests[k].option_start - 1 - g.prefix_len
          spans[k] = lp_rs[row, start:len(requests[k].tokens) - 1 - g.prefix_len]
          row += 1
    for b in plan.tree:
      lp_bk = self._run_tree(b)
      prefix = {k: g.prefix_len for g in b.groups for k in g.requests}
      for k, r, col in b.placement:
        start = requests[k].option_start - 1 - prefix[k]
        spans[k] = lp_bk[r, col + start:col + len(requests[k].tokens) - 1 - prefix[k]]
    for b in plan.pack:
      lp_bt = self.scorer(b.tokens_bt, segment_ids_bt=b.segment_ids_bt)
      for k, r, s, n in b.placement:
        spans[k] = lp_bt[r, s + requests[k].option_start:s + n]
    scores = option_scores(requests, spans)
    slots = plan.slots(requests)
    real = sum(len(r.tokens) for r in requests)
    computed = slots["prefill"] + slots["option"] + slots["tree"] + slots["pack"]
    self.stats = {
        "plan_s": t_plan, "score_s": time.perf_counter() - t0, "options": len(requests),
        "row_tokens": real, "slots": computed, "reuse_calls": len(plan.reuse),
        "tree_calls": len(plan.tree), "pack_calls": len(plan.pack), "shapes": len(plan.shapes()),
        **slots
    }
    padding = ", ".join(f"{name} {100 * (1 - slots[kind + '_real'] / slots[kind]):.0f}%"
                        for kind, name in (("prefill", "prefill"), ("option", "option rows"),
                                           ("tree", "tree rows"), ("pack", "packed rows"))
                        if slots[kind])
    logging.info(
        "ICL plan: %d options, %d reuse + %d tree + %d pack calls, %d shapes | %d token slots "
        "computed for %d row tokens (%.2fx fewer) | padding: %s", len(requests), len(plan.reuse),
        len(plan.tree), len(plan.pack), len(plan.shapes()), computed, real, real / max(computed, 1),
        padding or "none")
    return scores


def calibrate(option_scorer: OptionScorer, requests: Sequence[OptionRequest],
              repeats: int = 3) -> plan_lib.Weights:
  """Measures the cost-model factors on `requests` (what `plan.CALIBRATION` records).

  Scores the requests all by reuse, all as prefix trees and all by pack (after a
  warm-up run of each), takes the median seconds of `repeats` runs of each, and sets
  the reuse and tree factors so that seconds per estimated FLOP (padding included)
  agree with pack's; `fill` and `tree_fill` are the packed and tree rows' share of
  real tokens.

  Returns:
    the measured `plan.Weights` (also set on `option_scorer`).
  """
  cost = dataclasses.replace(option_scorer.cost, weights=plan_lib.Weights())
  per_flop, fill = {}, {}
  for method in ("reuse", "tree", "pack"):
    p = plan_lib.make_plan(requests, cost, method, option_scorer.batch_tokens,
                           option_scorer.data_parallel)
    option_scorer.score(requests, plan=p)
    runs = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      option_scorer.score(requests, plan=p)
      runs.append(time.perf_counter() - t0)
    flops = sum(cost.batch_flops(b) for b in p.reuse + p.tree + p.pack)
    per_flop[method] = float(np.median(runs)) / flops
    rows = p.tree + p.pack
    fill[method] = float(np.mean([(b.segment_ids_bt > 0).mean() for b in rows])) if rows else 1.0
  weights = plan_lib.Weights(reuse=per_flop["reuse"] / per_flop["pack"], cache=0.0,
                             fill=fill["pack"], tree=per_flop["tree"] / per_flop["pack"],
                             tree_fill=fill["tree"])
  option_scorer.cost = dataclasses.replace(option_scorer.cost, weights=weights)
  return weights

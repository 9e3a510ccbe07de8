"""Two-model interpolated decoding with KV caches (paper §4.2, Eq. 2-3).

    p'_i = λ1 · p_s(x_i | x_<i) + λ2 · p_l(x_i | x_<i),  tokens with p' ≤ 0 removed

`generate` prefills both models on a left-padded prompt batch, then runs every
single-token step inside ONE jitted `lax.while_loop`: both models' KV caches
are loop carries updated in place (`dynamic_update_slice`), p' comes from
`sampling.interpolate_logits`, the token from `sampling.sample_next` with the
key `fold_in(key(seed), step)`. The loop ends early once every row has emitted
EOS. The jitted function takes (graphdef_s, state_s, graphdef_l, state_l, ...):
graphdefs are static, states are arguments, so new weights of the same
architecture (the next checkpoint) and other λ reuse the compilation.

A model whose λ is 0 is not run at all (`generate_single`, configs "ps", "pl").

Slots and positions. A prompt of P slots (left padding) occupies cache slots
[0, P); generated token i is written at slot P + i. `key_valid_bs` marks the
prompt's pad slots invalid and every generated slot valid (a slot not yet
written is excluded by the causal part of the mask). Positions follow HF OPT:
real prompt tokens are 0..n_b−1, generated token i is at n_b + i.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trajax import sampling, scoring, xla_cpu
from trajax.models import stacked_cache


@dataclasses.dataclass
class Generation:
  """Result of `generate`.

  Attributes:
    tokens_bn: [batch, max_new_tokens] int32 generated ids; `pad_id` after a
      row's EOS (the EOS itself is kept) and after the loop stopped.
    lengths_b: [batch] int32 tokens generated per row, EOS included.
    logprobs_bn: [batch, max_new_tokens] float32 log p'(chosen token) under the
      interpolated distribution (before temperature / nucleus filtering); NaN
      where no token was generated. For λ = (0, 1) this is the large model's
      own log-prob.
    degenerate_steps: number of (row, step) pairs where no token had p' > 0
      and the step fell back to p_l (see `sampling.interpolate`).
    prompts_bt: [batch, prompt_len] int32 the prompts as decoded (left-padded).
    prompt_mask_bt: [batch, prompt_len] bool.
  """
  tokens_bn: np.ndarray
  lengths_b: np.ndarray
  logprobs_bn: np.ndarray
  degenerate_steps: int
  prompts_bt: np.ndarray
  prompt_mask_bt: np.ndarray

  def continuations(self) -> list[list[int]]:
    """Each row's generated ids, without padding (EOS kept)."""
    return [row[:n].tolist() for row, n in zip(self.tokens_bn, self.lengths_b)]


def resolve_lambdas(lambdas) -> tuple[float, float]:
  """(λ_small, λ_large) from a pair or a `sampling.CONFIGS` name, validated."""
  if isinstance(lambdas, str):
    if lambdas not in sampling.CONFIGS:
      raise ValueError(f"lambdas: unknown configuration {lambdas!r}; expected a pair or one of "
                       f"{sorted(sampling.CONFIGS)}")
    lambdas = sampling.CONFIGS[lambdas]
  try:
    lam_s, lam_l = (float(x) for x in lambdas)
  except (TypeError, ValueError):
    raise ValueError(f"lambdas: expected (λ_small, λ_large) or a CONFIGS name, got "
                     f"{lambdas!r}") from None
  for name, lam in (("λ_small", lam_s), ("λ_large", lam_l)):
    if not (np.isfinite(lam) and -1.0 <= lam <= 1.0):
      raise ValueError(f"lambdas: {name} must lie in [-1, 1] (paper Eq. 2), got {lam}")
  if lam_s <= 0 and lam_l <= 0:
    raise ValueError(f"lambdas: at least one of λ_small, λ_large must be positive, got "
                     f"({lam_s}, {lam_l}); no token would keep positive mass")
  return lam_s, lam_l


def left_pad(prompts_bt, prompt_mask_bt=None, pad_id: int = 1):
  """Moves every row's real tokens to the right end (left padding), order kept.

  Args:
    prompts_bt: [batch, length] int token ids.
    prompt_mask_bt: [batch, length] bool, True for real tokens (default all);
      real tokens need not be contiguous or left-aligned.
    pad_id: id written in pad slots.
  Returns:
    (tokens_bt int32, mask_bt bool), [batch, length], left-padded.
  """
  tokens = np.asarray(prompts_bt)
  if tokens.ndim != 2 or tokens.shape[1] < 1 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"prompts_bt: expected a [batch, length] integer array, got shape "
                     f"{tokens.shape} dtype {tokens.dtype}")
  mask = np.ones(tokens.shape, bool) if prompt_mask_bt is None else np.asarray(prompt_mask_bt, bool)
  if mask.shape != tokens.shape:
    raise ValueError(f"prompt_mask_bt: shape {mask.shape} != prompts_bt shape {tokens.shape}")
  counts = mask.sum(1)
  if (counts == 0).any():
    raise ValueError(f"prompts_bt: row {int(np.argmin(counts))} has no real token; every prompt "
                     f"needs at least one (e.g. BOS)")
  out_t = np.full(tokens.shape, pad_id, np.int32)
  out_m = np.zeros(tokens.shape, bool)
  t = tokens.shape[1]
  for b in range(tokens.shape[0]):
    real = tokens[b][mask[b]]
    out_t[b, t - real.size:] = real
    out_m[b, t - real.size:] = True
  return out_t, out_m


def _last_logits(model, head, h_btd, vocab_size):
  """float32 logits [batch, vocab] of the last slot, sliced to `vocab_size`.

  `head` is `scoring.prepare_head(model.head_matrix())`, prepared once outside the loop.
  """
  return scoring.head_logits(h_btd[:, -1], head, vocab_size or model.config.vocab_size)


def _generate_fn(graphdef_s, state_s, graphdef_l, state_l, prompts_bt, prompt_mask_bt, lambdas,
                 top_p, temperature, key, eos_id, pad_id, stop_at_eos, *, max_new_tokens, method,
                 vocab_size):
  """The jitted prefill + decode loop; a model with graphdef None is skipped."""
  models = [
      nnx.merge(g, s) if g is not None else None
      for g, s in ((graphdef_s, state_s), (graphdef_l, state_l))
  ]
  b, p = prompts_bt.shape
  n = max_new_tokens
  max_len = p + n - 1  # the last token is chosen but never fed back
  key_valid_bs = jnp.concatenate([prompt_mask_bt, jnp.ones((b, n - 1), bool)], axis=1)
  positions_bt = models[0 if models[1] is None else 1].positions(prompt_mask_bt)
  n_real_b = prompt_mask_bt.sum(1).astype(jnp.int32)

  def forward(caches, tokens_bt, pos_bt, index):
    logits, new_caches = [], []
    for model, cache, head in zip(models, caches, heads):
      if model is None:
        logits.append(None)
        new_caches.append(None)
        continue
      h, cache = model.forward_cached(tokens_bt, pos_bt, key_valid_bs, cache, index)
      logits.append(_last_logits(model, head, h, vocab_size))
      new_caches.append(cache)
    # A skipped model's λ is 0: any finite logits of the right shape give the same p'.
    logits = [l if l is not None else logits[1 - i] for i, l in enumerate(logits)]
    return logits, new_caches

  caches = [m.init_cache(b, max_len) if m is not None else None for m in models]
  if jax.default_backend() == "cpu":  # one array per layer, each updated in place
    caches = [stacked_cache.split_layers(c) if c is not None else None for c in caches]
  heads = [scoring.prepare_head(m.head_matrix()) if m is not None else None for m in models]
  # On a CPU the layer weights are sliced once here, outside the loop (`stacked_cache`).
  hoisted = {}
  with stacked_cache.hoisted_slices(hoisted, record=True):
    logits, caches = forward(caches, prompts_bt, positions_bt, 0)

  def choose(logits, step, alive_b):
    logp_bv, degenerate_b = sampling.interpolate_logits(logits[0], logits[1], lambdas[0],
                                                        lambdas[1])
    tok_b = sampling.sample_next(jax.random.fold_in(key, step), logp_bv, method, top_p, temperature)
    lp_b = jnp.take_along_axis(logp_bv, tok_b[:, None], axis=1)[:, 0]
    tok_b = jnp.where(alive_b, tok_b, pad_id)
    lp_b = jnp.where(alive_b, lp_b, jnp.nan)
    n_deg = jnp.sum(degenerate_b & alive_b).astype(jnp.int32)
    still_alive = alive_b & ~(stop_at_eos & (tok_b == eos_id))
    return tok_b, lp_b, n_deg, still_alive

  tokens_bn = jnp.full((b, n), pad_id, jnp.int32)
  logprobs_bn = jnp.full((b, n), jnp.nan, jnp.float32)
  carry = (jnp.int32(0), logits, caches, tokens_bn, logprobs_bn, jnp.ones((b,), bool), jnp.int32(0))

  def write(carry_tail, step, tok_b, lp_b):
    tokens_bn, logprobs_bn = carry_tail
    return (jax.lax.dynamic_update_index_in_dim(tokens_bn, tok_b, step, 1),
            jax.lax.dynamic_update_index_in_dim(logprobs_bn, lp_b, step, 1))

  def cond(carry):
    step, _, _, _, _, alive_b, _ = carry
    return (step < n - 1) & jnp.any(alive_b)

  def body(carry):
    step, logits, caches, tokens_bn, logprobs_bn, alive_b, n_deg = carry
    tok_b, lp_b, d, next_alive = choose(logits, step, alive_b)
    tokens_bn, logprobs_bn = write((tokens_bn, logprobs_bn), step, tok_b, lp_b)
    pos_b1 = (n_real_b + step)[:, None]
    logits, caches = forward(caches, tok_b[:, None], pos_b1, p + step)
    return step + 1, logits, caches, tokens_bn, logprobs_bn, next_alive, n_deg + d

  with stacked_cache.hoisted_slices(hoisted, record=False):
    step, logits, _, tokens_bn, logprobs_bn, alive_b, n_deg = jax.lax.while_loop(cond, body, carry)
  # The last token (step n − 1) needs no forward pass; a row that ended is pad already.
  tok_b, lp_b, d, _ = choose(logits, step, alive_b & (step == n - 1))
  tokens_bn, logprobs_bn = write((tokens_bn, logprobs_bn), jnp.minimum(step, n - 1), tok_b, lp_b)
  # Rows that stopped: a written pad at step n-1 is what was there already.
  generated_bn = ~jnp.isnan(logprobs_bn)
  return tokens_bn, generated_bn.sum(1).astype(jnp.int32), logprobs_bn, n_deg + d


# Compiled with `xla_cpu.options()` on a CPU, as the scoring kernel.
_generate = xla_cpu.jit(
    _generate_fn,
    static_argnames=("graphdef_s", "graphdef_l", "max_new_tokens", "method", "vocab_size"))


def _split(model):
  if model is None:
    return None, None
  return nnx.split(model)


def generate(small, large, prompts_bt, prompt_mask_bt=None, *, max_new_tokens: int,
             lambdas=(1.0, -1.0), method: str = "greedy", top_p: float = 0.9,
             temperature: float = 1.0, seed: int = 0, eos_id: int = 2, stop_at_eos: bool = True,
             pad_id: int | None = None, vocab_size: int | None = None) -> Generation:
  """Decodes from p' = λ1·p_s + λ2·p_l (paper Eq. 2-3), greedy or nucleus.

  Args:
    small: the small model (OPTForCausalLM) or None when λ_small == 0.
    large: the large model or None when λ_large == 0.
    prompts_bt: [batch, prompt_len] int prompt ids (include BOS yourself).
    prompt_mask_bt: [batch, prompt_len] bool, True for real tokens; prompts of
      different lengths are re-packed to left padding (see `left_pad`).
    max_new_tokens: tokens to generate per row (≥ 1).
    lambdas: (λ_small, λ_large) in [−1, 1], or a `sampling.CONFIGS` name
      ("ps-pl", "ps", "ps+pl", "pl", "pl-ps"). A model with λ = 0 is not run.
    method: "greedy" or "nucleus".
    top_p, temperature: nucleus sampling parameters (unused by greedy).
    seed: sampling seed; step i uses fold_in(key(seed), i).
    eos_id: end-of-sequence id (OPT: 2).
    stop_at_eos: stop a row after it emits eos_id (then pad); the loop stops
      when every row has.
    pad_id: id emitted after EOS; default the model's `pad_token_id` (OPT: 1).
    vocab_size: slice both heads to the first `vocab_size` logits (the
      tokenizer's size). Required when the two models' vocab sizes differ:
      checkpoints pad their embedding rows differently (OPT pads 50265 real ids
      to 50272) and the pad rows are untrained ids no tokenizer produces, so
      dropping them is the only meaningful way to align the two distributions.
      Default None keeps the full head, which is what HF `generate` does and so
      what the parity tests compare against.
  Returns:
    A `Generation`.
  """
  lam_s, lam_l = resolve_lambdas(lambdas)
  if method not in sampling.METHODS:
    raise ValueError(f"method must be one of {sampling.METHODS}, got {method!r}")
  if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
  if method == "nucleus" and not (0.0 < top_p <= 1.0):
    raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
  if method == "nucleus" and not (np.isfinite(temperature) and temperature > 0):
    raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
  small = small if lam_s != 0 else None
  large = large if lam_l != 0 else None
  for name, model, lam in (("small", small, lam_s), ("large", large, lam_l)):
    if model is None and lam != 0:
      raise ValueError(f"generate: λ_{name} = {lam} != 0 but no {name} model was given")
  used = [m for m in (small, large) if m is not None]
  vocabs = {m.config.vocab_size for m in used}
  if vocab_size is None and len(vocabs) > 1:
    raise ValueError(f"generate: the models' vocab sizes differ ({small.config.vocab_size} vs "
                     f"{large.config.vocab_size}); pass vocab_size=<the tokenizer's size> to "
                     f"slice both heads to the ids the tokenizer can produce")
  if vocab_size is not None and not (1 <= vocab_size <= min(vocabs)):
    raise ValueError(f"generate: vocab_size={vocab_size} must lie in [1, {min(vocabs)}] (the "
                     f"smallest model vocabulary)")
  pad_id = used[-1].config.pad_token_id if pad_id is None else int(pad_id)
  tokens, mask = left_pad(prompts_bt, prompt_mask_bt, pad_id)
  limit = min(m.config.max_position_embeddings for m in used)
  if int(mask.sum(1).max()) + max_new_tokens - 1 > limit:
    raise ValueError(f"generate: prompt ({int(mask.sum(1).max())} tokens) + max_new_tokens "
                     f"({max_new_tokens}) exceeds the models' {limit} positions")
  v_max = vocab_size or min(vocabs)
  if (tokens[mask] >= v_max).any() or (tokens[mask] < 0).any():
    raise ValueError(f"prompts_bt: token ids must lie in [0, {v_max}); got "
                     f"[{tokens[mask].min()}, {tokens[mask].max()}]")
  gs, ss = _split(small)
  gl, sl = _split(large)
  out = _generate(gs, ss, gl, sl, jnp.asarray(tokens), jnp.asarray(mask),
                  jnp.asarray([lam_s, lam_l], jnp.float32), jnp.float32(top_p),
                  jnp.float32(temperature), jax.random.key(seed), jnp.int32(eos_id),
                  jnp.int32(pad_id), jnp.bool_(stop_at_eos), max_new_tokens=int(max_new_tokens),
                  method=method, vocab_size=vocab_size)
  toks, lengths, lps, n_deg = jax.device_get(out)
  return Generation(np.asarray(toks), np.asarray(lengths), np.asarray(lps), int(n_deg), tokens,
                    mask)


def generate_single(model, prompts_bt, prompt_mask_bt=None, **kwargs) -> Generation:
  """Decodes from one model alone (λ = (0, 1)); keyword arguments as `generate`."""
  if "lambdas" in kwargs:
    raise ValueError("generate_single: lambdas is fixed to (0, 1); use generate() for others")
  return generate(None, model, prompts_bt, prompt_mask_bt, lambdas=(0.0, 1.0), **kwargs)

"""Next-token distributions for two-model interpolated decoding (paper §4.2, Eq. 2).

    p'_i = λ1 · p_s(x_i | x_<i) + λ2 · p_l(x_i | x_<i),   λ1, λ2 ∈ [−1, 1]

Tokens with p' ≤ 0 are removed exactly (probability 0, log-prob −inf) and the
rest renormalised. The authors' released code added 1e-7 to every token, which
leaks mass back onto the removed tokens (about 5e-3 in total over OPT's 50,272
ids, before renormalising) so they can still be sampled; trajax does not.

Every function here is pure, works on the last axis of [..., vocab] arrays
(written [batch, vocab] below) and is jittable. Scalars that are concrete
(Python numbers, concrete arrays) are validated eagerly; traced ones cannot be
and are used as given.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# The paper's configurations as (λ1 for p_s, λ2 for p_l). "ps+pl" is p_s + p_l
# renormalised: since the result is renormalised, (1, 1) and (0.5, 0.5) give the
# same distribution, i.e. the average of the two models.
CONFIGS: dict[str, tuple[float, float]] = {
    "ps-pl": (1.0, -1.0),
    "ps": (1.0, 0.0),
    "ps+pl": (1.0, 1.0),
    "pl": (0.0, 1.0),
    "pl-ps": (-1.0, 1.0),
}

METHODS = ("greedy", "nucleus")


def _concrete(x):
  """Returns x as a NumPy array if it is concrete, None if it is traced."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _check_lambdas(lambda_small, lambda_large, batch_shape):
  """Validates concrete lambdas and shapes them to broadcast against [..., vocab]."""
  lams = []
  for name, lam in (("lambda_small", lambda_small), ("lambda_large", lambda_large)):
    lam_arr = jnp.asarray(lam, jnp.float32)
    if lam_arr.ndim not in (0, len(batch_shape)) or (lam_arr.ndim and
                                                     lam_arr.shape != tuple(batch_shape)):
      raise ValueError(f"{name} must be a scalar or have the batch shape {tuple(batch_shape)}, "
                       f"got shape {lam_arr.shape}")
    value = _concrete(lam)
    if value is not None:
      value = value.astype(np.float64)
      if not np.all(np.isfinite(value)) or np.any(np.abs(value) > 1.0):
        raise ValueError(f"{name} must lie in [-1, 1] (paper Eq. 2), got {value}")
    lams.append(lam_arr[..., None] if lam_arr.ndim else lam_arr)
  small, large = (_concrete(lambda_small), _concrete(lambda_large))
  if small is not None and large is not None:
    if np.any((np.asarray(small) <= 0) & (np.asarray(large) <= 0)):
      raise ValueError("at least one of lambda_small, lambda_large must be positive in every row; "
                       f"got ({small}, {large}), which gives no token positive mass")
  return lams


def _check_pair(a, b, names):
  if a.shape != b.shape:
    raise ValueError(
        f"{names[0]} and {names[1]} must have the same shape, got {a.shape} and {b.shape}")
  if a.ndim < 1:
    raise ValueError(f"{names[0]} must be [..., vocab], got a scalar")


def interpolate(p_small_bv, p_large_bv, lambda_small, lambda_large):
  """Interpolates two next-token distributions (paper Eq. 2), in probability space.

    p' = λ1·p_s + λ2·p_l; tokens with p' ≤ 0 get probability exactly 0 and the
    rest are renormalised to sum to 1.

    Degenerate rows: when no token has p' > 0 the row has no distribution. This
    happens only if λ1 + λ2 ≤ 0 with mixed signs (if λ1 + λ2 > 0 the entries sum
    to λ1 + λ2 > 0, so one is positive); for the paper's configurations
    ("ps-pl", "pl-ps": sum 0) only when p_s == p_l exactly, e.g. the same
    checkpoint on both sides. Such a row falls back to the large model's
    distribution p_l and is flagged in `degenerate`, so the caller can count it.
    Why p_l: it is the paper's reference distribution (λ = (0, 1)), sampling from
    it cannot emit a token the language models consider impossible, and in the
    only case the paper's presets reach, p_l == p_s, so no model is preferred.
    (Returning all −inf instead would make a sampler silently emit token 0.)

    Args:
      p_small_bv: [batch, vocab] next-token probabilities of the small model.
      p_large_bv: [batch, vocab] next-token probabilities of the large model.
      lambda_small: λ1 in [−1, 1], a scalar or [batch] (one configuration per row).
      lambda_large: λ2 in [−1, 1], same form. Concrete values are validated: in
        range, and at least one of the two positive in every row.

    Returns:
      (probs_bv, degenerate_b): probs_bv is [batch, vocab] float32 (or wider, if the
      inputs are), rows summing to 1, exactly 0 on removed tokens; degenerate_b is
      [batch] bool, True where the row fell back to p_l (renormalised).
    """
  p_s = jnp.asarray(p_small_bv)
  p_l = jnp.asarray(p_large_bv)
  _check_pair(p_s, p_l, ("p_small_bv", "p_large_bv"))
  dtype = jnp.promote_types(jnp.promote_types(p_s.dtype, p_l.dtype), jnp.float32)
  p_s, p_l = p_s.astype(dtype), p_l.astype(dtype)
  lam_s, lam_l = _check_lambdas(lambda_small, lambda_large, p_s.shape[:-1])

  mixed_bv = lam_s.astype(dtype) * p_s + lam_l.astype(dtype) * p_l
  kept_bv = jnp.where(mixed_bv > 0, mixed_bv, 0)
  total_b1 = kept_bv.sum(axis=-1, keepdims=True)
  degenerate_b = total_b1[..., 0] <= 0
  probs_bv = kept_bv / jnp.where(total_b1 > 0, total_b1, 1)
  fallback_bv = p_l / p_l.sum(axis=-1, keepdims=True)
  probs_bv = jnp.where(degenerate_b[..., None], fallback_bv, probs_bv)
  return probs_bv, degenerate_b


def _log_diff_exp(x, y):
  """log(e^x − e^y) where x > y, −inf elsewhere; never produces NaN."""
  gap = jnp.where(x > y, y - x, -1.0)
  return jnp.where(x > y, x + jnp.log1p(-jnp.exp(gap)), -jnp.inf)


def interpolate_logits(logits_small_bv, logits_large_bv, lambda_small, lambda_large):
  """Interpolates two models' next-token distributions from their logits, in log space.

    Same semantics as `interpolate(softmax(logits_small), softmax(logits_large), ...)`,
    including the degenerate-row fallback to the large model, but computed from
    float32 log-softmaxes: log(λ1 e^a + λ2 e^b) with logaddexp when both weights
    are ≥ 0 and as a + log1p(−e^(b−a)) when they differ in sign, so tiny
    probabilities keep their precision and p' ≤ 0 is decided as a ≤ b, exactly.

    Args:
      logits_small_bv: [batch, vocab] logits of the small model (any float dtype).
      logits_large_bv: [batch, vocab] logits of the large model.
      lambda_small: λ1 in [−1, 1], a scalar or [batch].
      lambda_large: λ2 in [−1, 1], a scalar or [batch].

    Returns:
      (logprobs_bv, degenerate_b): logprobs_bv is [batch, vocab] float32, the
      renormalised log p', −inf on removed tokens; degenerate_b is [batch] bool,
      True where no token had p' > 0 and the row is log_softmax(logits_large).
    """
  a = jnp.asarray(logits_small_bv)
  b = jnp.asarray(logits_large_bv)
  _check_pair(a, b, ("logits_small_bv", "logits_large_bv"))
  lam_s, lam_l = _check_lambdas(lambda_small, lambda_large, a.shape[:-1])
  logp_s = jax.nn.log_softmax(a.astype(jnp.float32), axis=-1)
  logp_l = jax.nn.log_softmax(b.astype(jnp.float32), axis=-1)

  # Log of each term's magnitude; log(0) = −inf drops a term with λ = 0.
  term_s = jnp.log(jnp.abs(lam_s)) + logp_s
  term_l = jnp.log(jnp.abs(lam_l)) + logp_l
  neg_s, neg_l = lam_s < 0, lam_l < 0
  # With one negative weight, `pos` is the positively weighted term.
  pos = jnp.where(neg_s, term_l, term_s)
  neg = jnp.where(neg_s, term_s, term_l)
  raw_bv = jnp.where(neg_s | neg_l, _log_diff_exp(pos, neg), jnp.logaddexp(term_s, term_l))
  raw_bv = jnp.where(neg_s & neg_l, -jnp.inf, raw_bv)

  norm_b1 = jax.nn.logsumexp(raw_bv, axis=-1, keepdims=True)
  degenerate_b = ~jnp.isfinite(norm_b1[..., 0])
  logprobs_bv = raw_bv - jnp.where(degenerate_b[..., None], 0.0, norm_b1)
  logprobs_bv = jnp.where(degenerate_b[..., None], logp_l, logprobs_bv)
  return logprobs_bv, degenerate_b


def _check_top_p(top_p):
  value = _concrete(top_p)
  if value is not None and not (np.ndim(value) == 0 and 0.0 < float(value) <= 1.0):
    raise ValueError(f"top_p must be a scalar in (0, 1], got {value}")


def nucleus_filter(logprobs_bv, top_p):
  """Keeps the nucleus (Holtzman et al. 2019) of each row and renormalises it.

    The nucleus is the smallest set of highest-probability tokens whose total
    probability reaches top_p (is ≥ top_p). Tokens are ranked by probability,
    ties broken by lower token id first, and taken in that order while the mass
    of the tokens before them is < top_p; the most probable token is always kept.
    top_p = 1.0 keeps every token with nonzero probability. There is no hidden
    top-k. The input need not be normalised (e.g. logits / temperature): it is
    log-softmaxed first. Cumulative sums are float32, so a top_p that equals a
    partial sum exactly may land on either side of it.

    Args:
      logprobs_bv: [batch, vocab] log-probabilities or logits; −inf = impossible.
      top_p: scalar in (0, 1] (validated when concrete).

    Returns:
      [batch, vocab] float32 log-probabilities renormalised over the nucleus, −inf
      outside it. A row that is −inf everywhere is returned unchanged.
    """
  _check_top_p(top_p)
  lp = jnp.asarray(logprobs_bv).astype(jnp.float32)
  if lp.ndim < 1:
    raise ValueError("logprobs_bv must be [..., vocab], got a scalar")
  shape = lp.shape
  lp = lp.reshape(-1, shape[-1])
  norm = jax.nn.logsumexp(lp, axis=-1, keepdims=True)
  lp = jnp.where(jnp.isfinite(norm), lp - norm, -jnp.inf)

  order = jnp.argsort(lp, axis=-1, descending=True, stable=True)  # ties: lower id first
  lp_sorted = jnp.take_along_axis(lp, order, axis=-1)
  p_sorted = jnp.exp(lp_sorted)
  cum = jnp.cumsum(p_sorted, axis=-1)
  mass_before = jnp.concatenate([jnp.zeros_like(cum[:, :1]), cum[:, :-1]], axis=-1)
  in_nucleus = (mass_before < top_p) | (jnp.asarray(top_p) >= 1.0)
  in_nucleus = in_nucleus.at[:, 0].set(True)
  keep_sorted = in_nucleus & (lp_sorted > -jnp.inf)
  rows = jnp.arange(lp.shape[0])[:, None]
  keep = jnp.zeros_like(keep_sorted).at[rows, order].set(keep_sorted)

  kept = jnp.where(keep, lp, -jnp.inf)
  norm = jax.nn.logsumexp(kept, axis=-1, keepdims=True)
  out = jnp.where(jnp.isfinite(norm), kept - norm, -jnp.inf)
  return out.reshape(shape)


def sample_next(key, logprobs_bv, method="greedy", top_p=1.0, temperature=1.0):
  """Picks the next token of every row.

    greedy: argmax, the lowest token id on ties; key, top_p, temperature unused.
    nucleus: logprobs / temperature, then `nucleus_filter(·, top_p)`, then one
    categorical draw per row with jax.random (the same key gives the same tokens).
    Every row must have at least one finite log-prob (`interpolate_logits`
    guarantees it); an all −inf row would come back as token 0.

    Args:
      key: a jax.random key (used by "nucleus" only).
      logprobs_bv: [batch, vocab] log-probabilities (or logits), −inf = removed.
      method: "greedy" or "nucleus"; a Python string (static under jit).
      top_p: nucleus mass in (0, 1]; 1.0 is plain ancestral sampling.
      temperature: > 0; divides the log-probs before the nucleus is formed.

    Returns:
      [batch] int32 token ids.
    """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  lp = jnp.asarray(logprobs_bv).astype(jnp.float32)
  if method == "greedy":
    return jnp.argmax(lp, axis=-1).astype(jnp.int32)
  t = _concrete(temperature)
  if t is not None and not (np.ndim(t) == 0 and np.isfinite(t) and float(t) > 0):
    raise ValueError(f"temperature must be a finite scalar > 0, got {t}")
  filtered = nucleus_filter(lp / temperature, top_p)
  return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

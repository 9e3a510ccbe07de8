"""trajax.sampling against float64 NumPy references and hand-computed cases."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from trajax import sampling

BATCH, VOCAB = 16, 64


def _softmax64(logits):
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _interpolate_ref(p_s, p_l, lam_s, lam_l):
  """Float64 reference: (probs, degenerate) with the fallback to p_l."""
  lam_s = np.broadcast_to(np.asarray(lam_s, np.float64), p_s.shape[:-1])[..., None]
  lam_l = np.broadcast_to(np.asarray(lam_l, np.float64), p_s.shape[:-1])[..., None]
  raw = lam_s * p_s + lam_l * p_l
  kept = np.where(raw > 0, raw, 0.0)
  total = kept.sum(-1, keepdims=True)
  degenerate = total[..., 0] <= 0
  out = np.where(degenerate[..., None], p_l / p_l.sum(-1, keepdims=True),
                 kept / np.where(total > 0, total, 1))
  return out, degenerate, raw


def _random_logits(seed, batch=BATCH, vocab=VOCAB, scale=3.0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, vocab)) * scale, rng.normal(size=(batch, vocab)) * scale


def _check_against_ref(probs, logprobs, degenerate, ref, ref_deg, raw):
  probs, logprobs, degenerate = np.asarray(probs), np.asarray(logprobs), np.asarray(degenerate)
  np.testing.assert_array_equal(degenerate, ref_deg)
  np.testing.assert_allclose(probs, ref, atol=1e-6, rtol=1e-4)
  np.testing.assert_allclose(np.exp(logprobs), ref, atol=1e-6, rtol=1e-4)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.exp(logprobs).sum(-1), 1.0, atol=1e-6)
  live = ~ref_deg[:, None]
  # Clear removals (reference p' < 0 by a margin above float32 noise) are exact.
  removed = live & (raw < -1e-6)
  assert np.all(probs[removed] == 0.0)
  assert np.all(logprobs[removed] == -np.inf)
  # Clearly kept tokens are positive and finite.
  kept = live & (raw > 1e-6)
  assert np.all(probs[kept] > 0) and np.all(np.isfinite(logprobs[kept]))
  # Whatever the float32 path removed is removed in both entry points alike: 0 ⇔ −inf.
  np.testing.assert_array_equal(probs == 0.0, logprobs == -np.inf)


@pytest.mark.parametrize("name", sorted(sampling.CONFIGS))
def test_interpolate_configs_match_float64_reference(name):
  lam_s, lam_l = sampling.CONFIGS[name]
  logits_s, logits_l = _random_logits(seed=sorted(sampling.CONFIGS).index(name))
  p_s, p_l = _softmax64(logits_s), _softmax64(logits_l)
  ref, ref_deg, raw = _interpolate_ref(p_s, p_l, lam_s, lam_l)
  probs, deg = sampling.interpolate(p_s.astype(np.float32), p_l.astype(np.float32), lam_s, lam_l)
  logprobs, deg_log = sampling.interpolate_logits(logits_s.astype(np.float32),
                                                  logits_l.astype(np.float32), lam_s, lam_l)
  np.testing.assert_array_equal(deg, deg_log)
  _check_against_ref(probs, logprobs, deg, ref, ref_deg, raw)
  if name in ("ps-pl", "pl-ps"):
    assert (ref == 0).sum() > 0  # the contrast really removed tokens


def test_interpolate_random_lambdas_per_row_match_reference():
  rng = np.random.default_rng(7)
  logits_s, logits_l = _random_logits(seed=8)
  p_s, p_l = _softmax64(logits_s), _softmax64(logits_l)
  lam = rng.uniform(-1, 1, size=(2, BATCH))
  lam[0, np.maximum(lam[0], lam[1]) <= 0] *= -1  # at least one positive per row
  # Rows 0-2 compare a model with itself, where λ1 + λ2 ≤ 0 leaves no positive mass.
  logits_l[:3] = logits_s[:3]
  p_l[:3] = p_s[:3]
  lam[:, :3] = [[0.5, -0.8, 0.3], [-1.0, 0.8, -0.3]]
  ref, ref_deg, raw = _interpolate_ref(p_s, p_l, lam[0], lam[1])
  assert ref_deg.any() and not ref_deg.all()  # both kinds of rows are exercised
  probs, deg = sampling.interpolate(p_s.astype(np.float32), p_l.astype(np.float32), lam[0], lam[1])
  logprobs, deg_log = jax.jit(sampling.interpolate_logits)(logits_s.astype(np.float32),
                                                           logits_l.astype(np.float32), lam[0],
                                                           lam[1])
  np.testing.assert_array_equal(deg, deg_log)
  _check_against_ref(probs, logprobs, deg, ref, ref_deg, raw)


def test_interpolate_hand_case_and_exact_zero():
  p_s = np.array([[0.5, 0.3, 0.2, 0.0]], np.float32)
  p_l = np.array([[0.2, 0.3, 0.1, 0.4]], np.float32)
  probs, deg = sampling.interpolate(p_s, p_l, 1.0, -1.0)
  # p_s − p_l = [0.3, 0, 0.1, −0.4] → keep {0, 2}, renormalised to [0.75, 0, 0.25, 0].
  np.testing.assert_allclose(np.asarray(probs), [[0.75, 0.0, 0.25, 0.0]], atol=1e-7)
  assert np.asarray(probs)[0, 1] == 0.0 and np.asarray(probs)[0, 3] == 0.0
  assert not bool(deg[0])
  # No floor anywhere: the authors' +1e-7 would have given token 3 a nonzero value.
  logprobs, _ = sampling.interpolate_logits(np.log([[5.0, 3.0, 2.0, 1e-30]]), np.log(p_l + 1e-30),
                                            1.0, -1.0)
  assert np.asarray(logprobs)[0, 3] == -np.inf


def test_ps_plus_pl_is_average():
  logits_s, logits_l = _random_logits(seed=3)
  a, _ = sampling.interpolate_logits(logits_s, logits_l, *sampling.CONFIGS["ps+pl"])
  b, _ = sampling.interpolate_logits(logits_s, logits_l, 0.5, 0.5)
  avg = 0.5 * (_softmax64(logits_s) + _softmax64(logits_l))
  np.testing.assert_allclose(np.exp(np.asarray(a)), avg, atol=1e-6)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_degenerate_rows_fall_back_to_large_model():
  logits = np.random.default_rng(0).normal(size=(2, 10)).astype(np.float32)
  # Row 0: identical models under ps-pl → every p' = 0. Row 1: different models.
  logits_s = logits.copy()
  logits_s[1] = logits[1][::-1]
  logprobs, deg = sampling.interpolate_logits(logits_s, logits, 1.0, -1.0)
  np.testing.assert_array_equal(np.asarray(deg), [True, False])
  np.testing.assert_allclose(
      np.asarray(logprobs)[0], np.asarray(jax.nn.log_softmax(logits[0])), atol=1e-6)
  probs, deg_p = sampling.interpolate(_softmax64(logits_s), _softmax64(logits), 1.0, -1.0)
  np.testing.assert_array_equal(np.asarray(deg_p), [True, False])
  np.testing.assert_allclose(np.asarray(probs)[0], _softmax64(logits[0]), atol=1e-6)
  # λ = (0.5, −1): 0.5·[0.6, 0.4] − [0.5, 0.5] < 0 everywhere, although p_s ≠ p_l.
  probs, deg = sampling.interpolate(np.array([[0.6, 0.4]]), np.array([[0.5, 0.5]]), 0.5, -1.0)
  assert bool(deg[0])
  np.testing.assert_allclose(np.asarray(probs), [[0.5, 0.5]])


def test_interpolate_validation_errors():
  p = np.full((2, 4), 0.25, np.float32)
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    sampling.interpolate(p, p, 1.5, 0.0)
  with pytest.raises(ValueError, match="positive"):
    sampling.interpolate(p, p, -0.5, 0.0)
  with pytest.raises(ValueError, match="positive"):
    sampling.interpolate_logits(p, p, np.array([1.0, 0.0]), np.array([0.0, -1.0]))
  with pytest.raises(ValueError, match="same shape"):
    sampling.interpolate(p, p[:, :3], 1.0, 0.0)
  with pytest.raises(ValueError, match="batch shape"):
    sampling.interpolate_logits(p, p, np.ones(3), 1.0)


def test_interpolate_traced_lambdas_under_jit():
  logits_s, logits_l = _random_logits(seed=11)
  f = jax.jit(sampling.interpolate_logits)
  for name, (lam_s, lam_l) in sampling.CONFIGS.items():
    eager, _ = sampling.interpolate_logits(logits_s, logits_l, lam_s, lam_l)
    jitted, _ = f(logits_s, logits_l, jnp.float32(lam_s), jnp.float32(lam_l))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6, err_msg=name)


# Hand-computed nucleus: probabilities [0.05, 0.4, 0.1, 0.3, 0.15] (ids 0..4).
# Sorted: id1 0.4, id3 0.3, id4 0.15, id2 0.1, id0 0.05; cumulative 0.4, 0.7, 0.85, 0.95, 1.0.
HAND = np.array([0.05, 0.4, 0.1, 0.3, 0.15])


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (1e-6, [1]),  # tiny: only the argmax
        (0.4 - 1e-3, [1]),
        (0.5, [1, 3]),  # 0.4 < 0.5 ≤ 0.7
        (0.8, [1, 3, 4]),  # 0.7 < 0.8 ≤ 0.85
        (0.9, [1, 3, 4, 2]),
        (0.99, [0, 1, 2, 3, 4]),
        (1.0, [0, 1, 2, 3, 4]),
    ],
)
def test_nucleus_filter_hand_case(top_p, kept):
  out = np.asarray(sampling.nucleus_filter(np.log(HAND)[None], top_p))[0]
  expected = np.zeros(5)
  expected[kept] = HAND[kept] / HAND[kept].sum()
  np.testing.assert_allclose(np.exp(out), expected, atol=1e-6)
  assert np.all(out[np.setdiff1d(np.arange(5), kept)] == -np.inf)


def test_nucleus_filter_ties_lower_id_first():
  # Four tokens of 0.2 (ids 1, 2, 4, 5) and two of 0.1 (ids 0, 3).
  probs = np.array([0.1, 0.2, 0.2, 0.1, 0.2, 0.2])
  out = np.asarray(sampling.nucleus_filter(np.log(probs)[None], 0.5))[0]
  # Needs three 0.2 tokens (0.4 < 0.5 ≤ 0.6): the lowest ids 1, 2, 4, each 1/3.
  np.testing.assert_allclose(np.exp(out), [0, 1 / 3, 1 / 3, 0, 1 / 3, 0], atol=1e-6)
  # Ties among the 0.1 tokens: 0.8 + 0.1 (id 0) reaches 0.85, id 3 is dropped.
  out = np.asarray(sampling.nucleus_filter(np.log(probs)[None], 0.85))[0]
  np.testing.assert_allclose(np.exp(out), np.array([0.1, 0.2, 0.2, 0, 0.2, 0.2]) / 0.9, atol=1e-6)
  # Uniform row, tiny top_p: the lowest id.
  out = np.asarray(sampling.nucleus_filter(np.zeros((1, 7)), 1e-9))[0]
  assert out[0] == 0.0 and np.all(out[1:] == -np.inf)


def test_nucleus_filter_top_p_one_keeps_all_nonzero_and_no_top_k():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(3, 5000)) * 4.0
  logits[:, ::7] = -np.inf  # removed tokens stay removed
  out = np.asarray(sampling.nucleus_filter(logits, 1.0))
  np.testing.assert_array_equal(np.isfinite(out), np.isfinite(logits))
  ref = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(out[np.isfinite(out)], ref[np.isfinite(ref)], atol=1e-4)
  # A flat distribution over 5000 tokens with top_p = 0.99 keeps 4950 of them.
  out = np.asarray(sampling.nucleus_filter(np.zeros((1, 5000)), 0.99))
  assert np.isfinite(out).sum() == 4950 and np.all(np.isfinite(out[0, :4950]))


def test_nucleus_filter_validation():
  with pytest.raises(ValueError, match="top_p"):
    sampling.nucleus_filter(np.zeros((1, 3)), 0.0)
  with pytest.raises(ValueError, match="top_p"):
    sampling.nucleus_filter(np.zeros((1, 3)), 1.5)


def test_greedy_ties_take_lowest_id():
  with np.errstate(divide="ignore"):
    logprobs = np.log(
        np.array([[0.1, 0.4, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25], [0.0, 0.2, 0.3, 0.5]]))
  tokens = sampling.sample_next(jax.random.key(0), logprobs, method="greedy")
  np.testing.assert_array_equal(np.asarray(tokens), [1, 0, 3])
  assert tokens.dtype == jnp.int32


def test_sampling_is_reproducible_per_key():
  logits_s, logits_l = _random_logits(seed=2, batch=64, vocab=200, scale=1.0)
  logprobs, _ = sampling.interpolate_logits(logits_s, logits_l, 0.0, 1.0)
  sample = jax.jit(sampling.sample_next, static_argnames="method")
  a = sample(jax.random.key(1), logprobs, method="nucleus", top_p=0.9, temperature=1.0)
  b = sample(jax.random.key(1), logprobs, method="nucleus", top_p=0.9, temperature=1.0)
  c = sample(jax.random.key(2), logprobs, method="nucleus", top_p=0.9, temperature=1.0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (np.asarray(a) != np.asarray(c)).sum() > 32  # different keys: mostly different


def _chi_square_p(tokens, expected_probs):
  counts = np.bincount(tokens, minlength=expected_probs.size)
  support = expected_probs > 0
  assert counts[~support].sum() == 0  # never outside the nucleus
  return stats.chisquare(counts[support], expected_probs[support] * tokens.size).pvalue


@pytest.mark.parametrize("top_p, temperature", [(0.8, 1.0), (1.0, 1.0), (0.9, 0.7)])
def test_nucleus_sampling_frequencies(top_p, temperature):
  vocab, n = 12, 40_000
  logits = np.random.default_rng(9).normal(size=vocab) * 1.5
  # Independent float64 reference: tempered softmax, sorted, smallest prefix ≥ top_p.
  p = _softmax64(logits / temperature)
  order = np.argsort(-p, kind="stable")
  before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
  keep = order[(before < top_p) | (top_p >= 1.0)]
  expected = np.zeros(vocab)
  expected[keep] = p[keep] / p[keep].sum()
  if top_p < 1.0:
    assert 1 < keep.size < vocab  # the nucleus really truncates
  logprobs = np.broadcast_to(jax.nn.log_softmax(logits), (n, vocab))
  tokens = sampling.sample_next(jax.random.key(123), logprobs, "nucleus", top_p, temperature)
  assert _chi_square_p(np.asarray(tokens), expected) > 1e-3


def test_sample_next_validation():
  lp = np.zeros((1, 3))
  with pytest.raises(ValueError, match="method"):
    sampling.sample_next(jax.random.key(0), lp, method="beam")
  with pytest.raises(ValueError, match="temperature"):
    sampling.sample_next(jax.random.key(0), lp, method="nucleus", temperature=0.0)


def test_masked_logits_stay_removed_and_jitted_step_runs_per_row_configs():
  # −inf logits (e.g. padded vocabulary ids) give −inf out, never NaN, for every config.
  logits_s, logits_l = _random_logits(seed=4, batch=5, vocab=32)
  logits_s[:, -4:] = -np.inf
  logits_l[:, -4:] = -np.inf
  lam_s, lam_l = (np.array(v, np.float32) for v in zip(*sampling.CONFIGS.values()))

  @jax.jit
  def step(key, logits_s, logits_l, lam_s, lam_l):
    logprobs, degenerate = sampling.interpolate_logits(logits_s, logits_l, lam_s, lam_l)
    return sampling.sample_next(key, logprobs, "nucleus", 0.9, 1.0), logprobs, degenerate

  tokens, logprobs, degenerate = step(jax.random.key(0), logits_s, logits_l, lam_s, lam_l)
  logprobs = np.asarray(logprobs)
  assert not np.isnan(logprobs).any() and np.all(logprobs[:, -4:] == -np.inf)
  assert not np.asarray(degenerate).any()
  assert np.all(np.isfinite(logprobs[np.arange(5),
                                     np.asarray(tokens)]))  # sampled tokens are allowed
  for row, (a, b) in enumerate(sampling.CONFIGS.values()):
    single, _ = sampling.interpolate_logits(logits_s[row:row + 1], logits_l[row:row + 1], a, b)
    np.testing.assert_allclose(logprobs[row:row + 1], np.asarray(single), atol=1e-6)

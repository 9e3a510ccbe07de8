"""trajax.corruption: exact counts, value ranges, determinism, the cap, hand cases."""
import numpy as np
import pytest

from trajax import corruption

# Original tokens 0..199 and replacement ids 1000..1049 never coincide, so every
# replaced position is visible as a changed value.
TOKENS = np.arange(200, dtype=np.int32)
VOCAB = np.arange(1000, 1050)


@pytest.mark.parametrize("fraction", corruption.PAPER_FRACTIONS)
def test_replace_exact_count_values_and_cap(fraction):
  out = corruption.replace(TOKENS, fraction, VOCAB, rng=0)
  assert out.shape == (100,) and out.dtype == TOKENS.dtype  # paper cap: first 100 tokens
  changed = out != TOKENS[:100]
  assert changed.sum() == round(fraction * 100)
  np.testing.assert_array_equal(out[~changed], TOKENS[:100][~changed])  # others untouched, in place
  assert np.isin(out[changed], VOCAB).all()


def test_replace_counts_round_half_up_and_no_cap():
  # 0.5 · 5 = 2.5 → 3 (half up, not Python's banker's 2); 0.3 · 7 = 2.1 → 2.
  assert (corruption.replace(np.arange(5), 0.5, VOCAB, 1) >= 1000).sum() == 3
  assert (corruption.replace(np.arange(7), 0.3, VOCAB, 1) >= 1000).sum() == 2
  out = corruption.replace(TOKENS, 0.2, VOCAB, rng=1, max_length=None)
  assert out.size == 200 and (out >= 1000).sum() == 40
  assert corruption.replace(TOKENS, 0.2, VOCAB, rng=1, max_length=30).size == 30


def test_replace_is_deterministic_and_seed_dependent():
  a = corruption.replace(TOKENS, 0.4, VOCAB, rng=7)
  b = corruption.replace(list(TOKENS), 0.4, VOCAB, rng=np.random.default_rng(7))
  c = corruption.replace(TOKENS, 0.4, VOCAB, rng=8)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(TOKENS, np.arange(200))  # input not modified


def test_replace_draws_uniformly_over_vocab_ids():
  # Positions chosen uniformly and values uniform over vocab_ids (chi-square-free check:
  # 10 ids, 20k draws, each frequency within 5 sigma of 1/10).
  vocab = np.array([3, 5, 8, 13, 21, 34, 55, 89, 144, 233])
  out = corruption.replace(np.full(100, -1), 1.0, vocab, rng=3, max_length=None)
  draws = np.concatenate(
      [corruption.replace(np.full(100, -1), 1.0, vocab, rng=s) for s in range(200)])
  assert np.isin(out, vocab).all()
  freq = np.array([(draws == v).mean() for v in vocab])
  assert np.all(np.abs(freq - 0.1) < 5 * np.sqrt(0.09 / draws.size))
  # Positions: over many seeds, 20% replacement hits every position about equally.
  hits = sum((corruption.replace(np.full(50, -1), 0.2, vocab, rng=s) != -1) for s in range(500))
  assert np.all(np.abs(hits / 500 - 0.2) < 5 * np.sqrt(0.16 / 500))


def test_candidate_ids_excludes_specials():
  ids = corruption.candidate_ids(10, exclude=[0, 2, 9])
  np.testing.assert_array_equal(ids, [1, 3, 4, 5, 6, 7, 8])


def test_delete_spans_hand_case_and_counts():
  tokens = np.arange(20)
  out = corruption.delete_spans(tokens, 0.5, rng=0, span_length=3)
  assert out.size == 10
  # The kept tokens are a subsequence, and the deleted ones form runs that split
  # into spans of 3, 3, 3, 1 (d = 10): every maximal deleted run has a length
  # that is a sum of those spans.
  assert np.all(np.diff(out) > 0)
  deleted = np.setdiff1d(tokens, out)
  runs = np.split(deleted, np.where(np.diff(deleted) != 1)[0] + 1)
  lengths = sorted(len(r) for r in runs)
  assert sum(lengths) == 10 and all(l in (1, 3, 4, 6, 7, 9, 10) for l in lengths)
  # span_length 1: d distinct positions; fraction 1: nothing left; 0: unchanged.
  assert corruption.delete_spans(tokens, 0.25, rng=1).size == 15
  assert corruption.delete_spans(tokens, 1.0, rng=1, span_length=4).size == 0
  np.testing.assert_array_equal(corruption.delete_spans(tokens, 0.0, rng=1, span_length=4), tokens)


def test_delete_spans_are_contiguous_when_they_fit_exactly():
  # 10 tokens, delete 8 in spans of 4: two spans among 2 kept tokens. Every deleted
  # run must have length 4 or 8, never a partial span.
  for seed in range(30):
    out = corruption.delete_spans(np.arange(10), 0.8, rng=seed, span_length=4)
    deleted = np.setdiff1d(np.arange(10), out)
    runs = np.split(deleted, np.where(np.diff(deleted) != 1)[0] + 1)
    assert all(len(r) in (4, 8) for r in runs), (seed, out)


def test_delete_spans_uniform_placement_small_case():
  # n = 4, one span of 2: the 3 placements {01, 12, 23} are equally likely.
  seen = {}
  for seed in range(3000):
    key = tuple(corruption.delete_spans(np.arange(4), 0.5, rng=seed, span_length=2))
    seen[key] = seen.get(key, 0) + 1
  assert set(seen) == {(2, 3), (0, 3), (0, 1)}
  assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in seen.values())


def test_insert_random_hand_case():
  tokens = np.arange(10)
  out = corruption.insert_random(tokens, 0.3, VOCAB, rng=0)
  assert out.size == 13
  inserted = out >= 1000
  assert inserted.sum() == 3 and np.isin(out[inserted], VOCAB).all()
  np.testing.assert_array_equal(out[~inserted], tokens)  # originals in order
  np.testing.assert_array_equal(out, corruption.insert_random(tokens, 0.3, VOCAB, rng=0))
  assert corruption.insert_random(TOKENS, 1.0, VOCAB, rng=0).size == 200  # cap 100 + 100


def test_repeat_span_hand_case():
  tokens = np.arange(10)
  for seed in range(10):
    out = corruption.repeat_span(tokens, 0.3, rng=seed, times=2)
    assert out.size == 16
    # Exactly one start s in 0..7 explains the output.
    matches = [
        s for s in range(8) if np.array_equal(
            out, np.concatenate([tokens[:s + 3], tokens[s:s + 3], tokens[s:s + 3], tokens[s + 3:]]))
    ]
    assert len(matches) == 1
  np.testing.assert_array_equal(corruption.repeat_span(tokens, 0.0, rng=0), tokens)
  np.testing.assert_array_equal(corruption.repeat_span(tokens, 1.0, rng=0), np.tile(tokens, 2))


def test_validation_errors():
  with pytest.raises(ValueError, match="fraction"):
    corruption.replace(TOKENS, 1.2, VOCAB, 0)
  with pytest.raises(ValueError, match="fraction"):
    corruption.delete_spans(TOKENS, "0.2", 0)
  with pytest.raises(ValueError, match="1-D"):
    corruption.replace(TOKENS.reshape(2, 100), 0.2, VOCAB, 0)
  with pytest.raises(ValueError, match="integer"):
    corruption.insert_random(np.ones(5), 0.2, VOCAB, 0)
  with pytest.raises(ValueError, match="vocab_ids"):
    corruption.replace(TOKENS, 0.2, [], 0)
  with pytest.raises(ValueError, match="repeat"):
    corruption.replace(TOKENS, 0.2, [1, 1, 2], 0)
  with pytest.raises(ValueError, match="max_length"):
    corruption.replace(TOKENS, 0.2, VOCAB, 0, max_length=0)
  with pytest.raises(ValueError, match="span_length"):
    corruption.delete_spans(TOKENS, 0.2, 0, span_length=0)
  with pytest.raises(ValueError, match="times"):
    corruption.repeat_span(TOKENS, 0.2, 0, times=0)

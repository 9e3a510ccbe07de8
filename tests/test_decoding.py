"""KV-cache interpolated decoding against full-prefix recomputation and transformers."""
import functools
import json
import os
import re

import jax
import numpy as np
import pytest
import torch
from flax import nnx

import trajax
from trajax import corruption, decoding
from trajax.sampling import CONFIGS
from trajax.analysis import common, generation, generation_figures

# Small model pre-LN; large model deeper and wider. "post_ln": the small one is
# post-LN with project_in/out (as OPT-350m), so the pair mixes both variants.
LARGE = dict(hidden_size=32, num_hidden_layers=3, ffn_dim=64)
VARIANTS = {"pre_ln": {}, "post_ln": dict(do_layer_norm_before=False, word_embed_proj_dim=8)}
N_NEW = 8


@pytest.fixture
def pair(tiny_ckpt):
  """Factory: (small, large) trajax models and their torch references, by variant."""
  def make(variant="pre_ln"):
    ps, ts = tiny_ckpt(f"small_{variant}", seed=0, **VARIANTS[variant])
    pl, tl = tiny_ckpt(f"large_{variant}", seed=1, **LARGE)
    return trajax.load_hf(ps), trajax.load_hf(pl), ts, tl, (ps, pl)

  return make


def _prompts(ragged, seed=0):
  ids = np.random.RandomState(seed).randint(3, 96, size=(4, 7))
  ids[:, 0] = 2  # BOS
  mask = np.ones(ids.shape, bool)
  if ragged:  # left padding: rows of 7, 4, 1 and 5 real tokens
    mask[1, :3] = mask[2, :6] = mask[3, :2] = False
    ids[~mask] = 1
    ids[1, 3] = ids[2, 6] = ids[3, 2] = 2
  return ids, mask


def _softmax64(logits):
  z = logits.astype(np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


@functools.partial(jax.jit, static_argnums=0)
def _full_forward(graphdef, state, ids, mask):
  return nnx.merge(graphdef, state)(ids, mask)


def _full_prefix_logits(model):
  """No-cache forward: float32 logits [batch, width, vocab] of a padded batch (jit by graphdef)."""
  graphdef, state = nnx.split(model)
  return lambda ids, mask: _full_forward(graphdef, state, ids, mask)


def _reference_greedy(small, large, ids, mask, lambdas, n, vocab=None):
  """Full-prefix recomputation at every step, interpolation in float64 NumPy.

  The sequence lives in a fixed [batch, prompt + n] buffer, right-padded beyond
  the current step (causal attention never sees those slots), so each model
  compiles once; step i reads the logits of column prompt + i - 1.
  """
  lam_s, lam_l = lambdas
  b, p = ids.shape
  toks = np.concatenate([ids, np.ones((b, n), ids.dtype)], 1)
  msk = np.concatenate([mask, np.zeros((b, n), bool)], 1)
  fwd_s, fwd_l = _full_prefix_logits(small), _full_prefix_logits(large)
  out = []
  for i in range(n):
    q = lam_l * _softmax64(np.asarray(fwd_l(toks, msk))[:, p + i - 1, :vocab])
    if lam_s:
      q = q + lam_s * _softmax64(np.asarray(fwd_s(toks, msk))[:, p + i - 1, :vocab])
    nxt = np.argmax(np.where(q > 0, q, -np.inf), -1)
    out.append(nxt)
    toks[:, p + i] = nxt
    msk[:, p + i] = True
  return np.stack(out, 1)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cache_matches_full_recompute(pair, variant):
  small, large, *_ = pair(variant)
  for config in ("pl", "ps", "ps-pl", "pl-ps"):
    for ragged in (False, True):
      ids, mask = _prompts(ragged)
      got = decoding.generate(small, large, ids, mask, max_new_tokens=N_NEW, lambdas=config,
                              stop_at_eos=False)
      want = _reference_greedy(small, large, ids, mask, CONFIGS[config], N_NEW)
      np.testing.assert_array_equal(got.tokens_bn, want, err_msg=f"{config} ragged={ragged}")
      np.testing.assert_array_equal(got.lengths_b, N_NEW)
      assert got.degenerate_steps == 0


def test_logprobs_equal_token_logprobs(pair):
  _, large, *_ = pair("post_ln")
  ids, mask = _prompts(ragged=True)
  g = decoding.generate_single(large, ids, mask, max_new_tokens=N_NEW, stop_at_eos=False)
  seq = np.concatenate([g.prompts_bt, g.tokens_bn], 1)
  seq_mask = np.concatenate([g.prompt_mask_bt, np.ones_like(g.tokens_bn, bool)], 1)
  want = trajax.token_logprobs(large, seq, seq_mask)[:, -N_NEW:]
  assert np.isfinite(g.logprobs_bn).all()
  np.testing.assert_allclose(g.logprobs_bn, want, atol=1e-4, rtol=0)


def test_single_model_matches_transformers_generate(pair):
  small, _, torch_small, *_ = pair("post_ln")
  ids, mask = _prompts(ragged=True)
  g = decoding.generate_single(small, ids, mask, max_new_tokens=N_NEW, eos_id=2, pad_id=1)
  with torch.no_grad():
    out = torch_small.generate(input_ids=torch.tensor(ids),
                               attention_mask=torch.tensor(mask.astype(np.int64)), do_sample=False,
                               max_new_tokens=N_NEW, eos_token_id=2, pad_token_id=1,
                               output_logits=True, return_dict_in_generate=True)
  want = out.sequences[:, ids.shape[1]:].numpy()
  want = np.pad(want, ((0, 0), (0, N_NEW - want.shape[1])), constant_values=1)
  np.testing.assert_array_equal(g.tokens_bn, want)
  lp = torch.log_softmax(torch.stack(out.logits, 1).double(), -1).numpy()
  want_lp = np.take_along_axis(lp, want[:, :lp.shape[1], None], -1)[..., 0]
  for b, n in enumerate(g.lengths_b):
    np.testing.assert_allclose(g.logprobs_bn[b, :n], want_lp[b, :n], atol=1e-4, rtol=0)
    assert np.isnan(g.logprobs_bn[b, n:]).all()


def test_eos_stops_a_row(pair):
  small, large, *_ = pair()
  ids, mask = _prompts(ragged=True)
  free = decoding.generate(small, large, ids, mask, max_new_tokens=N_NEW, lambdas="ps-pl",
                           stop_at_eos=False)
  eos = int(free.tokens_bn[0, 2])  # pretend row 0's third token is EOS
  got = decoding.generate(small, large, ids, mask, max_new_tokens=N_NEW, lambdas="ps-pl",
                          eos_id=eos, pad_id=1)
  for b in range(len(ids)):
    hits = np.flatnonzero(free.tokens_bn[b] == eos)
    n = hits[0] + 1 if hits.size else N_NEW
    assert got.lengths_b[b] == n
    np.testing.assert_array_equal(got.tokens_bn[b, :n], free.tokens_bn[b, :n])
    np.testing.assert_array_equal(got.tokens_bn[b, n:], 1)
  assert got.lengths_b[0] == 3
  assert got.continuations()[0] == free.tokens_bn[0, :3].tolist()


def test_nucleus_seeds(pair):
  small, large, *_ = pair()
  ids, mask = _prompts(ragged=False)
  kw = dict(max_new_tokens=N_NEW, lambdas="ps+pl", method="nucleus", top_p=0.9, stop_at_eos=False)
  a = decoding.generate(small, large, ids, mask, seed=3, **kw)
  b = decoding.generate(small, large, ids, mask, seed=3, **kw)
  c = decoding.generate(small, large, ids, mask, seed=4, **kw)
  np.testing.assert_array_equal(a.tokens_bn, b.tokens_bn)
  assert (a.tokens_bn != c.tokens_bn).any()
  # Every sampled token is inside its step's nucleus: p' of the token is finite.
  assert np.isfinite(a.logprobs_bn).all()


def test_same_model_on_both_sides_is_degenerate_and_falls_back_to_pl(pair):
  _, large, *_ = pair()
  ids, mask = _prompts(ragged=True)
  got = decoding.generate(large, large, ids, mask, max_new_tokens=N_NEW, lambdas="ps-pl",
                          stop_at_eos=False)
  want = decoding.generate_single(large, ids, mask, max_new_tokens=N_NEW, stop_at_eos=False)
  assert got.degenerate_steps == N_NEW * len(ids)
  np.testing.assert_array_equal(got.tokens_bn, want.tokens_bn)


def test_new_weights_reuse_the_compilation(pair, tiny_ckpt):
  small, large, *_ = pair()
  ids, mask = _prompts(ragged=False)
  decoding.generate(small, large, ids, mask, max_new_tokens=N_NEW, lambdas="ps-pl")
  size = decoding._generate.active()._cache_size()  # pylint: disable=protected-access
  other, _ = tiny_ckpt("large_other", seed=7, **LARGE)
  decoding.generate(small, trajax.load_hf(other), ids, mask, max_new_tokens=N_NEW, lambdas="pl-ps",
                    seed=5, stop_at_eos=False)
  assert decoding._generate.active()._cache_size() == size  # pylint: disable=protected-access


def test_errors_name_what_was_expected(pair, tiny_ckpt):
  small, large, *_ = pair()
  ids, mask = _prompts(ragged=False)
  with pytest.raises(ValueError, match="unknown configuration"):
    decoding.generate(small, large, ids, mask, max_new_tokens=2, lambdas="nope")
  with pytest.raises(ValueError, match="at least one"):
    decoding.generate(small, large, ids, mask, max_new_tokens=2, lambdas=(-1, 0))
  with pytest.raises(ValueError, match="no small model"):
    decoding.generate(None, large, ids, mask, max_new_tokens=2, lambdas="ps-pl")
  path, _ = tiny_ckpt("bigvocab", seed=2, vocab_size=104)
  big = trajax.load_hf(path)
  with pytest.raises(ValueError, match="vocab sizes differ"):
    decoding.generate(small, big, ids, mask, max_new_tokens=2, lambdas="ps-pl")
  # Slicing both heads to the shared (tokenizer) size: softmax over the first 96 ids only.
  g = decoding.generate(small, big, ids, mask, max_new_tokens=3, lambdas="ps-pl", vocab_size=96,
                        stop_at_eos=False)
  want = _reference_greedy(small, big, ids, mask, CONFIGS["ps-pl"], 3, vocab=96)
  np.testing.assert_array_equal(g.tokens_bn, want)


# ---------------------------------------------------------------------------
# The paper's protocol (trajax.analysis.generation).


class _ToyTokenizer:
  """Ids <-> text as space-separated numbers (enough for the protocol functions)."""
  bos_token_id = 2

  def __call__(self, text, add_special_tokens=False):
    return {"input_ids": [int(w) % 90 + 4 for w in text.split()]}

  def decode(self, ids, skip_special_tokens=False):
    return " ".join(str(i) for i in ids)


def _docs(n=3):
  rng = np.random.RandomState(5)
  return [
      generation.data.Document(f"d{i}", " ".join(map(str, rng.randint(0, 1000, 150))))
      for i in range(n)
  ]


def test_protocol_jsonl_round_trip_and_scores(pair, tmp_path):
  small, large, _, _, (ps, pl) = pair()
  tok = _ToyTokenizer()
  # 6 prompt tokens + BOS = 7 and N_NEW new tokens: the shapes compiled by the tests above.
  prompts = generation.make_prompts(_docs(4), tok, prompt_tokens=6)
  assert all(len(p["prompt_ids"]) == 7 and p["prompt_ids"][0] == 2 for p in prompts)
  texts = generation.generate_texts(small, large, prompts, tok, configs=("ps-pl", "pl"),
                                    methods=("greedy",), max_new_tokens=N_NEW, seed=1, batch_size=4)
  assert len(texts) == 2 * len(prompts)
  path = tmp_path / "gen.jsonl"
  common.write_jsonl(texts, path)
  assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
  back = common.read_jsonl(path)
  assert back == json.loads(json.dumps(texts))
  # Greedy "pl" texts are exactly the single-model generations.
  single = decoding.generate_single(large, np.asarray([p["prompt_ids"] for p in prompts]),
                                    max_new_tokens=N_NEW)
  pl_rows = [t for t in back if t["config"] == "pl"]
  assert [t["generated_ids"] for t in pl_rows] == single.continuations()
  assert pl_rows[0]["generated_text"] == tok.decode(pl_rows[0]["generated_ids"])

  rows = generation.score_texts(back, {"small": [(10, ps)], "large": [(5, pl), (9, pl)]})
  assert len(rows) == 3 * 2  # (model, step) x config
  # Reference: token_logprobs of each text alone, continuation positions only.
  for row in rows:
    model = small if row["model"] == "small" else large
    nll = []
    for t in back:
      if t["config"] == row["config"]:
        seq = np.asarray([t["prompt_ids"] + t["generated_ids"]])
        nll += (-trajax.token_logprobs(model, seq)[0, len(t["prompt_ids"]):]).tolist()
    assert row["n_tokens"] == len(nll) and row["n_texts"] == len(prompts)
    np.testing.assert_allclose(row["ppl"], np.exp(np.mean(nll)), rtol=1e-5)


def test_protocol_corrupted_rows_and_figures(pair, tmp_path):
  small, large, _, _, (ps, pl) = pair()
  tok = _ToyTokenizer()
  seqs = generation.document_tokens(_docs(), tok, max_length=20)
  rows = generation.corrupted_rows(seqs, {"small": ps, "large": pl}, vocab_ids=np.arange(4, 96),
                                   fractions=(0.2, 0.6, 1.0), seed=0)
  assert len(rows) == 2 * 3
  # Independent recomputation of one row.
  row = next(r for r in rows if r["model"] == "large" and r["fraction"] == 0.6)
  nll, count = 0.0, 0
  for i, s in enumerate(seqs):
    c = corruption.replace(s, 0.6, np.arange(4, 96), rng=generation.corruption_seed(0, 0.6, i),
                           max_length=20)
    lp = trajax.token_logprobs(large, np.asarray([[2] + c.tolist()]))[0, 1:]
    nll -= lp.astype(np.float64).sum()
    count += lp.size
  np.testing.assert_allclose(row["ppl"], np.exp(nll / count), rtol=1e-5)
  png, csv = generation_figures.plot_corrupted(tmp_path / "fig5.png", rows,
                                               {"small": 1e3, "large": 2e3})
  assert os.path.getsize(png) > 0 and len(open(csv).read().splitlines()) == 1 + 6


def _while_bodies(hlo_text):
  """{name: text} of every computation a `while` in `hlo_text` runs as its body."""
  bodies = set(re.findall(r"\bwhile\(.*?body=%?([\w.\-]+)", hlo_text))
  comps = {}
  for block in re.split(r"\n(?=\S)", hlo_text):
    m = re.match(r"%?([\w.\-]+) ", block)
    if m and m.group(1) in bodies:
      comps[m.group(1)] = block
  return comps


def test_cpu_decoding_loop_keeps_each_layer_cache_in_place(pair, monkeypatch):
  """On a CPU the loop carries one cache array per layer: no step copies the layer stack.

  A stacked [layers, batch, slots, heads, dim] cache carried through the loop made XLA copy
  the whole stack four times per step (docs/PERFORMANCE.md, two-model decoding).
  """
  if jax.default_backend() != "cpu":
    pytest.skip("the per-layer cache is the CPU layout; accelerators carry the stack")
  small, large, *_ = pair()
  ids, mask = _prompts(ragged=True)
  calls = []
  real = decoding._generate  # pylint: disable=protected-access

  def record(*args, **kwargs):
    calls.append((args, kwargs))
    return real(*args, **kwargs)

  record.active = real.active
  monkeypatch.setattr(decoding, "_generate", record)
  want = decoding.generate(small, large, ids, mask, max_new_tokens=N_NEW, lambdas="ps-pl")
  (args, kwargs), = calls
  text = real.active().lower(*args, **kwargs).compile().as_text()
  bodies = _while_bodies(text)
  assert bodies, "no while loop in the compiled decoding function"
  slots = ids.shape[1] + N_NEW - 1
  for model in (small, large):
    layers_n, heads, head_dim = model.cache_dims()
    stack = rf"\[{layers_n},{ids.shape[0]},{slots},{heads},{head_dim}\]"
    one = rf"\[{ids.shape[0]},{slots},{heads},{head_dim}\]"
    for name, body in bodies.items():
      assert not re.search(r"= \w+" + stack, body), f"{name} holds a stacked cache"
    # Each layer's cache is updated in place in the loop: one update per layer, keys and values.
    updates = sum(
        len(re.findall(r"= \w+" + one + r"\{[^}]*\} (?:dynamic-update-slice|fusion)\(", body))
        for body in bodies.values())
    assert updates >= 2 * layers_n, (model.config, updates)
  # And the loop still decodes what it did.
  again = decoding.generate(small, large, ids, mask, max_new_tokens=N_NEW, lambdas="ps-pl")
  np.testing.assert_array_equal(again.tokens_bn, want.tokens_bn)

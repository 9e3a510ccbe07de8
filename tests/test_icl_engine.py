"""Fast ICL option scoring (prefix reuse, prefix trees, packing, plans) equals one full row per
option."""
import dataclasses

import numpy as np
import pytest

import trajax
from conftest import OPT_TOKENIZER, SHARED_DATA, hf_opt, torch_logprobs
from test_gpt_neo import hf_neo
from test_gpt_neox import hf_neox
from test_llama import hf_model
from trajax import checkpoints, scoring
from trajax.models import flash
from trajax.analysis.icl import bigbench, engine, plan, prompts, trees
from trajax.analysis.icl import scoring as icl_scoring

pytest.importorskip("transformers")

VOCAB = 50272  # the OPT tokenizer's ids fit every family
MAX_LEN = 160
BUILDERS = {
    "opt": lambda seed: hf_opt(seed, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=
                               64, num_attention_heads=4, max_position_embeddings=MAX_LEN),
    # Local layers with a window of 6 tokens: the cache layout must keep distances exact.
    "gpt_neo": lambda seed: hf_neo(seed, vocab_size=VOCAB, max_position_embeddings=MAX_LEN,
                                   window_size=6),
    "gpt_neox": lambda seed: hf_neox(seed, vocab_size=VOCAB, max_position_embeddings=MAX_LEN,
                                     rotary_pct=0.25),
    "llama": lambda seed: hf_model("llama", seed, vocab_size=VOCAB, max_position_embeddings=MAX_LEN
                                  ),
}
# (task, examples): prompts that fit; long options whose rows are cut by different amounts;
# prompts far over the context (cut from the left, BOS kept); 118 options (more than a call's rows).
TASKS = (("human_organs_senses", 2), ("misconceptions_russian", 1), ("logical_args", 1),
         ("periodic_elements", 1))


@pytest.fixture(scope="module")
def requests():
  tok = checkpoints.load_tokenizer(OPT_TOKENIZER)
  out = []
  for name, n in TASKS:
    task = bigbench.load_task(SHARED_DATA / "bigbench" / name)
    out += prompts.build_requests(prompts.make_task_prompts(task, 2, 42, n), tok, MAX_LEN)
  return out


def _torch_option_logprobs(ref, requests):
  """Each option's summed log-prob from transformers on its full row (float64 sums)."""
  out = []
  for r in requests:
    lp = torch_logprobs(ref, r.tokens[None].astype(np.int64), np.ones((1, len(r.tokens)), bool))
    out.append(lp[0, r.option_start:].sum())
  return np.array(out)


def test_requests_cover_the_hard_cases(requests):
  groups = plan.prefix_groups(requests)
  assert any(r.prompt_chars_dropped or len(r.tokens) == MAX_LEN for r in requests)  # cut prompts
  assert max(r.n_option_tokens for r in requests) > 30  # long options
  # Options of one example cut by different amounts do not share their prompt: such an
  # example is split into groups; the others share everything but the prompt's last token.
  assert len(groups) > len({(r.task, r.example_index) for r in requests})
  assert any(g.prefix_len == requests[g.requests[0]].option_start - 1 for g in groups)
  for g in groups:
    rows = [requests[k].tokens for k in g.requests]
    assert all(np.array_equal(r[:g.prefix_len], rows[0][:g.prefix_len]) for r in rows)
    assert g.prefix_len <= min(requests[k].option_start for k in g.requests) - 1


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_reuse_tree_and_pack_equal_full_rows_every_family(tmp_path, requests, family, monkeypatch):
  ref = BUILDERS[family](0)
  ref.save_pretrained(tmp_path)
  scorer = scoring.Scorer(trajax.load_hf(tmp_path))
  full = icl_scoring.score_options(requests, scorer, batch_size=8, max_length=MAX_LEN)
  torch_lp = _torch_option_logprobs(ref, requests)
  np.testing.assert_allclose(full.logprob, torch_lp, rtol=1e-4, atol=1e-4)
  # Trees over 256 tokens are cut: periodic_elements' 118 options become several trees.
  monkeypatch.setattr(trees, "ROW_MAX", 256)
  for method in ("reuse", "tree", "pack"):  # "auto" mixes them (the study's default, test_icl_run)
    # Small calls: several batches per bucket, examples cut over calls.
    option_scorer = engine.OptionScorer(scorer, method, batch_tokens=512)
    p = option_scorer.plan(requests)
    if method == "reuse":
      assert not p.pack and not p.tree and max(len(b.groups) for b in p.reuse) > 1
      assert any(b.rows < 118 for b in p.reuse)  # periodic_elements cut over calls
    if method == "tree":
      assert not p.pack and not p.reuse and len(p.tree) > 1
      assert max((b.segment_ids_bt // flash.PREFIX_TREE_BRANCHES).max() for b in p.tree) > 1
      cut = [
          g for b in p.tree for g in b.groups
          if requests[g.requests[0]].task.startswith("periodic_elements")
      ]
      assert len(cut) > 1 and sum(len(g.requests) for g in cut) == 118
      assert all(trees.tree_len(requests, g) <= 256 for g in cut)
    if method == "pack":
      assert not p.reuse and not p.tree and max(len(set(b.placement)) for b in p.pack) > 1
      assert any(len({r for _, r, _, _ in b.placement}) < len(b.placement) for b in p.pack)
    got = option_scorer.score(requests, plan=p)
    np.testing.assert_allclose(got.logprob, full.logprob, rtol=1e-5, atol=1e-5, err_msg=method)
    np.testing.assert_array_equal(got.n_tokens, full.n_tokens)
    np.testing.assert_allclose(got.logprob, torch_lp, rtol=1e-4, atol=1e-4, err_msg=method)


def test_one_compilation_per_shape_none_per_task_or_checkpoint(tmp_path, requests):
  paths = []
  for seed in (1, 2):  # an architecture no other test compiles for
    hf_opt(seed, vocab_size=VOCAB, hidden_size=24, num_hidden_layers=1, ffn_dim=48,
           num_attention_heads=2,
           max_position_embeddings=MAX_LEN).save_pretrained(tmp_path / str(seed))
    paths.append(tmp_path / str(seed))
  scorer = scoring.Scorer(trajax.load_hf(paths[0]))
  option_scorer = engine.OptionScorer(scorer, "reuse", batch_tokens=512)
  p = option_scorer.plan(requests)
  per_task = {r.task.partition(":")[0] for r in requests}
  assert len(p.reuse) > len(p.shapes())  # batches share shapes, across tasks too
  before = engine.compilations()
  first = option_scorer.score(requests, plan=p)
  assert engine.compilations() - before == len(p.shapes())
  assert len(p.shapes()) < len(per_task) * len(p.reuse)
  # The next checkpoint of the architecture: new weights, no compilation.
  scorer.set_state(trajax.load_hf(paths[1]))
  second = option_scorer.score(requests, plan=p)
  assert engine.compilations() - before == len(p.shapes())
  assert np.abs(second.logprob - first.logprob).max() > 1e-3  # other weights were used
  # The tree kernel: one compilation per tree-call shape, none for the next checkpoint.
  tree_scorer = engine.OptionScorer(scorer, "tree", batch_tokens=512)
  tree_plan = tree_scorer.plan(requests)
  before_tree = engine.compilations()
  tree_scorer.score(requests, plan=tree_plan)
  scorer.set_state(trajax.load_hf(paths[0]))
  np.testing.assert_allclose(
      tree_scorer.score(requests, plan=tree_plan).logprob, first.logprob, rtol=1e-5, atol=1e-5)
  assert engine.compilations() - before_tree == len(tree_plan.shapes())
  # The pack path compiles once per packed-row shape, through the engine's Scorer.
  pack_plan = engine.OptionScorer(scorer, "pack", batch_tokens=512).plan(requests)
  before_pack = scoring._score.active()._cache_size()  # pylint: disable=protected-access
  engine.OptionScorer(scorer, "pack", batch_tokens=512).score(requests, plan=pack_plan)
  assert scoring._score.active()._cache_size() - before_pack == len(pack_plan.shapes())  # pylint: disable=protected-access


def test_length_buckets_hand_values():
  assert [plan.length_bucket(n, 4, 16) for n in (1, 16, 17, 64, 65, 100, 130, 300, 1000, 2048)
         ] == [16, 16, 20, 64, 80, 112, 160, 320, 1024, 2048]
  assert [plan.length_bucket(n, 2, 4) for n in (1, 5, 9, 13, 40, 130)] == [4, 6, 12, 16, 48, 192]
  assert [plan.length_bucket(n, 1, 4) for n in (1, 5, 9, 17, 40, 130)] == [4, 8, 16, 32, 64, 256]


def _request(example, tokens, option_start):
  return prompts.OptionRequest("t", example, 0, "x", 1.0, np.asarray(tokens, np.int32),
                               option_start, 0)


def test_prefix_groups_hand_cases():
  reqs = [
      _request(0, [2, 5, 6, 7, 8], 3),  # example 0: prompt [2 5 6], options [7 8] and [9]
      _request(0, [2, 5, 6, 9], 3),
      _request(1, [2, 5, 6, 7, 8, 9], 5),  # example 1: the prompt cut differently per option
      _request(1, [2, 4, 5, 6, 7, 10, 11], 5),
      _request(1, [2, 9, 9, 9, 9, 12, 11], 5),
  ]
  groups = plan.prefix_groups(reqs)
  # Example 0: the prompt less its last token. Example 1: shares only BOS (< half its prompt),
  # so grouped by option start (one group) and then by common prefix: just BOS.
  assert groups[0] == plan.Group((0, 1), 2)
  assert groups[1:] == [plan.Group((2, 3, 4), 1)]


def test_cost_model_picks_the_cheapest_way_per_group():
  # Tree calls measured 2x slower per FLOP than packed rows, half of whose slots are real.
  cost = plan.CostModel(
      body=1.0, head=0.0, attention=0.0, cache_slot=0.0,
      weights=plan.Weights(reuse=1.0, cache=0.0, fill=1.0, tree=2.0, tree_fill=0.5))
  # Reuse: prefill 16 slots + 3 rows x 64 slots = 208; pack: 3 + 4 + 50 + 3x16 prompt = 105;
  # tree: 2 x (15 prompt + 3 + 4 + 50 blocks) / 0.5 = 288.
  assert cost.reuse(16, 64, 3) == 208 and cost.pack([19, 20, 66]) == 105
  assert cost.tree([72], 57) == 288
  short = [_request(0, list(range(2, 18)) + list(range(20, 20 + n)), 16) for n in (3, 4, 50)]
  p = plan.make_plan(short, cost, "auto", batch_tokens=256)
  assert not p.reuse and not p.tree and len(p.pack) == 1
  # A long prompt with one-token options: reuse computes it once (320 prefill slots + 4 rows x
  # 4 = 336) where a tree costs 2 x (299 + 4) / 0.5 = 1212 and pack 4 x 301 = 1204.
  assert (cost.reuse(320, 4, 4), cost.tree([303], 4), cost.pack([301] * 4)) == (336, 1212, 1204)
  long_prompt = [_request(0, list(range(2, 302)) + [400 + n], 300) for n in range(4)]
  p = plan.make_plan(long_prompt, cost, "auto", batch_tokens=256)
  assert not p.pack and not p.tree and p.reuse[0].groups == (plan.Group((0, 1, 2, 3), 299),)
  # Trees as fast per FLOP as packed rows and as full: a tree (303 slots) beats both.
  cost = dataclasses.replace(cost, weights=plan.Weights(1.0, 0.0, 1.0, tree=1.0, tree_fill=1.0))
  p = plan.make_plan(long_prompt, cost, "auto", batch_tokens=256)
  assert not p.pack and not p.reuse and p.tree[0].groups == (plan.Group((0, 1, 2, 3), 299),)


def test_tree_rows_hand_case():
  """Two examples as prefix trees in one row: tokens, positions, segment ids and head slots."""
  from trajax.models.flash import PREFIX_TREE_BRANCHES as B
  reqs = [
      _request(0, [2, 5, 6, 7, 8], 3),
      _request(0, [2, 5, 6, 9], 3),
      _request(1, [2, 4, 11, 12], 2)
  ]
  cost = plan.CostModel(1.0, 0.0, 0.0, 0.0)
  p = plan.make_plan(reqs, cost, "tree", batch_tokens=512)
  (b,) = p.tree
  assert b.tokens_bt.shape == (1, 512) and b.head_slots_bk.shape == (1, 16)
  # Example 0 (the longer tree first): prompt [2 5], blocks [6 7] and [6]; example 1: [2], [4 11].
  np.testing.assert_array_equal(b.tokens_bt[0, :8], [2, 5, 6, 7, 6, 2, 4, 11])
  np.testing.assert_array_equal(b.positions_bt[0, :8], [0, 1, 2, 3, 2, 0, 1, 2])
  np.testing.assert_array_equal(b.segment_ids_bt[0, :9],
                                [B, B, B + 1, B + 1, B + 2, 2 * B, 2 * B + 1, 2 * B + 1, 0])
  np.testing.assert_array_equal(b.head_slots_bk[0, :5], [2, 3, 4, 6, 7])
  np.testing.assert_array_equal(b.targets_bk[0, :5], [7, 8, 9, 11, 12])
  assert b.head_mask_bk[0].sum() == 5
  assert b.placement == ((0, 0, 0), (1, 0, 2), (2, 0, 3))


def test_tree_row_length_by_cost():
  # Three trees of 260: rows of 512 hold one each, of 768 two, of 1024 all three.
  lens = [260, 260, 260]
  assert trees.choose_row_len(lens, plan.CostModel(1.0, 0.0, 0.0, 0.0)) == 1024
  # Attention over the row dominating: one tree per 512-token row.
  assert trees.choose_row_len(lens, plan.CostModel(1.0, 0.0, 1.0, 0.0)) == 512

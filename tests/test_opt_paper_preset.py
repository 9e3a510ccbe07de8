"""The OPT-paper presets (configs/opt_paper.py) against the paper's own words.

Each expected value below is written by hand next to the sentence of the paper
it comes from (section in the comment); the test checks both that the sentence
is in the paper's text (shared/seeds) and that the preset holds the value.
"""
import json
import os

import pytest

from configs import opt_paper
from conftest import ROOT
from trajax import trajectory
from trajax.analysis import bigbench_tasks

PAPER = (ROOT.parent / "shared" / "seeds" / "001_5e77cededb2dd6e1.txt").read_text(encoding="utf-8")


def _quote(text):
  assert " ".join(text.split()) in " ".join(PAPER.split()), f"not in the paper: {text!r}"


def test_score_preset():
  c = opt_paper.get_config("score")
  # App. B.1
  _quote("This validation subset contains 50 lines of texts, and we take the first 2048 tokens "
         "of each line for analysis, resulting in 102350 context-token pairs.")
  assert (c.data.max_docs, c.data.block_len) == (50, 2048)
  assert c.data.max_docs * (c.data.block_len - 1) == 102350  # BOS + 2047 predicted tokens
  # §2 and App. B.5: valid PPL on OPT's validation set, aggregated over its subsets.
  _quote("We use the original OPT validation set, a held-out subset of the training corpus that "
         "covers a wide range of domains")
  _quote("we use the aggregated perplexity of a number of subsets as the validation perplexity")
  assert c.validation.files == "" and c.validation.max_docs == 0  # every document, user's files
  assert c.seq_len == 2048


def test_trends_preset():
  c = opt_paper.get_config("trends")
  # §3.1, Eq. 1: x is the checkpoint index i − j; the window starts after p% of training.
  _quote("Starting from any intermediate checkpoint after $p\\%$ of training")
  _quote(
      "\\frac{\\text{PPL}_{m_i}(t | c)}{\\text{PPL}_{m_j}(t | c)} = \\alpha + \\beta \\cdot (i - j)"
  )
  assert (c.x, c.start_rule) == ("index", "at_or_after")
  # Fig. 3/4: selected after 10% by each model (left), 1.3B (middle), 175B (right).
  _quote("selected after 10% of training of the 1.3B model and the 175B model respectively")
  # §3.2: upward tokens of 175B "after 20% training"; Fig. 10, 11: 10% and 40%.
  _quote("For the tokens identified after 20% training of the largest model (175B)")
  _quote("Perplexity of tokens that present an upward trend after 10% or 40% of training of the "
         "6.7B, 13B and 30B models.")
  assert c.subset_fractions == (0.1, 0.2, 0.4)
  assert c.selectors == ("self", "1.3b", "175b", "6.7b", "13b", "30b")
  # Footnote 3: FLOPs following Chowdhery et al. (2022).
  _quote("We estimate FLOPs following Chowdhery et al. (2022).")
  assert c.flops_method == "palm"
  assert (c.token_view_model, c.token_view_fraction) == ("1.3b", 0.1)  # Table 3, left


def test_decode_presets():
  c = opt_paper.get_config("decode")
  # §4.2
  _quote("We decode sequences with two models, 125M and 30B")
  assert (c.small_model, c.large_model) == ("125m", "30b")
  _quote("We take the first 5 tokens of a subset of validation documents as prompts and generate "
         "50 tokens conditioned on them.")
  assert (c.prompt_tokens, c.max_new_tokens) == (5, 50)
  _quote("We try greedy search and nucleus sampling")
  assert c.methods == ("greedy", "nucleus")
  assert c.configs == ("ps-pl", "ps", "ps+pl", "pl", "pl-ps")  # Fig. 6's five columns
  _quote("nucleus sampling ($p = 0.9$)")  # stated in App. C.4 only
  assert c.top_p == 0.9
  # §4.1 and App. C.1: corrupted opensubtitles, 20..100%, max length 100.
  _quote("we replace 20%, 40%, 60%, 80%, and 100% of the subwords in each sequence with random "
         "subwords")
  _quote("We corrupt texts from the opensubtitle subset of the validation set")
  _quote("We cap the max length of a sequence to be 100")
  assert c.corrupted.fractions == (0.2, 0.4, 0.6, 0.8, 1.0) and c.corrupted.max_length == 100
  assert c.corrupted.enabled and c.corrupted.data.files == ""  # the user's opensubtitles file
  # Fig. 7 (final GPT-Neo checkpoints) and Fig. 13 (MAUVE).
  _quote("we evaluate the generated texts with final GPT Neo checkpoints")
  assert not c.cross_family_all_checkpoints and c.mauve.enabled
  assert (c.mauve.scaling, c.mauve.explained_variance, c.mauve.num_buckets) == (5.0, 0.9, 0)
  # App. C.5: 100 and 500 tokens.
  _quote("We extend the study to generate longer sequences up to 100 and 500 tokens")
  assert opt_paper.get_config("decode100").max_new_tokens == 100
  assert opt_paper.get_config("decode500").max_new_tokens == 500
  # App. C.4, Table 4.
  _quote("we generate sequences with a maximum length of 128 given contexts that have 256 tokens")
  o = opt_paper.get_config("open_ended")
  assert (o.prompt_tokens, o.max_new_tokens, o.configs, o.top_p) == (256, 128, ("pl", "pl-ps"), 0.9)
  for large, small in opt_paper.TABLE4_PAIRS:
    _quote(f"{large}-{small}\t")
  assert (o.large_model, o.small_model) in opt_paper.TABLE4_PAIRS


def test_icl_preset():
  c = opt_paper.get_config("icl")
  _quote("We focus on the 2-shot setting.")
  assert c.shots == 2 and c.max_examples == 0
  _quote("we only evaluate multiple-choice tasks that have fewer than 1000 evaluation examples")
  assert tuple(c.task_names) == bigbench_tasks.TABLE7 and len(c.task_names) == 74
  _quote("the highest probability normalized over its length")
  assert c.normalization == "tokens"


def test_table2_is_the_default_and_unknown_presets_fail():
  assert opt_paper.get_config().models.opt_30b.checkpoint_steps[-1] == 70_000
  with pytest.raises(ValueError, match="unknown preset 'fig99'"):
    opt_paper.get_config("fig99")


def test_manifest_of_table2_checkpoints(tmp_path):
  t2 = opt_paper.get_config()
  for key in t2.paper_models:
    m = t2.models[key]
    for s in m.checkpoint_steps:
      (tmp_path / m.name / f"step{s}").mkdir(parents=True)
  man = opt_paper.manifest(str(tmp_path))
  path = tmp_path / "opt.json"
  path.write_text(json.dumps(man))
  traj = trajectory.load(str(path))
  # Table 2: # Ckpt 36, 22, 21, 18, 18, 32; batch 0.5M..4M tokens (2**20 tokens per M).
  assert [len(m.checkpoints) for m in traj.models] == [36, 22, 21, 18, 18, 32]
  assert [m.name for m in traj.models] == list(opt_paper.PAPER_MODELS)
  assert traj.model("175b").tokens_per_step == 2 * 2**20
  assert traj.model("125m").checkpoints[17].step == 200_000  # 180K is missing (App. A)
  os.rmdir(tmp_path / "30b" / "step70000")
  with pytest.raises(FileNotFoundError, match="1 checkpoint"):
    opt_paper.manifest(str(tmp_path))

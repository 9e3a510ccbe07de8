"""Tests for trajax.analysis.icl: BIG-bench tasks, k-shot prompts, option scoring."""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from trajax.analysis import common
from trajax.analysis.icl import bigbench, metrics, prompts, scoring, study

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BIGBENCH = SHARED / "bigbench"
TOKENIZER = SHARED / "tokenizer" / "opt"

needs_bigbench = pytest.mark.skipif(not BIGBENCH.is_dir(), reason="shared/data/bigbench absent")
needs_tokenizer = pytest.mark.skipif(not TOKENIZER.is_dir(),
                                     reason="shared/data/tokenizer/opt absent")


@pytest.fixture(scope="module")
def tokenizer():
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(str(TOKENIZER))


def _part(task, subtask=None):
  t = bigbench.load_task(BIGBENCH / task)
  return next(p for p in t.parts if subtask is None or p.subtask == subtask)


def _write(tmp_path, rel, obj):
  p = tmp_path / rel
  p.parent.mkdir(parents=True, exist_ok=True)
  p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return p


# ---------------------------------------------------------------------------
# Prompts against hand-written expectations. The layout follows each
# task.json's fields (read by hand); which shots and which choice order
# appear is the seed-42 draw (numpy RandomState, as BIG-bench).
# ---------------------------------------------------------------------------


@needs_bigbench
def test_prompt_task_prefix_and_default_fields():
  # phrase_relatedness: task_prefix set; Q/A prefixes, choice prefix and
  # separator absent -> "\nQ: ", "\nA: ", "\n  choice: ", "\n"; choices appended.
  p = prompts.make_prompts(_part("phrase_relatedness"), shots=2, seed=42)[0]
  assert p.shot_indices == (63, 41)
  assert p.text == (
      "For each word or phrase, identify the most related choice from the listed options.\n"
      "\nQ: Recreational drug use"
      "\n  choice: Conviction\n  choice: Coercion\n  choice: Psilocybin"
      "\n  choice: Corporal punishment in the home"
      "\nA: Psilocybin"
      "\n"
      "\nQ: Ingestion"
      "\n  choice: Resin\n  choice: Electron configuration\n  choice: Stomach\n  choice: Zinc"
      "\nA: Stomach"
      "\n"
      "\nQ: home town"
      "\n  choice: location\n  choice: town center\n  choice: home run\n  choice: native city"
      "\nA: ")
  assert p.options == ("town center", "location", "native city", "home run")
  assert p.scores == (0.0, 0.0, 1.0, 0.0)


@needs_bigbench
def test_prompt_without_appended_choices():
  # sentence_ambiguity: append_choices_to_input false, input prefix "\nClaim: ",
  # output prefix "\nTrue or False? " (the paper's Table 8 example).
  p = prompts.make_prompts(_part("sentence_ambiguity"), shots=2, seed=42)[0]
  assert p.shot_indices == (1, 6)
  assert p.text == (
      "\nClaim: Every person in the world has some religious affiliation."
      "\nTrue or False? False"
      "\n"
      "\nClaim: Monaco is likely the smallest country in the world in terms of landmass."
      "\nTrue or False? False"
      "\n"
      "\nClaim: Pescatarians almost never consume vegetarian food."
      "\nTrue or False? ")
  assert p.options == ("True", "False")


@needs_bigbench
def test_prompt_composite_subtask():
  # conceptual_combinations/homonyms: the top-level task.json has no examples;
  # the subtask's own fields: input prefix "\n", output "\nAnswer: ",
  # choice prefix "\n option: ", no task_prefix.
  task = bigbench.load_task(BIGBENCH / "conceptual_combinations")
  assert [p.subtask for p in task.parts] == sorted(p.subtask for p in task.parts)
  part = next(p for p in task.parts if p.subtask == "homonyms")
  assert part.name == "conceptual_combinations:homonyms"
  p = prompts.make_prompts(part, shots=2, seed=42)[0]
  assert p.shot_indices == (2, 6)
  assert p.text == (
      "\nThe word 'ulort' is an adjective for things that are underwear. Question: Which of "
      "the following sentences best characterizes ulort boxers?"
      "\n option: Ulort boxers lie unopened.\n option: Ulort boxers lie in the sun."
      "\n option: Ulort boxers lie on bathroom floors.\n option: Ulort boxers lie to the media."
      "\nAnswer: Ulort boxers lie on bathroom floors."
      "\n"
      "\nThe word 'suphe' is an adjective for things that are long and thin. Question: Which "
      "of the following sentences best characterizes suphe poles?"
      "\n option: Suphe poles speak Polish.\n option: Suphe poles have positive or negative charge."
      "\n option: Suphe poles are at opposite sides of a sphere.\n option: Flags hang on suphe poles."
      "\nAnswer: Flags hang on suphe poles."
      "\n"
      "\nThe word 'alort' is an adjective for things that are athletes. Question: Which of "
      "the following sentences best characterizes alort boxers?"
      "\n option: Alort boxers have wrinkly faces.\n option: Alort boxers wear gloves."
      "\n option: Alort boxers are airier than briefs.\n option: Alort boxers put things in boxes."
      "\nAnswer: ")


def test_zero_shot_and_explicit_format(tmp_path):
  path = _write(
      tmp_path, "t/task.json", {
          "task_prefix": "P|", "example_input_prefix": "<", "example_output_prefix": ">",
          "choice_prefix": "#", "few_shot_example_separator": "~", "examples": [{
              "input": "a", "target_scores": {"x": 1, "y": 0}
          }, {"input": "b", "target_scores": {"y": 0, "x": 1}, "target": "x"
             }, {"input": "c", "target_scores": {"x": 0, "y": 1}}]
      })
  part = bigbench.load_task(path).parts[0]
  zero = prompts.make_prompts(part, shots=0, seed=3)
  perm = [t.text.split("#", 1)[1].rstrip(">").split("#") for t in zero]
  assert [sorted(x) for x in perm] == [["x", "y"]] * 3
  assert zero[0].text == f"P|<a#{perm[0][0]}#{perm[0][1]}>"
  two = prompts.make_prompts(part, shots=2, seed=3)
  for p in two:
    shots = "~".join(zero[j].text[2:] + ("x" if j < 2 else "y") for j in p.shot_indices)
    assert p.text == "P|" + shots + "~" + zero[p.example_index].text[2:]


# ---------------------------------------------------------------------------
# Shots
# ---------------------------------------------------------------------------


@needs_bigbench
def test_shots_never_the_evaluated_example():
  part = _part("mathematical_induction")  # holds one duplicated example
  for dedupe in (True, False):
    examples = prompts.default_set(part, dedupe)
    for seed in range(25):
      for p in prompts.make_prompts(part, shots=2, seed=seed, dedupe=dedupe):
        assert p.example_index not in p.shot_indices
        assert len(set(p.shot_indices)) == 2
        assert all(examples[j].key != examples[p.example_index].key for j in p.shot_indices)


@needs_bigbench
def test_same_seed_same_shots_different_seed_different():
  part = _part("sentence_ambiguity")
  a = prompts.make_prompts(part, seed=7)
  assert a == prompts.make_prompts(part, seed=7)
  b = prompts.make_prompts(part, seed=8)
  assert [p.shot_indices for p in a] != [p.shot_indices for p in b]
  assert [p.example_index for p in a] == [p.example_index for p in b] == list(range(60))


@needs_bigbench
def test_max_examples_split_over_subtasks():
  assert prompts.split_max_examples(10, 4) == [3, 3, 2, 2]
  assert prompts.split_max_examples(None, 3) == [None] * 3
  with pytest.raises(ValueError):
    prompts.split_max_examples(3, 4)
  task = bigbench.load_task(BIGBENCH / "hhh_alignment")
  task_prompts = prompts.make_task_prompts(task, max_examples=10)
  counts = {p.name: sum(q.task == p.name for q in task_prompts) for p in task.parts}
  assert list(counts.values()) == [3, 3, 2, 2]
  assert len({(q.task, q.example_index) for q in task_prompts}) == 10


# ---------------------------------------------------------------------------
# Tokenisation and option scores
# ---------------------------------------------------------------------------


def _bigram_logprob_fn(vocab=97, seed=0):
  rng = np.random.RandomState(seed)
  logits = rng.normal(size=(vocab, vocab))
  table = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  calls = []

  def fn(tokens_bt, mask_bt):
    calls.append(tokens_bt.shape)
    out = np.full(tokens_bt.shape, np.nan, np.float32)
    out[:, 1:] = table[tokens_bt[:, :-1] % vocab, tokens_bt[:, 1:] % vocab]
    out[~mask_bt] = np.nan
    return out

  return fn, table, calls


@needs_tokenizer
def test_hand_computed_scores_and_normalisation(tokenizer):
  prompt = prompts.Prompt("t", 0, "Q: x\nA:", (" yes", " no way"), (1.0, 0.0), ())
  reqs = prompts.build_requests([prompt], tokenizer)
  # "Q: x\nA: yes" -> </s> Q : ' x' \n A : ' yes'; ' no way' -> ' no' ' way'
  assert reqs[0].tokens.tolist() == [2, 1864, 35, 3023, 50118, 250, 35, 4420]
  assert reqs[1].tokens.tolist() == [2, 1864, 35, 3023, 50118, 250, 35, 117, 169]
  assert reqs[0].option_start == reqs[1].option_start == 7

  def fn(tokens_bt, mask_bt):  # log p(t_i | t_<i) = -((t_{i-1} + t_i) % 10 + 1) / 10
    out = np.full(tokens_bt.shape, np.nan, np.float32)
    out[:, 1:] = -((tokens_bt[:, :-1] + tokens_bt[:, 1:]) % 10 + 1) / 10
    out[~mask_bt] = np.nan
    return out

  s = scoring.score_options(reqs, fn, batch_size=4)
  # ' yes': (35 + 4420) % 10 = 5 -> -0.6.  ' no way': (35+117)%10=2 -> -0.3, (117+169)%10=6 -> -0.7
  np.testing.assert_allclose(s.logprob, [-0.6, -1.0], atol=1e-6)
  assert s.n_tokens.tolist() == [1, 2] and s.n_chars.tolist() == [4, 7]
  np.testing.assert_allclose(s.normalized("tokens"), [-0.6, -0.5], atol=1e-6)
  np.testing.assert_allclose(s.normalized("chars"), [-0.15, -1 / 7], atol=1e-6)
  np.testing.assert_allclose(s.normalized("bytes"), [-0.15, -1 / 7], atol=1e-6)
  assert metrics.grade_examples(reqs, s, "tokens")[0]["pred"] == 1  # per token: ' no way'
  assert metrics.grade_examples(reqs, s, "none")[0]["pred"] == 0  # raw sum: ' yes'


@needs_bigbench
@needs_tokenizer
def test_scores_equal_bigram_sums_and_spans_decode(tokenizer):
  task_prompts = (prompts.make_prompts(_part("sentence_ambiguity"))[:6] +
                  prompts.make_prompts(_part("conceptual_combinations", "homonyms"))[:3] +
                  prompts.make_prompts(_part("entailed_polarity_hindi"))[:3])
  reqs = prompts.build_requests(task_prompts, tokenizer)
  assert len(reqs) == sum(len(p.options) for p in task_prompts)
  for r in reqs:
    p = next(q for q in task_prompts if q.task == r.task and q.example_index == r.example_index)
    full = p.text + r.option
    assert r.tokens[0] == tokenizer.bos_token_id == 2
    assert r.tokens.tolist() == tokenizer(full)["input_ids"]
    span = tokenizer.decode(r.tokens[r.option_start:])
    assert span.endswith(r.option) and full.endswith(span)
    # only a boundary-straddling token may carry prompt characters (" True")
    assert len(span) - len(r.option) <= 1
  fn, table, calls = _bigram_logprob_fn()
  s = scoring.score_options(reqs, fn, batch_size=5, pad_to_multiple=16)
  for r, lp in zip(reqs, s.logprob):
    t = r.tokens % 97
    want = sum(table[t[i - 1], t[i]] for i in range(r.option_start, len(t)))
    assert lp == pytest.approx(want, abs=1e-5)
  assert all(b == 5 and length % 16 == 0 for b, length in calls)
  lengths = [len(r.tokens) for r in reqs]
  assert len(calls) == math.ceil(len(reqs) / 5) and calls[0][1] >= max(lengths)
  fn1, _, _ = _bigram_logprob_fn()
  s1 = scoring.score_options(reqs, fn1, batch_size=1, pad_to_multiple=1)
  np.testing.assert_allclose(s1.logprob, s.logprob, rtol=0, atol=1e-6)


@needs_tokenizer
def test_truncation_and_empty_option(tokenizer):
  long_text = "".join(f"line {i} of a long prompt\n" for i in range(400)) + "A:"
  prompt = prompts.Prompt("t", 0, long_text, (" yes", ""), (1.0, 0.0), ())
  full = tokenizer(long_text + " yes")["input_ids"]
  (r, empty) = prompts.build_requests([prompt], tokenizer, max_length=64)
  assert len(r.tokens) == 64 and r.tokens.tolist() == full[:1] + full[-63:]
  assert r.option_start == 63 and r.prompt_chars_dropped > 0
  assert empty.n_option_tokens == 0
  s = scoring.score_options([r, empty], _bigram_logprob_fn()[0], max_length=64)
  assert s.logprob[1] == 0 and s.normalized("tokens")[1] == -np.inf
  assert metrics.grade_examples([r, empty], s)[0]["pred"] == 0


def test_score_options_rejects_nan_in_span():
  req = prompts.OptionRequest("t", 0, 0, "a", 1.0, np.array([2, 5, 6], np.int32), 1, 0)
  with pytest.raises(ValueError, match="non-finite"):
    scoring.score_options([req], lambda t, m: np.full(t.shape, np.nan, np.float32))


# ---------------------------------------------------------------------------
# All shared tasks
# ---------------------------------------------------------------------------


@needs_bigbench
def test_all_74_tasks_load_with_manifest_counts():
  with pytest.warns(UserWarning, match="identify_odd_metaphor.*append_choices_to_input"):
    tasks = bigbench.load_tasks(BIGBENCH)
  assert len(tasks) == 74
  assert sum(len(t.parts) > 1 or bool(t.parts and t.parts[0].subtask) for t in tasks) == 11
  assert sum(t.n_mc_examples for t in tasks) == 17435
  assert sum(len(prompts.default_set(p)) for t in tasks for p in t.parts) == 17414
  assert [s["part"] for t in tasks for s in t.skipped] == ["periodic_elements:subtask_1"]
  manifest = (SHARED / "MANIFEST.md").read_text()
  rows = re.findall(r"^\| (\w+) \| [^|]+ \| ([\d,]+) \| ([\d,]+) \| \w+ \|$", manifest, re.M)
  want = {name: int(mc.replace(",", "")) for name, _, mc in rows}
  assert len(want) == 74
  assert {t.name: t.n_mc_examples for t in tasks} == want
  odd = next(t for t in tasks if t.name == "identify_odd_metaphor")
  assert odd.parts[0].format.append_choices_to_input is True


# ---------------------------------------------------------------------------
# Malformed tasks
# ---------------------------------------------------------------------------

GOOD = {"input": "q", "target_scores": {"a": 1, "b": 0}}


@pytest.mark.parametrize("content, field", [
    ("{not json", "malformed JSON"),
    ([GOOD], "<top level>"),
    ({"examples": {"0": GOOD}}, "'examples'"),
    ({"examples": [GOOD, {"target_scores": {"a": 1}}]}, r"'examples\[1\]\.input'"),
    ({"examples": [{"input": "q", "target_scores": {"a": "1"}}]
     }, r"examples\[0\]\.target_scores\['a'\]"),
    ({"examples": [{"input": "q", "target_scores": {}}]}, r"examples\[0\]\.target_scores'"),
    ({"examples": [{**GOOD, "target": 3}]}, r"examples\[0\]\.target'"),
    ({"example_input_prefix": 3, "examples": [GOOD]}, "'example_input_prefix'"),
    ({"append_choices_to_input": 1, "examples": [GOOD]}, "'append_choices_to_input'"),
    ({"name": "container only"}, "'examples'"),
])
def test_malformed_task_names_file_and_field(tmp_path, content, field):
  path = _write(tmp_path, "bad_task/task.json", content)
  with pytest.raises(ValueError, match=field) as e:
    bigbench.load_task(path.parent)
  assert str(path) in str(e.value)


def test_malformed_subtask_names_subtask_file(tmp_path):
  _write(tmp_path, "comp/task.json", {"name": "comp"})
  _write(tmp_path, "comp/a/task.json", {"examples": [GOOD, GOOD, GOOD]})
  bad = _write(tmp_path, "comp/b/task.json", {"choice_prefix": None, "examples": [GOOD]})
  with pytest.raises(ValueError, match=re.escape(str(bad)) + ".*'choice_prefix'"):
    bigbench.load_task(tmp_path / "comp")


def test_subtask_without_mc_is_skipped(tmp_path):
  _write(tmp_path, "comp/task.json", {"name": "comp"})
  _write(tmp_path, "comp/gen/task.json", {"examples": [{"input": "q", "target": "a"}]})
  _write(tmp_path, "comp/mc/task.json", {"examples": [GOOD]})
  task = bigbench.load_task(tmp_path / "comp")
  assert [p.name for p in task.parts] == ["comp:mc"]
  assert task.skipped[0]["part"] == "comp:gen" and "no multiple-choice" in task.skipped[0]["reason"]


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


def _req(task, ex, k, option, score, n_tok):
  return prompts.OptionRequest(task, ex, k, option, score, np.arange(n_tok + 1, dtype=np.int32), 1,
                               0)


def _graded():
  reqs = [
      _req("a", 0, 0, "aa", 1, 2),
      _req("a", 0, 1, "b", 0, 1),
      _req("a", 0, 2, "ccc", 0, 3),
      _req("a", 1, 0, "x", 0.5, 1),
      _req("a", 1, 1, "y", 1.0, 1),
      _req("c:s1", 0, 0, "p", 1, 1),
      _req("c:s1", 0, 1, "q", 0, 1),
      _req("c:s2", 0, 0, "p", 0, 2),
      _req("c:s2", 0, 1, "q", 1, 2),
      _req("c:s2", 1, 0, "p", 1, 1),
      _req("c:s2", 1, 1, "q", 0, 1)
  ]
  lp = np.array([-2.0, -1.5, -9.0, -1.0, -3.0, -1.0, -2.0, -1.0, -3.0, -4.0, -1.0])
  s = scoring.OptionScores(lp, np.array([r.n_option_tokens for r in reqs]),
                           np.array([len(r.option) for r in reqs]),
                           np.array([len(r.option) for r in reqs]))
  return reqs, s


def test_grade_accuracy_chance_and_option_ppl():
  reqs, s = _graded()
  ex = metrics.grade_examples(reqs, s, "tokens")
  # a/0: per token [-1, -1.5, -3] -> option 0 (correct). a/1: [-1, -3] -> x, graded 0.5.
  assert [r["pred"] for r in ex] == [0, 0, 0, 0, 1]
  assert [r["grade"] for r in ex] == [1.0, 0.5, 1.0, 0.0, 0.0]
  assert ex[0]["chance"] == pytest.approx(1 / 3) and ex[1]["chance"] == 0.75
  assert metrics.grade_examples(reqs, s, "none")[0]["pred"] == 1
  rows = {(r["task"], r["part"]): r for r in metrics.task_rows(ex, checkpoint="ck")}
  a = rows[("a", "")]
  assert a["level"] == "task" and a["checkpoint"] == "ck" and a["n_examples"] == 2
  assert a["accuracy"] == 0.75 and a["chance"] == pytest.approx((1 / 3 + 0.75) / 2)
  # correct: a/0 opt0 (-2, 2 tok) + a/1 opt1 (-3, 1 tok); incorrect: -1.5,-9 (4 tok) + -1 (1 tok)
  assert a["ppl_correct"] == pytest.approx(math.exp(5 / 3))
  assert a["ppl_incorrect"] == pytest.approx(math.exp(11.5 / 5))
  s1, s2, c = rows[("c", "s1")], rows[("c", "s2")], rows[("c", "")]
  assert (s1["level"], s1["accuracy"], s2["accuracy"]) == ("subtask", 1.0, 0.0)
  assert c["level"] == "task" and c["accuracy"] == 0.5 and c["n_examples"] == 3  # subtask mean
  assert c["ppl_correct"] == pytest.approx(math.exp((1 + 3 + 4) / 4))


def test_aggregate_is_token_weighted_geometric_mean():
  reqs, s = _graded()
  rows = metrics.task_rows(metrics.grade_examples(reqs, s))
  agg = metrics.aggregate_over_tasks(rows)
  assert agg["n_tasks"] == 2 and agg["accuracy"] == pytest.approx((0.75 + 0.5) / 2)
  # tokens: a correct 3 (ppl e^{5/3}), c correct 4 (ppl e^{2}) -> exp((5+8)/7)
  assert agg["ppl_correct"] == pytest.approx(math.exp(13 / 7))
  assert metrics.weighted_geometric_mean([2.0, 8.0], [1, 1]) == pytest.approx(4.0)
  assert metrics.aggregate_over_tasks(rows, tasks=["a"])["accuracy"] == 0.75


def test_argmax_tiebreak_deterministic():
  assert metrics.argmax_tiebreak([0.1, 0.3, 0.2]) == 1
  v = [0.5, 0.1, 0.5, 0.5]
  assert metrics.argmax_tiebreak(v) in (
      0, 2, 3) and metrics.argmax_tiebreak(v) == metrics.argmax_tiebreak(v)


def test_linearity_breakthroughness_hand_values():
  # linear: z = 0.1 each; I = +0.3 -> L = B = 3
  assert metrics.linearity([0.1, 0.2, 0.3, 0.4]) == pytest.approx(3.0)
  assert metrics.breakthroughness({125e6: 0.1, 1.3e9: 0.3, 350e6: 0.2,
                                   13e9: 0.4}) == pytest.approx(3.0)
  # jump at the end: z = [0, .01, .34], I = .35
  y = [0.25, 0.25, 0.26, 0.6]
  assert metrics.linearity(y) == pytest.approx(0.35 / math.sqrt((0 + 0.0001 + 0.1156) / 3))
  assert metrics.breakthroughness(y) == pytest.approx(0.35 / 0.01)
  # decreasing: argmax before argmin -> negative
  assert metrics.linearity([0.5, 0.4, 0.3]) == pytest.approx(-2.0)
  assert metrics.linearity([0.2, 0.2, 0.2]) == 0.0
  assert metrics.breakthroughness([0.1, 0.1, 0.1, 0.9]) == math.inf
  with pytest.raises(ValueError):
    metrics.linearity([0.5])
  assert len(metrics.LINEARITY_TASKS) == 12 and len(metrics.BREAKTHROUGHNESS_TASKS) == 6


@needs_bigbench
def test_table9_tasks_are_shared_tasks():
  names = {p.name for p in BIGBENCH.iterdir() if (p / "task.json").exists()}
  assert set(metrics.LINEARITY_TASKS) | set(metrics.BREAKTHROUGHNESS_TASKS) <= names


# ---------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------


def test_write_csv_atomic_and_done_pairs(tmp_path):
  path = tmp_path / "out" / "icl.csv"
  assert study.done_pairs(path) == set()
  rows = [{"checkpoint": "s1000", "task": "c", "part": "x", "level": "subtask", "accuracy": 0.5},
          {"checkpoint": "s1000", "task": "c", "part": "", "level": "task", "accuracy": 0.5}, {
              "checkpoint": "s2000", "task": "a", "part": "", "level": "task", "accuracy": 1.0,
              "extra": "e"
          }]
  common.write_csv(rows, path)
  assert os.listdir(path.parent) == ["icl.csv"]
  back = common.read_csv(path)
  assert back[2]["extra"] == "e" and back[0]["extra"] == "" and float(back[2]["accuracy"]) == 1.0
  assert study.done_pairs(path) == {("s1000", "c"), ("s2000", "a")}
  common.write_csv(back + [{"checkpoint": "s3000", "task": "a", "level": "task"}], path)
  assert ("s3000", "a") in study.done_pairs(path)
  common.write_csv([{"task": "a"}], tmp_path / "x.csv")
  with pytest.raises(ValueError, match="checkpoint"):
    study.done_pairs(tmp_path / "x.csv")

"""Table 7's task list and App. D.1's selection rule, against the paper and the staged data.

References: the paper's Table 7 (copied below as printed, three columns per row),
the staged BIG-bench files and the counts shared/data/MANIFEST.md lists for them
(counted when the data was staged), and hand-made task directories.
"""
import json
import re

import pytest

from conftest import SHARED_DATA
from trajax.analysis import bigbench_tasks

BIGBENCH = SHARED_DATA / "bigbench"

# Table 7, row by row as the paper prints it (App. D.1).
TABLE7_ROWS = """
anachronisms analogical_similarity analytic_entailment
authorship_verification causal_judgment cause_and_effect
code_line_description common_morpheme conceptual_combinations
crash_blossom crass_ai cryobiology_spanish
dark_humor_detection date_understanding disambiguation_qa
discourse_marker_prediction emoji_movie empirical_judgments
english_russian_proverbs entailed_polarity entailed_polarity_hindi
evaluating_information_essentiality fantasy_reasoning figure_of_speech_detection
hhh_alignment hinglish_toxicity human_organs_senses
identify_math_theorems identify_odd_metaphor implicatures
implicit_relations intent_recognition international_phonetic_alphabet_nli
irony_identification kannada key_value_maps
known_unknowns logical_args logical_sequence
mathematical_induction metaphor_boolean metaphor_understanding
misconceptions misconceptions_russian moral_permissibility
movie_recommendation nonsense_words_grammar odd_one_out
penguins_in_a_table periodic_elements persian_idioms
phrase_relatedness physical_intuition physics
presuppositions_as_nli riddle_sense ruin_names
salient_translation_error_detection sentence_ambiguity similarities_abstraction
simple_arithmetic_json_multiple_choice simple_ethical_questions snarks
social_support sports_understanding strange_stories
suicide_risk swahili_english_proverbs symbol_interpretation
understanding_fables undo_permutation unit_interpretation
what_is_the_tao which_wiki_edit
"""


def _manifest_counts():
  """{task: (#examples, #with target_scores)} from MANIFEST.md's bigbench table."""
  text = (SHARED_DATA / "MANIFEST.md").read_text(encoding="utf-8")
  rows = re.findall(r"^\| ([a-z_]+) \| [^|]+ \| (\d+) \| (\d+) \| [a-z_0-9]+ \|$", text, re.M)
  return {t: (int(n), int(mc)) for t, n, mc in rows}


def test_table7_is_the_papers_list_of_74_tasks():
  printed = TABLE7_ROWS.split()
  assert len(printed) == 74  # §5.1 and the abstract: "74 multiple-choice tasks"
  assert list(bigbench_tasks.TABLE7) == printed
  assert len(set(printed)) == 74


def test_every_table7_task_is_staged_and_counted_as_the_manifest_says():
  staged = sorted(p.name for p in BIGBENCH.iterdir() if p.is_dir())
  assert staged == sorted(bigbench_tasks.TABLE7)
  counts = _manifest_counts()
  assert sorted(counts) == sorted(bigbench_tasks.TABLE7)
  stats = bigbench_tasks.task_stats(str(BIGBENCH), bigbench_tasks.TABLE7)
  assert {t: (s.n_examples, s.n_multiple_choice) for t, s in stats.items()} == counts
  # Composite tasks are counted over their parts (MANIFEST: 11 of the 74).
  assert stats["hhh_alignment"].subtasks == ("harmless", "helpful", "honest", "other")
  assert sum(bool(s.subtasks) for s in stats.values()) == 11


def test_the_rule_on_the_staged_tasks_drops_only_sports_understanding():
  stats = bigbench_tasks.task_stats(str(BIGBENCH))
  kept = bigbench_tasks.select(stats)
  # Every Table 7 task is multiple-choice; only sports_understanding reaches 1000 examples.
  assert sorted(set(bigbench_tasks.TABLE7) - set(kept)) == ["sports_understanding"]
  assert stats["sports_understanding"].n_examples == 1000
  assert stats["salient_translation_error_detection"].n_examples == 998  # kept: 998 < 1000
  # periodic_elements mixes a generative part (536) with a multiple-choice one (118).
  assert stats["periodic_elements"] == (654, 118, ("subtask_0", "subtask_1"))
  assert "periodic_elements" in kept


def _task(path, examples=None, **fields):
  path.mkdir(parents=True)
  body = dict(fields, **({} if examples is None else {"examples": examples}))
  (path / "task.json").write_text(json.dumps(body))


def test_rule_on_hand_made_tasks(tmp_path):
  mc = {"input": "q", "target_scores": {"a": 1, "b": 0}}
  gen = {"input": "q", "target": "a"}
  _task(tmp_path / "mc999", [mc] * 999)
  _task(tmp_path / "mc1000", [mc] * 1000)
  _task(tmp_path / "generative", [gen] * 3)
  _task(tmp_path / "mixed", [gen] * 5 + [mc])
  _task(tmp_path / "composite", name="composite")  # a container: its parts hold the examples
  _task(tmp_path / "composite" / "b", [mc] * 600)
  _task(tmp_path / "composite" / "a", [mc] * 300 + [gen] * 50)
  stats = bigbench_tasks.task_stats(str(tmp_path))
  assert stats == {
      "composite": (950, 900, ("a", "b")), "generative": (3, 0, ()), "mc1000": (1000, 1000, ()),
      "mc999": (999, 999, ()), "mixed": (6, 1, ())
  }
  assert bigbench_tasks.select(stats) == ["composite", "mc999", "mixed"]
  assert bigbench_tasks.select(stats, max_examples=951) == ["composite", "mixed"]
  with pytest.raises(ValueError, match=r"missing/task.json: no such file"):
    bigbench_tasks.task_stats(str(tmp_path), ["missing"])
  _task(tmp_path / "empty_container", name="x")
  with pytest.raises(ValueError, match=r"empty_container/task.json: has no 'examples'"):
    bigbench_tasks.task_stats(str(tmp_path), ["empty_container"])

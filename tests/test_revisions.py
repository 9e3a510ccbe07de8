"""Revision manifests (`trajax.revisions`) on fake Hugging Face caches, one per naming scheme."""
import json
import logging
import os

import pytest

from configs import trajectories
from test_pythia import _add_revision, write_ref
from trajax import models, revisions, trajectory
from trajax.models import llama, olmo, olmo2

SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8)
CONFIGS = {
    "llama": llama.LlamaConfig(**SMALL), "olmo": olmo.OlmoConfig(**SMALL),
    "olmo2": olmo2.Olmo2Config(**SMALL)
}


@pytest.mark.parametrize("name,want", [
    ("step1000", (1000, 1, None, None, False)),
    ("step20000-tokens84B", (20000, 1, None, 84 * 10**9, False)),
    ("step0-tokens0B", (0, 1, None, 0, False)),
    ("stage1-step10000-tokens21B", (10000, 1, None, 21 * 10**9, False)),
    ("stage2-ingredient3-step1000-tokens5B", (1000, 2, 3, 5 * 10**9, False)),
    ("step-480k-token-1007B", (480_000, 1, None, 1007 * 10**9, False)),
    ("step-1431k-3T", (1_431_000, 1, None, 3 * 10**12, False)),
    ("step-715k-token-1.5T", (715_000, 1, None, 15 * 10**11, False)),
    ("ckpt_042", (42, 1, None, None, True)),
    ("step1000-tokens4194304000", (1000, 1, None, 4_194_304_000, False)),
])
def test_parse_revision(name, want):
  r = revisions.parse_revision(name)
  assert (r.step, r.stage, r.ingredient, r.tokens, r.index) == want


@pytest.mark.parametrize("name", ["main", "step", "stage1", "v1.0", "step1000-tokens", "pr/3"])
def test_names_that_are_no_checkpoint(name):
  assert revisions.parse_revision(name) is None


def _fake_cache(tmp_path, repo_id, family, names, org):
  """A hub-layout cache: each revision a snapshot with config.json and distinct dummy
  weights, created out of order (the builder must sort), plus a `main` ref."""
  cache = tmp_path / "hub"
  repo = revisions.repo_dir(str(cache), repo_id, org)
  for i, name in enumerate(names[1::2] + names[::2]):
    saved = tmp_path / f"saved-{i}"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps(CONFIGS[family].to_hf_config()))
    (saved / "model.safetensors").write_bytes(f"weights of {name}".encode())
    _add_revision(repo, name, str(saved), f"{i:040x}")
  write_ref(repo, "main", f"{0:040x}")
  return str(cache)


def _preset(name, **overrides):
  return revisions.preset_from_config(trajectories.get_config(name)).__class__(
      **dict(vars(revisions.preset_from_config(trajectories.get_config(name))), **overrides))


def _steps(report):
  (m,) = report.trajectory.models
  return m.steps


def test_olmo1_scheme(tmp_path):
  names = ["step0-tokens0B", "step1000-tokens4B", "step2000-tokens8B", "step10000-tokens42B"]
  cache = _fake_cache(tmp_path, "allenai/OLMo-1B-hf", "olmo", names, "allenai")
  out = str(tmp_path / "olmo.json")
  preset = revisions.preset_from_config(trajectories.get_config("olmo-1b"))
  report = revisions.build_manifest(cache, ["OLMo-1B-hf"], out, preset)
  assert _steps(report) == [0, 1000, 2000, 10000]
  assert report.token_mismatches == {"OLMo-1B-hf": []} and report.missing["OLMo-1B-hf"] == {}
  traj = trajectory.load(out)
  (m,) = traj.models
  assert m.tokens_per_step == 4_194_304 and m.params == olmo.param_count(CONFIGS["olmo"])
  data = json.load(open(out))
  assert [c["revision"] for c in data["models"][0]["checkpoints"]] == names
  assert data["models"][0]["checkpoints"][3]["tokens_in_name"] == 42 * 10**9
  # A wrong tokens_per_step shows against the names' token counts.
  wrong = revisions.build_manifest(cache, ["OLMo-1B-hf"], out, preset, tokens_per_step=2_097_152)
  assert wrong.token_mismatches["OLMo-1B-hf"] == names[1:]  # all but step 0


def test_olmo2_stages_and_ingredients(tmp_path, caplog):
  names = [
      "stage1-step0-tokens0B", "stage1-step1000-tokens2B", "stage1-step3000-tokens6B",
      "stage2-ingredient1-step500-tokens1B", "stage2-ingredient1-step1000-tokens2B",
      "stage2-ingredient2-step500-tokens1B"
  ]
  cache = _fake_cache(tmp_path, "allenai/OLMo-2-0425-1B", "olmo2", names, "allenai")
  out = str(tmp_path / "o2.json")
  preset = revisions.preset_from_config(trajectories.get_config("olmo-2-1b"))
  with pytest.raises(ValueError, match=r"stage 2 has ingredients \[1, 2\]"):
    revisions.build_manifest(cache, ["OLMo-2-0425-1B"], out, preset)
  with caplog.at_level(logging.WARNING):
    report = revisions.build_manifest(cache, ["OLMo-2-0425-1B"], out, preset, ingredient=2)
  assert _steps(report) == [0, 1000, 3000, 3500]  # stage 2 after stage 1's last cached step
  assert any("offsetting stage 2" in r.getMessage() for r in caplog.records)
  # With the preset knowing stage 1's final step, stage 2 starts there.
  known = _preset("olmo-2-1b", stage_final_steps=((1, 4000),))
  report = revisions.build_manifest(cache, ["OLMo-2-0425-1B"], out, known, ingredient=1)
  assert _steps(report) == [0, 1000, 3000, 4500, 5000]
  assert report.trajectory.models[0].params == olmo2.param_count(CONFIGS["olmo2"])


def test_tinyllama_scheme(tmp_path):
  names = ["step-50k-token-105B", "step-480k-token-1007B", "step-240k-token-503B"]
  cache = _fake_cache(tmp_path, "TinyLlama/tinyLlama-intermediate-checkpoints", "llama", names,
                      "TinyLlama")
  preset = revisions.preset_from_config(trajectories.get_config("tinyllama"))
  report = revisions.build_manifest(cache, preset_repos("tinyllama"), str(tmp_path / "t.json"),
                                    preset)
  assert _steps(report) == [50_000, 240_000, 480_000]
  assert report.token_mismatches == {"tinyLlama-intermediate-checkpoints": []}


def preset_repos(name):
  return list(trajectories.get_config(name).repos)


def test_amber_index_scheme(tmp_path):
  names = [f"ckpt_{i:03d}" for i in (0, 1, 2, 10, 359)]
  cache = _fake_cache(tmp_path, "LLM360/Amber", "llama", names, "LLM360")
  preset = revisions.preset_from_config(trajectories.get_config("amber"))
  out = str(tmp_path / "a.json")
  with pytest.raises(ValueError, match="no verified tokens_per_step"):
    revisions.build_manifest(cache, ["Amber"], out, preset)
  report = revisions.build_manifest(cache, ["Amber"], out, preset, tokens_per_step=10**9)
  assert _steps(report) == [0, 1, 2, 10, 359]


def test_missing_duplicate_and_foreign_revisions(tmp_path):
  names = ["step1000-tokens4B", "step2000-tokens8B"]
  cache = _fake_cache(tmp_path, "allenai/OLMo-1B-hf", "olmo", names, "allenai")
  repo = revisions.repo_dir(cache, "OLMo-1B-hf", "allenai")
  write_ref(repo, "step3000-tokens13B", "e" * 40)  # a ref whose snapshot is absent
  out = str(tmp_path / "m.json")
  preset = revisions.preset_from_config(trajectories.get_config("olmo-1b"))
  report = revisions.build_manifest(cache, ["OLMo-1B-hf"], out, preset)
  assert list(report.missing["OLMo-1B-hf"]) == ["step3000-tokens13B"]
  # Two names at one step are an error, not a silent choice.
  write_ref(repo, "step1000-tokens5B", f"{0:040x}")
  with pytest.raises(ValueError, match=r"several revisions at step\(s\) \[1000\]"):
    revisions.build_manifest(cache, ["OLMo-1B-hf"], out, preset)
  with pytest.raises(ValueError, match="revision 'main' names no step"):
    revisions.build_manifest(cache, ["OLMo-1B-hf"], out, preset, revisions=["main"])
  with pytest.raises(ValueError, match="preset 'pythia' expects 'gpt_neox'"):
    revisions.build_manifest(cache, ["allenai/OLMo-1B-hf"], out, _preset("pythia", revisions=None),
                             revisions=["step2000-tokens8B"])


def test_presets_match_their_model_counts():
  """The parameter counts a preset cites are the family's count of the published config."""
  from test_llama_sizes import CONFIGS as REAL
  real = {
      "olmo-1b": "olmo-1b", "olmo-2-1b": "olmo-2-1b", "amber": "amber",
      "tinyllama": "tinyllama-1.1b"
  }
  for preset, config in real.items():
    hf, _ = REAL[config]
    fam = models.family(hf["model_type"])
    (count,) = dict(trajectories.get_config(preset).params).values()
    assert count == fam.param_count(fam.Config.from_hf_config(hf)), preset
  assert len(trajectories.get_config("pythia").revisions) == 154
  assert not os.path.isabs(trajectories.get_config("olmo-1b").repos[0])

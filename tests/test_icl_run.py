"""End to end: tiny OPT trajectories → BIG-bench 2-shot study (results, options, figures, summary)."""
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import (HANG_GUARD_S, OPT_TOKENIZER, ROOT, SHARED_DATA, hf_opt, save_hf,
                      torch_logprobs, write_manifest)
import trajax
from trajax import (checkpoints, convert, distributed, orbax_checkpoints, scoring, sweep,
                    trajectory)
from trajax.analysis import common
from trajax.analysis.icl import bigbench, engine, metrics, prompts
from trajax.analysis.icl import study as icl_study

pytest.importorskip("torch")
pytest.importorskip("transformers")

BIGBENCH = SHARED_DATA / "bigbench"
# Two plain tasks (Table 9 breakthroughness) and a composite one (3 subtasks).
TASKS = ("cause_and_effect", "human_organs_senses", "what_is_the_tao")
STEPS = (100, 200)
TOKENS_PER_STEP = 1024
MAX_EXAMPLES = 6
# Same width, different depth: the size order is unambiguous.
MODELS = {"small": dict(num_hidden_layers=2), "big": dict(num_hidden_layers=3)}
ARCH = dict(vocab_size=50272, hidden_size=16, max_position_embeddings=256)


def _config(path, **overrides):
  import importlib.util
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """2 models × 2 checkpoints, a validation store, and the ICL study on 3 tasks."""
  tmp = tmp_path_factory.mktemp("icl_run")
  models, torch_models = {}, {}
  for mi, (name, over) in enumerate(MODELS.items()):
    ckpts = []
    for si, step in enumerate(STEPS):
      model = hf_opt(seed=10 * mi + si, **ARCH, **over)
      path = save_hf(model, tmp / name / f"step{step}")
      shutil.copytree(OPT_TOKENIZER, path, dirs_exist_ok=True)
      ckpts.append((step, path))
      torch_models[(name, step)] = model
    models[name] = (TOKENS_PER_STEP, ckpts)
  manifest = write_manifest(tmp / "manifest.json", models)
  (tmp / "docs").mkdir()
  (tmp / "docs" / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 8)
  score_cfg = _config(ROOT / "configs" / "score.py", trajectory=manifest, batch_size=2)
  score_cfg.data.files = str(tmp / "docs" / "*.txt")
  score_cfg.data.gutenberg = False
  score_cfg.data.block_len = 64
  workdir = str(tmp / "work")
  sweep.run(score_cfg, workdir)
  cfg = icl_config(manifest)
  summary = icl_study.run(cfg, workdir)
  return dict(tmp=tmp, manifest=manifest, workdir=workdir, cfg=cfg, summary=summary, models=models,
              torch_models=torch_models)


def icl_config(manifest, **overrides):
  fields = dict(trajectory=manifest, tasks_dir=str(BIGBENCH), task_names=TASKS,
                max_examples=MAX_EXAMPLES, batch_size=8, pad_to_multiple=64)
  return _config(ROOT / "configs" / "icl.py", **{**fields, **overrides})


def _results(study):
  return common.read_csv(os.path.join(study["workdir"], "icl", "results.csv"))


def _options(study, model, step):
  return common.read_csv(os.path.join(study["workdir"], "icl", "options", model, f"step{step}.csv"))


def test_every_checkpoint_and_task_has_a_row(study):
  rows = _results(study)
  pairs = {(r["checkpoint"], r["task"]) for r in rows if r["level"] == "task"}
  assert pairs == {(f"{m}@{s}", t) for m in MODELS for s in STEPS for t in TASKS}
  sub = [r for r in rows if r["task"] == "cause_and_effect" and r["level"] == "subtask"]
  assert len(sub) == 3 * len(MODELS) * len(STEPS)
  r = next(r for r in rows if r["checkpoint"] == "big@200" and r["level"] == "task")
  assert int(r["tokens_seen"]) == 200 * TOKENS_PER_STEP
  assert float(r["flops"]) > 0 and int(r["params"]) > 0
  # Composite task: 6 queries split 2/2/2 over its subtasks.
  assert int(
      next(r for r in rows if r["task"] == "cause_and_effect" and r["level"] == "task")
      ["n_examples"]) == MAX_EXAMPLES


def test_option_scores_equal_direct_recomputation(study):
  """One example's options: CSV log-prob / tokens == trajax.token_logprobs (and transformers)."""
  model_name, step = "big", 200
  path = dict(study["models"][model_name][1])[step]
  tok = checkpoints.load_tokenizer(path)
  task = bigbench.load_task(BIGBENCH / "human_organs_senses")
  task_prompts = prompts.make_task_prompts(task, shots=2, seed=42, max_examples=MAX_EXAMPLES)
  reqs = prompts.build_requests(task_prompts[:1], tok, max_length=ARCH["max_position_embeddings"])
  model = trajax.load_hf(path)
  opts = [
      r for r in _options(study, model_name, step)
      if r["task"] == "human_organs_senses" and int(r["example_index"]) == reqs[0].example_index
  ]
  assert len(opts) == len(reqs) >= 2
  for req, row in zip(reqs, sorted(opts, key=lambda r: int(r["option_index"]))):
    lp = trajax.token_logprobs(model, req.tokens[None])[0]
    span = lp[req.option_start:].astype(np.float64)
    assert int(row["n_tokens"]) == len(span)
    np.testing.assert_allclose(float(row["logprob"]), span.sum(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(row["score"]), span.sum() / len(span), rtol=1e-5, atol=1e-4)
    ref = torch_logprobs(study["torch_models"][(model_name, step)],
                         req.tokens[None].astype(np.int64), np.ones((1, len(req.tokens)), bool))[0]
    np.testing.assert_allclose(span.sum(), ref[req.option_start:].sum(), rtol=1e-4, atol=1e-3)


def test_accuracy_is_mean_of_argmax_from_option_rows(study):
  rows = _results(study)
  for m in MODELS:
    for s in STEPS:
      groups = {}
      for o in _options(study, m, s):
        groups.setdefault((o["task"], o["part"], int(o["example_index"])), []).append(o)
      part_acc = {}
      for (task, part, _), os_ in groups.items():
        os_.sort(key=lambda o: int(o["option_index"]))
        best = int(np.argmax([float(o["score"]) for o in os_]))
        assert int(os_[best]["pred"]) == 1 and sum(int(o["pred"]) for o in os_) == 1
        part_acc.setdefault((task, part), []).append(float(os_[best]["target_score"]))
      for t in TASKS:
        parts = [np.mean(v) for (task, _), v in part_acc.items() if task == t]
        row = next(r for r in rows
                   if r["checkpoint"] == f"{m}@{s}" and r["task"] == t and r["level"] == "task")
        assert float(row["accuracy"]) == pytest.approx(np.mean(parts), abs=1e-12)


def test_rerun_scores_nothing(study, monkeypatch):
  calls = []
  orig = scoring.Scorer.__call__
  monkeypatch.setattr(scoring.Scorer, "__call__",
                      lambda self, *a, **k: calls.append(1) or orig(self, *a, **k))
  orig_score = engine.OptionScorer.score
  monkeypatch.setattr(engine.OptionScorer, "score",
                      lambda self, *a, **k: calls.append(2) or orig_score(self, *a, **k))
  before = _results(study)
  summary = icl_study.run(study["cfg"], study["workdir"])
  assert calls == []
  assert _results(study) == before
  assert summary == study["summary"]


def test_other_settings_in_same_workdir_rejected(study):
  with pytest.raises(ValueError, match="shots"):
    icl_study.run(icl_config(study["manifest"], shots=1), study["workdir"])
  with pytest.raises(ValueError, match="task_names"):
    icl_study.run(icl_config(study["manifest"], task_names=("no_such_task",)), study["workdir"])
  with pytest.raises(ValueError, match="normalization"):
    icl_study.run(icl_config(study["manifest"], normalization="words"), study["workdir"])


def test_figures_exist_and_tables_match_results(study):
  out = pathlib.Path(study["workdir"]) / "icl"
  for stem in ("fig8_accuracy", "fig9_groups", "fig5_option_ppl_final", "fig17_18_task_scaling"):
    for ext in ("png", "csv"):
      assert (out / f"{stem}.{ext}").stat().st_size > 0, f"{stem}.{ext}"
  rows = _results(study)
  fig8 = common.read_csv(out / "fig8_accuracy.csv")
  assert len(fig8) == len(MODELS) * len(STEPS)
  for r in fig8:
    accs = [
        float(x["accuracy"]) for x in rows
        if x["level"] == "task" and x["checkpoint"] == f"{r['model']}@{r['step']}"
    ]
    assert float(r["accuracy"]) == pytest.approx(np.mean(accs))
    assert math.isfinite(float(r["valid_ppl"]))
  fig9 = common.read_csv(out / "fig9_groups.csv")
  assert {r["group"] for r in fig9} == {"breakthroughness", "all"}
  # Only human_organs_senses and what_is_the_tao are Table 9 breakthroughness tasks here.
  assert {int(r["n_tasks"]) for r in fig9 if r["group"] == "breakthroughness"} == {2}
  scaling = common.read_csv(out / "fig17_18_task_scaling.csv")
  assert {r["task"] for r in scaling} == set(TASKS)
  for r in scaling:
    y = [float(r["acc_small"]), float(r["acc_big"])]  # size order: small, big
    final = {
        x["model"]: float(x["accuracy"]) for x in rows
        if x["task"] == r["task"] and x["level"] == "task" and int(x["step"]) == STEPS[-1]
    }
    assert y == pytest.approx([final["small"], final["big"]])
    assert float(r["linearity"]) == pytest.approx(metrics.linearity(y))
    assert float(r["breakthroughness"]) == pytest.approx(metrics.breakthroughness(y))


def test_summary_fields(study):
  summary = study["summary"]
  assert summary == json.loads(
      (pathlib.Path(study["workdir"]) / "icl" / "summary.json").read_text())
  assert summary["models"] == ["small", "big"]
  assert summary["n_tasks"] == 3 and summary["tasks"] == list(TASKS)
  rows = _results(study)
  for m in MODELS:
    assert summary["final_step"][m] == STEPS[-1]
    final = [r for r in rows if r["checkpoint"] == f"{m}@{STEPS[-1]}" and r["level"] == "task"]
    assert summary["final_accuracy"][m] == pytest.approx(
        np.mean([float(r["accuracy"]) for r in final]))
    assert 0 < summary["final_chance"][m] < 1
  assert 0 < summary["chance"] < 1
  assert summary["n_checkpoints_with_valid_ppl"] == len(MODELS) * len(STEPS)
  assert -1 <= summary["pearson_accuracy_vs_valid_ppl"] <= 1
  assert set(summary["scaling"]) == set(TASKS)


def test_launcher_subprocess(study, tmp_path):
  """The launcher on a copy of the finished workdir: exit 0, nothing rescored, figures rewritten."""
  shutil.copytree(pathlib.Path(study["workdir"]) / "icl", tmp_path / "icl")
  for f in (tmp_path / "icl").glob("*.png"):
    f.unlink()
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([
      sys.executable,
      str(ROOT / "launch" / "icl.py"), f"--config={ROOT / 'configs' / 'icl.py'}",
      f"--workdir={tmp_path}", f"--config.trajectory={study['manifest']}",
      f"--config.tasks_dir={BIGBENCH}", f"--config.task_names={TASKS!r}".replace(" ", ""),
      f"--config.max_examples={MAX_EXAMPLES}", f"--config.store_dir={study['workdir']}"
  ], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "0 (checkpoint, task) pairs to score" in proc.stderr
  assert "mean accuracy" in proc.stdout
  assert (tmp_path / "icl" / "fig8_accuracy.png").stat().st_size > 0


def _tree(root):
  """{relative path: bytes} of every CSV under `root`."""
  root = pathlib.Path(root)
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.csv"))}


def test_orbax_converted_manifest_gives_the_same_files(study, tmp_path):
  """The same trajectory converted to orbax: every CSV byte for byte, the summary equal."""
  converted = convert.convert_trajectory(study["manifest"], str(tmp_path / "orbax"))
  assert all(
      orbax_checkpoints.is_orbax_checkpoint(c.path) for m in trajectory.load(converted).models
      for c in m.checkpoints)
  cfg = icl_config(converted, tokenizer=str(OPT_TOKENIZER), store_dir=study["workdir"])
  summary = icl_study.run(cfg, str(tmp_path / "work"))
  plain = _tree(pathlib.Path(study["workdir"]) / "icl")
  assert _tree(tmp_path / "work" / "icl") == plain and len(plain) > 4
  assert {k: v for k, v in summary.items() if k != "figures"
         } == {k: v for k, v in study["summary"].items() if k != "figures"}


@pytest.mark.skipif(jax.device_count() < 8,
                    reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
def test_mesh_2_2_2_equals_plain_run(study, tmp_path):
  """On a (data, fsdp, tensor) = (2, 2, 2) mesh: the same option scores and predictions."""
  cfg = icl_config(study["manifest"], mesh_shape="2,2,2", store_dir=study["workdir"])
  summary = icl_study.run(cfg, str(tmp_path))
  for m in MODELS:
    for s in STEPS:
      got = common.read_csv(tmp_path / "icl" / "options" / m / f"step{s}.csv")
      want = _options(study, m, s)
      assert [(r["task"], r["example_index"], r["option_index"], r["pred"]) for r in got
             ] == [(r["task"], r["example_index"], r["option_index"], r["pred"]) for r in want]
      np.testing.assert_allclose([float(r["logprob"]) for r in got],
                                 [float(r["logprob"]) for r in want], rtol=1e-5, atol=1e-5)
  key = lambda r: (r["checkpoint"], r["task"], r["part"])  # noqa: E731
  got = {key(r): r["accuracy"] for r in common.read_csv(tmp_path / "icl" / "results.csv")}
  assert got == {key(r): r["accuracy"] for r in _results(study)}
  assert summary["final_accuracy"] == study["summary"]["final_accuracy"]


def test_only_the_writer_writes_and_models_go_by_size(study, tmp_path, monkeypatch):
  """A process other than 0 computes the same summary and writes nothing (no claim either).

  Its manifest lists the big model first: the summary still goes smallest first.
  """
  monkeypatch.setattr(distributed, "is_writer", lambda: False)
  manifest = write_manifest(study["tmp"] / "reversed.json", dict(reversed(study["models"].items())))
  assert [m.name for m in trajectory.load(manifest).models] == ["big", "small"]
  cfg = icl_config(manifest, store_dir=study["workdir"])
  work = tmp_path / "work"
  summary = icl_study.run(cfg, str(work))
  assert not work.exists()
  assert summary["models"] == ["small", "big"]
  assert {k: v for k, v in summary.items() if k != "figures"
         } == {k: v for k, v in study["summary"].items() if k != "figures"}

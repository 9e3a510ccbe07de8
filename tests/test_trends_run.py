"""End to end: tiny OPT trajectories → sweep → token study (figures, CSVs, HTML, summary)."""
import csv
import html
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import HANG_GUARD_S, OPT_TOKENIZER, ROOT, hf_opt, save_hf, write_manifest
from trajax import sweep
from trajax.analysis import token_study, trends
from trajax.models import opt

pytest.importorskip("torch")
pytest.importorskip("transformers")

STEPS = (100, 200, 300, 400)
TOKENS_PER_STEP = 1024
# "small" and "big" differ in depth so their size order is unambiguous.
MODELS = {"small": dict(num_hidden_layers=2), "big": dict(num_hidden_layers=3)}
DOCS = {
    "a.txt": ("The quick brown fox jumps over the lazy dog. " * 3 +
              'Then x < y & "quotes" <b>bold</b> appear, and the story goes on and on. ' * 2),
    "b.txt": "A short second document: 1 < 2 && 3 > 2.",
}


def _config(path):
  import importlib.util
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def trends_config(**overrides):
  cfg = _config(ROOT / "configs" / "trends.py")
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
  """A workdir with a store of 2 models × 4 checkpoints, scored on 2 documents."""
  tmp = tmp_path_factory.mktemp("trends_run")
  models = {}
  for mi, (name, over) in enumerate(MODELS.items()):
    ckpts = []
    for si, step in enumerate(STEPS):
      path = save_hf(hf_opt(seed=10 * mi + si, vocab_size=50272, **over),
                     tmp / name / f"step{step}")
      shutil.copytree(OPT_TOKENIZER, path, dirs_exist_ok=True)
      ckpts.append((step, path))
    models[name] = (TOKENS_PER_STEP, ckpts)
  manifest = write_manifest(tmp / "manifest.json", models)
  for fname, text in DOCS.items():
    (tmp / "docs").mkdir(exist_ok=True)
    (tmp / "docs" / fname).write_text(text)
  cfg = _config(ROOT / "configs" / "score.py")
  cfg.trajectory = manifest
  cfg.data.files = str(tmp / "docs" / "*.txt")
  cfg.data.gutenberg = False
  cfg.data.block_len = 64
  cfg.batch_size = 2
  workdir = str(tmp / "work")
  reader = sweep.run(cfg, workdir)
  summary = token_study.run(trends_config(), workdir)
  return workdir, reader, summary


def _read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def _by_size(reader):
  return sorted(reader.models, key=lambda m: MODELS[m]["num_hidden_layers"])


def _hand_flops(model, steps):
  """PaLM FLOPs from the tiny config by hand: N without the position table."""
  layers, d, ffn, vocab, heads, t = MODELS[model]["num_hidden_layers"], 16, 32, 50272, 4, 64
  per_layer = 4 * (d * d + d) + 4 * d + (d * ffn + ffn) + (ffn * d + d)
  n = vocab * d + layers * per_layer + 2 * d
  assert n == opt.flops_params(opt.OPTConfig(vocab, d, layers, ffn, heads, t, d))
  per_token = 6 * n + 12 * layers * heads * (d // heads) * t
  return np.asarray(steps, np.float64) * TOKENS_PER_STEP * per_token, n


def test_fig1_csv_matches_store_and_hand_flops(scored):
  workdir, reader, summary = scored
  rows = _read_csv(os.path.join(workdir, "trends", "fig1_valid_ppl_vs_flops.csv"))
  table = _read_csv(os.path.join(workdir, "trends", "checkpoints.csv"))
  assert summary["models"] == _by_size(reader)
  for m in reader.models:
    lp = reader.logprobs(m)
    assert lp.shape == (len(STEPS), 2 * 64)
    want_ppl = np.exp(-np.nanmean(lp.astype(np.float64), axis=1))
    want_flops, n = _hand_flops(m, reader.done_steps(m))
    mine = [r for r in rows if r["model"] == m]
    assert [int(r["checkpoint"]) for r in mine] == list(range(len(STEPS)))
    np.testing.assert_allclose([float(r["valid_ppl"]) for r in mine], want_ppl, rtol=1e-12)
    np.testing.assert_array_equal([float(r["flops"]) for r in mine], want_flops)
    mine = [r for r in table if r["model"] == m]
    assert [int(r["step"]) for r in mine] == list(STEPS)
    assert [float(r["tokens_seen"]) for r in mine] == [s * TOKENS_PER_STEP for s in STEPS]
    assert {int(r["params"]) for r in mine} == {n}
    assert summary["params"][m] == n
    assert summary["final_valid_ppl"][m] == pytest.approx(want_ppl[-1], rel=1e-12)
    assert summary["final_flops"][m] == want_flops[-1]


def test_fig2_shares_match_trends(scored):
  workdir, reader, summary = scored
  rows = _read_csv(os.path.join(workdir, "trends", "fig2_category_shares.csv"))
  for m in reader.models:
    ppl = trends.ppl_from_logprobs(reader.logprobs(m))
    # 4 checkpoints at 100..400: from p = 0.6 (240 -> step 300) on, the window has < 3
    # points and is skipped.
    want = trends.shares_vs_start(ppl, reader.done_steps(m), fractions=(0.1, 0.2, 0.3, 0.4, 0.5))
    mine = [r for r in rows if r["model"] == m]
    np.testing.assert_array_equal([float(r["fraction"]) for r in mine], want["fraction"])
    for k in ("stagnated", "upward", "downward", "none", "start_step", "n_excluded"):
      np.testing.assert_array_equal([float(r[k]) for r in mine], want[k], err_msg=k)
    at10 = trends.fit(ppl, reader.done_steps(m), 0.1).shares()
    assert summary["shares_at_10pct"][m] == pytest.approx(at10)


def test_subset_trajectory_is_exp_mean_nll_over_selected_tokens(scored):
  """The default `subset_mean` is geometric: exp(mean NLL) of the subset at each checkpoint."""
  workdir, reader, summary = scored
  small, big = _by_size(reader)
  ppl = {m: np.exp(-reader.logprobs(m).astype(np.float64)) for m in reader.models}
  fit = trends.fit(ppl[big], reader.done_steps(big), 0.1)
  for cat, code in token_study.CATEGORY_CODES.items():
    sel = fit.category == code
    rows = _read_csv(os.path.join(workdir, "trends", "subsets", f"{big}_{cat}_p10_flops.csv"))
    entry = [
        e for e in summary["subsets"]
        if (e["selector"], e["category"], e["fraction"]) == (big, cat, 0.1)
    ]
    assert len(entry) == 1
    valid = np.count_nonzero(fit.category != trends.EXCLUDED)
    assert entry[0]["percent"] == pytest.approx(100 * sel.sum() / valid)
    assert entry[0]["n_tokens"] == sel.sum()
    for m in reader.models:
      mine = [float(r["mean_ppl"]) for r in rows if r["model"] == m]
      if sel.sum() == 0:
        assert np.isnan(mine).all()
        continue
      nll = -reader.logprobs(m).astype(np.float64)
      want = [np.exp(np.mean(row[sel][~np.isnan(row[sel])])) for row in nll]
      np.testing.assert_allclose(mine, want, rtol=1e-12, err_msg=f"{cat} {m}")
  # Self-selected: each model follows its own tokens.
  rows = _read_csv(os.path.join(workdir, "trends", "subsets", "self_none_p10_valid_ppl.csv"))
  for m in reader.models:
    sel = trends.fit(ppl[m], reader.done_steps(m), 0.1).category == trends.NONE
    mine = [r for r in rows if r["model"] == m]
    np.testing.assert_allclose([float(r["x"]) for r in mine], reader.valid_ppl(m), rtol=1e-12)
    np.testing.assert_allclose([float(r["mean_ppl"]) for r in mine],
                               np.exp(np.nanmean(np.log(ppl[m][:, sel]), axis=1)), rtol=1e-12)


def test_selected_tokens_are_followed_in_every_model(scored):
  """Per subset chosen by one model: the others' own categories of it and its PPL change."""
  workdir, reader, summary = scored
  small, big = _by_size(reader)
  ppl = {m: np.exp(-reader.logprobs(m).astype(np.float64)) for m in reader.models}
  fits = {m: trends.fit(ppl[m], reader.done_steps(m), 0.1) for m in reader.models}
  for entry in summary["subsets"]:
    if entry["selector"] == "self" or entry["fraction"] != 0.1:
      continue
    sel = fits[entry["selector"]].category == token_study.CATEGORY_CODES[entry["category"]]
    for m in reader.models:
      cats = fits[m].category[sel]
      kept = cats[cats != trends.EXCLUDED]
      if not kept.size:
        assert entry["categories_in"][m] == {}
        continue
      for name, code in token_study.CATEGORY_CODES.items():
        assert entry["categories_in"][m][name] == pytest.approx(100 * np.mean(kept == code))
      # 10% of 400 steps: the window starts at the first checkpoint (step 100).
      sub = np.exp(np.nanmean(np.log(ppl[m][:, sel]), axis=1))  # exp(mean NLL)
      assert entry["window_change"][m] == pytest.approx(sub[-1] / sub[0] - 1, rel=1e-12)
  # By hand: 2 excluded, then stagnated, upward, upward, none.
  cat = np.array([
      trends.EXCLUDED, trends.EXCLUDED, trends.STAGNATED, trends.UPWARD, trends.UPWARD, trends.NONE
  ])
  assert token_study.token_subsets.category_percents(cat) == {
      "stagnated": 25.0, "upward": 50.0, "downward": 0.0, "none": 25.0
  }


def test_every_figure_written(scored):
  workdir, _, summary = scored
  out = pathlib.Path(workdir, "trends")
  pngs = sorted(out.rglob("*.png"))
  # Fig. 1, Fig. 2, and 3 selectors × 2 fractions × 4 categories × (FLOPs, valid PPL).
  assert len(pngs) == 2 + 3 * 2 * 4 * 2
  for p in pngs:
    assert p.stat().st_size > 0, p
    assert p.with_suffix(".csv").stat().st_size > 0, p
  for e in summary["subsets"]:
    for f in e["figures"]:
      assert os.path.getsize(f) > 0


def test_token_view_html(scored):
  workdir, reader, summary = scored
  from trajax import checkpoints
  tok = checkpoints.load_tokenizer(OPT_TOKENIZER)
  page = pathlib.Path(workdir, "trends", "token_view.html").read_text()
  ids = reader.tokens[0][reader.mask[0]]
  for t in ids:
    assert html.escape(tok.decode([int(t)]), quote=True) in page
  text = page.split('<div class="text">')[1]
  # BOS, and the document's "<", "&" and quotes, appear only escaped.
  assert text.startswith('<span class="tok c0"') and "&lt;/s&gt;" in text and "</s>" not in text
  assert " &lt;" in text and " &amp;" in text and "&quot;" in text
  assert " < " not in text and " & " not in text
  view = summary["token_view"]
  assert view["model"] == _by_size(reader)[-1]
  assert view["n_tokens"] == len(ids) == 64
  assert sum(view["counts"].values()) <= view["n_tokens"]


def test_summary_fields(scored):
  workdir, reader, summary = scored
  on_disk = json.loads(pathlib.Path(workdir, "trends", "summary.json").read_text())
  assert on_disk == json.loads(json.dumps(summary))
  final = [summary["final_valid_ppl"][m] for m in summary["models"]]
  assert summary["larger_models_lower_final_ppl"] == (final[1] < final[0])
  assert summary["flops_method"] == "palm" and summary["x"] == "index"
  assert {e["selector"] for e in summary["subsets"]} == {"self", *reader.models}
  for m in reader.models:
    assert summary["final_step"][m] == STEPS[-1]
    assert set(summary["shares_at_10pct"][m]) == {"stagnated", "upward", "downward", "none"}
    assert sum(summary["shares_at_10pct"][m].values()) == pytest.approx(100)


def test_6nd_and_bad_config(scored, tmp_path):
  workdir, reader, _ = scored
  summary = token_study.run(
      trends_config(store_dir=workdir, flops_method="6nd", selectors=(), fractions=(0.1,)),
      str(tmp_path))
  for m in reader.models:
    _, n = _hand_flops(m, STEPS)
    assert summary["final_flops"][m] == 6.0 * n * STEPS[-1] * TOKENS_PER_STEP
  assert summary["subsets"] == []
  with pytest.raises(ValueError, match="flops_method"):
    token_study.run(trends_config(store_dir=workdir, flops_method="palm2"), str(tmp_path))
  with pytest.raises(ValueError, match="selector 'nope'"):
    token_study.run(trends_config(store_dir=workdir, selectors=("nope",)), str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no trajax store"):
    token_study.run(trends_config(), str(tmp_path / "empty"))


def test_launcher_subprocess(scored, tmp_path):
  workdir, _, _ = scored
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.run([
      sys.executable,
      str(ROOT / "launch" / "trends.py"), f"--config={ROOT / 'configs' / 'trends.py'}",
      f"--workdir={tmp_path}", f"--config.store_dir={workdir}", "--config.selectors=('largest',)",
      "--config.fractions=(0.1,0.4)"
  ], capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "trends"
  for name in ("summary.json", "token_view.html", "fig1_valid_ppl_vs_flops.png",
               "fig2_category_shares.png", "checkpoints.csv"):
    assert (out / name).stat().st_size > 0, name
  assert len(list((out / "subsets").glob("*.png"))) == 2 * 4 * 2
  assert "larger models reach lower final PPL" in proc.stdout

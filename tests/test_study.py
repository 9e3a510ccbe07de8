"""The embedded study, tiny preset, end to end: what `make demo` runs, made small."""
import base64
import json
import os
import re
import shutil

import numpy as np

from trajax import store
from trajax.toy import study


def test_report_embeds_every_figure_non_empty(toy_study):
  workdir, report, _ = toy_study
  page = open(report, encoding="utf-8").read()
  images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
  names = {n for n, _ in images}
  for needed in ("fig1_valid_ppl_vs_flops.png", "fig2_category_shares.png", "fig5_corrupted.png",
                 "fig8_accuracy.png", "fig9_groups.png"):
    assert needed in names, (needed, sorted(names))
  assert any(n.startswith("fig6_final") for n in names)
  for _, data in images:
    png = base64.b64decode(data)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
  # Every section carries a computed finding, and the token view and example table are in.
  assert page.count("<p class='finding'>") >= 9
  assert "srcdoc=" in page and "Table 1" in page


def test_larger_models_reach_lower_validation_ppl(toy_study):
  workdir, _, _ = toy_study
  summary = json.load(open(os.path.join(workdir, "trends", "summary.json")))
  finals = [summary["final_valid_ppl"][m] for m in summary["models"]]
  assert finals[-1] < finals[0]
  reader = store.open(workdir)
  for m in reader.models:
    ppl = reader.valid_ppl(m)
    assert ppl[-1] < ppl[0]  # every model learns along its trajectory
    np.testing.assert_allclose(ppl, summary_ppl(workdir, m), rtol=1e-9)


def summary_ppl(workdir, model):
  import csv
  rows = [
      r for r in csv.DictReader(open(os.path.join(workdir, "trends", "checkpoints.csv")))
      if r["model"] == model
  ]
  return np.array([float(r["valid_ppl"]) for r in rows])


def test_rerun_resumes_without_redoing_work(toy_study, monkeypatch, tmp_path):
  shared, _, mod = toy_study
  # Rerun a copy: the session's study stays as its one run left it (the kill test's reference).
  workdir = str(tmp_path / "study")
  shutil.copytree(shared, workdir)
  report = os.path.join(workdir, "report.html")
  from trajax import scoring
  calls = []
  real = scoring.Scorer.__call__
  monkeypatch.setattr(scoring.Scorer, "__call__",
                      lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
  dataset = os.path.join(workdir, "store", "dataset.json")
  before = os.stat(dataset)
  assert study.run(mod.get_config("tiny"), workdir) == report
  after = os.stat(dataset)  # not rewritten: an atomic rewrite would be a new inode
  assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
  assert not calls  # nothing scored again: store rows, generations and ICL rows all reused

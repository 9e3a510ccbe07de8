"""The report of any workdir (`trajax.report`, `launch/report.py`), rendered in headless Chromium.

Every workdir here is made from the tiny toy study's real outputs (the session's
`toy_study` fixture): whole, moved with its summaries' recorded paths pointing
elsewhere, cut down to some of its stages, or laid out as `launch/decode.py`
writes. Chromium must be at /usr/bin/chromium (`make test` and `.ci/run` install
it when run as root); without it these tests fail, saying how to install it.
"""
import base64
import csv
import html.parser
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from trajax import report, store
from trajax.report import findings
from conftest import HANG_GUARD_S, ROOT

CHROMIUM = "/usr/bin/chromium"
# What a report of all four stages shows, by the paper's figure and table numbers.
FULL_SECTIONS = ("Fig. 1 ", "Fig. 2 ", "Fig. 3 ", "Fig. 4 ", "Fig. 12 ", "Table 3 ",
                 "Fig. 5 (left)", "Fig. 6 ", "Fig. 6 (row 2) ", "Fig. 13 ", "Table 1 ", "Fig. 8 ",
                 "Fig. 9 ", "Fig. 17/18 ")
STAGE_DIRS = ("store", "trends", "decode", "icl")
# Appended to a copy of the page: once it has loaded, one line per <img> with its natural
# size, so the DOM dump shows what the browser made of every image.
PROBE = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre');
  out.id = 'image-probe';
  out.textContent = JSON.stringify(Array.from(document.images,
                                              i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]));
  document.body.appendChild(out);
});
</script>"""


class _Page(html.parser.HTMLParser):
  """h1, h2 texts, <img> alt and data, the paragraph of stages not run, the probe's text."""
  def __init__(self, text):
    super().__init__()
    self.h1, self.h2, self.images, self.not_run, self.probe = "", [], [], "", None
    self._in = None
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    if tag in ("h1", "h2"):
      self._in = tag
      if tag == "h2":
        self.h2.append("")
    elif tag == "img":
      self.images.append((a["alt"], a["src"]))
    elif tag == "p" and a.get("class") == "not-run":
      self._in = "not_run"
    elif tag == "pre" and a.get("id") == "image-probe":
      self._in, self.probe = "probe", ""

  def handle_endtag(self, tag):
    if tag in ("h1", "h2", "p", "pre"):
      self._in = None

  def handle_data(self, data):
    if self._in == "h1":
      self.h1 += data
    elif self._in == "h2":
      self.h2[-1] += data
    elif self._in == "not_run":
      self.not_run += data
    elif self._in == "probe":
      self.probe += data


def _chromium(args, cwd):
  """Runs headless Chromium with a fresh profile; returns its stdout."""
  if not os.access(CHROMIUM, os.X_OK):
    pytest.fail(
        f"{CHROMIUM} is missing: tests/test_report.py renders the report in headless "
        f"Chromium. Install it with `apt-get install -y chromium` (as root, Debian/Ubuntu); "
        f"`make test` and `.ci/run` do so themselves when run as root.")
  profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=cwd)
  cmd = [
      CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      f"--user-data-dir={profile}", *args
  ]
  # The timeout only guards against a hung browser; nothing is timed.
  res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=HANG_GUARD_S)
  assert res.returncode == 0, f"chromium exited {res.returncode}: {res.stderr[-3000:]}"
  return res.stdout


def _render(page_path, tmp_path):
  """The page as Chromium renders it: (parsed DOM after images decode, screenshot path)."""
  text = open(page_path, encoding="utf-8").read()
  probed = tmp_path / "probed.html"
  probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
  dom = _chromium(["--virtual-time-budget=20000", "--dump-dom", probed.as_uri()], tmp_path)
  shot = tmp_path / "shot.png"
  _chromium([
      f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars",
      pathlib.Path(page_path).resolve().as_uri()
  ], tmp_path)
  return _Page(dom), shot


def _check_rendered(page_path, tmp_path):
  """Asserts Chromium shows every section title and decodes every image at its PNG size."""
  raw = _Page(open(page_path, encoding="utf-8").read())
  dom, shot = _render(page_path, tmp_path)
  assert raw.h2 and dom.h2 == raw.h2
  assert dom.h1 == raw.h1
  assert dom.probe is not None, "the image probe never ran: the page did not finish loading"
  decoded = json.loads(dom.probe)
  assert [alt for alt, _, _, _ in decoded] == [alt for alt, _ in raw.images]
  for (alt, complete, width, height), (_, src) in zip(decoded, raw.images):
    assert complete and width > 0 and height > 0, f"{alt}: not decoded by the browser"
    png = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert (width, height) == png.size, alt
  data = shot.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  img = Image.open(shot)
  assert img.size == (1280, 2000)
  rgb = np.asarray(img.convert("RGB")).reshape(-1, 3)
  non_white = np.mean(np.any(rgb < 240, axis=1))
  assert non_white > 0.02, f"screenshot is nearly blank ({non_white:.1%} non-white pixels)"
  assert len(np.unique(rgb, axis=0)) > 50  # text and coloured figures, not a flat fill
  return raw


def _copy_stages(src, dst, stages=STAGE_DIRS):
  os.makedirs(dst)
  for s in stages:
    shutil.copytree(os.path.join(src, s), os.path.join(dst, s))
  return str(dst)


def test_toy_report_renders_in_chromium(toy_study, tmp_path):
  _, page_path, _ = toy_study
  raw = _check_rendered(page_path, tmp_path)
  for prefix in FULL_SECTIONS:
    assert any(t.startswith(prefix) for t in raw.h2), (prefix, raw.h2)
  assert not raw.not_run  # every stage ran


def test_launcher_rebuilds_the_study_page_from_disk(toy_study, tmp_path):
  workdir, page_path, _ = toy_study
  out = tmp_path / "again.html"
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  subprocess.run(
      [sys.executable,
       str(ROOT / "launch" / "report.py"), f"--workdir={workdir}", f"--out={out}"], check=True,
      env=env, capture_output=True)
  # The study's report stage and the launcher read the same files: the same page.
  assert out.read_bytes() == open(page_path, "rb").read()
  subprocess.run([
      sys.executable,
      str(ROOT / "launch" / "report.py"), f"--workdir={workdir}", f"--out={out}",
      "--title=Another <title>"
  ], check=True, env=env, capture_output=True)
  assert _Page(out.read_text(encoding="utf-8")).h1 == "Another <title>"


def test_moved_workdir_of_real_checkpoints_gets_the_same_sections(toy_study, tmp_path):
  workdir, page_path, _ = toy_study
  # Stage outputs only (no toy checkpoints), with the summaries' recorded paths pointing
  # where the stages ran (another machine): every file is found under this workdir.
  moved = _copy_stages(workdir, tmp_path / "run7")
  for summary in ("trends/summary.json", "icl/summary.json"):
    path = os.path.join(moved, summary)
    text = open(path, encoding="utf-8").read()
    open(path, "w", encoding="utf-8").write(text.replace(workdir, "/cluster/jobs/run7"))
  path = report.build(moved)
  assert path == os.path.join(moved, "report.html")
  toy, real = _Page(open(page_path, encoding="utf-8").read()), _check_rendered(path, tmp_path)
  assert real.h2 == toy.h2
  assert [alt for alt, _ in real.images] == [alt for alt, _ in toy.images]
  assert [src for _, src in real.images] == [src for _, src in toy.images]
  page = open(path, encoding="utf-8").read()
  assert "synthetic" not in page.split("<ul>")[0]  # the introduction is not the toy study's
  assert real.h1 == "trajax — training trajectories: run7"


def _valid_ppl(workdir, model):
  """exp(mean NLL) over the validation tokens of each done checkpoint, from the raw rows."""
  lp = store.open(workdir).logprobs(model, dataset="validation").astype(np.float64)
  return [float(np.exp(-np.mean(row[np.isfinite(row)]))) for row in lp]


def test_partial_workdir_lists_stages_not_run(toy_study, tmp_path):
  workdir, _, _ = toy_study
  part = _copy_stages(workdir, tmp_path / "part", ("store", "icl"))
  raw = _check_rendered(report.build(part), tmp_path)
  assert "trends (no trends/summary.json)" in raw.not_run
  assert "decode (" in raw.not_run and "score" not in raw.not_run and "icl" not in raw.not_run
  assert raw.h2[0] == "Validation perplexity of the scored checkpoints"
  assert [t.split(" —")[0] for t in raw.h2[1:]
         ] == ["Fig. 8", "Fig. 9 / Fig. 5 (right)", "Fig. 17/18"]
  page = open(os.path.join(part, "report.html"), encoding="utf-8").read()
  table = re.search(r"<table><tr><th>model</th><th>checkpoints scored</th>.*?</table>",
                    page).group()
  reader = store.open(workdir)
  for m in reader.models:
    ppl = _valid_ppl(workdir, m)
    n = len(reader.steps(m))
    assert (f"<tr><td>{m}</td><td>{len(ppl)} of {n}</td><td>{ppl[0]:.3g}</td>"
            f"<td>{ppl[-1]:.3g}</td></tr>") in table


def test_decode_written_into_the_workdir_itself(toy_study, tmp_path):
  workdir, _, _ = toy_study
  flat = tmp_path / "decode_only"
  shutil.copytree(os.path.join(workdir, "decode"), flat)  # as `launch/decode.py --workdir=...`
  # A second run with another number of new tokens (App. C.5) beside the first.
  (n,) = {
      re.fullmatch(r"generated_ppl_(\d+)\.csv", f).group(1) for f in os.listdir(flat)
      if f.startswith("generated_ppl_")
  }
  for f in os.listdir(flat):
    if f.endswith(f"_{n}.png") or f.endswith(f"_{n}.csv") or f.endswith(f"_{n}.md"):
      shutil.copy(flat / f, flat / f.replace(f"_{n}.", "_500."))
  raw = _Page(open(report.build(str(flat)), encoding="utf-8").read())
  for stage in ("score", "trends", "icl"):
    assert f"{stage} (" in raw.not_run
  per_run = lambda k: [
      f"Fig. 6 — perplexity of generated texts (final checkpoints and trajectories) ({k} new "
      f"tokens)", f"Fig. 6 (row 2) — trajectories of p_s − p_l texts ({k} new tokens)",
      f"Fig. 13 — MAUVE of the generated texts ({k} new tokens)",
      f"Table 1 — example generations per configuration ({k} new tokens)"
  ]
  assert raw.h2 == ["Fig. 5 (left) — corrupted texts at final checkpoints"
                   ] + per_run(n) + per_run(500)
  with open(flat / "corrupted_ppl.csv", newline="") as f:
    fractions = {r["fraction"] for r in csv.DictReader(f)}
  page = open(flat / "report.html", encoding="utf-8").read()
  assert re.search(rf"\d+ of {len(fractions)} \(", page)  # levels counted over the CSV's fractions


def test_workdir_without_stage_outputs_is_an_error(tmp_path):
  with pytest.raises(ValueError, match=r"no stage outputs to report.*trends/summary.json"):
    report.build(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no such workdir"):
    report.build(str(tmp_path / "missing"))


def test_damaged_summary_names_the_file(toy_study, tmp_path):
  workdir, _, _ = toy_study
  part = _copy_stages(workdir, tmp_path / "bad", ("icl",))
  path = os.path.join(part, "icl", "summary.json")
  open(path, "w").write('{"models": ["a"]')
  with pytest.raises(ValueError, match=re.escape(path) + ": not valid JSON"):
    report.build(part)
  open(path, "w").write('{"models": ["a"]}')
  with pytest.raises(ValueError, match=re.escape(path) + ": no field 'final_accuracy'"):
    report.build(part)


def test_decode_findings_order_models_by_size_from_other_stages(tmp_path):
  # A manifest that lists the large model first: the corrupted-text CSV rows come large first.
  rows = ["model,step,fraction,ppl,n_seqs,n_tokens"]
  for frac, (large, small) in {"0.2": (5.0, 9.0), "0.6": (12.0, 11.0)}.items():
    rows += [f"big,10,{frac},{large},4,100", f"small,10,{frac},{small},4,100"]
  (tmp_path / "corrupted_ppl.csv").write_text("\n".join(rows) + "\n")
  decode = {"corrupted_ppl": str(tmp_path / "corrupted_ppl.csv"), "fig5": None, "runs": []}
  # Smallest first, PPL falls with size at 0.2 (9 -> 5) and rises at 0.6 (11 -> 12).
  (section,) = findings._decode_sections(decode, ["small", "big"])
  assert "(small, big): 1 of 2 (0.2)." in section.finding
  # Without sizes from another stage the CSV's order is kept: big, small.
  (section,) = findings._decode_sections(decode, [])
  assert "(big, small): 1 of 2 (0.6)." in section.finding

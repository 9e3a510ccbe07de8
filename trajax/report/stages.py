"""What each stage left in a workdir, read from disk for the report.

A workdir holds the outputs of any subset of the stages:

  store/                  launch/score.py      (trajax.store: per-token log-probs)
  trends/summary.json     launch/trends.py     (trajax.analysis.token_study)
  decode/                 launch/decode.py     (trajax.analysis.generation: CSVs, figures;
                                                also read from the workdir itself, where
                                                a decode run wrote into it directly)
  icl/summary.json        launch/icl.py        (trajax.analysis.icl.study)

The summaries record the paths their stage wrote, as the stage saw them
(absolute, or relative to where it ran); `read` maps each to the same file under
the stage's folder as it is now, so a workdir that was moved or copied reads the
same. A stage whose outputs are absent is reported as not run, with what was
looked for; a stage whose outputs exist but cannot be read is an error naming the file.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import re

STAGES = ("score", "trends", "decode", "icl")


@dataclasses.dataclass
class Outputs:
  """The stage outputs found in one workdir.

  Attributes:
    workdir: the workdir read.
    store: scoring: {"models", "block_shape", "steps", "done_steps", "valid_ppl"}
      (per model: every step, the done steps and their validation PPL), or None.
    trends: trends/summary.json with its paths local, or None.
    decode: {"dir", "corrupted_ppl", "fig5", "params" (model -> parameters, from the stage's
      figure CSVs), "runs": [{"new_tokens", "generated_ppl", "examples", "figures", "mauve",
      "fig13", "cross_family_ppl", "fig7", "cross_family_params"}]} (one run per number of
      new tokens; absent files are None), or None.
    icl: icl/summary.json with its paths local, or None.
    not_run: stage -> what was looked for, for every stage not found.
  """
  workdir: str
  store: dict | None = None
  trends: dict | None = None
  decode: dict | None = None
  icl: dict | None = None
  not_run: dict[str, str] = dataclasses.field(default_factory=dict)

  def models(self) -> list[str]:
    """The models of the first stage that names them, smallest first where known."""
    for stage in (self.trends, self.icl, self.store):
      if stage and stage.get("models"):
        return list(stage["models"])
    if self.decode:
      params = self.decode.get("params") or {}
      for run in self.decode["runs"]:
        names = list(dict.fromkeys(r["model"] for r in read_csv(run["generated_ppl"])))
        if set(names) <= set(params):  # by size, as the stage recorded them
          return sorted(names, key=lambda m: (params[m], m))
        return names
    return []


def read_csv(path: str) -> list[dict]:
  """Rows of a CSV file with a header, as dicts of strings."""
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _read_summary(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      summary = json.load(f)
  except ValueError as e:
    raise ValueError(f"{path}: not valid JSON ({e}); rerun the stage") from None
  if not isinstance(summary, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(summary).__name__}")
  return summary


def _field(summary: dict, path: str, *keys):
  obj = summary
  for i, k in enumerate(keys):
    if not isinstance(obj, dict) or k not in obj:
      raise ValueError(f"{path}: no field {'.'.join(map(str, keys[:i + 1]))!r}; expected a "
                       f"summary written by this version of trajax (rerun the stage)")
    obj = obj[k]
  return obj


class _Relocate:
  """Maps a path the stage recorded to the same file under the stage's folder now."""
  def __init__(self, summary_path: str, recorded_dir: str, stage_dir: str):
    self.summary_path, self.recorded_dir, self.stage_dir = summary_path, recorded_dir, stage_dir

  def __call__(self, path):
    if path is None:
      return None
    rel = os.path.relpath(path, self.recorded_dir)
    if rel.startswith(os.pardir):
      raise ValueError(f"{self.summary_path}: {path!r} is not under the stage's folder "
                       f"{self.recorded_dir!r}")
    return os.path.join(self.stage_dir, rel)


def _read_trends(stage_dir: str) -> dict:
  path = os.path.join(stage_dir, "summary.json")
  summary = _read_summary(path)
  for key in ("models", "final_valid_ppl", "larger_models_lower_final_ppl", "subsets"):
    _field(summary, path, key)
  figures = _field(summary, path, "figures")
  local = _Relocate(path, os.path.dirname(_field(summary, path, "figures", "checkpoints_csv")),
                    stage_dir)
  figures["checkpoints_csv"] = local(figures["checkpoints_csv"])
  figures["fig1"] = [local(p) for p in _field(summary, path, "figures", "fig1")]
  figures["fig2"] = None if figures.get("fig2") is None else [local(p) for p in figures["fig2"]]
  for entry in summary["subsets"]:
    entry["figures"] = [local(p) for p in entry["figures"]]
  if summary.get("token_view"):
    summary["token_view"]["path"] = local(summary["token_view"]["path"])
  return summary


def _read_icl(stage_dir: str) -> dict:
  path = os.path.join(stage_dir, "summary.json")
  summary = _read_summary(path)
  for key in ("models", "final_accuracy", "final_ppl_correct", "final_ppl_incorrect"):
    _field(summary, path, key)
  figures = _field(summary, path, "figures")
  local = _Relocate(path, os.path.dirname(_field(summary, path, "figures", "fig8")), stage_dir)
  for key in ("fig8", "fig9", "fig5_right", "fig17_18"):
    figures[key] = local(_field(summary, path, "figures", key))
  return summary


def _decode_dir(workdir: str) -> str | None:
  """decode/ under the workdir, or the workdir itself where a decode run wrote into it."""
  for d in (os.path.join(workdir, "decode"), workdir):
    if glob.glob(os.path.join(glob.escape(d), "generated_ppl_*.csv")) or os.path.isfile(
        os.path.join(d, "corrupted_ppl.csv")):
      return d
  return None


def _existing(path: str) -> str | None:
  return path if os.path.isfile(path) else None


def _read_decode(stage_dir: str) -> dict:
  """The files `trajax.analysis.decode_study.run` writes, found by their names."""
  runs = []
  for path in glob.glob(os.path.join(glob.escape(stage_dir), "generated_ppl_*.csv")):
    m = re.fullmatch(r"generated_ppl_(\d+)\.csv", os.path.basename(path))
    if m:
      runs.append((int(m.group(1)), path))
  out = {"dir": stage_dir, "corrupted_ppl": _existing(os.path.join(stage_dir, "corrupted_ppl.csv"))}
  out["fig5"] = _existing(os.path.join(stage_dir, "fig5_corrupted.png"))
  # Model sizes as the stage recorded them beside its figures (parameter counts).
  out["params"] = {}
  for csv_path in sorted(glob.glob(os.path.join(glob.escape(stage_dir), "fig6_final_*.csv"))) + [
      os.path.join(stage_dir, "fig5_corrupted.csv")
  ]:
    if os.path.isfile(csv_path):
      out["params"].update({r["model"]: float(r["params"]) for r in read_csv(csv_path)})
  out["runs"] = []
  for n, ppl_path in sorted(runs):
    # The order decode_study.run draws them in: the final checkpoints, then per method
    # (sorted) the trajectories against FLOPs and against validation PPL.
    figures = [_existing(os.path.join(stage_dir, f"fig6_final_{n}.png"))]
    for method in sorted({r["method"] for r in read_csv(ppl_path) if "method" in r}):
      figures.append(_existing(os.path.join(stage_dir, f"fig6_flops_{method}_{n}.png")))
      figures.append(_existing(os.path.join(stage_dir, f"fig16_valid_ppl_{method}_{n}.png")))
    fig7 = _existing(os.path.join(stage_dir, f"fig7_cross_family_{n}.png"))
    out["runs"].append({
        "new_tokens": n, "generated_ppl": ppl_path,
        "examples": _existing(os.path.join(stage_dir, f"examples_{n}.md")
                             ), "figures": [p for p in figures if p],
        "mauve": _existing(os.path.join(stage_dir, f"mauve_{n}.csv")
                          ), "fig13": _existing(os.path.join(stage_dir, f"fig13_mauve_{n}.png")),
        "cross_family_ppl": _existing(os.path.join(stage_dir, f"cross_family_ppl_{n}.csv")),
        "fig7": fig7, "cross_family_params":
            ({r["model"]: float(r["params"]) for r in read_csv(fig7[:-len(".png")] + ".csv")}
             if fig7 and os.path.isfile(fig7[:-len(".png")] + ".csv") else {})
    })
  return out


def _read_store(workdir: str) -> dict:
  from trajax import store  # pylint: disable=g-import-not-at-top  (tensorstore only when needed)
  reader = store.open(workdir)
  out = {
      "root": reader.root, "models": reader.models, "block_shape": list(reader.tokens.shape),
      "steps": {}, "done_steps": {}, "valid_ppl": {}
  }
  for m in reader.models:
    out["steps"][m] = [int(s) for s in reader.steps(m)]
    out["done_steps"][m] = [int(s) for s in reader.done_steps(m)]
    out["valid_ppl"][m] = ([float(v) for v in reader.valid_ppl(m)] if out["done_steps"][m] else [])
  return out


def read(workdir: str) -> Outputs:
  """Every stage's outputs in `workdir`; absent stages are listed in `not_run`.

  Raises:
    FileNotFoundError: `workdir` is not a directory.
    ValueError: a stage's outputs exist but cannot be read (naming the file).
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{workdir}: no such workdir")
  out = Outputs(workdir)
  if os.path.isfile(os.path.join(workdir, "store", "dataset.json")):
    out.store = _read_store(workdir)
  else:
    out.not_run["score"] = "no store/dataset.json"
  trends_dir = os.path.join(workdir, "trends")
  if os.path.isfile(os.path.join(trends_dir, "summary.json")):
    out.trends = _read_trends(trends_dir)
  else:
    out.not_run["trends"] = "no trends/summary.json"
  decode_dir = _decode_dir(workdir)
  if decode_dir:
    out.decode = _read_decode(decode_dir)
  else:
    out.not_run["decode"] = "no decode/generated_ppl_*.csv or decode/corrupted_ppl.csv"
  icl_dir = os.path.join(workdir, "icl")
  if os.path.isfile(os.path.join(icl_dir, "summary.json")):
    out.icl = _read_icl(icl_dir)
  else:
    out.not_run["icl"] = "no icl/summary.json"
  return out

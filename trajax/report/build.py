"""The report of a workdir: every stage found on disk, one HTML page.

    python launch/report.py --workdir=out/      # writes out/report.html

The toy study (`trajax.toy.study`) calls `build` as its last stage; any other
workdir (real checkpoints scored by `launch/score.py`, then any of
`launch/trends.py`, `launch/decode.py`, `launch/icl.py`) gets the same page from
the same files.
"""
from __future__ import annotations

import glob
import json
import os

from absl import logging

from trajax.report import findings, page, stages

_SECTIONS = ("Each section states what the paper found and what this run shows, computed from its "
             "numbers.")
TOY_TITLE = "trajax — training trajectories of a toy OPT family"


def is_toy_study(workdir: str) -> bool:
  """Whether `workdir` was trained by `trajax.toy.train` (each model's train_config.json
  records the synthetic world it was trained on)."""
  paths = glob.glob(os.path.join(glob.escape(workdir), "checkpoints", "*", "train_config.json"))
  if not paths:
    return False
  for path in paths:
    try:
      with open(path, encoding="utf-8") as f:
        if "world" not in json.load(f):
          return False
    except (OSError, ValueError):
      return False
  return True


def describe(workdir: str, outputs: stages.Outputs) -> tuple[str, str]:
  """The page's default title and introduction, from what the workdir holds."""
  names = outputs.models()
  models = f"{len(names)} {'model' if len(names) == 1 else 'models'} ({', '.join(names)})"
  if is_toy_study(workdir):
    return TOY_TITLE, (
        f"{len(names)} OPT-architecture models ({', '.join(names)}) trained by "
        f"trajax on a synthetic world, every checkpoint scored and analysed as Xia et al. "
        f"(2023) did for OPT. {_SECTIONS}")
  title = f"trajax — training trajectories: {os.path.basename(os.path.abspath(workdir))}"
  s = outputs.store
  if s:
    done = sum(len(v) for v in s["done_steps"].values())
    total = sum(len(v) for v in s["steps"].values())
    scored = (f", {done} of {total} checkpoints scored per token on {s['block_shape'][0]} "
              f"blocks of {s['block_shape'][1]} tokens")
  else:
    scored = ""
  return title, (f"Training trajectories of {models}{scored}, analysed as Xia et al. (2023) did "
                 f"for OPT. {_SECTIONS}")


def build(workdir: str, title: str | None = None, out: str | None = None) -> str:
  """Writes the report of every stage found in `workdir`.

  Args:
    workdir: a workdir holding the outputs of any subset of the stages
      (`trajax.report.stages`); absent stages are listed as not run.
    title: the page title; None = from the workdir (`describe`).
    out: the HTML file; None = `{workdir}/report.html`.

  Returns:
    The path written.

  Raises:
    FileNotFoundError: no such workdir, or a figure a stage recorded is missing.
    ValueError: the workdir holds no stage outputs, or one cannot be read (naming the file).
  """
  outputs = stages.read(workdir)
  if len(outputs.not_run) == len(stages.STAGES):
    raise ValueError(f"{workdir}: no stage outputs to report (looked for "
                     f"{'; '.join(outputs.not_run.values())})")
  default_title, intro = describe(workdir, outputs)
  not_run = [f"{stage} ({why})" for stage, why in outputs.not_run.items()]
  path = page.write(out or os.path.join(workdir, "report.html"), title or default_title, intro,
                    findings.sections(outputs), not_run)
  logging.info("report: %s (stages not run: %s)", path, ", ".join(outputs.not_run) or "none")
  return path

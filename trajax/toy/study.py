"""The embedded study: train a toy trajectory, then every analysis of the paper, one report.

Stages (each resumes from what the previous run left on disk):
  train   -> {workdir}/trajectory.json, checkpoints/, tokenizer/, data/, tasks/
  score   -> {workdir}/store            (per-token log-probs of every checkpoint)
  trends  -> {workdir}/trends           (§3: Fig. 1-4, 10-12, Table 3)
  decode  -> {workdir}/decode           (§4: Fig. 5 left, 6, 16, Table 1)
  icl     -> {workdir}/icl              (§5: Fig. 5 right, 8, 9, 17/18)
  report  -> {workdir}/report.html     (trajax.report.build: the page any workdir gets)
"""
from __future__ import annotations

import os
import time

from absl import logging

from trajax import report, sweep
from trajax import workdir as workdir_lib
from trajax.analysis import decode_study, token_study
from trajax.analysis.icl import study as icl_study
from trajax.toy import train

STAGES = ("train", "score", "trends", "decode", "icl", "report")


def _stage(name: str, fn):
  t0 = time.perf_counter()
  logging.info("=== stage %s ===", name)
  out = fn()
  logging.info("=== stage %s done in %.1fs ===", name, time.perf_counter() - t0)
  return out


def wire(config, workdir: str, manifest: str) -> None:
  """Points every stage's config at this study's files (paths depend on the workdir)."""
  tokenizer = os.path.join(workdir, "tokenizer")
  validation = os.path.join(workdir, "data", "validation.jsonl")
  s = config.score
  s.trajectory, s.tokenizer = manifest, tokenizer
  s.data.files = os.path.join(workdir, "data", "analysis.jsonl")
  s.validation.files = f"world={validation}"
  t = config.trends
  t.store_dir, t.tokenizer = workdir, tokenizer
  d = config.decode
  d.trajectory, d.tokenizer, d.data.files, d.store_dir = manifest, tokenizer, validation, workdir
  d.corrupted.data.files = os.path.join(workdir, "data", "corrupted.jsonl")
  i = config.icl
  i.trajectory, i.tokenizer, i.store_dir = manifest, tokenizer, workdir
  i.tasks_dir = os.path.join(workdir, "tasks")


def run(config, workdir: str) -> str:
  """Runs the whole study into `workdir`; returns the report's path.

  The study holds `workdir` for its whole run (each stage nests in that claim), so
  a second study on it is refused and what a killed study left is swept first.
  """
  with workdir_lib.claim(workdir, stages_nest=True):
    return _run_claimed(config, workdir)


def _run_claimed(config, workdir: str) -> str:
  t0 = time.perf_counter()
  manifest = _stage("train", lambda: train.train_family(config, workdir))
  wire(config, workdir, manifest)
  _stage("score", lambda: sweep.run(config.score, workdir))
  _stage("trends", lambda: token_study.run(config.trends, workdir))
  _stage("decode", lambda: decode_study.run(config.decode, workdir))
  _stage("icl", lambda: icl_study.run(config.icl, workdir))
  path = _stage("report", lambda: report.build(workdir))
  logging.info("study done in %.0fs: %s", time.perf_counter() - t0, path)
  return path

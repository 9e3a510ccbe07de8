"""SIGKILL the ICL stage at seeded points it reaches; the rerun equals an uninterrupted run.

Kill points include the atomic writes of every kind of ICL output (per-checkpoint
option scores, results.csv, figures); the resumed workdir holds the clean run's
files byte for byte and no temporary file.
"""
import sys

import pytest

from trajax import workdir
from conftest import OPT_TOKENIZER, ROOT, SHARED_DATA, write_manifest
import killpoints

SEED = 7
TASKS = ("human_organs_senses", "what_is_the_tao", "cause_and_effect")


def _setup(tmp_path, tiny_ckpt):
  ckpts = []
  for k in range(4):
    path, _ = tiny_ckpt(f"m/step{k + 1}", seed=k, vocab_size=50272, hidden_size=16,
                        num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                        max_position_embeddings=2048)
    ckpts.append(((k + 1) * 10, path))
  manifest = write_manifest(str(tmp_path / "traj.json"), {"m": (100, ckpts)})
  return [
      sys.executable,
      str(ROOT / "launch" / "icl.py"), f"--config={ROOT}/configs/icl.py",
      f"--config.trajectory={manifest}", f"--config.tokenizer={OPT_TOKENIZER}",
      f"--config.tasks_dir={SHARED_DATA / 'bigbench'}",
      f"--config.task_names=({','.join(repr(t) for t in TASKS)},)", "--config.max_examples=8"
  ]


def test_sigkill_during_icl_then_resume_equals_clean_run(tmp_path, tiny_ckpt):
  cmd = _setup(tmp_path, tiny_ckpt)
  # Inside the writes of a checkpoint's option scores, of results.csv and of a figure.
  killpoints.kill_and_compare(
      lambda workdir: cmd + [f"--workdir={workdir}"], tmp_path / "clean", tmp_path / "killed",
      seed=SEED, required=("atomic:*/icl/options/m/*", "atomic:*/icl/results.csv",
                           "atomic:*/icl/*.png"), extra=1)


def test_second_icl_run_on_a_workdir_is_refused(tmp_path, tiny_ckpt):
  from trajax.analysis.icl import study
  with workdir.claim(str(tmp_path / "icl")):
    with pytest.raises(workdir.WorkdirBusy, match="in use by another trajax run"):
      study.run(None, str(tmp_path))

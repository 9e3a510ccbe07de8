"""SIGKILL the toy study (`launch/study.py`, tiny preset) at seeded points; the resumed study
equals a clean one.

The clean reference is the session's tiny study (conftest `tiny_study`, traced).
The killed study starts from the clean run's tokenizer and trained checkpoints
of every model but the smallest (training those again would cost most of a run;
the study reuses them as it reuses any finished model): it trains toy-s itself.
It is killed inside a checkpoint export of that training, at a seeded point of a
later stage (score, trends, decode or ICL), and inside the atomic write of
report.html; the last run resumes to the end.

Then the workdir holds no temporary file and exactly the clean run's files, byte
for byte (the workdir's own path normalised), but for two kinds of files that
record how long things took, compared with those fields removed:
trends/summary.json (`seconds`) and each model's train_log.jsonl (tokens/s,
elapsed and ETA, training seconds). The losses, gradient norms and validation
losses in those logs are still compared exactly: toy-s, trained again after its
kill, must train bit for bit as in the clean run.
"""
import shutil

from conftest import study_cmd
import killpoints

SEED = 20261203
COPIED = ("toy-m", "toy-l", "toy-xl")  # trained in the clean run, reused by the killed study
TIMINGS = {
    "trends/summary.json": killpoints.without_fields("seconds"),
    "checkpoints/*/train_log.jsonl": killpoints.without_fields("tokens_per_s", "elapsed_s", "eta_s",
                                                               "train_s", jsonl=True),
}


def _trained_here(point: str) -> bool:
  """Whether the killed study passes `point`: not while exporting a model it reuses."""
  return not any(f"/checkpoints/{name}/" in point for name in COPIED)


def test_sigkill_during_the_study_then_resume_equals_clean_run(tmp_path, tiny_study):
  clean, points = tiny_study
  out = tmp_path / "killed"
  shutil.copytree(clean / "tokenizer", out / "tokenizer")
  for name in COPIED:
    shutil.copytree(clean / "checkpoints" / name, out / "checkpoints" / name)
  killpoints.kill_and_compare(
      study_cmd, clean, out, seed=SEED, points=points, reachable=_trained_here, required=(
          "atomic:*/checkpoints/toy-s/.step*.tmp-*/model.safetensors",
          ("store.*", "atomic:*/store/*", "atomic:*/trends/*", "atomic:*/decode/*",
           "atomic:*/icl/*"),
          "atomic:*/report.html",
      ), normalise=TIMINGS)

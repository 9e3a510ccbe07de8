"""The Pythia trajectory (Biderman et al. 2023): a preset of `trajax.revisions`.

Every Pythia model was saved at the same 154 steps, each a branch of its hub
repository: `step0`, the log-spaced `step1, step2, step4, ..., step512`, then
every 1,000 steps to `step143000`. One step is 1,024 sequences of 2,048 tokens.
`build_manifest` turns a Hugging Face cache of those revisions into a trajax
manifest (see `trajax.revisions` for the cache layout, the missing-revision
report and the identical-weights check).
"""
from __future__ import annotations

import re

from trajax import revisions as revisions_lib
from trajax.revisions import ManifestReport, content_hash, file_sha256, weight_files  # noqa: F401

# 1,024 sequences x 2,048 tokens per optimizer step (Pythia paper, Appendix E).
TOKENS_PER_STEP = 2_097_152
FINAL_STEP = 143_000
ORG = "EleutherAI"
SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")


def pythia_steps() -> list[int]:
  """The 154 saved steps: 0, 1, 2, 4, ..., 512, then 1000, 2000, ..., 143000."""
  return [0] + [2**i for i in range(10)] + list(range(1000, FINAL_STEP + 1, 1000))


def pythia_revisions() -> list[str]:
  """The 154 hub branch names, in training order: step0, step1, ..., step143000."""
  return [f"step{s}" for s in pythia_steps()]


PRESET = revisions_lib.Preset(name="pythia", org=ORG, family="gpt_neox",
                              tokens_per_step=TOKENS_PER_STEP, revisions=tuple(pythia_revisions()))


def revision_step(revision: str) -> int:
  """'step1000' -> 1000."""
  m = re.fullmatch(r"step(\d+)", revision)
  if not m:
    raise ValueError(f"revision {revision!r} is not a Pythia step branch ('step<N>')")
  return int(m.group(1))


def repo_dir(cache_dir: str, model_name: str) -> str:
  """'pythia-410m' or 'EleutherAI/pythia-410m' -> <cache>/models--EleutherAI--pythia-410m."""
  return revisions_lib.repo_dir(cache_dir, model_name, ORG)


def build_manifest(cache_dir: str, model_names, out_path: str, revisions=None,
                   hash_weights: bool = True, trust_blob_names: bool = True) -> ManifestReport:
  """Writes a trajax manifest for the Pythia checkpoints present in an HF cache.

  Args:
    cache_dir: the hub cache (e.g. ~/.cache/huggingface/hub).
    model_names: e.g. ["pythia-160m", "EleutherAI/pythia-410m-deduped"].
    out_path: the manifest JSON to write; its `root` is `cache_dir`.
    revisions: branch names to look for (default: all 154 `pythia_revisions()`).
    hash_weights: hash every checkpoint's weights to find identical revisions.
    trust_blob_names: take a file's sha256 from its LFS blob name when it has
      one instead of reading it (see `trajax.revisions.file_sha256`).
  Returns:
    A `ManifestReport`. Missing revisions and identical weights are also logged.
  Raises:
    ValueError: no requested model has any checkpoint in the cache.
  """
  if revisions is not None:
    for r in revisions:
      revision_step(r)
  return revisions_lib.build_manifest(cache_dir, model_names, out_path, PRESET, revisions,
                                      hash_weights=hash_weights, trust_blob_names=trust_blob_names)

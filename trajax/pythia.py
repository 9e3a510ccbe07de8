"""The Pythia trajectory (Biderman et al. 2023) from a local Hugging Face cache.

Every Pythia model was saved at the same 154 steps, each a branch of its hub
repository: `step0`, the log-spaced `step1, step2, step4, ..., step512`, then
every 1,000 steps to `step143000`. One step is 1,024 sequences of 2,048 tokens.

A Hugging Face cache (`huggingface_hub.snapshot_download(..., revision=...)`)
lays a repository out as

    <cache>/models--EleutherAI--pythia-410m/
        refs/step1000                 # a file holding the commit hash
        snapshots/<hash>/config.json  # usually links into ../../blobs/
        snapshots/<hash>/model.safetensors (or pytorch_model.bin, or shards)

`build_manifest` turns that into a trajax manifest (`trajax.trajectory`),
reports the revisions that are absent, and hashes each checkpoint's weights:
some Pythia branches carry byte-identical weights under different step names,
which would show as flat stretches of a trajectory; those are logged.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

from absl import logging

from trajax import atomic, checkpoints, hf_checkpoints
from trajax import trajectory
from trajax.models import gpt_neox

# 1,024 sequences x 2,048 tokens per optimizer step (Pythia paper, Appendix E).
TOKENS_PER_STEP = 2_097_152
FINAL_STEP = 143_000
ORG = "EleutherAI"
SIZES = ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
_CHUNK = 1 << 20
_SHA256_BLOB = re.compile(r"[0-9a-f]{64}")


def pythia_steps() -> list[int]:
  """The 154 saved steps: 0, 1, 2, 4, ..., 512, then 1000, 2000, ..., 143000."""
  return [0] + [2**i for i in range(10)] + list(range(1000, FINAL_STEP + 1, 1000))


def pythia_revisions() -> list[str]:
  """The 154 hub branch names, in training order: step0, step1, ..., step143000."""
  return [f"step{s}" for s in pythia_steps()]


def revision_step(revision: str) -> int:
  """'step1000' -> 1000."""
  m = re.fullmatch(r"step(\d+)", revision)
  if not m:
    raise ValueError(f"revision {revision!r} is not a Pythia step branch ('step<N>')")
  return int(m.group(1))


def repo_dir(cache_dir: str, model_name: str) -> str:
  """'pythia-410m' or 'EleutherAI/pythia-410m' -> <cache>/models--EleutherAI--pythia-410m."""
  org, name = model_name.split("/", 1) if "/" in model_name else (ORG, model_name)
  return os.path.join(cache_dir, f"models--{org}--{name}")


def weight_files(path: str) -> list[str]:
  """The weight files `trajax.hf_checkpoints` would read from `path`, same precedence."""
  for index in (hf_checkpoints.SAFETENSORS_INDEX, hf_checkpoints.TORCH_BIN_INDEX):
    index_path = os.path.join(path, index)
    if os.path.isfile(index_path):
      with open(index_path) as f:
        return sorted(set(json.load(f)["weight_map"].values()))
  for single in (hf_checkpoints.SAFETENSORS, hf_checkpoints.TORCH_BIN):
    if os.path.isfile(os.path.join(path, single)):
      return [single]
  return []


def file_sha256(path: str, trust_blob_names: bool = False) -> str:
  """sha256 of a file's bytes, read in 1 MiB chunks.

  With `trust_blob_names`, a snapshot file that links to a 64-hex-digit blob
  is not read: the hub names Git LFS blobs by the sha256 of their content.
  """
  if trust_blob_names and os.path.islink(path):
    blob = os.path.basename(os.path.realpath(path))
    if _SHA256_BLOB.fullmatch(blob):
      return blob
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def content_hash(path: str, trust_blob_names: bool = False) -> str:
  """One sha256 for a checkpoint's weights: over (file name, file sha256) in name order."""
  files = weight_files(path)
  if not files:
    raise FileNotFoundError(f"{path}: no weight files")
  h = hashlib.sha256()
  for name in files:
    h.update(f"{name}\0{file_sha256(os.path.join(path, name), trust_blob_names)}\n".encode())
  return h.hexdigest()


@dataclasses.dataclass
class ManifestReport:
  """What `build_manifest` found.

  Attributes:
    trajectory: the manifest as written (paths absolute).
    missing: {model: {revision: why}} for revisions that could not be used.
    duplicates: {model: [[revision, ...], ...]} groups with identical weights.
    hashes: {model: {revision: sha256}} (empty when hashing was off).
  """
  trajectory: trajectory.Trajectory
  missing: dict[str, dict[str, str]]
  duplicates: dict[str, list[list[str]]]
  hashes: dict[str, dict[str, str]]


def _snapshot(repo: str, revision: str) -> tuple[str | None, str | None]:
  """(snapshot dir, None) or (None, why it is unusable)."""
  ref = os.path.join(repo, "refs", revision)
  if not os.path.isfile(ref):
    return None, f"no {ref}"
  with open(ref) as f:
    commit = f.read().strip()
  snap = os.path.join(repo, "snapshots", commit)
  if not commit or not os.path.isdir(snap):
    return None, f"{ref} names commit {commit!r}, but {snap} does not exist"
  if not os.path.isfile(os.path.join(snap, "config.json")):
    return None, f"{snap}: no config.json"
  if not weight_files(snap):
    return None, f"{snap}: no weight files"
  return snap, None


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
      one instead of reading it (see `file_sha256`).
  Returns:
    A `ManifestReport`. Missing revisions and identical weights are also logged.
  Raises:
    ValueError: no requested model has any checkpoint in the cache.
  """
  cache_dir = os.path.abspath(cache_dir)
  revisions = sorted(revisions or pythia_revisions(), key=revision_step)
  models, missing, duplicates, hashes = [], {}, {}, {}
  json_models = []
  for full_name in model_names:
    name = full_name.split("/")[-1]
    repo = repo_dir(cache_dir, full_name)
    found, missing[name], hashes[name] = [], {}, {}
    for rev in revisions:
      snap, why = _snapshot(repo, rev)
      if snap is None:
        missing[name][rev] = why
      else:
        found.append((rev, snap))
    if missing[name]:
      logging.warning("%s: %d of %d revisions missing from %s (first: %s)", name,
                      len(missing[name]), len(revisions), repo, ", ".join(list(missing[name])[:5]))
    if not found:
      continue
    if hash_weights:
      by_hash: dict[str, list[str]] = {}
      for rev, snap in found:
        hashes[name][rev] = content_hash(snap, trust_blob_names)
        by_hash.setdefault(hashes[name][rev], []).append(rev)
      duplicates[name] = [revs for revs in by_hash.values() if len(revs) > 1]
      for revs in duplicates[name]:
        logging.warning(
            "%s: revisions %s carry identical weights (sha256 %s); their "
            "log-probs will be identical too", name, ", ".join(revs), hashes[name][revs[0]][:16])
    cfg_path = os.path.join(found[-1][1], "config.json")
    cfg = gpt_neox.GPTNeoXConfig.from_hf_config(checkpoints.read_config(found[-1][1]), cfg_path)
    params = gpt_neox.param_count(cfg)
    models.append(
        trajectory.Model(name, TOKENS_PER_STEP,
                         tuple(trajectory.Checkpoint(revision_step(r), s) for r, s in found),
                         params))
    json_models.append({
        "name": name, "tokens_per_step": TOKENS_PER_STEP, "params": params, "checkpoints": [{
            "step": revision_step(r), "revision": r, "path": os.path.relpath(s, cache_dir),
            **({"sha256": hashes[name][r]} if hash_weights else {})
        } for r, s in found]
    })
  if not models:
    raise ValueError(f"{cache_dir}: none of {list(model_names)} has any of the requested "
                     f"revisions")
  data = {"name": "pythia", "root": cache_dir, "models": json_models}
  atomic.write_json(out_path, data, sort_keys=False)
  traj = trajectory.Trajectory(tuple(models), "pythia", out_path)
  return ManifestReport(traj, missing, duplicates, hashes)

"""Trajectory manifests from a local Hugging Face cache holding many revisions of one repo.

Open training runs publish their intermediate checkpoints as branches of one hub
repository, each named after where in training it was saved:

    step1000                          Pythia
    step20000-tokens84B               OLMo-1 (tokens in billions)
    stage1-step10000-tokens21B        OLMo-2 pre-training
    stage2-ingredient1-step1000-tokens5B   OLMo-2 mid-training, one of its runs
    step-480k-token-1007B             TinyLlama's intermediate checkpoints
    ckpt_042                          LLM360 Amber (a checkpoint index, no step)

`parse_revision` reads stage, ingredient, step (or index) and tokens from such a
name; `build_manifest` finds the revisions present in a cache
(`huggingface_hub.snapshot_download(..., revision=...)` lays a repo out as
`<cache>/models--{org}--{name}/refs/<revision>` holding a commit hash and
`snapshots/<commit>/` holding config.json and the weights), puts them in
training order and writes a trajax manifest (`trajax.trajectory`). Revisions
that are absent or broken are reported, never silently skipped; checkpoints
with byte-identical weights are reported too (a flat stretch of a trajectory).

Training order: by stage, then step. A later stage restarts its step count, so
its steps are offset by the previous stage's final step (the preset's when it
knows it, else the largest step of that stage in the cache, logged). Stage-2
ingredients of OLMo-2 are separate runs from the same start, not one sequence:
a trajectory follows one of them (`ingredient=`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

from absl import logging

from trajax import atomic, checkpoints, hf_checkpoints, models, trajectory

_CHUNK = 1 << 20
_SHA256_BLOB = re.compile(r"[0-9a-f]{64}")
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_NUMBER = r"\d+(?:\.\d+)?"
_REVISION = re.compile(
    rf"""(?:stage(?P<stage>\d+)[-_])?
         (?:ingredient(?P<ingredient>\d+)[-_])?
         (?:step[-_]?(?P<step>\d+)(?P<thousands>k)?|ckpt[-_]?(?P<index>\d+))
         (?:[-_]tokens?[-_]?(?P<tokens>{_NUMBER})(?P<unit>[KMBT])?
            |[-_](?P<bare_tokens>{_NUMBER})(?P<bare_unit>[KMBT]))?""", re.X | re.I)


@dataclasses.dataclass(frozen=True)
class Revision:
  """What a revision name says. `step` is within its stage; `index` replaces it for
  checkpoint-numbered runs (Amber); `tokens` is None where the name has none."""
  name: str
  step: int
  stage: int = 1
  ingredient: int | None = None
  tokens: int | None = None
  index: bool = False


def parse_revision(name: str) -> Revision | None:
  """The Revision a branch name encodes, or None (e.g. `main`) if it follows no scheme."""
  m = _REVISION.fullmatch(name)
  if m is None:
    return None
  g = m.groupdict()
  if g["index"] is not None:
    step = int(g["index"])
  else:
    step = int(g["step"]) * (1000 if g["thousands"] else 1)
  tokens = None
  number, unit = (g["tokens"], g["unit"]) if g["tokens"] else (g["bare_tokens"], g["bare_unit"])
  if number is not None:
    tokens = round(float(number) * _UNITS[(unit or "").upper()])
  return Revision(name, step, int(g["stage"] or 1),
                  int(g["ingredient"]) if g["ingredient"] else None, tokens, g["index"] is not None)


@dataclasses.dataclass(frozen=True)
class Preset:
  """One published trajectory: where its revisions live and what a step is.

  Attributes:
    name: the manifest's name.
    org: hub organisation prepended to bare repo names.
    family: the `model_type` its config.json must have.
    tokens_per_step: tokens per optimizer step (per checkpoint index for `index`
      names); None where it is not known: the caller must pass it.
    revisions: the full list of saved revisions when it is fixed (Pythia), else
      None: every revision in the cache that parses is taken.
    stage_final_steps: {stage: its last step}, for offsetting later stages.
  """
  name: str
  org: str
  family: str
  tokens_per_step: int | None
  revisions: tuple[str, ...] | None = None
  stage_final_steps: tuple[tuple[int, int], ...] = ()


def preset_from_config(config) -> Preset:
  """A Preset from a `configs/trajectories.py` entry (name, org, family, tokens_per_step,
  revisions, stage_final_steps)."""
  return Preset(config.name, config.org, config.family, config.tokens_per_step,
                tuple(config.revisions) or None,
                tuple((int(a), int(b)) for a, b in config.stage_final_steps))


def repo_dir(cache_dir: str, repo: str, org: str) -> str:
  """'pythia-410m' or 'EleutherAI/pythia-410m' -> <cache>/models--EleutherAI--pythia-410m."""
  owner, name = repo.split("/", 1) if "/" in repo else (org, repo)
  return os.path.join(cache_dir, f"models--{owner}--{name}")


def cached_revisions(repo: str) -> list[str]:
  """Branch names under `<repo>/refs` (pull-request refs left out)."""
  refs = os.path.join(repo, "refs")
  found = []
  for root, _, files in os.walk(refs):
    for f in files:
      rel = os.path.relpath(os.path.join(root, f), refs)
      if not rel.startswith("pr" + os.sep):
        found.append(rel.replace(os.sep, "/"))
  return sorted(found)


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


def snapshot(repo: str, revision: str) -> tuple[str | None, str | None]:
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


@dataclasses.dataclass
class ManifestReport:
  """What `build_manifest` found.

  Attributes:
    trajectory: the manifest as written (paths absolute).
    missing: {model: {revision: why}} for revisions that could not be used.
    duplicates: {model: [[revision, ...], ...]} groups with identical weights.
    hashes: {model: {revision: sha256}} (empty when hashing was off).
    token_mismatches: {model: [revision, ...]} whose name's token count disagrees
      with step x tokens_per_step.
  """
  trajectory: trajectory.Trajectory
  missing: dict[str, dict[str, str]]
  duplicates: dict[str, list[list[str]]]
  hashes: dict[str, dict[str, str]]
  token_mismatches: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def order(revs: list[Revision], preset: Preset, ingredient: int | None = None,
          where: str = "") -> list[tuple[int, Revision]]:
  """(global step, revision) in training order; later stages offset by the stage before.

  Raises:
    ValueError: several ingredients of a stage and none chosen, a stage with no
      known end, or two revisions at one step.
  """
  by_stage: dict[int, list[Revision]] = {}
  for r in revs:
    by_stage.setdefault(r.stage, []).append(r)
  finals = dict(preset.stage_final_steps)
  out, offset = [], 0
  for stage in sorted(by_stage):
    stage_revs = by_stage[stage]
    ingredients = sorted({r.ingredient for r in stage_revs if r.ingredient is not None})
    if ingredient is not None and ingredient in ingredients:
      stage_revs = [r for r in stage_revs if r.ingredient in (None, ingredient)]
    elif len(ingredients) > 1:
      raise ValueError(f"{where}: stage {stage} has ingredients {ingredients}, separate runs from "
                       f"the same start; pass ingredient= to follow one")
    if stage > min(by_stage):
      prev = stage - 1
      if prev in finals:
        offset = finals[prev]
      elif prev in by_stage:
        offset = max(r.step for r in by_stage[prev])
        logging.warning(
            "%s: stage %d's final step not known; offsetting stage %d by the last "
            "stage-%d step in the cache, %d", where, prev, stage, prev, offset)
      else:
        raise ValueError(f"{where}: stage {stage} follows stage {prev}, whose final step is "
                         f"neither known nor in the cache")
    out += [(offset + r.step, r) for r in sorted(stage_revs, key=lambda r: r.step)]
  steps = [s for s, _ in out]
  if len(set(steps)) != len(steps):
    dup = sorted({s for s in steps if steps.count(s) > 1})
    raise ValueError(f"{where}: several revisions at step(s) {dup[:5]}: "
                     f"{[r.name for s, r in out if s in dup][:6]}")
  return out


def _tokens_agree(rev: Revision, step: int, tokens_per_step: int) -> bool:
  """A name's token count is rounded to its unit: agree within that rounding and 1%."""
  if rev.tokens is None or rev.stage > 1:  # later stages count their own tokens
    return True
  want = step * tokens_per_step
  unit = next((u for u in (10**12, 10**9, 10**6, 10**3) if rev.tokens % u == 0), 1)
  return abs(rev.tokens - want) <= unit / 2 + 0.01 * want


def build_manifest(cache_dir: str, repos, out_path: str, preset: Preset, revisions=None,
                   ingredient: int | None = None, tokens_per_step: int | None = None,
                   hash_weights: bool = True, trust_blob_names: bool = True) -> ManifestReport:
  """Writes a trajax manifest for the revisions of `repos` present in an HF cache.

  Args:
    cache_dir: the hub cache (e.g. ~/.cache/huggingface/hub).
    repos: one repo per model, e.g. ["allenai/OLMo-1B-hf"] (bare names get `preset.org`).
    out_path: the manifest JSON to write; its `root` is `cache_dir`.
    preset: the trajectory's `Preset`.
    revisions: branch names to look for; default the preset's list, or every
      revision in the cache whose name parses.
    ingredient: the stage-2 ingredient to follow where there are several.
    tokens_per_step: overrides the preset's (required where it has none).
    hash_weights: hash every checkpoint's weights to find identical revisions.
    trust_blob_names: take a file's sha256 from its LFS blob name (`file_sha256`).
  Returns:
    A `ManifestReport`; missing revisions, identical weights and token counts that
    disagree with the preset are also logged.
  Raises:
    ValueError: an unparseable requested revision, an ambiguous order, a config of
      another family, or no checkpoint of any repo in the cache.
  """
  tps = tokens_per_step or preset.tokens_per_step
  if not tps:
    raise ValueError(f"preset {preset.name!r} has no verified tokens_per_step; pass "
                     f"tokens_per_step= (see its note in configs/trajectories.py)")
  cache_dir = os.path.abspath(cache_dir)
  report = ManifestReport(None, {}, {}, {}, {})
  models_out, json_models = [], []
  for full in repos:
    name = full.split("/")[-1]
    repo = repo_dir(cache_dir, full, preset.org)
    wanted = list(revisions or preset.revisions or cached_revisions(repo))
    parsed = []
    for rev in wanted:
      p = parse_revision(rev)
      if p is None and (revisions or preset.revisions):
        raise ValueError(f"{repo}: revision {rev!r} names no step (expected e.g. 'step1000', "
                         f"'stage1-step1000-tokens4B', 'ckpt_001')")
      if p is None:
        logging.info("%s: revision %r is not a training checkpoint; skipped", repo, rev)
      else:
        parsed.append(p)
    missing = report.missing.setdefault(name, {})
    found = {}
    for step, rev in order(parsed, preset, ingredient, repo):
      snap, why = snapshot(repo, rev.name)
      if snap is None:
        missing[rev.name] = why
      else:
        found[rev.name] = (step, rev, snap)
    if missing:
      logging.warning("%s: %d of %d revisions missing from %s (first: %s)", name, len(missing),
                      len(parsed), repo, ", ".join(list(missing)[:5]))
    if not found:
      continue
    report.token_mismatches[name] = [
        r for r, (step, rev, _) in found.items() if not _tokens_agree(rev, step, tps)
    ]
    if report.token_mismatches[name]:
      logging.warning(
          "%s: revisions %s name token counts that differ from step x %d; is "
          "tokens_per_step right?", name, report.token_mismatches[name][:5], tps)
    hashes = report.hashes.setdefault(name, {})
    if hash_weights:
      by_hash: dict[str, list[str]] = {}
      for rev_name, (_, _, snap) in found.items():
        hashes[rev_name] = content_hash(snap, trust_blob_names)
        by_hash.setdefault(hashes[rev_name], []).append(rev_name)
      report.duplicates[name] = [revs for revs in by_hash.values() if len(revs) > 1]
      for revs in report.duplicates[name]:
        logging.warning(
            "%s: revisions %s carry identical weights (sha256 %s); their "
            "log-probs will be identical too", name, ", ".join(revs), hashes[revs[0]][:16])
    last = list(found.values())[-1][2]
    cfg_path = os.path.join(last, "config.json")
    hf = checkpoints.read_config(last)
    if hf["model_type"] != preset.family:
      raise ValueError(f"{cfg_path}: model_type {hf['model_type']!r}; preset {preset.name!r} "
                       f"expects {preset.family!r}")
    fam = models.family(hf["model_type"], cfg_path)
    params = fam.param_count(fam.Config.from_hf_config(hf, cfg_path))
    models_out.append(
        trajectory.Model(name, tps,
                         tuple(trajectory.Checkpoint(s, snap) for s, _, snap in found.values()),
                         params))
    json_models.append({
        "name": name, "tokens_per_step": tps, "params": params, "checkpoints": [{
            "step": s, "revision": r, "path": os.path.relpath(snap, cache_dir),
            **({"tokens_in_name": rev.tokens} if rev.tokens is not None else {}),
            **({"sha256": hashes[r]} if hash_weights else {})
        } for r, (s, rev, snap) in found.items()]
    })
  if not models_out:
    raise ValueError(f"{cache_dir}: none of {list(repos)} has any of the requested revisions")
  atomic.write_json(out_path, {"name": preset.name, "root": cache_dir, "models": json_models},
                    sort_keys=False)
  report.trajectory = trajectory.Trajectory(tuple(models_out), preset.name, out_path)
  return report

"""A whole trajectory converted to orbax checkpoints: one manifest in, one manifest out.

Sits above both `trajax.trajectory` (manifests) and `trajax.orbax_checkpoints`
(one checkpoint directory), so neither imports the other.
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax.numpy as jnp
from absl import logging

from trajax import checkpoints, orbax_checkpoints, trajectory, workdir
from trajax.orbax_checkpoints import is_orbax_checkpoint, read_marker


def convert_trajectory(manifest: str, out_root: str, dtype=None, overwrite: bool = False,
                       allow_outside_root: bool = False, sharding_fn=None,
                       compress: bool = False) -> str:
  """Converts every checkpoint of a manifest; writes a manifest listing the converted dirs.

  Checkpoint `step` of model `name` goes to `out_root/name/step{step}`. A
  destination that already holds the conversion of the same source (and dtype,
  when given) is kept, so an interrupted run resumes where it stopped.

  Args:
    manifest: trajectory manifest (see `trajax.trajectory`) of HF checkpoints.
    out_root: output directory; receives the converted checkpoints and the manifest.
    dtype: as for `convert`.
    overwrite: reconvert destinations that already exist.
    allow_outside_root: as for `trajectory.load`.
    sharding_fn, compress: as for `convert`.
  Returns:
    The path of the new manifest, `out_root/trajectory.json`.
  """
  traj = trajectory.load(manifest, allow_outside_root=allow_outside_root)
  with workdir.claim(out_root):  # one conversion per out_root; sweeps a killed one's residue
    return _convert_trajectory(traj, out_root, dtype, overwrite, sharding_fn, compress)


def _convert_trajectory(traj, out_root, dtype, overwrite, sharding_fn, compress) -> str:
  left = sum(len(m.checkpoints) for m in traj.models)
  t_start, written, done = time.perf_counter(), 0, 0
  models = []
  for m in traj.models:
    ckpts = []
    for c in m.checkpoints:
      dst = os.path.join(os.path.abspath(out_root), m.name, f"step{c.step}")
      ckpts.append(trajectory.Checkpoint(c.step, dst))
      left -= 1
      if not overwrite and _already_converted(dst, c.path, dtype):
        logging.info("%s step %d: %s already converted, kept", m.name, c.step, dst)
        continue
      t0 = time.perf_counter()
      orbax_checkpoints.convert(c.path, dst, dtype=dtype, overwrite=overwrite,
                                sharding_fn=sharding_fn, compress=compress)
      done += 1
      size = checkpoints.dir_bytes(dst)
      written += size
      elapsed = time.perf_counter() - t_start
      logging.info("%s step %d -> %s: %.1f MB in %.1fs | %.1f MB/s overall | %d left, ETA %.0fs",
                   m.name, c.step, dst, size / 1e6,
                   time.perf_counter() - t0, written / 1e6 / elapsed, left, elapsed / done * left)
    models.append(dataclasses.replace(m, checkpoints=tuple(ckpts)))
  out_manifest = os.path.join(out_root, "trajectory.json")
  trajectory.Trajectory(tuple(models), traj.name, out_manifest).save(out_manifest)
  logging.info("wrote %s (%d checkpoints converted, %.1f MB, %.1fs)", out_manifest, done,
               written / 1e6,
               time.perf_counter() - t_start)
  return out_manifest


def _already_converted(dst: str, source: str, dtype) -> bool:
  """Whether `dst` holds `source` converted (at `dtype`, if given); other contents are errors."""
  if not os.path.lexists(dst):
    return False
  marker = read_marker(dst) if is_orbax_checkpoint(dst) else None
  if (marker is None or marker.get("source") != os.path.abspath(source) or
      (dtype is not None and marker.get("dtype") != jnp.dtype(dtype).name)):
    raise FileExistsError(f"{dst}: exists and is not the conversion of {source}"
                          f"{f' at {jnp.dtype(dtype).name}' if dtype is not None else ''}; pass "
                          f"overwrite=True (--overwrite) to replace a trajax orbax checkpoint")
  return True

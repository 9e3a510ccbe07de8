"""Any checkpoint directory -> a trajax model: Hugging Face or converted (orbax).

Every stage loads checkpoints through `load`, so a manifest may list HF
directories, directories converted by `launch/convert.py`, or a mix. Both kinds
hold the HF `config.json`, so the architecture (`model_config`) and the
tokenizer (`load_tokenizer`) are read the same way from either.
"""
from __future__ import annotations

import os

import jax.numpy as jnp

from trajax import hf_checkpoints, orbax_checkpoints
from trajax.hf_checkpoints import ShardingFn, load_tokenizer, model_config, read_config

__all__ = [
    "ShardingFn", "check", "dir_bytes", "is_orbax", "load", "load_tokenizer", "model_config",
    "read_config"
]


def is_orbax(path: str | os.PathLike) -> bool:
  """Whether `path` was converted by `trajax.orbax_checkpoints.convert`."""
  return orbax_checkpoints.is_orbax_checkpoint(path)


def load(path: str | os.PathLike, dtype=jnp.float32, sharding_fn: ShardingFn | None = None):
  """Loads a checkpoint directory of either kind as a trajax model.

  Args:
    path: an HF checkpoint directory or one written by `orbax_checkpoints.convert`.
    dtype: parameter dtype (jnp.float32 or jnp.bfloat16).
    sharding_fn: optional (logical_axes, shape) -> Sharding (see
      `trajax.sharding.param_sharding_fn`); each device then reads only its slice.
  Returns:
    The family's model (e.g. `OPTForCausalLM`) with `.config`.
  """
  if is_orbax(path):
    return orbax_checkpoints.restore(path, dtype=dtype, sharding_fn=sharding_fn)
  return hf_checkpoints.load_hf(path, dtype=dtype, sharding_fn=sharding_fn)


def check(path: str | os.PathLike) -> None:
  """Raises OSError/ValueError if `path` is visibly not a loadable checkpoint (no weights read)."""
  read_config(path)
  if is_orbax(path):
    orbax_checkpoints.read_marker(path)
  else:
    hf_checkpoints.HFWeights(path)


def dir_bytes(path: str | os.PathLike) -> int:
  """Total size of the regular files under `path` (what reading a checkpoint reads)."""
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      fpath = os.path.join(root, name)
      if not os.path.islink(fpath):
        total += os.path.getsize(fpath)
  return total

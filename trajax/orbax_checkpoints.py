"""Hugging Face checkpoint -> orbax/tensorstore checkpoint, converted once, restored sharded.

A converted directory holds:
  * `state/` -- the model's nnx state as a pure dict, saved by orbax (tensorstore);
  * `config.json` -- copied from the source, so the family and config are rebuilt
    exactly as `trajax.hf_checkpoints.model_config` does for the HF directory
    (tokenizer files are copied too when present, so the directory also serves as
    a sweep's tokenizer);
  * `trajax_orbax.json` -- the marker, written last: format version, stored
    dtype, compression, source path, parameter count.

Parameters are stored in trajax layout (already transposed and stacked per layer),
so `restore` is a straight read: orbax reads each device's slice of each array
into its target sharding and casts on the host (`numpy.astype`, as `load_hf`
does). No device ever holds a full copy of a sharded parameter, and the values
equal `load_hf` of the source bit for bit at any dtype when the checkpoint was
stored in the HF weights' own dtype (the default), or at the dtype it was stored in.
Weights are checked finite once, at conversion (by `load_hf`), not at restore.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from trajax import atomic, faults, hf_checkpoints

FORMAT_VERSION = 1
MARKER = "trajax_orbax.json"
STATE_DIR = "state"
# Small files copied verbatim from the HF directory; only config.json is required.
COPIED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")
STORED_DTYPES = ("float16", "bfloat16", "float32")


def is_orbax_checkpoint(path: str | os.PathLike) -> bool:
  """Whether `path` is a directory written by `convert` (its marker is present)."""
  return os.path.isfile(os.path.join(os.fspath(path), MARKER))


def read_marker(path: str | os.PathLike) -> dict:
  """The parsed marker of a converted directory, checked for format and version."""
  path = os.fspath(path)
  marker_path = os.path.join(path, MARKER)
  if not os.path.isfile(marker_path):
    raise ValueError(f"{path}: no {MARKER}; not a trajax orbax checkpoint (write one with "
                     f"trajax.orbax_checkpoints.convert or launch/convert.py)")
  try:
    with open(marker_path) as f:
      marker = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{marker_path}: not valid JSON ({e})") from None
  if not isinstance(marker, dict) or marker.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{marker_path}: expected a JSON object with format_version "
                     f"{FORMAT_VERSION}, got {marker!r:.200}")
  return marker


def _stored_dtype(hf_dir: str):
  """The dtype the HF weights are stored in, if they share one trajax can keep; else float32."""
  fam, _ = hf_checkpoints.model_config(hf_dir)
  weights = hf_checkpoints.HFWeights(hf_dir, fam.normalize_hf_key)
  names = {d.name for d in map(weights.dtype, weights.keys())}
  if len(names) == 1 and names <= set(STORED_DTYPES):
    return jnp.dtype(names.pop())
  return jnp.dtype(jnp.float32)


def convert(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype=None,
            overwrite: bool = False, sharding_fn: hf_checkpoints.ShardingFn | None = None,
            compress: bool = False) -> dict:
  """Converts a Hugging Face checkpoint directory into an orbax checkpoint at `out_dir`.

  Everything is written into a temporary sibling of `out_dir`, which is renamed
  into place last: a conversion killed midway leaves no `out_dir`.

  Args:
    hf_dir: HF checkpoint directory (anything `trajax.hf_checkpoints.load_hf` reads).
    out_dir: directory to create.
    dtype: stored parameter dtype (float16, bfloat16 or float32); None keeps the
      dtype of the HF weights when they all share one of those, else float32.
    overwrite: replace an existing `out_dir`; only a previous trajax orbax
      checkpoint is ever replaced, never an arbitrary directory.
    sharding_fn: optional (logical_axes, shape) -> Sharding used while loading,
      so a model larger than one device converts on a mesh.
    compress: zstd-compress the arrays (orbax's default). Off by default: on a
      2-core CPU it halved restore speed (bench/restore_bench.py) and saves
      little on trained or random weights; worth it on slow network storage.
  Returns:
    The marker written to `out_dir/trajax_orbax.json`.
  """
  hf_dir, out_dir = os.fspath(hf_dir), os.path.abspath(os.fspath(out_dir))
  if os.path.realpath(hf_dir) == os.path.realpath(out_dir):
    raise ValueError(f"{out_dir}: the output directory is the HF checkpoint itself")
  removed = sweep_conversion_residue(out_dir)
  if removed:
    logging.info("%s: removed %d temporary director(ies) left by a killed conversion", out_dir,
                 removed)
  if os.path.lexists(out_dir):
    if not overwrite:
      raise FileExistsError(f"{out_dir}: already exists; pass overwrite=True (--overwrite) to "
                            f"replace it")
    if not is_orbax_checkpoint(out_dir):
      raise FileExistsError(f"{out_dir}: exists and is not a trajax orbax checkpoint (no "
                            f"{MARKER}); refusing to replace it, remove it yourself")
  dtype = jnp.dtype(dtype) if dtype is not None else _stored_dtype(hf_dir)
  if dtype.name not in STORED_DTYPES:
    raise ValueError(f"dtype {dtype.name!r}: expected one of {STORED_DTYPES}")

  model = hf_checkpoints.load_hf(hf_dir, dtype=dtype, sharding_fn=sharding_fn)
  state = nnx.to_pure_dict(nnx.state(model))
  del model
  cfg = hf_checkpoints.read_config(hf_dir)
  marker = {
      "format_version": FORMAT_VERSION, "model_type": cfg["model_type"], "dtype": dtype.name,
      "compressed": compress, "source": os.path.abspath(hf_dir),
      "params": int(sum(np.prod(a.shape) for a in jax.tree.leaves(state)))
  }

  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = atomic.temporary_name(out_dir, uuid.uuid4().hex[:12])
  try:
    os.mkdir(tmp)
    ocp.PyTreeCheckpointer(use_compression=compress).save(os.path.join(tmp, STATE_DIR),
                                                          args=ocp.args.PyTreeSave(state))
    for name in COPIED_FILES:
      if os.path.isfile(os.path.join(hf_dir, name)):
        shutil.copyfile(os.path.join(hf_dir, name), os.path.join(tmp, name))
    # The marker goes last: a directory with a marker is a complete checkpoint.
    atomic.write_json(os.path.join(tmp, MARKER), marker)
    faults.point(f"convert.complete:{out_dir}")  # a whole checkpoint, under its temporary name
    if os.path.lexists(out_dir):  # overwrite: move the old one aside, then drop it
      old = f"{tmp}.old"
      os.replace(out_dir, old)
      faults.point(f"convert.swap:{out_dir}")  # old moved aside, new not yet in place
      os.replace(tmp, out_dir)
      shutil.rmtree(old)
    else:
      os.replace(tmp, out_dir)
  except Exception as e:  # orbax/tensorstore wrap OS errors in several types
    if atomic.is_no_space(e) and not isinstance(e, atomic.DiskFull):
      raise atomic.no_space_error(out_dir, e) from e
    raise
  finally:
    if os.path.lexists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return marker


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, someone else's
    return True
  return True


def sweep_conversion_residue(out_dir: str) -> int:
  """Removes the temporaries of earlier conversions to `out_dir` whose process is dead.

  A conversion writes `.{name}.tmp-{pid}-{hex}` beside `out_dir` (and, when
  overwriting, moves the old checkpoint to that name plus `.old`). A dead
  converter's temporary is removed; an `.old` whose replacement never arrived is
  put back as `out_dir`. Temporaries of a live converter are left alone.
  Returns how many were removed or restored.
  """
  parent, base = os.path.split(out_dir)
  if not os.path.isdir(parent):
    return 0
  pattern = re.compile(rf"^\.{re.escape(base)}\.tmp-(\d+)-[0-9a-f]+(\.old)?$")
  removed = 0
  for name in sorted(os.listdir(parent)):
    m = pattern.match(name)
    if m is None or _pid_alive(int(m.group(1))):
      continue
    path = os.path.join(parent, name)
    if m.group(2) and not os.path.lexists(out_dir):
      os.replace(path, out_dir)
    else:
      shutil.rmtree(path, ignore_errors=True)
    removed += 1
  return removed


def _flat_dotted(tree, prefix: str = "") -> dict:
  """{'model.decoder.layers.fc1.kernel': leaf} for a nested dict."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat_dotted(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def restore(path: str | os.PathLike, dtype=jnp.float32,
            sharding_fn: hf_checkpoints.ShardingFn | None = None):
  """Restores a converted checkpoint as a trajax model, straight into target shardings.

  Args:
    path: directory written by `convert`.
    dtype: parameter dtype (jnp.float32 or jnp.bfloat16); cast on the host while reading.
    sharding_fn: optional (logical_axes, shape) -> Sharding (see
      `trajax.sharding.param_sharding_fn`); each device then reads only its slice.
  Returns:
    The family's model (e.g. `OPTForCausalLM`), as `trajax.hf_checkpoints.load_hf` returns.
  """
  path = os.fspath(path)
  read_marker(path)
  fam, cfg = hf_checkpoints.model_config(path)
  abstract = nnx.eval_shape(lambda: fam.create(cfg, dtype=dtype, seed=None))
  graphdef, abstract_state = nnx.split(abstract)
  state_dir = os.path.join(os.path.abspath(path), STATE_DIR)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    stored = _flat_dotted(checkpointer.metadata(state_dir).item_metadata.tree)
  except (OSError, ValueError, KeyError) as e:
    raise ValueError(f"{state_dir}: cannot read the orbax metadata ({type(e).__name__}: "
                     f"{e})") from None

  wanted = {
      ".".join(str(p) for p in var_path): var for var_path, var in nnx.to_flat_state(abstract_state)
  }
  missing, extra = sorted(wanted.keys() - stored.keys()), sorted(stored.keys() - wanted.keys())
  if missing or extra:
    family = fam.__name__.split(".")[-1]
    msg = [(f"{state_dir}: saved parameters do not match the {family} architecture in "
            f"{path}/config.json")]
    if missing:
      msg.append(f"missing {len(missing)}: {missing[:8]}")
    if extra:
      msg.append(f"unexpected {len(extra)}: {extra[:8]}")
    raise ValueError("; ".join(msg))

  np_dtype = np.dtype(jnp.dtype(dtype))
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target, restore_args = {}, {}
  for dotted, var in wanted.items():
    shape = tuple(var.get_value().shape)
    got = tuple(stored[dotted].shape)
    if got != shape:
      raise ValueError(f"{state_dir}: parameter {dotted!r} has shape {list(got)}, expected "
                       f"{list(shape)} from {path}/config.json")
    axes = tuple(var.get_metadata().get("logical_axes", ()))
    sharding = (sharding_fn(axes, shape) if sharding_fn else None) or default
    _set(target, dotted, jax.ShapeDtypeStruct(shape, np_dtype, sharding=sharding))
    _set(restore_args, dotted,
         ocp.ArrayRestoreArgs(sharding=sharding, dtype=np_dtype, global_shape=shape, strict=True))
  try:
    values = checkpointer.restore(
        state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))
  except Exception as e:  # tensorstore and orbax raise many types for damaged files
    raise ValueError(f"{state_dir}: cannot restore ({type(e).__name__}: {e})") from e
  nnx.replace_by_pure_dict(abstract_state, values)
  return nnx.merge(graphdef, abstract_state)


def _set(tree: dict, dotted: str, value) -> None:
  node = tree
  *parents, leaf = dotted.split(".")
  for name in parents:
    node = node.setdefault(name, {})
  node[leaf] = value

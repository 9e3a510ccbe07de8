"""Hugging Face checkpoint directories -> trajax models.

A checkpoint directory holds `config.json` and weights in one of:
  * `model.safetensors`
  * `model.safetensors.index.json` + the shards it names
  * `pytorch_model.bin` (or its sharded index) -- read only through
    `torch.load(weights_only=True)`, which refuses to execute pickled code.

Conversion is the family's table (`hf_rules`: our path <- HF key, hook) applied
strictly: the checkpoint's key set must equal the table's, and every shape is
checked before a byte is converted. Each parameter is read lazily from the
memory-mapped files, so with target shardings a device only ever reads its own
slice (`jax.make_array_from_callback`), never a full copy of the model.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from trajax import models
from trajax.safetensors_io import SafetensorsFile

FLOAT_DTYPES = tuple(np.dtype(t) for t in (np.float16, ml_dtypes.bfloat16, np.float32, np.float64))
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"


def _read_json(path: str, what: str):
  """The parsed JSON file at `path`; any corruption is a ValueError naming it."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return json.loads(raw)
  except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, too-long integers, deep nesting
    raise ValueError(f"{path}: not valid JSON ({e}); expected {what}") from None


def read_config(path: str | os.PathLike) -> dict:
  """The parsed `config.json` of a checkpoint directory."""
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path}: no config.json; is {path!r} a Hugging Face checkpoint "
                            f"directory?")
  hf = _read_json(cfg_path, "a Hugging Face model config")
  if not isinstance(hf, dict) or not isinstance(hf.get("model_type"), str):
    raise ValueError(f"{cfg_path}: expected a JSON object with a string field 'model_type'")
  return hf


def model_config(path: str | os.PathLike):
  """(family module, family Config) for a checkpoint directory."""
  hf = read_config(path)
  src = os.path.join(path, "config.json")
  fam = models.family(hf["model_type"], src)
  return fam, fam.Config.from_hf_config(hf, src)


class _TorchBin:
  """A `pytorch_model.bin` read with `weights_only=True` (no pickled code runs)."""
  def __init__(self, path: str):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(f"{path}: reading .bin checkpoints needs torch; install trajax[test] or "
                        f"convert the checkpoint to safetensors") from None
    self.path = path
    try:
      state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
      raise ValueError(f"{path}: cannot be read as a weights-only torch checkpoint: "
                       f"{type(e).__name__}: {e}") from None
    if not isinstance(state, dict):
      raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    self._state = state

  def keys(self):
    return list(self._state)

  def shape(self, name):
    return tuple(self._state[name].shape)

  def dtype(self, name):
    return _torch_to_numpy(
        self._state[name][:0] if self._state[name].dim() else self._state[name]).dtype

  def read(self, name) -> np.ndarray:
    return _torch_to_numpy(self._state[name])


def _torch_to_numpy(t) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


class HFWeights:
  """Every tensor of a checkpoint directory, by (normalised) key, read lazily."""
  def __init__(self, path: str | os.PathLike, normalize_key: Callable[[str], str] = lambda k: k):
    self.path = os.fspath(path)
    self._index_path = None
    files = self._weight_files()
    self._where: dict[str, tuple[object, str]] = {}
    for fname, wanted in files:
      fpath = os.path.join(self.path, fname)
      reader = SafetensorsFile(fpath) if fname.endswith(".safetensors") else _TorchBin(fpath)
      for raw_key in reader.keys():
        if wanted is not None and raw_key not in wanted:
          continue
        key = normalize_key(raw_key)
        if key in self._where:
          raise ValueError(f"{fpath}: tensor {raw_key!r} also stored in "
                           f"{self._where[key][0].path}")
        self._where[key] = (reader, raw_key)
      if wanted is not None:
        absent = sorted(set(wanted) - set(reader.keys()))
        if absent:
          raise ValueError(f"{self._index_path}: lists {absent[:5]} in shard {fpath}, which does "
                           f"not contain them")

  def _weight_files(self) -> list[tuple[str, set[str] | None]]:
    """(file name, keys the index assigns to it or None) in a fixed order."""
    for index_name in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
      index_path = os.path.join(self.path, index_name)
      if os.path.isfile(index_path):
        return sorted(self._read_index(index_path).items())
    for fname in (SAFETENSORS, TORCH_BIN):
      if os.path.isfile(os.path.join(self.path, fname)):
        return [(fname, None)]
    raise FileNotFoundError(f"{self.path}: no weights found; expected {SAFETENSORS}, "
                            f"{SAFETENSORS_INDEX}, {TORCH_BIN} or {TORCH_BIN_INDEX}")

  def _read_index(self, index_path: str) -> dict[str, set[str]]:
    """{shard file name: the keys the index assigns to it}; every shard lies in self.path."""
    self._index_path = index_path
    index = _read_json(index_path, "a shard index with a 'weight_map' object")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index_path}: expected a JSON object whose 'weight_map' is a non-empty "
                       f"object {{tensor name: shard file name}}")
    by_file: dict[str, set[str]] = {}
    for key, fname in weight_map.items():
      # A plain file name: never a path out of (or into a subfolder of) the checkpoint. The
      # file itself may be a symlink, as every file in the Hugging Face cache is.
      if (not isinstance(fname, str) or fname in ("", ".", "..") or "\x00" in fname or
          os.path.basename(fname) != fname or (os.altsep and os.altsep in fname)):
        raise ValueError(f"{index_path}: shard name {fname!r} for {key!r} must be a file name "
                         f"in the checkpoint directory")
      by_file.setdefault(fname, set()).add(key)
    for fname in by_file:
      if not os.path.isfile(os.path.join(self.path, fname)):
        raise FileNotFoundError(f"{index_path}: lists shard {fname!r}, which is missing from "
                                f"{self.path}")
    return by_file

  def keys(self) -> set[str]:
    return set(self._where)

  def source(self, key: str) -> str:
    return self._where[key][0].path

  def shape(self, key: str) -> tuple[int, ...]:
    reader, raw = self._where[key]
    return tuple(reader.shape(raw))

  def dtype(self, key: str) -> np.dtype:
    reader, raw = self._where[key]
    return np.dtype(reader.dtype(raw))

  def read(self, key: str) -> np.ndarray:
    reader, raw = self._where[key]
    return reader.read(raw)


@dataclasses.dataclass(frozen=True)
class _Param:
  """How to read one trajax parameter from HF tensors."""
  path: str
  hf_keys: tuple[str, ...]  # one per layer when stacked
  stacked: bool
  transpose: bool
  shape: tuple[int, ...]
  logical_axes: tuple

  def read(self, weights: HFWeights, index=None) -> np.ndarray:
    """The parameter (or `index` of it) as a host array in the checkpoint's dtype."""
    index = tuple(index) if index is not None else (slice(None),) * len(self.shape)
    if not self.stacked:
      a = weights.read(self.hf_keys[0])
      return (a.T if self.transpose else a)[index]
    layer_ids = range(len(self.hf_keys))[index[0]]
    parts = []
    for i in layer_ids:
      a = weights.read(self.hf_keys[i])
      parts.append((a.T if self.transpose else a)[index[1:]])
    return np.stack(parts) if parts else np.zeros((0,) + self.shape[1:], np.float32)


def _plan(fam, cfg, abstract_state, weights: HFWeights) -> list[_Param]:
  """Matches the checkpoint's keys and shapes against the family table, strictly."""
  flat = {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(abstract_state)}
  plan, expected = [], set()
  for ours, hf_key, hook in fam.hf_rules(cfg):
    var = flat.pop(ours)
    shape = tuple(var.get_value().shape)
    stacked = "{i}" in hf_key
    keys = (tuple(hf_key.format(i=i) for i in range(shape[0])) if stacked else (hf_key,))
    expected.update(keys)
    plan.append(
        _Param(ours, keys, stacked, hook == "T", shape,
               tuple(var.get_metadata().get("logical_axes", ()))))
  assert not flat, f"internal: parameters without a conversion rule: {sorted(flat)}"

  found = weights.keys() - fam.ignored_hf_keys(cfg)
  missing, extra = sorted(expected - found), sorted(found - expected)
  if missing or extra:
    msg = [
        f"{weights.path}: checkpoint keys do not match the {fam.__name__.split('.')[-1]} "
        f"architecture in its config.json"
    ]
    if missing:
      msg.append(f"missing {len(missing)}: {missing[:8]}")
    if extra:
      msg.append(f"unexpected {len(extra)}: {extra[:8]}")
    raise ValueError("; ".join(msg))
  for p in plan:
    want = p.shape[1:] if p.stacked else p.shape
    want = want[::-1] if p.transpose else want
    for key in p.hf_keys:
      if weights.dtype(key) not in FLOAT_DTYPES:
        raise ValueError(f"{weights.source(key)}: tensor {key!r} has dtype {weights.dtype(key)}, "
                         f"expected a floating-point weight (float16/bfloat16/float32/float64)")
      got = weights.shape(key)
      if tuple(got) != tuple(want):
        raise ValueError(f"{weights.source(key)}: tensor {key!r} has shape {list(got)}, expected "
                         f"{list(want)} from config.json")
  return plan


ShardingFn = Callable[[tuple, tuple], jax.sharding.Sharding | None]


def load_hf(path: str | os.PathLike, dtype=jnp.float32, sharding_fn: ShardingFn | None = None,
            check_finite: bool = True):
  """Loads a Hugging Face checkpoint directory as a trajax model.

  Args:
    path: directory with config.json and weights (see module docstring).
    dtype: parameter dtype (jnp.float32 or jnp.bfloat16).
    sharding_fn: optional (logical_axes, shape) -> Sharding (see
      `trajax.sharding.param_sharding_fn`); each device then reads only its slice.
    check_finite: refuse weights containing NaN or Inf.
  Returns:
    The family's model (e.g. `OPTForCausalLM`) with `.config`.
  """
  path = os.fspath(path)
  fam, cfg = model_config(path)
  weights = HFWeights(path, fam.normalize_hf_key)
  return _build(fam, cfg, weights, dtype, sharding_fn, check_finite)


class _DictWeights:
  """In-memory tensors with the HFWeights interface (for `from_state_dict`)."""
  def __init__(self, tensors, normalize_key, path="<state dict>"):
    self.path = path
    self._t = {normalize_key(k): v for k, v in tensors.items()}

  def keys(self):
    return set(self._t)

  def source(self, key):
    return self.path

  def shape(self, key):
    return tuple(self._t[key].shape)

  def dtype(self, key):
    return np.asarray(self._t[key]).dtype

  def read(self, key):
    return np.asarray(self._t[key])


def from_state_dict(hf_config: dict, tensors, dtype=jnp.float32, sharding_fn=None,
                    check_finite: bool = True):
  """A model from an HF config dict and a {HF key: numpy array} state dict.

  The same strict table as `load_hf`, without files: for benchmarks that build
  large random models in memory, and for trainers that hold weights already.
  """
  model_type = hf_config.get("model_type", "")
  if not isinstance(model_type, str):
    raise ValueError(f"<config dict>: model_type {model_type!r} is not a string")
  fam = models.family(model_type, "<config dict>")
  cfg = fam.Config.from_hf_config(hf_config, "<config dict>")
  return _build(fam, cfg, _DictWeights(tensors, fam.normalize_hf_key), dtype, sharding_fn,
                check_finite)


def _build(fam, cfg, weights, dtype, sharding_fn, check_finite):
  """Checks `weights` against the family's table and builds the model."""
  abstract = nnx.eval_shape(lambda: fam.create(cfg, dtype=dtype, seed=None))
  graphdef, abstract_state = nnx.split(abstract)
  plan = _plan(fam, cfg, abstract_state, weights)
  np_dtype = np.dtype(jnp.dtype(dtype))

  values = {}
  for p in plan:

    def read(index=None, p=p):
      a = p.read(weights, index)
      # np.isfinite takes float16/32/64 and ml_dtypes' bfloat16 as they are: no float32 copy.
      if check_finite and not np.isfinite(a).all():
        raise ValueError(f"{weights.source(p.hf_keys[0])}: tensor {p.hf_keys[0]!r} (or a layer "
                         f"of it) contains NaN or Inf")
      return np.ascontiguousarray(a.astype(np_dtype, copy=False))

    sharding = sharding_fn(p.logical_axes, p.shape) if sharding_fn else None
    if sharding is None:
      values[p.path] = jnp.asarray(read())
    else:
      values[p.path] = jax.make_array_from_callback(p.shape, sharding, read, dtype=np_dtype)

  pure = {}
  for dotted, value in values.items():
    node = pure
    *parents, leaf = dotted.split(".")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  nnx.replace_by_pure_dict(abstract_state, pure)
  return nnx.merge(graphdef, abstract_state)


def load_tokenizer(path: str | os.PathLike):
  """An HF tokenizer from a local directory (never the network)."""
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory {path!r} does not exist")
  try:
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot load a tokenizer from this directory ({e})") from None

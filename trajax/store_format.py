"""The result store's files: names, the fields of its JSON, and their checked reads.

`trajax.store` writes and reads the store through these; each check names the
file and the field at fault, so a damaged store is reported, never misread.
"""
from __future__ import annotations

import builtins
import json
import os

import numpy as np
import tensorstore as ts

PENDING, DONE, FAILED = 0, 1, 2
VALIDATION = "validation"  # the validation dataset's folder in the store
# Largest chunk of a logprobs row, in float32 values (64 MiB).
MAX_CHUNK_VALUES = 16 * 2**20


def _int(v, lo: int = 0) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _strs(v) -> bool:
  return isinstance(v, list) and all(isinstance(x, str) for x in v)


# field: (check, what is expected, required); the store's own files, checked on every reopen.
DATASET_FIELDS = {
    "dataset_hash": (lambda v: isinstance(v, str), "a string", True),
    "tokenizer_hash": (lambda v: isinstance(v, str), "a string", True),
    "block_shape": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_int, v)),
                    "[rows, block_len], two integers >= 0", True),
    "documents": (_strs, "a list of document names", False),
    "n_predictions": (_int, "an integer >= 0", False),
    "tokenizer_path": (lambda v: isinstance(v, str), "the tokenizer directory used", False),
    # Validation only: {subset name: [first row, end row)} over the dataset's blocks.
    "subsets": (lambda v: isinstance(v, dict) and all(
        isinstance(r, list) and len(r) == 2 and all(map(_int, r)) and r[0] < r[1]
        for r in v.values()), "an object {subset: [first row, end row]}", False),
}
META_FIELDS = {
    "steps": (lambda v: isinstance(v, list) and all(map(_int, v)),
              "a list of checkpoint steps (integers >= 0)", True),
    "tokens_per_step": (lambda v: _int(v, 1), "an integer >= 1", True),
    "params": (lambda v: v is None or _int(v, 1), "a positive integer or null", False),
    "paths": (_strs, "a list of checkpoint paths", False),
    "architecture":
        (lambda v: isinstance(v, dict) and isinstance(v.get("family"), str) and isinstance(
            v.get("config"), dict), "an object with 'family' and 'config'", False),
    "param_count": (lambda v: _int(v, 1), "a positive integer", False),
    "flops_params": (lambda v: _int(v, 1), "a positive integer", False),
    "seq_len": (lambda v: _int(v, 1), "a positive integer", False),
    "flops": (lambda v: isinstance(v, dict) and all(
        isinstance(x, list) and all(isinstance(f, (int, float)) for f in x) for x in v.values()),
              "an object {method: [FLOPs per checkpoint]}", False),
}
# Fields of meta.json derived from the manifest and config.json: refreshed on reopen.
DERIVED_FIELDS = ("params", "paths", "param_count", "flops_params", "seq_len", "flops")


def read_json(path: str, fields: dict | None = None) -> dict:
  """The JSON object in `path` with its `fields` checked; damage is a ValueError naming it."""
  try:
    with builtins.open(path, "rb") as f:
      obj = json.loads(f.read())
  except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, too-long integers, deep nesting
    raise ValueError(f"{path}: not valid JSON ({e}); this store's metadata is damaged: restore "
                     f"the file or use a new workdir") from None
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a JSON object, found {type(obj).__name__}")
  for key, (check, expected, required) in (fields or {}).items():
    if key not in obj:
      if required:
        raise ValueError(f"{path}: missing field {key!r} ({expected})")
    elif not check(obj[key]):
      raise ValueError(f"{path}: field {key!r} is {obj[key]!r}; expected {expected}")
  return obj


def check_model(meta_path: str, meta: dict, done: ts.TensorStore) -> None:
  """A model's meta.json (read with META_FIELDS) against its `done` array."""
  n = len(meta["steps"])
  if "paths" in meta and len(meta["paths"]) != n:
    raise ValueError(f"{meta_path}: {len(meta['paths'])} paths for {n} steps")
  for method, flops_c in meta.get("flops", {}).items():
    if len(flops_c) != n:
      raise ValueError(f"{meta_path}: {len(flops_c)} {method} FLOPs for {n} steps")
  if tuple(done.shape) != (n,):
    raise ValueError(f"{meta_path}: {n} steps, but the model's done array has shape "
                     f"{list(done.shape)}; the store is damaged: use a new workdir")


def zarr(path: str, dtype: str, shape, chunks, fill, create: bool):
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": path}}
  if not create:
    return ts.open(spec, open=True).result()
  spec["metadata"] = {
      "dtype": dtype, "shape": list(shape), "chunks": list(chunks), "fill_value": fill,
      "compressor": None
  }
  return ts.open(spec, create=True, open=True).result()


def read_dataset(root: str) -> tuple[dict, np.ndarray, np.ndarray]:
  """(dataset.json, tokens, mask) of a dataset folder, every field and shape checked."""
  meta_path = os.path.join(root, "dataset.json")
  dataset = read_json(meta_path, DATASET_FIELDS)
  shape = tuple(dataset["block_shape"])
  if "documents" in dataset and len(dataset["documents"]) != shape[0]:
    raise ValueError(f"{meta_path}: {len(dataset['documents'])} documents for "
                     f"block_shape {list(shape)}")
  tokens_path = os.path.join(root, "tokens.npz")
  try:
    with np.load(tokens_path) as blocks:
      tokens, mask = blocks["tokens"], blocks["mask"]
  except FileNotFoundError:
    raise FileNotFoundError(f"{tokens_path}: missing; the store is damaged: use a new "
                            f"workdir") from None
  except Exception as e:  # noqa: BLE001  np.load raises BadZipFile, EOFError, KeyError...
    raise ValueError(f"{tokens_path}: cannot be read ({type(e).__name__}: {e}); the store is "
                     f"damaged: use a new workdir") from None
  if (tokens.shape != shape or mask.shape != shape or tokens.dtype.kind not in "iu" or
      mask.dtype != bool):
    raise ValueError(f"{tokens_path}: tokens {tokens.dtype}{list(tokens.shape)} and "
                     f"mask {mask.dtype}{list(mask.shape)}, expected integer tokens "
                     f"and a bool mask of block_shape {list(shape)} from {meta_path}")
  return dataset, tokens, mask

"""Reading and writing safetensors files without executing anything.

The format is an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}}, then raw little-endian bytes. Reading
memory-maps the file and returns zero-copy views, so a caller can read one
layer (or one shard of one layer) without touching the rest. Every offset is
checked against the file size first: a truncated file is an error naming the
file and the tensor, never garbage.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

from trajax import atomic

DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20


class SafetensorsFile:
  """A memory-mapped safetensors file: `keys()`, `shape(k)`, `dtype(k)`, `read(k)`."""
  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    size = os.path.getsize(self.path)
    with open(self.path, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise ValueError(f"{self.path}: not a safetensors file (only {size} bytes, no header)")
      (n,) = struct.unpack("<Q", raw)
      if n > _MAX_HEADER or 8 + n > size:
        raise ValueError(f"{self.path}: header length {n} does not fit in the file "
                         f"({size} bytes): truncated or not a safetensors file")
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{self.path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
      raise ValueError(f"{self.path}: safetensors header is not a JSON object")
    self.metadata = header.pop("__metadata__", None) or {}
    self._data_start = 8 + n
    data_size = size - self._data_start
    self._entries = {}
    for name, entry in header.items():
      try:
        dtype = DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
      except (KeyError, TypeError, ValueError):
        raise ValueError(f"{self.path}: tensor {name!r} has a malformed header entry {entry!r}; "
                         f"expected dtype in {sorted(DTYPES)}, shape and data_offsets") from None
      if any(d < 0 for d in shape) or not 0 <= begin <= end:
        raise ValueError(f"{self.path}: tensor {name!r} has negative sizes or offsets "
                         f"(shape {list(shape)}, data_offsets [{begin}, {end}])")
      nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
      if end - begin != nbytes:
        raise ValueError(f"{self.path}: tensor {name!r} spans {end - begin} bytes but "
                         f"{entry['dtype']}{list(shape)} needs {nbytes}")
      if end > data_size:
        raise ValueError(f"{self.path}: truncated: tensor {name!r} ends at byte {end} of the data "
                         f"section but the file holds only {data_size} data bytes")
      self._entries[name] = (dtype, shape, begin)
    self._mmap = None

  def keys(self):
    return list(self._entries)

  def __contains__(self, name):
    return name in self._entries

  def shape(self, name: str) -> tuple[int, ...]:
    return self._entries[name][1]

  def dtype(self, name: str) -> np.dtype:
    return self._entries[name][0]

  def read(self, name: str) -> np.ndarray:
    """A read-only zero-copy view of tensor `name`."""
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    dtype, shape, begin = self._entries[name]
    start = self._data_start + begin
    count = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(self._mmap, dtype=dtype, count=count, offset=start).reshape(shape)


def save(tensors: Mapping[str, np.ndarray], path: str | os.PathLike,
         metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` as safetensors atomically (temp file, fsync, rename)."""
  path = os.fspath(path)
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    a = np.ascontiguousarray(tensors[name])
    if a.dtype not in _NAMES:
      raise ValueError(f"{path}: tensor {name!r} has dtype {a.dtype}, not one safetensors stores")
    header[name] = {
        "dtype": _NAMES[a.dtype], "shape": list(a.shape),
        "data_offsets": [offset, offset + a.nbytes]
    }
    offset += a.nbytes
    arrays.append(a)
  if metadata:
    header["__metadata__"] = dict(metadata)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # keep the data section 8-byte aligned
  with atomic.atomic_open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for a in arrays:
      f.write(a.tobytes())

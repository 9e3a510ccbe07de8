"""The checkpoint stream: every stage reads a trajectory's checkpoints through here.

Scoring (`trajax.sweep`), the ICL study and the decoding study each walk a list
of checkpoints and do some work with each. `CheckpointStream` gives them one
policy for that walk:

  * any checkpoint directory `trajax.checkpoints.load` reads (HF or converted);
  * on a device mesh when `mesh_shape` is given (parameters sharded by their
    logical axes, batches over `data`), on the default device otherwise;
  * the next checkpoint read in a background thread while this one is used, so
    a walk's wall time approaches max(read, compute) rather than their sum;
  * one compiled scorer per architecture: the next checkpoint of the same
    architecture is a `Scorer.set_state`, never a recompilation.

A checkpoint that cannot be read comes out as a `Loaded` with `error` set, so
the caller decides whether to stop or to mark it failed and go on.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import Iterator, Sequence

import jax.numpy as jnp

from trajax import checkpoints, sharding
from trajax.scoring import Scorer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def dtype_of(name: str):
  """The jnp dtype of a config's `dtype` field; an unknown name lists the choices."""
  if name not in DTYPES:
    raise ValueError(f"dtype {name!r}: expected one of {sorted(DTYPES)}")
  return DTYPES[name]


@dataclasses.dataclass
class Loaded:
  """One checkpoint out of the stream.

  Attributes:
    key: what the caller passed with the path (e.g. (model name, index)).
    path: the checkpoint directory.
    model: the loaded model, or None when `error` is set.
    error: the OSError/ValueError reading raised, or None.
    read_s: seconds spent reading (in the reading thread).
    wait_s: seconds the caller waited for it (0 when the prefetch hid the read).
  """
  key: object
  path: str
  model: object
  error: Exception | None
  read_s: float
  wait_s: float

  @property
  def read_bytes(self) -> int:
    return checkpoints.dir_bytes(self.path)


class CheckpointStream:
  """Loads checkpoints in order, with prefetch, on an optional mesh (see module doc).

  Args:
    dtype: parameter dtype name ("float32" or "bfloat16").
    mesh_shape: "" for no mesh, else a (data, fsdp, tensor) shape as
      `trajax.sharding.make_mesh` takes ("8,1,1", "-1,2,1", ...).
    prefetch: read checkpoint k+1 while k is used (False: read each only when
      asked for, the sequential baseline benchmarks compare against).
    head_chunk_tokens: the scorers' head chunk (0: the backend's default).
  """
  def __init__(self, dtype: str = "float32", mesh_shape: str | Sequence[int] = "",
               prefetch: bool = True, head_chunk_tokens: int = 0):
    self.dtype_name = dtype
    self.dtype = dtype_of(dtype)
    self.mesh = sharding.make_mesh(mesh_shape) if mesh_shape else None
    self.sharding_fn = sharding.param_sharding_fn(self.mesh) if self.mesh is not None else None
    self.prefetch = prefetch
    self.head_chunk_tokens = head_chunk_tokens
    self._scorers: dict = {}

  @property
  def data_parallel(self) -> int:
    """Rows of a batch must be a multiple of this (the mesh's data axis; 1 without a mesh)."""
    return 1 if self.mesh is None else int(self.mesh.shape["data"])

  def load(self, path: str):
    """One checkpoint, now, with this stream's dtype and shardings."""
    return checkpoints.load(path, dtype=self.dtype, sharding_fn=self.sharding_fn)

  def _read(self, key, path: str) -> Loaded:
    t0 = time.perf_counter()
    try:
      model, error = self.load(path), None
    except (OSError, ValueError) as e:
      model, error = None, e
    return Loaded(key, path, model, error, time.perf_counter() - t0, 0.0)

  def _start_read(self, pool, key, path: str) -> concurrent.futures.Future:
    """Asks the reading thread for a checkpoint (called in the caller's thread, in order)."""
    return pool.submit(self._read, key, path)

  def iterate(self, items: Sequence[tuple[object, str]]) -> Iterator[Loaded]:
    """Yields a `Loaded` per (key, path) in order; the next is read while the caller works.

    The caller should drop its reference to `loaded.model` (e.g. after
    `scorer(loaded.model)`) before asking for the next, so at most two
    checkpoints are in memory.
    """
    items = list(items)
    if not items:
      return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      submit = lambda k: self._start_read(pool, *items[k])
      future = submit(0)
      for k in range(len(items)):
        t_wait = time.perf_counter()
        current = future if future is not None else submit(k)
        future = submit(k + 1) if self.prefetch and k + 1 < len(items) else None
        loaded = current.result()
        loaded.wait_s = time.perf_counter() - t_wait
        yield loaded
        del loaded, current

  def scorer(self, model) -> Scorer:
    """The scorer of `model`'s architecture, holding `model`'s weights.

    The first checkpoint of an architecture compiles; every later one of the
    same architecture only swaps the weights in.
    """
    key = (model.config, self.dtype_name)
    scorer = self._scorers.get(key)
    if scorer is None:
      scorer = self._scorers[key] = Scorer(model, head_chunk_tokens=self.head_chunk_tokens,
                                           mesh=self.mesh)
    else:
      scorer.set_state(model)
    return scorer

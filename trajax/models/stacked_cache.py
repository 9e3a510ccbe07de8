"""The cached (decoding) layer stack on a CPU: no copy of weights or caches per step.

XLA:CPU's dots and copies take no offset into a buffer: a layer's slice of the stacked
weights [layers, ...] or of the KVCache [layers, batch, slots, heads, dim] is copied
before use, whether the index is dynamic (`lax.scan`) or static, and XLA does not hoist
loop-invariant slices out of a `while` loop. A decoding step of `lax.scan` over layers
thus copied every layer's weights and caches, which took about 2/3 of a step at batch 32
(docs/PERFORMANCE.md). On a CPU `layers.scan_layers` therefore runs `unrolled`:
  * the layers as a Python loop (static indices);
  * the cache a decoding loop carries as one array per layer (`split_layers`): each layer's
    keys/values are written into its own array in place and attention reads that array
    as it is. A stacked [layers, ...] cache carried through the loop (written in place
    into the stack, read as a layer's static slice: `StackedLayerCache`, still what a
    single call on a stacked cache uses) cost XLA four copies of the whole stack and one of
    every layer's slice per step: about 30% of a batch-32 step (bench/decode_bench.py,
    docs/PERFORMANCE.md);
  * the weight slices taken once per stacked module inside `hoisted_slices(table, ...)`:
    `decoding` records them during the prefill, outside its `while_loop`, and the loop body
    reuses them, so they are loop invariants instead of per-step copies (one copy of the
    layer weights per `generate` call).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

import jax
from flax import nnx


class StackedLayerCache(NamedTuple):
  """Layer `layer`'s keys and values inside the whole [layers, ...] cache arrays."""
  k_lbshd: jax.Array
  v_lbshd: jax.Array
  layer: int


def write(view: StackedLayerCache, k_bthd, v_bthd, cache_index):
  """`layers.write_cache` for a view: the block written into the stack at (layer, slot)."""
  k_lbshd, v_lbshd, i = view
  start = (i, 0, cache_index, 0, 0)
  k_lbshd = jax.lax.dynamic_update_slice(k_lbshd, k_bthd[None].astype(k_lbshd.dtype), start)
  v_lbshd = jax.lax.dynamic_update_slice(v_lbshd, v_bthd[None].astype(v_lbshd.dtype), start)
  return k_lbshd[i], v_lbshd[i], StackedLayerCache(k_lbshd, v_lbshd, i)


class _Hoisted(NamedTuple):
  table: dict
  record: bool


_HOISTED: contextvars.ContextVar[_Hoisted | None] = contextvars.ContextVar(
    "trajax_hoisted", default=None)


@contextlib.contextmanager
def hoisted_slices(table: dict, record: bool):
  """Within it, `unrolled` takes per-layer weight slices from `table`.

  Args:
    table: a dict owned by the caller for one trace (keys: the identities of a stacked
      module's arrays, which `table` keeps alive).
    record: store the slices taken on a miss. Record only at the trace level where the
      slices may be used later (outside the loop whose body will reuse them).
  """
  token = _HOISTED.set(_Hoisted(table, record))
  try:
    yield table
  finally:
    _HOISTED.reset(token)


def layer_states(state, n: int):
  """The per-layer slices [state[i] for i < n] of a stacked module's state (hoisted if recorded)."""
  leaves, treedef = jax.tree.flatten(state)
  key = tuple(id(a) for a in leaves)
  ctx = _HOISTED.get()
  if ctx is not None and key in ctx.table:
    return ctx.table[key][1]
  states = [jax.tree.unflatten(treedef, [a[i] for a in leaves]) for i in range(n)]
  if ctx is not None and ctx.record:
    ctx.table[key] = (leaves, states)  # the leaves stay alive: their ids stay unique
  return states


def split_layers(kv_cache):
  """The cache as one [batch, slots, heads, dim] array per layer (a tuple of keys, one of values).

  What a decoding loop should carry on a CPU: `unrolled` then updates each layer's array in
  place and attention reads it as it is.
  """
  return type(kv_cache)(*(tuple(x[i] for i in range(x.shape[0])) for x in kv_cache))


def unrolled(graphdef, state, x, kv_cache, call, per_layer):
  """`layers.scan_layers` with a cache, as a Python loop over layers (see the module doc).

  Returns (output of the last layer, the updated (k_lbshd, v_lbshd)): arrays, or tuples of
  per-layer arrays as given.
  """
  k_lbshd, v_lbshd = kv_cache
  split = isinstance(k_lbshd, tuple)  # one array per layer (`split_layers`)
  if split:
    k_lbshd, v_lbshd = list(k_lbshd), list(v_lbshd)
  for i, state_i in enumerate(layer_states(state, len(k_lbshd))):
    extra_i = None if per_layer is None else jax.tree.map(lambda a, i=i: a[i], per_layer)
    kv = (k_lbshd[i], v_lbshd[i]) if split else StackedLayerCache(k_lbshd, v_lbshd, i)
    x, kv = call(nnx.merge(graphdef, state_i), x, extra_i, kv)
    if split:  # this layer's arrays, updated in place
      k_lbshd[i], v_lbshd[i] = kv
    else:
      k_lbshd, v_lbshd = kv.k_lbshd, kv.v_lbshd
  return x, ((tuple(k_lbshd), tuple(v_lbshd)) if split else (k_lbshd, v_lbshd))

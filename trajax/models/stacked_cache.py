"""The cached (decoding) layer stack on a CPU: no copy of weights or caches per step.

XLA:CPU's dots and copies take no offset into a buffer: a layer's slice of the stacked
weights [layers, ...] or of the KVCache [layers, batch, slots, heads, dim] is copied
before use, whether the index is dynamic (`lax.scan`) or static, and XLA does not hoist
loop-invariant slices out of a `while` loop. A decoding step of `lax.scan` over layers
thus copied every layer's weights and caches, which took about 2/3 of a step at batch 32
(docs/PERFORMANCE.md). On a CPU `layers.scan_layers` therefore runs `unrolled`:
  * the layers as a Python loop (static indices);
  * each layer's cache as a `StackedLayerCache` view: `layers.write_cache` writes the new
    keys/values into the whole stack in place and attention reads the layer's static slice,
    which XLA fuses into the attention's reductions (`flash.single_query`) uncopied;
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


def unrolled(graphdef, state, x, kv_cache, call, per_layer):
  """`layers.scan_layers` with a cache, as a Python loop over layers (see the module doc).

  Returns (output of the last layer, the updated (k_lbshd, v_lbshd)).
  """
  k_lbshd, v_lbshd = kv_cache
  n = k_lbshd.shape[0]
  for i, state_i in enumerate(layer_states(state, n)):
    extra_i = None if per_layer is None else jax.tree.map(lambda a, i=i: a[i], per_layer)
    x, view = call(nnx.merge(graphdef, state_i), x, extra_i, StackedLayerCache(k_lbshd, v_lbshd, i))
    k_lbshd, v_lbshd = view.k_lbshd, view.v_lbshd
  return x, (k_lbshd, v_lbshd)

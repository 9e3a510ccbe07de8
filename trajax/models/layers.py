"""Building blocks shared by every model family.

Every parameter carries `logical_axes` metadata (one name per array axis) that
`trajax.sharding` maps to mesh axes. Parameters of the repeated decoder layer
are stacked along a leading `layers` axis so the layer stack runs as one
`lax.scan`: compile time does not grow with depth (OPT-175b has 96 layers).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from trajax.models import stacked_cache
from trajax.models import flash
from trajax.models.flash import ATTENTION_QUERY_BLOCK, causal_flash, causal_rows, single_query  # noqa: F401

LAYERS = "layers"


class KVCache(NamedTuple):
  """Keys and values of every layer, [layers, batch, max_len, heads, head_dim].

  A CPU decoding loop carries it as tuples of per-layer [batch, max_len, heads, head_dim]
  arrays instead (`stacked_cache.split_layers`), which `scan_layers` updates in place.
  """
  k_lbshd: jax.Array
  v_lbshd: jax.Array


class SharedPrefix(NamedTuple):
  """A read-only cache of E prefixes that R query rows attend to (row r: prefix `rows_r[r]`).

  Keys and values [layers, E, max_len, heads, head_dim]; the slots from the
  block's `cache_index` on are where each row's own block goes. Passed as a
  `forward_cached` cache, the rows share the prefixes without an [R, max_len]
  copy of every layer: each layer gathers its rows' prefixes as it runs, writes
  the row's block after them, and forgets both (the returned cache is unchanged).
  """
  k_lbshd: jax.Array
  v_lbshd: jax.Array
  rows_r: jax.Array


class _SharedLayer(NamedTuple):
  k_ebshd: jax.Array
  v_ebshd: jax.Array
  rows_r: jax.Array


def scan_layers(layers: nnx.Module, x, kv_cache: KVCache | SharedPrefix | None, call,
                per_layer=None):
  """Runs the stacked decoder layers over `x` in one `lax.scan`.

  Args:
    layers: the module whose parameters are stacked on a leading `layers` axis.
    x: [batch, length, dim] input of the first layer.
    kv_cache: a KVCache to read and update in place, or None.
    call: (layer, h, per_layer_i, kv) -> (h, kv); `kv` is this layer's cache, for
      `write_cache` ((k_bshd, v_bshd), or on a CPU a `stacked_cache.StackedLayerCache`
      view), or None without a cache.
    per_layer: optional pytree of [layers, ...] arrays scanned alongside
      (e.g. GPT-Neo's window per layer).
  Returns:
    (output of the last layer, the updated KVCache or None).
  """
  graphdef, state = nnx.split(layers)
  if kv_cache is None:

    def body(h, xs):
      state_i, extra_i = xs
      h, _ = call(nnx.merge(graphdef, state_i), h, extra_i, None)
      return h, None

    x, _ = jax.lax.scan(body, x, (state, per_layer))
    return x, None

  if isinstance(kv_cache, SharedPrefix):  # read-only: scanned as an input, not carried

    def body_shared(h, xs):
      state_i, extra_i, k_ebshd, v_ebshd = xs
      h, _ = call(nnx.merge(graphdef, state_i), h, extra_i,
                  _SharedLayer(k_ebshd, v_ebshd, kv_cache.rows_r))
      return h, None

    x, _ = jax.lax.scan(body_shared, x, (state, per_layer, kv_cache.k_lbshd, kv_cache.v_lbshd))
    return x, kv_cache

  def body_cached(carry, xs):
    h, k_lbshd, v_lbshd = carry
    state_i, extra_i, i = xs
    h, (k_bshd, v_bshd) = call(nnx.merge(graphdef, state_i), h, extra_i, (k_lbshd[i], v_lbshd[i]))
    k_lbshd = jax.lax.dynamic_update_index_in_dim(k_lbshd, k_bshd, i, 0)
    v_lbshd = jax.lax.dynamic_update_index_in_dim(v_lbshd, v_bshd, i, 0)
    return (h, k_lbshd, v_lbshd), None

  if jax.default_backend() == "cpu":  # no per-step copies of weights and caches
    x, (k, v) = stacked_cache.unrolled(graphdef, state, x, kv_cache, call, per_layer)
    return x, KVCache(k, v)
  n = kv_cache.k_lbshd.shape[0]
  (x, k, v), _ = jax.lax.scan(body_cached, (x, kv_cache.k_lbshd, kv_cache.v_lbshd),
                              (state, per_layer, jnp.arange(n)))
  return x, KVCache(k, v)


def write_cache(kv_cache, k_bthd, v_bthd, cache_index):
  """Writes a block's keys/values at slot `cache_index` of one layer's cache.

  Returns (keys to attend to, values to attend to, updated (k, v) cache). With
  no cache (`kv_cache=None`) the block attends to itself only; with a layer of a
  `SharedPrefix`, to its row's prefix and itself, and the cache is returned as is.
  """
  if kv_cache is None:
    return k_bthd, v_bthd, None
  if isinstance(kv_cache, stacked_cache.StackedLayerCache):
    return stacked_cache.write(kv_cache, k_bthd, v_bthd, cache_index)
  if isinstance(kv_cache, _SharedLayer):  # this layer's prefixes, one per row, then the block
    k_bshd, v_bshd = (jnp.take(x, kv_cache.rows_r, axis=0) for x in kv_cache[:2])
    start = (0, cache_index, 0, 0)
    return (jax.lax.dynamic_update_slice(k_bshd, k_bthd.astype(k_bshd.dtype), start),
            jax.lax.dynamic_update_slice(v_bshd, v_bthd.astype(v_bshd.dtype), start), kv_cache)
  k_bshd, v_bshd = kv_cache
  start = (0, cache_index, 0, 0)
  k_bshd = jax.lax.dynamic_update_slice(k_bshd, k_bthd.astype(k_bshd.dtype), start)
  v_bshd = jax.lax.dynamic_update_slice(v_bshd, v_bthd.astype(v_bshd.dtype), start)
  return k_bshd, v_bshd, (k_bshd, v_bshd)


class CausalLM(nnx.Module):
  """What every family's *ForCausalLM shares; a family defines `layer_stack` (its
  embeddings, layers and final norm without a cache), `head_matrix` and `cache_dims`
  (layers, heads, head_dim); OPT overrides `positions`."""

  # Position given to padding: HF OPT uses -1 (its table has a row for it), others 0.
  PAD_POSITION = 0

  @staticmethod
  def positions(mask_bt):
    """Real tokens of each row numbered from 0 (left padding skipped); padding gets 0."""
    mask = mask_bt.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)

  def segments_and_positions(self, tokens_bt, mask_bt=None, segment_ids_bt=None):
    """(segment ids, positions) of a padded (`mask_bt`) or packed (`segment_ids_bt`) batch.

    A padded row is one segment (ids = mask) with the family's own positions;
    packed rows restart positions at 0 in every segment.
    """
    if segment_ids_bt is None:
      mask_bt = jnp.ones(tokens_bt.shape, bool) if mask_bt is None else mask_bt.astype(bool)
      return mask_bt.astype(jnp.int32), self.positions(mask_bt)
    positions_bt = segment_positions(segment_ids_bt)
    return segment_ids_bt, jnp.where(positions_bt < 0, self.PAD_POSITION, positions_bt)

  def hidden_states(self, tokens_bt, mask_bt=None, segment_ids_bt=None):
    """Final hidden states [batch, length, hidden] of a padded or packed batch.

    Args:
      tokens_bt: [batch, length] ids.
      mask_bt: [batch, length] bool, True for real tokens (left or right padding).
      segment_ids_bt: instead of a mask, packed rows: [batch, length] int, one id
        per sequence (1, 2, ...), 0 for padding; each sequence attends only to
        itself and its positions restart at 0 (`trajax.packing`).
    """
    segment_ids_bt, positions_bt = self.segments_and_positions(tokens_bt, mask_bt, segment_ids_bt)
    return self.layer_stack(tokens_bt, positions_bt, segment_mask(segment_ids_bt), segment_ids_bt)

  def __call__(self, tokens_bt, mask_bt=None):
    """Full logits [batch, length, vocab] in float32 (tests and training only)."""
    h = self.hidden_states(tokens_bt, mask_bt)
    w = self.head_matrix()
    return jnp.einsum("btd,vd->btv", h, w.astype(h.dtype), preferred_element_type=jnp.float32)

  @staticmethod
  def cached_block_mask(length: int, key_valid_bs, cache_index):
    """Mask [batch, 1, length, max_len] of `length` tokens written at `cache_index`."""
    return causal_mask(cache_index + jnp.arange(length), jnp.arange(key_valid_bs.shape[1]),
                       key_valid_bs)

  def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens (default: param dtype)."""
    layers, heads, head_dim = self.cache_dims()
    dtype = dtype or self.head_matrix().dtype
    shape = (layers, batch, max_len, heads, head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def stacked_param(rngs: nnx.Rngs | None, init, shape: Sequence[int], axes: Sequence[str | None],
                  dtype, num_stacked: int | None) -> nnx.Param:
  """A parameter of `shape`, with a leading `num_stacked` axis if given.

  `rngs=None` initialises deterministically (zeros/ones only), which is what
  `jax.eval_shape` and checkpoint loading need: the values are replaced anyway.
  """
  lead = (num_stacked,) if num_stacked else ()
  lead_axes = (LAYERS,) if num_stacked else ()
  full_shape = lead + tuple(shape)
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(init(key, full_shape, dtype), logical_axes=lead_axes + tuple(axes))


def normal(std: float):
  return jax.nn.initializers.normal(std)


zeros = jax.nn.initializers.zeros
ones = jax.nn.initializers.ones


class Linear(nnx.Module):
  """y = x @ kernel + bias, kernel [in, out] (Hugging Face stores [out, in])."""
  def __init__(self, in_features: int, out_features: int, *, axes: tuple[str | None, str | None],
               use_bias: bool, dtype, rngs: nnx.Rngs | None, init_std: float = 0.02,
               num_stacked: int | None = None):
    self.kernel = stacked_param(rngs, normal(init_std), (in_features, out_features), axes, dtype,
                                num_stacked)
    self.bias = (stacked_param(rngs, zeros,
                               (out_features,), axes[1:], dtype, num_stacked) if use_bias else None)

  def __call__(self, x):
    kernel = self.kernel[...]
    y = jnp.einsum("...i,io->...o", x.astype(kernel.dtype), kernel)
    if self.bias is not None:
      y = y + self.bias[...]
    return y


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 whatever the parameter dtype, cast back after.

  `elementwise_affine=False` has no parameters, as torch.nn.LayerNorm.
  """
  def __init__(self, features: int, *, elementwise_affine: bool, dtype, eps: float = 1e-5,
               num_stacked: int | None = None, axis_name: str = "embed"):
    self.eps = eps
    if elementwise_affine:
      self.scale = stacked_param(None, ones, (features,), (axis_name,), dtype, num_stacked)
      self.bias = stacked_param(None, zeros, (features,), (axis_name,), dtype, num_stacked)
    else:
      self.scale = None
      self.bias = None

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    if self.scale is not None:
      y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


class Embed(nnx.Module):
  """A lookup table [num_embeddings, features]; also the tied output head."""
  def __init__(self, num_embeddings: int, features: int, *, axes: tuple[str, str], dtype,
               rngs: nnx.Rngs | None, init_std: float = 0.02):
    self.embedding = stacked_param(rngs, normal(init_std), (num_embeddings, features), axes, dtype,
                                   None)

  def __call__(self, ids):
    return jnp.take(self.embedding[...], ids, axis=0)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def activation(name: str):
  if name not in ACTIVATIONS:
    raise ValueError(f"activation_function {name!r} is not supported; expected one of "
                     f"{sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def causal_mask(query_slot_t: jax.Array, key_slot_s: jax.Array, key_valid_bs: jax.Array):
  """Boolean attention mask [batch, 1, T, S]: key s is visible to query t.

  Slots are indices into the (cached) sequence; a key is visible when it is a
  real token (not padding, not an unwritten cache slot) at or before the query.
  """
  visible = key_slot_s[None, None, :] <= query_slot_t[None, :, None]
  visible = visible & key_valid_bs[:, None, :]
  return visible[:, None, :, :]


def segment_mask(segment_ids_bt: jax.Array):
  """Causal mask [batch, 1, T, T] of packed rows: a key is visible to a query at or
  after it in the same segment, or in the prompt of the query's prefix tree
  (`flash.segments_visible`). Segment 0 is padding (sees and is seen by nothing).

  An unpacked row is the special case segment_ids = mask (1 for real tokens),
  where this equals `causal_mask(slots, slots, mask)` for every real query.
  """
  t = segment_ids_bt.shape[1]
  slots = jnp.arange(t)
  seg_bt = segment_ids_bt.astype(jnp.int32)
  same = flash.segments_visible(seg_bt[:, :, None], seg_bt[:, None, :])
  visible = same & (slots[None, :] <= slots[:, None])[None]
  return visible[:, None, :, :]


def segment_positions(segment_ids_bt: jax.Array):
  """Position of each token within its segment (0, 1, ...); padding gets -1."""
  t = segment_ids_bt.shape[1]
  slots = jnp.arange(t)[None, :]
  prev = jnp.pad(segment_ids_bt[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  start = jax.lax.cummax(jnp.where(segment_ids_bt != prev, slots, 0), axis=1)
  return jnp.where(segment_ids_bt > 0, slots - start, -1)


def attention(q_bthd, k_bshd, v_bshd, mask_b1ts, implementation: str | None = None,
              query_block: int = ATTENTION_QUERY_BLOCK, causal_segments_bt=None):
  """Softmax attention; q is pre-scaled (OPT scales q after its bias).

  `implementation=None` on CPU with one query (a decoding step): `single_query`.
  `implementation=None` on CPU with sequences longer than `query_block`:
    * `causal_segments_bt` given (no cache: query t is key slot t and the mask
      is `segment_mask(causal_segments_bt)`): each query block against the keys
      at or before it, about half the work of full attention: in one dot per
      block up to `ROWS_MAX_BLOCKS` blocks (`causal_rows`), else flash attention
      with an online softmax and O(block^2) score memory (`causal_flash`).
    * otherwise: blocks of `query_block` queries, each against every key.
  `"cudnn"` or `"xla"` go to `jax.nn.dot_product_attention` with the mask; without
  a cache (`causal_segments_bt` given) also with `is_causal=True`, which changes
  nothing in the result (the mask is already causal) but lets cuDNN skip the
  blocks above the diagonal instead of computing them under a -inf bias.

  Rows whose keys are all masked (padding queries) give finite garbage that
  the caller masks; they never produce NaN.
  """
  b, t, h, d = q_bthd.shape
  s = k_bshd.shape[1]
  on_cpu = implementation is None and jax.default_backend() == "cpu"
  if on_cpu and t == 1:
    return single_query(q_bthd, k_bshd, v_bshd, mask_b1ts)
  blockwise = on_cpu and t > query_block
  if not blockwise:
    return jax.nn.dot_product_attention(q_bthd, k_bshd, v_bshd, mask=mask_b1ts, scale=1.0,
                                        is_causal=causal_segments_bt is not None,
                                        implementation=implementation)
  if causal_segments_bt is not None:
    kernel = causal_rows if -(-t // query_block) <= flash.ROWS_MAX_BLOCKS else causal_flash
    return kernel(q_bthd, k_bshd, v_bshd, causal_segments_bt, query_block)
  pad = -t % query_block
  n = (t + pad) // query_block
  q = jnp.pad(q_bthd, ((0, 0), (0, pad), (0, 0), (0, 0)))
  m = jnp.pad(jnp.broadcast_to(mask_b1ts, (b, 1, t, s)), ((0, 0), (0, 0), (0, pad), (0, 0)))
  q_nbqhd = q.reshape(b, n, query_block, h, d).swapaxes(0, 1)
  m_nb1qs = m.reshape(b, 1, n, query_block, s).transpose(2, 0, 1, 3, 4)
  out = jax.lax.map(
      lambda qm: jax.nn.dot_product_attention(qm[0], k_bshd, v_bshd, mask=qm[1], scale=1.0,
                                              implementation="xla"), (q_nbqhd, m_nb1qs))
  return out.swapaxes(0, 1).reshape(b, t + pad, h, d)[:, :t]

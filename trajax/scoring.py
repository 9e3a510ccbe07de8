"""The scoring kernel: token ids -> per-token log-probs, float32.

`log p(token_i | tokens_<i)` for every position of a padded batch. The LM head
is fused with log-softmax and the gather, chunked over tokens, so the float32
[batch, length, vocab] logits tensor never exists whole (8 x 2048 x 50272 would
be 3.3 GB): peak extra memory is `head_chunk_tokens x vocab x 4` bytes.

The model is split once (`nnx.split`) and the jitted function takes
(graphdef, state): a new checkpoint of the same architecture is a new `state`
and reuses the compiled kernel with no retrace.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Rows of the [tokens, vocab] logits block computed at once, by backend. On a 2-core CPU
# 128 rows (128 x 50272 x 4 B = 26 MB) ran the head 1.4x faster than 256 and 1.6x faster
# than 1024 (the block stays in cache for the log-sum-exp); accelerators want large matmuls.
HEAD_CHUNK_TOKENS = {"cpu": 128, "gpu": 2048, "tpu": 2048}


def default_head_chunk_tokens() -> int:
  return HEAD_CHUNK_TOKENS.get(jax.default_backend(), 2048)


def fused_head_logprobs(h_nd: jax.Array, w_vd: jax.Array, targets_n: jax.Array,
                        chunk_tokens: int) -> jax.Array:
  """log_softmax(h @ w.T)[n, targets[n]] in float32, `chunk_tokens` rows at a time.

  Args:
    h_nd: [tokens, dim] final hidden states.
    w_vd: [vocab, dim] output embedding.
    targets_n: [tokens] int token ids to gather.
    chunk_tokens: rows per chunk (bounds the [chunk, vocab] float32 block).
  Returns:
    [tokens] float32 log-probs.
  """
  n, d = h_nd.shape
  chunk = max(1, min(chunk_tokens, n))
  pad = -n % chunk
  h = jnp.pad(h_nd, ((0, pad), (0, 0))).reshape(-1, chunk, d)
  t = jnp.pad(targets_n, (0, pad)).reshape(-1, chunk)

  def one_chunk(args):
    h_cd, t_c = args
    logits_cv = jnp.einsum("cd,vd->cv", h_cd, w_vd.astype(h_cd.dtype),
                           preferred_element_type=jnp.float32)
    lse_c = jax.nn.logsumexp(logits_cv, axis=-1)
    target_c = jnp.take_along_axis(logits_cv, t_c[:, None], axis=-1)[:, 0]
    return target_c - lse_c

  return jax.lax.map(one_chunk, (h, t)).reshape(-1)[:n]


@functools.partial(jax.jit, static_argnums=(0, 4))
def _score(graphdef, state, tokens_bt, segment_ids_bt, chunk_tokens):
  """Log-probs of a batch whose rows hold segments (1, 2, ...; 0 = padding).

  An ordinary padded batch is one segment per row: segment_ids = mask.
  """
  model = nnx.merge(graphdef, state)
  h_btd = model.hidden_states(tokens_bt, segment_ids_bt=segment_ids_bt)
  b, t, d = h_btd.shape
  targets = tokens_bt[:, 1:]
  lp = fused_head_logprobs(h_btd[:, :-1].reshape(-1, d), model.head_matrix(), targets.reshape(-1),
                           chunk_tokens).reshape(b, t - 1)
  # A prediction exists where the target has a previous token in its own segment.
  valid = (segment_ids_bt[:, 1:] == segment_ids_bt[:, :-1]) & (segment_ids_bt[:, 1:] > 0)
  lp = jnp.where(valid, lp, jnp.nan)
  return jnp.concatenate([jnp.full((b, 1), jnp.nan, jnp.float32), lp], axis=1)


def check_tokens(tokens_bt: np.ndarray, mask_bt: np.ndarray | None, vocab_size: int,
                 what: str = "tokens", max_positions: int | None = None,
                 segment_ids_bt: np.ndarray | None = None):
  """Validates a padded (or packed) batch on the host; returns (int32 tokens, bool mask).

  `max_positions`: the model's context (learned position tables have no row
  past it; an out-of-range gather would silently give NaN). For packed rows
  (`segment_ids_bt`) the limit applies to each segment.
  """
  tokens_bt = np.asarray(tokens_bt)
  if tokens_bt.ndim != 2 or tokens_bt.shape[1] < 1:
    raise ValueError(f"{what}: expected a [batch, length] array, got shape {tokens_bt.shape}")
  if not np.issubdtype(tokens_bt.dtype, np.integer):
    raise ValueError(f"{what}: expected integer token ids, got dtype {tokens_bt.dtype}")
  mask_bt = (np.ones(tokens_bt.shape, bool) if mask_bt is None else np.asarray(mask_bt, bool))
  if mask_bt.shape != tokens_bt.shape:
    raise ValueError(f"{what}: mask shape {mask_bt.shape} != tokens shape {tokens_bt.shape}")
  bad = mask_bt & ((tokens_bt < 0) | (tokens_bt >= vocab_size))
  if bad.any():
    b, t = np.argwhere(bad)[0]
    raise ValueError(f"{what}: token id {int(tokens_bt[b, t])} at [{b}, {t}] is outside the "
                     f"model's vocabulary [0, {vocab_size})")
  if max_positions is not None:
    if segment_ids_bt is None:
      lengths_b = mask_bt.sum(axis=1)
    else:
      lengths_b = np.array([np.bincount(r[r > 0]).max(initial=0) for r in segment_ids_bt])
    longest = int(lengths_b.max(initial=0))
    if longest > max_positions:
      row = int(lengths_b.argmax())
      raise ValueError(f"{what}: row {row} has {longest} real tokens but the model's context is "
                       f"max_position_embeddings={max_positions}; use shorter blocks")
  # Padded slots may hold anything; give the kernel a valid id there.
  return np.where(mask_bt, tokens_bt, 0).astype(np.int32), mask_bt


class Scorer:
  """A model split once; `__call__` scores batches, `set_state` swaps checkpoints.

  With a `mesh`, batches are split over its `data` axis (parameters keep the
  shardings they were loaded with, see `trajax.sharding`); across processes
  each host builds only its own rows and every host receives the full result.
  """
  def __init__(self, model, head_chunk_tokens: int = 0, mesh=None):
    """`head_chunk_tokens=0` picks the backend's default (`HEAD_CHUNK_TOKENS`)."""
    self.graphdef, self.state = nnx.split(model)
    self.config = model.config
    self.head_chunk_tokens = head_chunk_tokens or default_head_chunk_tokens()
    self.mesh = mesh

  def _to_device(self, host_bt: np.ndarray) -> jax.Array:
    if self.mesh is None:
      return jnp.asarray(host_bt)
    from trajax import sharding  # pylint: disable=g-import-not-at-top
    data = self.mesh.shape["data"]
    if host_bt.shape[0] % data:
      raise ValueError(f"batch of {host_bt.shape[0]} rows does not split over the mesh's data "
                       f"axis of size {data}; use a batch size that is a multiple of {data}")
    return jax.make_array_from_callback(host_bt.shape, sharding.batch_sharding(self.mesh),
                                        lambda index: host_bt[index])

  def set_state(self, model_or_state):
    """Next checkpoint of the same architecture (a model or its nnx.State)."""
    if isinstance(model_or_state, nnx.Module):
      graphdef, state = nnx.split(model_or_state)
      if graphdef != self.graphdef:
        raise ValueError("set_state: the new checkpoint's architecture differs from the scorer's")
      model_or_state = state
    self.state = model_or_state

  def __call__(self, tokens_bt, mask_bt=None, segment_ids_bt=None) -> np.ndarray:
    """Per-token log-probs [batch, length] float32, NaN where there is no prediction.

    Args:
      tokens_bt: [batch, length] int ids.
      mask_bt: [batch, length] bool, True for real tokens (default: all).
      segment_ids_bt: packed rows instead of a mask (`trajax.packing`): one id
        per sequence (1, 2, ...), 0 for padding; NaN at each sequence's start.
    """
    if segment_ids_bt is not None:
      segment_ids_bt = np.asarray(segment_ids_bt, np.int32)
      mask_bt = segment_ids_bt > 0
    tokens, mask = check_tokens(tokens_bt, mask_bt, self.config.vocab_size,
                                max_positions=self.config.max_position_embeddings,
                                segment_ids_bt=segment_ids_bt)
    segments = mask.astype(np.int32) if segment_ids_bt is None else segment_ids_bt
    lp = _score(self.graphdef, self.state, self._to_device(tokens), self._to_device(segments),
                self.head_chunk_tokens)
    if not lp.is_fully_addressable:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      lp = multihost_utils.process_allgather(lp, tiled=True)
    return np.asarray(lp)

  def score_blocks(self, tokens_nt, mask_nt=None, batch_size: int = 8, progress=None):
    """Scores many rows in fixed-size batches (the last one padded: one compile).

    Returns [rows, length] float32. `progress(rows_done)` is called per batch.
    """
    tokens_nt = np.asarray(tokens_nt)
    mask_nt = np.ones(tokens_nt.shape, bool) if mask_nt is None else np.asarray(mask_nt, bool)
    n = tokens_nt.shape[0]
    out = np.empty(tokens_nt.shape, np.float32)
    for start in range(0, n, batch_size):
      tok = tokens_nt[start:start + batch_size]
      msk = mask_nt[start:start + batch_size]
      rows = tok.shape[0]
      if rows < batch_size:
        tok = np.pad(tok, ((0, batch_size - rows), (0, 0)))
        msk = np.pad(msk, ((0, batch_size - rows), (0, 0)))
      out[start:start + rows] = self(tok, msk)[:rows]
      if progress is not None:
        progress(start + rows)
    return out


def token_logprobs(model, tokens_bt, mask_bt=None) -> np.ndarray:
  """log p(token_i | tokens_<i) for a padded batch.

  Args:
    model: a trajax model (e.g. from `trajax.load_hf`).
    tokens_bt: [batch, length] int token ids.
    mask_bt: [batch, length] bool, True for real tokens (default: all real).
  Returns:
    [batch, length] float32; NaN where there is no prediction (position 0,
    padding, the first real token after left padding).
  """
  return Scorer(model)(tokens_bt, mask_bt)

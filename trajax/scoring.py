"""The scoring kernel: token ids -> per-token log-probs, float32.

`log p(token_i | tokens_<i)` for every position of a padded batch. The LM head
is fused with log-softmax and the gather, chunked over tokens (and on a CPU over
the vocabulary), so the float32 [batch, length, vocab] logits tensor never exists
whole (8 x 2048 x 50272 would be 3.3 GB): peak extra memory is
`head_chunk_tokens x vocab x 4` bytes, or `head_chunk_tokens x head_vocab_chunk x 4`.

The model is split once (`nnx.split`) and the jitted function takes
(graphdef, state): a new checkpoint of the same architecture is a new `state`
and reuses the compiled kernel with no retrace.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from trajax import xla_cpu

# Rows of the [tokens, vocab] logits block computed at once, by backend. Accelerators want
# large matmuls. On a CPU the head runs vocab-chunked (`HEAD_VOCAB_CHUNK`): 2048 tokens
# against 256 vocabulary rows at a time, so the 50k x d head matrix streams once per
# 2048 tokens and a [256, 2048] float32 block (2 MiB) stays in cache for the log-sum-exp.
HEAD_CHUNK_TOKENS = {"cpu": 2048, "gpu": 2048, "tpu": 2048}
# Vocabulary rows per block of the CPU head (0: every row at once, the accelerator layout).
HEAD_VOCAB_CHUNK = {"cpu": 256}


def default_head_chunk_tokens() -> int:
  return HEAD_CHUNK_TOKENS.get(jax.default_backend(), 2048)


def default_head_vocab_chunk() -> int:
  return HEAD_VOCAB_CHUNK.get(jax.default_backend(), 0)


def fused_head_logprobs(h_nd: jax.Array, w_vd: jax.Array, targets_n: jax.Array, chunk_tokens: int,
                        vocab_chunk: int = 0) -> jax.Array:
  """log_softmax(h @ w.T)[n, targets[n]] in float32, `chunk_tokens` rows at a time.

  Args:
    h_nd: [tokens, dim] final hidden states.
    w_vd: [vocab, dim] output embedding.
    targets_n: [tokens] int token ids to gather.
    chunk_tokens: rows per chunk (bounds the [chunk, vocab] float32 block).
    vocab_chunk: 0 computes a chunk's logits over the whole vocabulary at once; > 0
      walks the vocabulary `vocab_chunk` rows at a time with a running max and sum
      (`_vocab_chunked_logsumexp`), the target's logit then taken as h . w[target].
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
    if vocab_chunk > 0:
      w_cd = jnp.take(w_vd, t_c, axis=0).astype(jnp.float32)
      target_c = jnp.einsum("cd,cd->c", h_cd.astype(jnp.float32), w_cd)
      # Both come from float32 dots, summed in different orders: keep log p <= 0.
      return jnp.minimum(target_c - _vocab_chunked_logsumexp(h_cd, w_vd, vocab_chunk), 0.0)
    logits_cv = jnp.einsum("cd,vd->cv", h_cd, w_vd.astype(h_cd.dtype),
                           preferred_element_type=jnp.float32)
    lse_c = jax.nn.logsumexp(logits_cv, axis=-1)
    target_c = jnp.take_along_axis(logits_cv, t_c[:, None], axis=-1)[:, 0]
    return target_c - lse_c

  return jax.lax.map(one_chunk, (h, t)).reshape(-1)[:n]


# Row groups of the decoding head on a CPU (`prepare_head`); 0 elsewhere.
HEAD_ROW_GROUPS = {"cpu": 32}


def prepare_head(w_vd: jax.Array, groups: int | None = None) -> jax.Array:
  """The head matrix in the layout `head_logits` reads: [groups, rows / groups, dim].

  On a CPU (`groups` > 0, default `HEAD_ROW_GROUPS`) the rows are padded to a multiple of
  `groups` and split into that many groups: XLA:CPU's Eigen path then runs the decoding
  head [batch, dim] x [vocab, dim] as a batched GEMM (about PyTorch's speed), where either
  2-D layout ran 10-20x slower at batch 32 and a loop over row blocks copied each block.
  Call it once outside a decoding loop: the padding is a copy of the matrix.
  Elsewhere ([vocab, dim] returned as it is) the head is one dot.
  """
  groups = HEAD_ROW_GROUPS.get(jax.default_backend(), 0) if groups is None else groups
  if groups <= 0:
    return w_vd
  v, d = w_vd.shape
  pad = -v % groups
  if pad:
    w_vd = jnp.pad(w_vd, ((0, pad), (0, 0)))
  return w_vd.reshape(groups, (v + pad) // groups, d)


def head_logits(h_nd: jax.Array, head: jax.Array, vocab_size: int) -> jax.Array:
  """float32 logits [tokens, vocab_size] = h @ w.T[:, :vocab_size], `head` from `prepare_head`."""
  if head.ndim == 2:
    return jnp.einsum("nd,vd->nv", h_nd, head[:vocab_size].astype(h_nd.dtype),
                      preferred_element_type=jnp.float32)
  g, rows, d = head.shape
  h_gdn = jnp.broadcast_to(h_nd.T.astype(head.dtype)[None], (g, d, h_nd.shape[0]))
  logits_grn = jnp.einsum("grd,gdn->grn", head, h_gdn, preferred_element_type=jnp.float32)
  return logits_grn.reshape(g * rows, -1)[:vocab_size].T


def _vocab_chunked_logsumexp(h_cd, w_vd, vocab_chunk: int):
  """logsumexp_v(h . w_v) [c] in float32, `vocab_chunk` rows of w at a time.

  Each block is computed transposed, w_block [k, d] @ h.T [d, c]: both operands in the
  layout a GEMM wants, with no copy of the [vocab, d] matrix (a "cd,vd" dot made XLA's
  Eigen path transpose all of w for every chunk).
  """
  v, _ = w_vd.shape
  k = min(vocab_chunk, v)
  h_dc = h_cd.T.astype(w_vd.dtype)

  def block(w_kd, m_c, s_c):
    logits_kc = jnp.dot(w_kd, h_dc, preferred_element_type=jnp.float32)
    m_new = jnp.maximum(m_c, logits_kc.max(0))
    return m_new, s_c * jnp.exp(m_c - m_new) + jnp.exp(logits_kc - m_new).sum(0)

  def body(j, carry):
    return block(jax.lax.dynamic_slice_in_dim(w_vd, j * k, k), *carry)

  c = h_cd.shape[0]
  # The first block starts the running max (no -inf arithmetic); the rest loop.
  carry = block(w_vd[:k], jnp.full((c,), -jnp.inf, jnp.float32), jnp.zeros((c,), jnp.float32))
  full = v // k
  carry = jax.lax.fori_loop(1, full, body, carry)
  if v % k:
    carry = block(w_vd[full * k:], *carry)
  m_c, s_c = carry
  return m_c + jnp.log(s_c)


def _score_fn(graphdef, state, tokens_bt, segment_ids_bt, chunk_tokens, vocab_chunk=0):
  """Log-probs of a batch whose rows hold segments (1, 2, ...; 0 = padding).

  An ordinary padded batch is one segment per row: segment_ids = mask.
  """
  model = nnx.merge(graphdef, state)
  h_btd = model.hidden_states(tokens_bt, segment_ids_bt=segment_ids_bt)
  b, t, d = h_btd.shape
  targets = tokens_bt[:, 1:]
  lp = fused_head_logprobs(h_btd[:, :-1].reshape(-1, d), model.head_matrix(), targets.reshape(-1),
                           chunk_tokens, vocab_chunk).reshape(b, t - 1)
  # A prediction exists where the target has a previous token in its own segment.
  valid = (segment_ids_bt[:, 1:] == segment_ids_bt[:, :-1]) & (segment_ids_bt[:, 1:] > 0)
  lp = jnp.where(valid, lp, jnp.nan)
  return jnp.concatenate([jnp.full((b, 1), jnp.nan, jnp.float32), lp], axis=1)


# Compiled with `xla_cpu.options()` on a CPU (`_score.active()` is the jitted function used).
_score = xla_cpu.jit(_score_fn, static_argnums=(0, 4, 5))


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
  def __init__(self, model, head_chunk_tokens: int = 0, mesh=None, head_vocab_chunk: int = -1):
    """`head_chunk_tokens=0` and `head_vocab_chunk=-1` pick the backend's defaults
    (`HEAD_CHUNK_TOKENS`, `HEAD_VOCAB_CHUNK`)."""
    self.graphdef, self.state = nnx.split(model)
    self.config = model.config
    self.head_chunk_tokens = head_chunk_tokens or default_head_chunk_tokens()
    self.head_vocab_chunk = (default_head_vocab_chunk()
                             if head_vocab_chunk < 0 else int(head_vocab_chunk))
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
                self.head_chunk_tokens, self.head_vocab_chunk)
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

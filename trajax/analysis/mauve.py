"""MAUVE (Pillutla et al. 2021) from trajax's own features: paper Fig. 13 and Table 4.

MAUVE compares two sets of texts, P (human) and Q (model), through their
features, as the `mauve-text` package (0.4.0, `compute_mauve`) does:

  1. features: the final hidden state of each text's last token (mauve-text
     takes GPT-2 large's `hidden_states[-1]`; here any trajax model's
     `hidden_states`, which for OPT is HF's `hidden_states[-1]`: after the final
     layer norm and `project_out`);
  2. the rows of [Q; P] scaled to unit L2 norm, then PCA (centred, not
     whitened) keeping the fewest leading components whose explained variance
     ratios sum to >= `explained_variance` (0.9);
  3. k-means in that space with `num_buckets` clusters ("auto": max(2,
     round(min(|P|, |Q|) / 10))), `num_redo` restarts from distinct random data
     points, each up to `max_iter` Lloyd iterations, the restart with the lowest
     objective kept; every text labelled by its nearest centroid;
  4. P and Q as histograms over the clusters (and, for MAUVE*, the counts + 0.5);
  5. the divergence curve: for 25 weights w in linspace(1e-6, 1 - 1e-6),
     R_w = w P + (1 − w) Q and the point (exp(−c KL(Q‖R_w)), exp(−c KL(P‖R_w))),
     c = 5, plus the end points (1, 0) and (0, 1);
  6. MAUVE = ½ (area under y(x) + area under x(y)), trapezoids over the points
     sorted by x (resp. y).

Two places differ from mauve-text by construction, not by definition: k-means
runs in JAX (float32, as faiss), so its random starts are not faiss's; and
points of the curve with equal x (or y) keep the curve's own order, where
mauve-text's unstable `np.argsort` leaves them in any order: for P = Q its
value depends on that order (0.75 on this machine's numpy), here it is 1, the
definition's MAUVE(P, P). `bench/mauve_bench.py` compares the two on the same
features.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# mauve-text's defaults.
SCALING = 5.0
EXPLAINED_VARIANCE = 0.9
NUM_REDO = 5
MAX_ITER = 500
CURVE_POINTS = 25
SEED = 25


class Mauve(NamedTuple):
  """What `compute_mauve` returns (the fields of mauve-text's result).

  Attributes:
    mauve: MAUVE in [0, 1]; higher is closer.
    frontier_integral: the frontier integral (lower is closer).
    mauve_star, frontier_integral_star: the same with histograms smoothed by +0.5 per bucket.
    p_hist, q_hist: [buckets] the quantised distributions.
    divergence_curve: [CURVE_POINTS + 2, 2] the curve's points, end points included.
    num_buckets: k of the k-means.
    pca_dims: PCA components kept.
  """
  mauve: float
  frontier_integral: float
  mauve_star: float
  frontier_integral_star: float
  p_hist: np.ndarray
  q_hist: np.ndarray
  divergence_curve: np.ndarray
  num_buckets: int
  pca_dims: int


# ----------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _last_hidden(graphdef, state, tokens_bt, mask_bt, last_b):
  model = nnx.merge(graphdef, state)
  h_btd = model.hidden_states(tokens_bt, mask_bt)
  return jnp.take_along_axis(h_btd, last_b[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def last_token_features(model, seqs: Sequence[Sequence[int]], batch_size: int = 16,
                        pad_id: int = 1) -> np.ndarray:
  """The final hidden state at each sequence's last token, as mauve-text featurises a text.

  Args:
    model: a trajax causal LM (`hidden_states`).
    seqs: token id sequences (each non-empty, at most the model's context).
    batch_size: rows per call (the last batch is padded with copies, so one compile).
    pad_id: id of the right padding (masked out).
  Returns:
    [len(seqs), hidden] float32.
  """
  if not seqs or any(len(s) == 0 for s in seqs):
    raise ValueError("last_token_features: need at least one sequence, none empty")
  graphdef, state = nnx.split(model)
  width = max(len(s) for s in seqs)
  out = []
  for start in range(0, len(seqs), batch_size):
    chunk = list(seqs[start:start + batch_size])
    rows = len(chunk)
    chunk += [chunk[0]] * (batch_size - rows)
    ids = np.full((batch_size, width), pad_id, np.int32)
    mask = np.zeros((batch_size, width), bool)
    for i, s in enumerate(chunk):
      ids[i, :len(s)] = s
      mask[i, :len(s)] = True
    last = np.asarray([len(s) - 1 for s in chunk], np.int32)
    out.append(np.asarray(_last_hidden(graphdef, state, ids, mask, last))[:rows])
  return np.concatenate(out)


# ----------------------------------------------------------------------------
# Quantisation: normalise, PCA, k-means
# ----------------------------------------------------------------------------


def pca_reduce(x_nd: np.ndarray, explained_variance: float = EXPLAINED_VARIANCE) -> np.ndarray:
  """Projects rows onto the fewest principal axes explaining >= `explained_variance`.

  As sklearn's `PCA(n_components=None, whiten=False)` then `[:, :idx + 1]` with
  idx = argmax(cumsum(explained_variance_ratio_) >= explained_variance), in float64.

  Args:
    x_nd: [n, d] data.
    explained_variance: in (0, 1).
  Returns:
    [n, k] float64 coordinates on the first k principal axes.
  """
  if not 0.0 < explained_variance < 1.0:
    raise ValueError(f"explained_variance must be in (0, 1), got {explained_variance}")
  x = np.asarray(x_nd, np.float64)
  xc = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(xc, full_matrices=False)
  var = s**2
  total = var.sum()
  if total <= 0:  # every row equal: one axis carries nothing; keep one
    return xc @ vt[:1].T
  k = int(np.argmax(np.cumsum(var / total) >= explained_variance)) + 1
  return xc @ vt[:k].T


def _assign(x_nd, c_kd):
  """(labels [n], squared distance to the nearest centroid [n])."""
  d_nk = (jnp.sum(x_nd**2, axis=1)[:, None] - 2.0 * x_nd @ c_kd.T + jnp.sum(c_kd**2, axis=1)[None])
  labels = jnp.argmin(d_nk, axis=1)
  return labels, jnp.maximum(jnp.take_along_axis(d_nk, labels[:, None], axis=1)[:, 0], 0.0)


def _update(x_nd, labels, d_n, k: int):
  """Cluster means; an empty cluster takes the point farthest from its centroid (sklearn's rule)."""
  onehot_nk = jax.nn.one_hot(labels, k, dtype=x_nd.dtype)
  counts_k = onehot_nk.sum(axis=0)
  means_kd = (onehot_nk.T @ x_nd) / jnp.maximum(counts_k, 1.0)[:, None]
  empty_k = counts_k == 0
  far_n = jnp.argsort(-d_n)  # farthest points first
  rank_k = jnp.cumsum(empty_k) - 1  # the e-th empty cluster takes the e-th farthest point
  return jnp.where(empty_k[:, None], x_nd[far_n[jnp.clip(rank_k, 0)]], means_kd)


@functools.partial(jax.jit, static_argnames=("k", "max_iter"))
def _lloyd(x_nd, init_kd, k: int, max_iter: int):
  """Lloyd's iterations until the labels stop changing (or `max_iter`); (centroids, objective)."""
  def cond(carry):
    _, _, it, changed = carry
    return (it < max_iter) & changed

  def body(carry):
    c_kd, labels, it, _ = carry
    new_labels, d_n = _assign(x_nd, c_kd)
    c_kd = _update(x_nd, new_labels, d_n, k)
    return c_kd, new_labels, it + 1, jnp.any(new_labels != labels)

  labels0 = jnp.full((x_nd.shape[0],), -1, jnp.int32)
  c_kd, _, _, _ = jax.lax.while_loop(cond, body, (init_kd, labels0, 0, True))
  labels, d_n = _assign(x_nd, c_kd)
  return c_kd, labels, jnp.sum(d_n)


def kmeans(x_nd: np.ndarray, k: int, num_redo: int = NUM_REDO, max_iter: int = MAX_ITER,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """k-means in float32 JAX, `num_redo` random starts, the lowest objective kept.

  Args:
    x_nd: [n, d] points, n >= k.
    k: clusters.
    num_redo: restarts, each from k distinct data points drawn with its own key.
    max_iter: Lloyd iterations per restart at most (it stops when labels settle).
    seed: the starts' PRNG seed.
  Returns:
    (labels [n] int, centroids [k, d] float32) of the best restart.
  """
  x = jnp.asarray(x_nd, jnp.float32)
  n = x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"kmeans: need 1 <= k <= n points, got k={k}, n={n}")
  best = None
  for redo in range(max(1, num_redo)):
    idx = jax.random.permutation(jax.random.fold_in(jax.random.PRNGKey(seed), redo), n)[:k]
    c, labels, obj = _lloyd(x, x[idx], k, max_iter)
    obj = float(obj)
    if best is None or obj < best[0]:
      best = (obj, np.asarray(labels), np.asarray(c))
  return best[1], best[2]


def auto_buckets(n_p: int, n_q: int) -> int:
  """mauve-text's "auto": max(2, round(min(n_p, n_q) / 10)) (Python's round, half to even)."""
  return max(2, int(round(min(n_p, n_q) / 10)))


def quantize(p_features, q_features, num_buckets: int | str = "auto",
             explained_variance: float = EXPLAINED_VARIANCE, num_redo: int = NUM_REDO,
             max_iter: int = MAX_ITER, seed: int = SEED) -> tuple[np.ndarray, np.ndarray, int, int]:
  """Bucket counts of P and Q ([Q; P] normalised, PCA-reduced, k-means), as mauve-text.

  Returns:
    (p_counts [k], q_counts [k], k, PCA components kept).
  """
  p = np.asarray(p_features, np.float64)
  q = np.asarray(q_features, np.float64)
  if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1] or not len(p) or not len(q):
    raise ValueError(f"features must be non-empty [n, d] arrays of one d, got {p.shape} and "
                     f"{q.shape}")
  k = auto_buckets(len(p), len(q)) if num_buckets == "auto" else int(num_buckets)
  data = np.vstack([q, p])
  norms = np.linalg.norm(data, axis=1, keepdims=True)
  data = data / np.where(norms > 0, norms, 1.0)
  reduced = pca_reduce(data, explained_variance)
  labels, _ = kmeans(reduced, k, num_redo, max_iter, seed + 2)
  q_counts = np.bincount(labels[:len(q)], minlength=k)
  p_counts = np.bincount(labels[len(q):], minlength=k)
  return p_counts, q_counts, k, reduced.shape[1]


# ----------------------------------------------------------------------------
# The divergence curve and its area
# ----------------------------------------------------------------------------


def kl(p: np.ndarray, q: np.ndarray) -> float:
  """KL(p‖q) of two histograms; inf where p has mass and q none."""
  if np.any((p != 0) & (q == 0)):
    return math.inf
  keep = (p != 0) & (q != 0)
  return float(np.sum(p[keep] * np.log(p[keep] / q[keep])))


def divergence_curve(p: np.ndarray, q: np.ndarray, points: int = CURVE_POINTS,
                     scaling: float = SCALING) -> np.ndarray:
  """[(1, 0), (exp(−c KL(q‖R_w)), exp(−c KL(p‖R_w))) for w ascending, (0, 1)]: [points + 2, 2]."""
  curve = [[0.0, math.inf]]
  for w in np.linspace(1e-6, 1 - 1e-6, points):
    r = w * p + (1 - w) * q
    curve.append([kl(q, r), kl(p, r)])
  curve.append([math.inf, 0.0])
  return np.exp(-scaling * np.asarray(curve))


def _area(x: np.ndarray, y: np.ndarray) -> float:
  """Trapezoid area under y(x); `x` ascending."""
  return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def mauve_area(curve: np.ndarray) -> float:
  """½ (area under y(x) + area under x(y)) of a `divergence_curve`.

  Ties keep the curve's order (a stable sort of the points in reverse for x,
  in order for y): along the curve x falls and y rises.
  """
  x, y = curve[:, 0], curve[:, 1]
  rx, ry = x[::-1], y[::-1]
  ix = np.argsort(rx, kind="stable")
  iy = np.argsort(y, kind="stable")
  return 0.5 * (_area(rx[ix], ry[ix]) + _area(y[iy], x[iy]))


def frontier_integral(p: np.ndarray, q: np.ndarray, scaling: float = 2.0) -> float:
  """The frontier integral of two histograms (mauve-text's `get_fronter_integral`)."""
  total = 0.0
  for p1, q1 in zip(p.tolist(), q.tolist()):
    if p1 == 0 and q1 == 0:
      continue
    if p1 == 0 or q1 == 0:
      total += (p1 + q1) / 4
    elif abs(p1 - q1) > 1e-8:
      total += 0.25 * (p1 + q1) - 0.5 * p1 * q1 * (math.log(p1) - math.log(q1)) / (p1 - q1)
  return total * scaling


def from_counts(p_counts, q_counts, points: int = CURVE_POINTS, scaling: float = SCALING,
                pca_dims: int = 0) -> Mauve:
  """MAUVE, MAUVE* and the frontier integrals of two bucket-count vectors."""
  pc = np.asarray(p_counts, np.float64)
  qc = np.asarray(q_counts, np.float64)
  if pc.shape != qc.shape or pc.ndim != 1 or pc.sum() <= 0 or qc.sum() <= 0:
    raise ValueError(f"bucket counts must be two 1-D vectors of one length with mass, got "
                     f"{pc.shape} and {qc.shape}")
  p, q = pc / pc.sum(), qc / qc.sum()
  ps, qs = (pc + 0.5) / (pc + 0.5).sum(), (qc + 0.5) / (qc + 0.5).sum()
  curve = divergence_curve(p, q, points, scaling)
  return Mauve(mauve=mauve_area(curve), frontier_integral=frontier_integral(p, q),
               mauve_star=mauve_area(divergence_curve(ps, qs, points, scaling)),
               frontier_integral_star=frontier_integral(ps, qs), p_hist=p, q_hist=q,
               divergence_curve=curve, num_buckets=int(pc.shape[0]), pca_dims=pca_dims)


def compute_mauve(p_features, q_features, num_buckets: int | str = "auto",
                  explained_variance: float = EXPLAINED_VARIANCE, num_redo: int = NUM_REDO,
                  max_iter: int = MAX_ITER, points: int = CURVE_POINTS, scaling: float = SCALING,
                  seed: int = SEED) -> Mauve:
  """MAUVE between P (e.g. human texts) and Q (model texts) from their features.

  Args:
    p_features, q_features: [n_p, d], [n_q, d] (e.g. `last_token_features`).
    num_buckets: k-means clusters, or "auto" (mauve-text's n/10 rule).
    explained_variance, num_redo, max_iter, points, scaling, seed: mauve-text's
      kmeans_explained_var, kmeans_num_redo, kmeans_max_iter,
      divergence_curve_discretization_size, mauve_scaling_factor and seed.
  Returns:
    A `Mauve`.
  """
  p_counts, q_counts, _, dims = quantize(p_features, q_features, num_buckets, explained_variance,
                                         num_redo, max_iter, seed)
  return from_counts(p_counts, q_counts, points, scaling, dims)

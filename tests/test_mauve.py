"""MAUVE from trajax's features (Fig. 13, Table 4) against hand-computed cases and torch.

The divergence curve, its area and the frontier integral are checked on
histograms whose KL divergences have closed forms; PCA and k-means on point sets
whose principal axes and clusters are known by hand; the features against
transformers' `hidden_states[-1]` at each text's last token.
"""
import math

import numpy as np
import pytest

import trajax
from conftest import hf_opt, save_hf
from trajax.analysis import mauve


def test_identical_histograms_give_mauve_one():
  p = np.array([0.2, 0.3, 0.5])
  res = mauve.from_counts(p * 10, p * 10)
  assert res.mauve == pytest.approx(1.0, abs=1e-12)  # r = w p + (1 - w) p up to rounding
  assert res.mauve_star == pytest.approx(1.0, abs=1e-12)
  assert res.frontier_integral == 0.0


def test_three_point_curve_by_hand():
  # p = (1, 0), q = (1/2, 1/2): R_w = ((1 + w)/2, (1 − w)/2), KL(q‖R_w) = −½ log(1 − w²),
  # KL(p‖R_w) = log(2/(1 + w)). With c = 2 and w ∈ {1e-6, 1/2, 1 − 1e-6} the points are about
  # (1, 0) end, (1, 1/4), (3/4, 9/16), (0, 1), (0, 1) end.
  curve = mauve.divergence_curve(np.array([1.0, 0.0]), np.array([0.5, 0.5]), points=3, scaling=2)
  np.testing.assert_allclose(curve[2], [0.75, 0.5625], rtol=1e-12)
  # Area under y(x): 0.75 (1 + 0.5625)/2 + 0.25 (0.5625 + 0.25)/2 = 0.6875; under x(y):
  # 0.25 (1 + 1)/2 + 0.3125 (1 + 0.75)/2 + 0.4375 (0.75 + 0)/2 = 0.6875.
  assert mauve.mauve_area(curve) == pytest.approx(0.6875, abs=1e-5)
  res = mauve.from_counts([4, 0], [2, 2], points=3, scaling=2)
  assert res.mauve == pytest.approx(0.6875, abs=1e-5)
  # Frontier integral: bucket 1: ¼·1.5 − ½·(1·½·(log 1 − log ½)/(1 − ½)) = 0.375 − ½ log 2;
  # bucket 2 (p = 0): q/4 = 0.125; times 2.
  assert res.frontier_integral == pytest.approx(2 * (0.375 - 0.5 * math.log(2) + 0.125), rel=1e-12)


def test_disjoint_histograms_follow_the_closed_form():
  # p = (1, 0), q = (0, 1): x_w = (1 − w)^c, y_w = w^c; the areas by trapezoids on those points.
  res = mauve.from_counts([7, 0], [0, 3])
  w = np.linspace(1e-6, 1 - 1e-6, 25)
  x = np.concatenate([[0.0], ((1 - w)**5)[::-1], [1.0]])
  y = np.concatenate([[1.0], (w**5)[::-1], [0.0]])
  area_yx = np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)
  assert res.mauve == pytest.approx(area_yx, rel=1e-9)  # symmetric: both areas are equal
  assert res.mauve < 0.01
  assert res.frontier_integral == pytest.approx(2 * (0.25 + 0.25))


def test_pca_keeps_the_axes_explaining_the_variance():
  x = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
  # Variances 8/3 and 2/3: ratios 0.8 and 0.2.
  assert mauve.pca_reduce(x, 0.75).shape == (4, 1)
  np.testing.assert_allclose(np.abs(mauve.pca_reduce(x, 0.75)[:, 0]), [2, 2, 0, 0], atol=1e-12)
  assert mauve.pca_reduce(x, 0.9).shape == (4, 2)
  # Rotated and shifted, the same: distances to the mean are kept.
  rot = np.array([[0.6, -0.8], [0.8, 0.6]])
  z = mauve.pca_reduce(x @ rot + 5.0, 0.9)
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), [2, 2, 1, 1], atol=1e-12)


def test_kmeans_finds_the_two_clusters_and_refills_an_empty_one():
  x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [10.0, 10.0], [10.0, 11.0], [11.0, 10.0]])
  labels, centroids = mauve.kmeans(x, 2, num_redo=3, seed=0)
  assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4] == labels[5]
  np.testing.assert_allclose(centroids[labels[0]], [1 / 3, 1 / 3], rtol=1e-6)
  np.testing.assert_allclose(centroids[labels[3]], [31 / 3, 31 / 3], rtol=1e-6)
  # Every point in cluster 0: cluster 1 is empty and takes the point farthest from its centroid.
  import jax.numpy as jnp
  xs = jnp.asarray([[0.0], [1.0], [5.0]])
  labels0 = jnp.zeros(3, jnp.int32)
  d = jnp.asarray([4.0, 1.0, 9.0])  # squared distances to cluster 0's centroid (2)
  c = np.asarray(mauve._update(xs, labels0, d, 2))
  np.testing.assert_allclose(c, [[2.0], [5.0]])


def test_separate_and_mixed_feature_sets(tmp_path):
  rng = np.random.default_rng(0)
  a = rng.normal(size=(20, 8)) * 0.01 + np.eye(8)[0]
  b = rng.normal(size=(20, 8)) * 0.01 + np.eye(8)[1]
  apart = mauve.compute_mauve(a, b, num_buckets=2)
  assert sorted(apart.p_hist.tolist()) == [0.0, 1.0] and apart.q_hist.tolist() == \
      apart.p_hist.tolist()[::-1]
  assert apart.mauve == pytest.approx(mauve.from_counts([1, 0], [0, 1]).mauve, rel=1e-12)
  mixed = mauve.compute_mauve(np.vstack([a[:10], b[:10]]), np.vstack([a[10:], b[10:]]),
                              num_buckets=2)
  np.testing.assert_allclose(mixed.p_hist, [0.5, 0.5])
  assert mixed.mauve == pytest.approx(1.0, abs=1e-12)
  assert mauve.auto_buckets(40, 25) == 2 and mauve.auto_buckets(400, 250) == 25


def test_features_are_torch_last_hidden_state_at_the_last_token(tmp_path):
  import torch
  ref = hf_opt(3)
  model = trajax.load_hf(save_hf(ref, tmp_path / "m"))
  seqs = [[2, 5, 9, 11, 40], [2, 7], [2, 8, 8, 60, 61, 62, 63]]
  feats = mauve.last_token_features(model, seqs, batch_size=2)
  assert feats.shape == (3, 16)
  for s, f in zip(seqs, feats):
    with torch.no_grad():
      out = ref(input_ids=torch.tensor([s]), output_hidden_states=True)
    np.testing.assert_allclose(f, out.hidden_states[-1][0, -1].numpy(), atol=1e-4)

"""Levin et al.'s edge-aware propagation: the affinity matrix, the constrained solve, and the colouriser."""

import numpy as np
import pytest
import scipy.sparse
from skimage.color import rgb2yuv

from edn_pipeline.propagation import affinity_matrix, levin_colorize, propagate


def _random(shape, seed=0, low=0.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape)


def _step(h=12, w=20, left=0.2, right=0.8):
    gray = np.full((h, w), left)
    gray[:, w // 2 :] = right
    return gray


# --- affinity ------------------------------------------------------------------------------


def test_affinity_rows_are_normalised_weights_over_the_8_neighbours():
    h, w = 7, 9
    gray = _random((h, w))
    weights = affinity_matrix(gray)
    assert scipy.sparse.issparse(weights) and weights.shape == (h * w, h * w)
    np.testing.assert_allclose(np.asarray(weights.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    assert weights.min() >= 0 and not weights.diagonal().any()

    # Nonzeros exactly at the 8-neighbourhood: 3 at corners, 5 on borders, 8 inside.
    neighbours = np.zeros((h, w), int)
    for y in range(h):
        for x in range(w):
            neighbours[y, x] = sum(0 <= y + dy < h and 0 <= x + dx < w for dy in (-1, 0, 1) for dx in (-1, 0, 1)) - 1
    np.testing.assert_array_equal(np.diff(weights.tocsr().indptr).reshape(h, w), neighbours)
    dense = weights.toarray()
    for i, j in zip(*np.nonzero(dense)):
        (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
        assert max(abs(yi - yj), abs(xi - xj)) == 1


def test_affinity_prefers_neighbours_of_similar_gray():
    gray = _step(6, 6, 0.1, 0.9)
    weights = affinity_matrix(gray).toarray()
    i = 2 * 6 + 2  # (2, 2): left of the step at column 3
    same, across = weights[i, 2 * 6 + 1], weights[i, 2 * 6 + 3]
    assert same > 5 * across

    flat = affinity_matrix(np.full((5, 5), 0.4)).toarray()
    centre = flat[12][flat[12] > 0]
    np.testing.assert_allclose(centre, 1 / 8)  # a flat window weighs its neighbours alike


# --- the constrained solve -----------------------------------------------------------------


def test_seed_pixels_keep_their_values_exactly():
    gray = _random((9, 11), seed=1)
    seed = _random((9, 11), seed=2) < 0.2
    values = _random((9, 11, 2), seed=3)
    out = propagate(gray, seed, values)
    assert out.shape == (9, 11, 2) and out.dtype == np.float64
    np.testing.assert_array_equal(out[seed], values[seed])
    assert not np.allclose(out[~seed], values[~seed])  # free pixels are solved for, not copied


def test_free_pixels_are_the_weighted_mean_of_their_neighbours():
    gray = _random((8, 10), seed=4)
    seed = _random((8, 10), seed=5) < 0.15
    values = _random((8, 10, 1), seed=6)
    out = propagate(gray, seed, values).reshape(-1)
    mean = affinity_matrix(gray) @ out
    np.testing.assert_allclose(out[~seed.ravel()], mean[~seed.ravel()], atol=1e-10)


def test_values_between_two_seeds_on_a_flat_image_lie_between_them():
    gray = np.full((8, 16), 0.5)
    seed = np.zeros((8, 16), bool)
    seed[:, 0] = seed[:, -1] = True
    values = np.zeros((8, 16, 1))
    values[:, -1] = 1.0
    out = propagate(gray, seed, values)[..., 0]
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.all(np.diff(out, axis=1) > 0)  # and rise from one seed to the other
    np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-10)  # the same along every row


@pytest.mark.parametrize("seed_index", range(3))
def test_maximum_principle_on_any_image(seed_index):
    gray = _random((10, 10), seed=10 + seed_index)
    seed = _random((10, 10), seed=20 + seed_index) < 0.1
    seed[0, 0] = True
    values = _random((10, 10, 2), seed=30 + seed_index, low=-1, high=2)
    out = propagate(gray, seed, values)
    for c in range(2):
        assert values[seed, c].min() - 1e-10 <= out[..., c].min()
        assert out[..., c].max() <= values[seed, c].max() + 1e-10


def test_constant_seeds_give_a_constant_everywhere():
    gray = _random((9, 13), seed=7)
    seed = np.zeros((9, 13), bool)
    seed[[1, 4, 7], [2, 11, 6]] = True
    values = np.broadcast_to(np.array([0.3, -0.2]), (9, 13, 2))
    np.testing.assert_allclose(propagate(gray, seed, values), values, atol=1e-10)


def test_a_sharp_edge_keeps_each_side_near_its_own_seed():
    seed = np.zeros((12, 20), bool)
    seed[:, 5] = seed[:, 14] = True  # four pixels either side of the step between columns 9 and 10
    values = np.zeros((12, 20, 1))
    values[:, 14] = 1.0
    across_step = propagate(_step(), seed, values)[..., 0]
    across_flat = propagate(np.full((12, 20), 0.5), seed, values)[..., 0]
    assert across_step[:, :10].max() < 0.25 and across_step[:, 10:].min() > 0.75
    # Most of the change happens at the edge, against evenly spread on a flat image.
    jump = across_step[:, 10] - across_step[:, 9]
    assert np.all(jump > 0.5) and np.all(jump > 4 * (across_flat[:, 10] - across_flat[:, 9]))


# --- the colouriser ------------------------------------------------------------------------


def test_levin_colorize_keeps_the_gray_as_luma_and_the_seeds_chroma():
    h, w = 16, 20
    yy, xx = np.mgrid[:h, :w]
    gray = 0.35 + 0.3 * (xx / w) + 0.05 * np.sin(yy)  # mid grays: muted colours stay inside the RGB cube
    seed = np.zeros((h, w), bool)
    seed[3, 4] = seed[12, 15] = True
    seed_rgb = np.zeros((h, w, 3))
    seed_rgb[3, 4] = (0.55, 0.45, 0.40)
    seed_rgb[12, 15] = (0.40, 0.50, 0.60)
    out = levin_colorize(gray, seed, seed_rgb)
    assert out.shape == (h, w, 3) and 0 < out.min() and out.max() < 1  # nothing clipped
    yuv = rgb2yuv(out)
    np.testing.assert_allclose(yuv[..., 0], gray, atol=1e-6)
    np.testing.assert_allclose(yuv[seed, 1:], rgb2yuv(seed_rgb)[seed, 1:], atol=1e-6)
    assert np.ptp(yuv[..., 1]) > 0.01  # the two chromas are spread, not one


def test_levin_colorize_clips_saturated_colours_into_range():
    gray = _random((12, 12), seed=8, low=0.05, high=0.95)
    seed = _random((12, 12), seed=9) < 0.1
    seed_rgb = np.where(_random((12, 12, 3), seed=11) > 0.5, 1.0, 0.0)  # primaries and secondaries
    out = levin_colorize(gray, seed, seed_rgb)
    assert 0 <= out.min() and out.max() <= 1
    # Where no channel was clipped the luma is the gray; clipping can only move it by the clipped amount.
    inside = np.all((out > 0) & (out < 1), axis=-1)
    assert inside.any() and not inside.all()  # some pixels clipped, some not
    np.testing.assert_allclose(rgb2yuv(out)[inside, 0], gray[inside], atol=1e-6)
    assert np.abs(rgb2yuv(out)[..., 0] - gray).max() < 0.5

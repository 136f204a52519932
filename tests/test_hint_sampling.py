"""Training-time hint sampling (paper §2.1): SLIC regions of the true colours, quantised, 30-50 % kept."""

import colorsys

import numpy as np
import pytest
from skimage import data, transform
from skimage.segmentation import slic

from edn_pipeline.errors import EDNInputError
from edn_pipeline.hint_sampling import (
    TRAIN_SLIC_COMPACTNESS,
    TRAIN_SLIC_SEGMENTS,
    quantized_superpixels,
    sample_training_hints,
)
from edn_pipeline.luminance import gray_from_lightness, to_lightness


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A real colour photo (scikit-image's coffee), float RGB 96×128."""
    return transform.resize(data.coffee(), (96, 128), anti_aliasing=True).astype(np.float32)


@pytest.fixture(scope="module")
def gray(rgb) -> np.ndarray:
    return gray_from_lightness(to_lightness(rgb))


def _labels(rgb, n_segments=TRAIN_SLIC_SEGMENTS):
    return slic(rgb, n_segments=n_segments, compactness=TRAIN_SLIC_COMPACTNESS, start_label=0)


@pytest.mark.parametrize("hint_ratio", [(0.3, 0.5), (0.1, 0.2), (0.6, 0.65)])
def test_kept_fraction_of_slic_regions_lies_in_hint_ratio(rgb, gray, hint_ratio):
    labels = _labels(rgb)
    total = len(np.unique(labels))
    fractions = []
    for seed in range(8):
        _, mask = sample_training_hints(rgb, gray, np.random.default_rng(seed), hint_ratio=hint_ratio, no_hint_prob=0)
        assert set(np.unique(mask)) <= {0.0, 1.0}
        region_cover = np.bincount(labels.ravel(), mask.ravel(), minlength=total) / np.bincount(labels.ravel())
        assert set(np.round(region_cover, 6)) <= {0.0, 1.0}, "a region must be hinted whole or not at all"
        fractions.append((region_cover == 1.0).sum() / total)
    assert all(hint_ratio[0] <= f <= hint_ratio[1] for f in fractions), fractions
    if hint_ratio[0] < hint_ratio[1]:
        assert len(set(fractions)) > 1, "the kept fraction should be drawn anew per sample"


def test_no_hint_prob_one_gives_no_hints(rgb, gray):
    for seed in range(5):
        hint_rgb, mask = sample_training_hints(rgb, gray, np.random.default_rng(seed), no_hint_prob=1.0)
        assert not mask.any() and not hint_rgb.any()
        assert hint_rgb.shape == rgb.shape and mask.shape == gray.shape
        assert hint_rgb.dtype == mask.dtype == np.float32


def test_no_hint_rate_matches_probability():
    small = transform.resize(data.astronaut(), (24, 24), anti_aliasing=True).astype(np.float32)
    small_gray = gray_from_lightness(to_lightness(small))
    rng = np.random.default_rng(0)
    n, p = 300, 0.3
    empty = sum(not sample_training_hints(small, small_gray, rng, no_hint_prob=p, n_segments=16)[1].any()
                for _ in range(n))
    sd = np.sqrt(n * p * (1 - p))
    assert abs(empty - n * p) < 5 * sd, empty


def test_hint_colours_keep_quantised_hue_and_gray_lightness(rgb, gray):
    hint_rgb, mask = sample_training_hints(rgb, gray, np.random.default_rng(3), no_hint_prob=0)
    labels, colours = quantized_superpixels(rgb)
    np.testing.assert_array_equal(labels, _labels(rgb))
    assert len(np.unique(colours, axis=0)) <= 32

    ys, xs = np.nonzero(mask)
    checked = 0
    for i in np.random.default_rng(0).permutation(len(ys))[:400]:
        y, x = ys[i], xs[i]
        q_hue, _, q_sat = colorsys.rgb_to_hls(*colours[labels[y, x]].astype(float))
        hue, light, sat = colorsys.rgb_to_hls(*hint_rgb[y, x].astype(float))
        assert light == pytest.approx(gray[y, x], abs=1e-5)
        if q_sat > 0.1 and 0.1 < gray[y, x] < 0.9:  # hue is well defined and survives float32
            assert min(abs(hue - q_hue), 1 - abs(hue - q_hue)) < 1e-3
            assert sat == pytest.approx(q_sat, abs=1e-3)
            checked += 1
    assert checked > 50
    assert not hint_rgb[mask == 0].any()


def test_same_rng_seed_same_hints_and_different_seed_differs(rgb, gray):
    a = sample_training_hints(rgb, gray, np.random.default_rng(7))
    b = sample_training_hints(rgb, gray, np.random.default_rng(7))
    c = sample_training_hints(rgb, gray, np.random.default_rng(8), no_hint_prob=0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_bad_arguments_raise(rgb, gray):
    rng = np.random.default_rng(0)
    with pytest.raises(EDNInputError, match="gray has shape"):
        sample_training_hints(rgb, gray[:-1], rng)
    with pytest.raises(EDNInputError, match="hint_ratio"):
        sample_training_hints(rgb, gray, rng, hint_ratio=(0.6, 0.4))
    with pytest.raises(EDNInputError, match="no_hint_prob"):
        sample_training_hints(rgb, gray, rng, no_hint_prob=1.5)

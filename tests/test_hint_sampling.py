"""Training-time hint sampling: the paper's SLIC regions (§2.1) or a user's points, spread as at inference.

The 7th condition channel is a confidence: exactly 1 at the seed pixels (the kept superpixels, or the points'
disks), below 1 elsewhere.  Photos here are at most PROPAGATION_SIDE pixels on a side, so the propagation runs at
the working size and ``confidence == 1`` marks the seeds exactly.
"""

import colorsys

import numpy as np
import pytest
from scipy import ndimage
from skimage import data, transform
from skimage.segmentation import slic

from edn_pipeline.errors import EDNInputError
from edn_pipeline.hints import PROPAGATION_SIDE, propagate_hints
from edn_pipeline.luminance import gray_from_lightness, to_lightness
from edn_pipeline.training.hint_sampling import (
    TRAIN_SLIC_COMPACTNESS,
    TRAIN_SLIC_SEGMENTS,
    quantized_superpixels,
    sample_training_hints,
)

# Points default to a disk of radius 1 pixel at these sizes: the pixel under the point and its 4 neighbours.
DISK_PIXELS = 5
PLUS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A real colour photo (scikit-image's coffee), float RGB 48×64."""
    photo = transform.resize(data.coffee(), (48, 64), anti_aliasing=True).astype(np.float32)
    assert max(photo.shape[:2]) <= PROPAGATION_SIDE
    return photo


@pytest.fixture(scope="module")
def gray(rgb) -> np.ndarray:
    return gray_from_lightness(to_lightness(rgb))


@pytest.fixture(scope="module")
def noise_photo() -> tuple[np.ndarray, np.ndarray]:
    """32×32 pixels of independent, saturated, mid-light colours (quantised to 8 bits): every pixel's colour
    is its own, so a hint colour tells which pixel of the ground truth it came from."""
    rng = np.random.default_rng(1)
    hls = np.stack([rng.random((32, 32)), rng.uniform(0.35, 0.65, (32, 32)), rng.uniform(0.6, 1.0, (32, 32))], -1)
    rgb = np.array([colorsys.hls_to_rgb(*p) for p in hls.reshape(-1, 3)]).reshape(32, 32, 3)
    rgb8 = np.round(rgb * 255).astype(np.uint8)
    return rgb8.astype(np.float32) / 255, gray_from_lightness(to_lightness(rgb8))


def _labels(rgb, n_segments=TRAIN_SLIC_SEGMENTS):
    return slic(rgb, n_segments=n_segments, compactness=TRAIN_SLIC_COMPACTNESS, start_label=0)


def _relit(colour, lightness):
    """colorsys reference: the HSL hue and saturation of ``colour`` at HSL lightness ``lightness``."""
    hue, _, sat = colorsys.rgb_to_hls(*(float(c) for c in colour))
    return np.array(colorsys.hls_to_rgb(hue, float(lightness), sat))


def _points(rgb, gray, seed, **kwargs):
    return sample_training_hints(rgb, gray, np.random.default_rng(seed), no_hint_prob=0, point_hint_prob=1, **kwargs)


def _sources(rgb, gray, hint_rgb, seed_mask):
    """For each seed pixel, the plus-neighbours whose relit 8-bit truth colour it carries: {(y, x): [(qy, qx)]}."""
    h, w = seed_mask.shape
    sources = {}
    for y, x in zip(*np.nonzero(seed_mask)):
        sources[y, x] = [
            (y + dy, x + dx)
            for dy, dx in PLUS
            if 0 <= y + dy < h
            and 0 <= x + dx < w
            and np.allclose(hint_rgb[y, x], _relit(rgb[y + dy, x + dx], gray[y, x]), atol=1e-5)
        ]
    return sources


# --- region hints (the paper's) ----------------------------------------------------------


@pytest.mark.parametrize("hint_ratio", [(0.3, 0.5), (0.1, 0.2), (0.6, 0.65)])
def test_kept_fraction_of_slic_regions_lies_in_hint_ratio(rgb, gray, hint_ratio):
    labels = _labels(rgb)
    total = len(np.unique(labels))
    fractions = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        _, confidence = sample_training_hints(rgb, gray, rng, hint_ratio=hint_ratio, no_hint_prob=0)
        assert confidence.min() > 0 and confidence.max() == 1.0
        seeds = confidence == 1.0
        region_cover = np.bincount(labels.ravel(), seeds.ravel(), minlength=total) / np.bincount(labels.ravel())
        assert set(np.round(region_cover, 6)) <= {0.0, 1.0}, "a region must be hinted whole or not at all"
        fractions.append((region_cover == 1.0).sum() / total)
    assert all(hint_ratio[0] <= f <= hint_ratio[1] for f in fractions), fractions
    if hint_ratio[0] < hint_ratio[1]:
        assert len(set(fractions)) > 1, "the kept fraction should be drawn anew per sample"


def test_no_hint_prob_one_gives_no_hints(rgb, gray):
    for seed in range(5):
        for point_hint_prob in (0.0, 1.0):
            hint_rgb, confidence = sample_training_hints(
                rgb, gray, np.random.default_rng(seed), no_hint_prob=1.0, point_hint_prob=point_hint_prob
            )
            assert not confidence.any() and not hint_rgb.any()
            assert hint_rgb.shape == rgb.shape and confidence.shape == gray.shape
            assert hint_rgb.dtype == confidence.dtype == np.float32


def test_no_hint_rate_matches_probability():
    small = transform.resize(data.astronaut(), (24, 24), anti_aliasing=True).astype(np.float32)
    small_gray = gray_from_lightness(to_lightness(small))
    rng = np.random.default_rng(0)
    n, p = 300, 0.3
    empty = sum(
        not sample_training_hints(small, small_gray, rng, no_hint_prob=p, n_segments=16)[1].any() for _ in range(n)
    )
    sd = np.sqrt(n * p * (1 - p))
    assert abs(empty - n * p) < 5 * sd, empty


def test_hint_colours_keep_quantised_hue_and_gray_lightness(rgb, gray):
    hint_rgb, confidence = sample_training_hints(rgb, gray, np.random.default_rng(3), no_hint_prob=0)
    labels, colours = quantized_superpixels(rgb)
    np.testing.assert_array_equal(labels, _labels(rgb))
    assert len(np.unique(colours, axis=0)) <= 32

    seeds = confidence == 1
    ys, xs = np.nonzero(seeds)
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
    # Elsewhere the colour is propagated, not absent, and also takes the gray's lightness.
    assert 0 < confidence[~seeds].min() and confidence[~seeds].max() < 1
    ys, xs = np.nonzero(~seeds)
    for i in np.random.default_rng(1).permutation(len(ys))[:100]:
        y, x = ys[i], xs[i]
        assert colorsys.rgb_to_hls(*hint_rgb[y, x].astype(float))[1] == pytest.approx(gray[y, x], abs=1e-5)


def test_region_hints_are_the_kept_superpixels_spread_by_propagate_hints(rgb, gray):
    """Training spreads its seeds exactly as inference does: the same propagate_hints on the same seeds."""
    hint_rgb, confidence = sample_training_hints(rgb, gray, np.random.default_rng(5), no_hint_prob=0)
    labels, colours = quantized_superpixels(rgb)
    seeds = confidence == 1
    seed_rgb = np.where(seeds[..., None], colours[labels], 0).astype(np.float32)
    expected_rgb, expected_confidence = propagate_hints(gray, seeds, seed_rgb)
    np.testing.assert_array_equal(hint_rgb, expected_rgb)
    np.testing.assert_array_equal(confidence, expected_confidence)


def test_same_rng_seed_same_hints_and_different_seed_differs(rgb, gray):
    for point_hint_prob in (0.0, 0.5, 1.0):
        a = sample_training_hints(rgb, gray, np.random.default_rng(7), point_hint_prob=point_hint_prob)
        b = sample_training_hints(rgb, gray, np.random.default_rng(7), point_hint_prob=point_hint_prob)
        c = sample_training_hints(rgb, gray, np.random.default_rng(8), no_hint_prob=0, point_hint_prob=point_hint_prob)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert not np.array_equal(a[1], c[1])


# --- point hints (as users click) ------------------------------------------------------


def test_point_hints_are_a_few_small_disks_with_the_truths_colour(noise_photo):
    rgb, gray = noise_photo
    max_points = 50
    for seed in range(6):
        hint_rgb, confidence = _points(rgb, gray, seed, max_points=max_points)
        seeds = confidence == 1
        assert 1 <= seeds.sum() <= DISK_PIXELS * max_points
        assert 1 <= ndimage.label(seeds)[1] <= max_points
        assert confidence[~seeds].max() < 1 and confidence.min() > 0

        # Each seed pixel carries the 8-bit truth colour of the point it belongs to (within its disk), with its
        # HSL hue and saturation and the gray's lightness; the pixels under the points carry their own colour.
        sources = _sources(rgb, gray, hint_rgb, seeds)
        assert all(len(found) == 1 for found in sources.values()), sources
        centres = {found[0] for found in sources.values()}
        assert centres <= set(sources)
        assert 1 <= len(centres) <= max_points

        # And these seeds, spread by propagate_hints, give exactly the sampled hints.
        seed_rgb = np.zeros_like(rgb)
        for (y, x), ((qy, qx),) in sources.items():
            seed_rgb[y, x] = rgb[qy, qx]
        expected_rgb, expected_confidence = propagate_hints(gray, seeds, seed_rgb)
        np.testing.assert_array_equal(hint_rgb, expected_rgb)
        np.testing.assert_array_equal(confidence, expected_confidence)


def test_point_count_varies_from_sparse_to_dense(noise_photo):
    rgb, gray = noise_photo
    counts = []
    for seed in range(40):
        hint_rgb, confidence = _points(rgb, gray, seed)
        sources = _sources(rgb, gray, hint_rgb, confidence == 1)
        counts.append(len({found[0] for found in sources.values() if found}))
    assert len(set(counts)) > 5, counts
    assert min(counts) <= 3 and max(counts) >= 15, counts  # log-uniform in 1..50: both are common


def test_max_points_one_gives_a_single_small_disk(noise_photo):
    rgb, gray = noise_photo
    for seed in range(10):
        hint_rgb, confidence = _points(rgb, gray, seed, max_points=1)
        seeds = confidence == 1
        assert 1 <= seeds.sum() <= DISK_PIXELS
        assert ndimage.label(seeds)[1] == 1
        (y, x) = np.argwhere(seeds)[0]
        assert np.abs(np.argwhere(seeds) - (y, x)).sum(axis=1).max() <= 2  # within one plus-shaped disk
        centres = {found[0] for found in _sources(rgb, gray, hint_rgb, seeds).values()}
        assert len(centres) == 1


def test_point_hint_rate_matches_probability():
    small = transform.resize(data.astronaut(), (24, 24), anti_aliasing=True).astype(np.float32)
    small_gray = gray_from_lightness(to_lightness(small))
    rng = np.random.default_rng(0)
    n, p = 200, 0.4
    points = 0
    for _ in range(n):
        _, confidence = sample_training_hints(
            small, small_gray, rng, no_hint_prob=0, point_hint_prob=p, max_points=3, n_segments=16
        )
        seeded = int((confidence == 1).sum())
        # At most 3 disks of 5 pixels, against 30-50 % of 16 superpixels of ~36 pixels each.
        assert seeded <= 3 * DISK_PIXELS or seeded > 40, seeded
        points += seeded <= 3 * DISK_PIXELS
    sd = np.sqrt(n * p * (1 - p))
    assert abs(points - n * p) < 5 * sd, points


def test_bad_arguments_raise(rgb, gray):
    rng = np.random.default_rng(0)
    with pytest.raises(EDNInputError, match="gray has shape"):
        sample_training_hints(rgb, gray[:-1], rng)
    with pytest.raises(EDNInputError, match="hint_ratio"):
        sample_training_hints(rgb, gray, rng, hint_ratio=(0.6, 0.4))
    with pytest.raises(EDNInputError, match="no_hint_prob"):
        sample_training_hints(rgb, gray, rng, no_hint_prob=1.5)
    for p in (-0.1, 1.5):
        with pytest.raises(EDNInputError, match="point_hint_prob"):
            sample_training_hints(rgb, gray, rng, point_hint_prob=p)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(EDNInputError, match="max_points"):
            sample_training_hints(rgb, gray, rng, max_points=bad)


def test_confidence_is_one_only_at_seeds_above_the_propagation_size():
    h, w = 96, 128
    assert max(h, w) > PROPAGATION_SIDE
    gray = np.full((h, w), 0.5, np.float32)
    seeds = np.zeros((h, w), bool)
    seeds[20:40, 20:41] = seeds[20:40, 42:60] = True  # two kept regions, a 1-pixel gap between them
    seed_rgb = np.where(seeds[..., None], np.float32([0.8, 0.2, 0.1]), 0).astype(np.float32)
    _, confidence = propagate_hints(gray, seeds, seed_rgb)
    np.testing.assert_array_equal(confidence == 1, seeds)

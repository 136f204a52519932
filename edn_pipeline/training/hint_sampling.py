"""Training-time colour hints: the paper's superpixel regions (§2.1) and the points users click.

Regions, as the paper samples them: the ground-truth colour photo is cut into
SLIC superpixels, each superpixel's mean colour is quantised to a small palette
(k-means in CIELAB), and a random 30–50 % of the superpixels become hints.
Points, as users give them: 1 to 50 pixels at random positions (log-uniform
count, so sparse hints are as common as dense ones) with the ground truth's
colour there.  With a small probability a sample gets no hints at all, so the
adapter also learns the unconditional mode.

Both kinds are seeds that go through :func:`edn_pipeline.hints.propagate_hints`,
exactly as a user's hints at inference: training and inference conditions only
differ in *where* hints come from, never in how they are spread or how they look.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.cluster.vq import kmeans2
from skimage.color import lab2rgb, rgb2lab
from skimage.segmentation import slic

from ..errors import EDNInputError
from ..hints import HintPoint, point_seeds, propagate_hints

__all__ = [
    "TRAIN_SLIC_SEGMENTS",
    "TRAIN_SLIC_COMPACTNESS",
    "TRAIN_N_COLORS",
    "MAX_HINT_POINTS",
    "quantized_superpixels",
    "sample_training_hints",
]

# 256 superpixels: at the 128 px training size a region is about 8×8 pixels, one latent pixel.
TRAIN_SLIC_SEGMENTS = 256
# skimage's usual compactness for colour images (SLIC works in CIELAB, L* spanning 0..100).
TRAIN_SLIC_COMPACTNESS = 10.0
# Palette size of the colour quantisation (capped by the number of superpixels).
TRAIN_N_COLORS = 32
# Point hints per sample: up to the densest setting users and the quality benchmark give.
MAX_HINT_POINTS = 50
# Lloyd iterations of the palette's k-means; superpixel means are few, so this is cheap.
_KMEANS_ITERATIONS = 10
# The palette depends on the image only (not on the sample's rng): quantisation is a
# property of the photo, the randomness of a sample is which regions become hints.
_KMEANS_SEED = 0


def quantized_superpixels(
    rgb: np.ndarray, n_segments: int = TRAIN_SLIC_SEGMENTS, n_colors: int = TRAIN_N_COLORS
) -> tuple[np.ndarray, np.ndarray]:
    """SLIC superpixels of a colour image and each superpixel's quantised colour.

    Args:
        rgb: (H, W, 3) float sRGB in [0, 1].
        n_segments: approximate number of SLIC superpixels.
        n_colors: palette size; the mean colours of the superpixels are clustered
            (k-means in CIELAB) into at most this many colours.

    Returns:
        ``(labels, colours)``: (H, W) int labels 0..n-1 (``skimage.segmentation.slic``
        with ``compactness=TRAIN_SLIC_COMPACTNESS, start_label=0``) and (n, 3) float32
        sRGB, the quantised colour of each superpixel.  Deterministic.
    """
    rgb = _check_rgb(rgb)
    labels = slic(rgb, n_segments=n_segments, compactness=TRAIN_SLIC_COMPACTNESS, start_label=0)
    n = int(labels.max()) + 1
    flat = labels.ravel()
    counts = np.maximum(np.bincount(flat, minlength=n), 1).astype(np.float64)
    means = np.stack([np.bincount(flat, rgb[..., c].ravel(), minlength=n) for c in range(3)], axis=1)
    means = np.clip(means / counts[:, None], 0.0, 1.0)

    lab = rgb2lab(means[None])[0]
    k = min(n_colors, len(np.unique(np.round(lab, 4), axis=0)))
    if k < 2:
        return labels, means.astype(np.float32)
    with warnings.catch_warnings():
        # An emptied cluster keeps its old centroid; it simply goes unused.
        warnings.filterwarnings("ignore", message=".*clusters is empty.*")
        centroids, assignment = kmeans2(lab, k, iter=_KMEANS_ITERATIONS, minit="++", seed=_KMEANS_SEED)
    palette = np.clip(lab2rgb(centroids[None])[0], 0.0, 1.0)
    return labels, palette[assignment].astype(np.float32)


def check_hint_options(hint_ratio, **options) -> tuple[float, float]:
    """Validate the hint sampling options, named as the caller names them: ``*_points`` positive integers, the
    rest probabilities. Returns ``hint_ratio`` as floats."""
    for name, value in options.items():
        if name.endswith("points"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EDNInputError(f"{name} must be a positive integer, got {value!r}")
        elif not 0.0 <= value <= 1.0:
            raise EDNInputError(f"{name} must lie in [0, 1], got {value}")
    low, high = (float(r) for r in hint_ratio)
    if not 0.0 <= low <= high <= 1.0:
        raise EDNInputError(f"hint_ratio must be (low, high) with 0 <= low <= high <= 1, got {hint_ratio}")
    return low, high


def sample_training_hints(
    rgb: np.ndarray,
    gray: np.ndarray,
    rng: np.random.Generator,
    hint_ratio: tuple[float, float] = (0.3, 0.5),
    no_hint_prob: float = 0.1,
    point_hint_prob: float = 0.0,
    max_points: int = MAX_HINT_POINTS,
    n_segments: int = TRAIN_SLIC_SEGMENTS,
    n_colors: int = TRAIN_N_COLORS,
    propagator=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample the colour hints of one training example.

    With probability ``no_hint_prob`` the sample gets no hints. Otherwise, with probability
    ``point_hint_prob``, 1 to ``max_points`` points (log-uniform count, uniform positions, each with the
    ground truth's colour at its pixel); else the paper's regions: a fraction drawn uniformly from
    ``hint_ratio`` of the SLIC superpixels of ``rgb`` (see :func:`quantized_superpixels`), each with its
    quantised colour. The seeds are spread by :func:`~edn_pipeline.hints.propagate_hints` (with the model's
    learned ``propagator``, if it has one), as at inference.

    Args:
        rgb: (H, W, 3) ground-truth colour image, float in [0, 1].
        gray: (H, W) the grayscale the model sees, float in [0, 1] (the neutral sRGB gray
            with the photo's CIE L*, :func:`edn_pipeline.luminance.gray_from_lightness`).
        rng: the only source of randomness; the same generator state gives the same hints.

    Returns:
        ``(hint_rgb, confidence)``: (H, W, 3) and (H, W) float32 in [0, 1], zero without hints.
    """
    rgb = _check_rgb(rgb)
    gray = np.asarray(gray, dtype=np.float32)
    if gray.shape != rgb.shape[:2]:
        raise EDNInputError(f"gray has shape {gray.shape} but the colour image is {rgb.shape[:2]}")
    low, high = check_hint_options(
        hint_ratio, max_points=max_points, no_hint_prob=no_hint_prob, point_hint_prob=point_hint_prob
    )

    h, w = gray.shape
    seed = np.zeros((h, w), bool)
    seed_rgb = np.zeros((h, w, 3), np.float32)
    if rng.random() < no_hint_prob:
        return propagate_hints(gray, seed, seed_rgb, propagator)
    if rng.random() < point_hint_prob:
        count = int(np.exp(rng.uniform(0.0, np.log(max_points + 1))))
        xs, ys = rng.integers(0, w, count), rng.integers(0, h, count)
        points = [
            HintPoint(x + 0.5, y + 0.5, tuple(int(c) for c in np.round(rgb[y, x] * 255))) for x, y in zip(xs, ys)
        ]
        seed, seed_rgb = point_seeds(points, (w, h), (w, h))
        return propagate_hints(gray, seed, seed_rgb, propagator)

    labels, colours = quantized_superpixels(rgb, n_segments, n_colors)
    n = len(colours)
    n_kept = _kept_count(n, rng.uniform(low, high), low, high)
    kept = np.zeros(n, bool)
    if n_kept:
        kept[rng.choice(n, size=n_kept, replace=False)] = True
    seed = kept[labels]
    seed_rgb[seed] = colours[labels[seed]]
    return propagate_hints(gray, seed, seed_rgb, propagator)


def _kept_count(n: int, ratio: float, low: float, high: float) -> int:
    """round(ratio * n), kept inside [low * n, high * n] whenever an integer lies there."""
    count = round(ratio * n)
    smallest, largest = math.ceil(low * n - 1e-9), math.floor(high * n + 1e-9)
    if smallest <= largest:
        count = min(max(count, smallest), largest)
    return int(count)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise EDNInputError(f"expected an (H, W, 3) colour image, got shape {rgb.shape}")
    return rgb

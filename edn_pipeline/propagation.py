"""Edge-aware propagation over a grayscale image: Levin, Lischinski & Weiss 2004, "Colorization using Optimization".

Each pixel's value is the affinity-weighted mean of its 3×3 neighbours', where neighbours of similar gray weigh
more, and hinted pixels keep their values: one sparse linear solve spreads colour along flat regions and stops it
at edges. EDN uses it to turn a user's few colour points into the dense hint map its adapter reads (it beat the
earlier region growing over superpixels by 1.8 dB with 10 points and 2.7 dB with 50 on 12 BSDS500 training photos,
measured at the 128 px working size), and the quality benchmark uses it, at full size, as the classical baseline.

Written here because no maintained Python library ships it; the solve is scipy's sparse LU.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from skimage.color import rgb2yuv, yuv2rgb

__all__ = ["affinity_matrix", "levin_colorize", "propagate"]

# Gray variance floor of a 3×3 window (in [0, 1] units): flat windows would otherwise make every step an edge.
_MIN_VARIANCE = 1e-6


def affinity_matrix(gray: np.ndarray) -> scipy.sparse.csr_matrix:
    """Row-normalised weights W (n × n, n = h·w) over each pixel's 8 neighbours: exp(−Δgray² / 2σ²_window)."""
    height, width = gray.shape
    n = height * width
    index = np.arange(n).reshape(height, width)
    padded = np.pad(gray, 1, mode="edge")
    windows = np.stack([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)])
    variance = np.maximum(windows.var(axis=0), _MIN_VARIANCE)
    rows, cols, weights = [], [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            ys, xs = np.mgrid[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
            rows.append(index[ys, xs].ravel())
            cols.append(index[ys + dy, xs + dx].ravel())
            weights.append(np.exp(-((gray[ys, xs] - gray[ys + dy, xs + dx]) ** 2) / (2 * variance[ys, xs])).ravel())
    rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    weights = weights / np.bincount(rows, weights, minlength=n)[rows]
    return scipy.sparse.csr_matrix((weights, (rows, cols)), shape=(n, n))


def propagate(
    gray: np.ndarray,
    seed: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """Spread ``values`` (h, w, c) from the ``seed`` pixels (h, w) bool over ``gray`` (h, w) in [0, 1].

    Free pixels satisfy x_i = Σ_j W_ij x_j (:func:`affinity_matrix`); seed pixels keep their values.
    Returns (h, w, c) float64.
    """
    gray = np.asarray(gray, dtype=np.float64)
    height, width = gray.shape
    n = height * width
    free = ~np.asarray(seed, bool).ravel()
    values = np.asarray(values, dtype=np.float64).reshape(n, -1)
    # Seed rows become identity rows: x_i = value_i.
    keep = scipy.sparse.diags(free.astype(np.float64))
    matrix = (scipy.sparse.identity(n, format="csc") - keep @ affinity_matrix(gray)).tocsc()
    rhs = np.where(free[:, None], 0.0, values)
    # Minimum-degree ordering on AᵀA+A: the same solution (to 1e-13) as the default COLAMD, 22-35 % less time to
    # factorise an 8-neighbour grid (128×96: 62 → 49 ms; 64×48: 15 → 10 ms).
    solution = scipy.sparse.linalg.splu(matrix, permc_spec="MMD_AT_PLUS_A").solve(rhs)
    return solution.reshape(height, width, -1)


def levin_colorize(gray: np.ndarray, seed: np.ndarray, seed_rgb: np.ndarray) -> np.ndarray:
    """Levin et al.'s colourisation: the seeds' YUV chroma propagated with the gray as Y; (h, w, 3) in [0, 1]."""
    gray = np.asarray(gray, dtype=np.float64)
    chroma = rgb2yuv(np.asarray(seed_rgb, dtype=np.float64))[..., 1:]
    uv = propagate(gray, seed, chroma)
    return np.clip(yuv2rgb(np.concatenate([gray[..., None], uv], axis=-1)), 0.0, 1.0)

"""Colour science for EDN: keep the input's CIE L* exactly, take only chroma from the model.

EDN colourises grayscale photos.  The output must have the same CIE L*
(D65, sRGB) as the input, so the pipeline works in CIELAB: it measures the
input's lightness (:func:`lightness`), takes the model's a*/b*
(:func:`lab_chroma`), and recombines them (:func:`compose`), shrinking chroma
(never lightness) where the combination falls outside the sRGB gamut.

The maths is written in torch so that it runs on the pipeline's device (a GPU
pipeline would otherwise wait on the CPU for a 24-megapixel scan); it uses
scikit-image's matrices and constants, so it agrees with ``skimage.color``.
Full-size work goes block by block, which bounds memory and keeps each block in
cache.  The numpy functions (:func:`to_lightness`, :func:`chroma`,
:func:`compose_with_lightness`, ...) wrap the same code for arrays.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps
from skimage.color import xyz_tristimulus_values
from skimage.color.colorconv import rgb_from_xyz, xyz_from_rgb

from .errors import EDNInputError, one_line

__all__ = [
    "to_lightness",
    "gray_from_lightness",
    "gray_image",
    "chroma",
    "compose_with_lightness",
    "to_uint8",
    "read_pixels",
    "lightness",
    "luminance_to_gray",
    "lab_chroma",
    "compose",
]

# How far float input may stray outside its nominal range before it is
# treated as a mistake rather than rounding noise.
_RANGE_SLACK = 1e-3
# Linear-sRGB tolerance for "inside the gamut"; float32 round-off is ~1e-6.
_GAMUT_TOL = 1e-5
# Bisection steps for the colours the table of largest chroma leaves outside: chroma ends within 2**-12 of the
# largest that fits (0.03 of 128), finer than 8 bits can show, so outputs change smoothly with input.
_BISECTION_STEPS = 12
# Pixels per block of full-size work: 4 MB per float channel, small enough for the cache and for memory at any
# size, large enough that torch's per-call overhead is lost in the arithmetic.
_BLOCK_PIXELS = 1 << 20

# scikit-image's sRGB (D65) matrices and white point, and the rounded CIELAB constants of its rgb2lab/lab2rgb.
_XYZ_FROM_RGB = torch.tensor(xyz_from_rgb, dtype=torch.float32)
_RGB_FROM_XYZ = torch.tensor(rgb_from_xyz, dtype=torch.float32)
_WHITE = torch.tensor(xyz_tristimulus_values(illuminant="D65", observer="2"), dtype=torch.float32)
_LAB_EPSILON = 0.008856  # (6/29)³: below it CIELAB's f is linear
_LAB_SLOPE = 7.787  # (29/6)² / 3, that line's slope
_LAB_F_BREAK = 0.2068966  # 6/29, where the inverse of f changes piece
_LAB_OFFSET = 16.0 / 116.0
# The sRGB transfer function's breakpoints (IEC 61966-2-1).
_SRGB_BREAK = 0.04045
_LINEAR_BREAK = 0.0031308

_GRAY_MODES_8BIT = ("1", "L")
_GRAY_ALPHA_MODES = ("LA", "La")
_PALETTE_MODES = ("P", "PA")
# The EXIF orientations that turn or mirror the stored pixels (1 is upright).
_TURNED_ORIENTATIONS = range(2, 9)


# --------------------------------------------------------------------------
# The formulas (torch)
# --------------------------------------------------------------------------


# Each piecewise curve below is written as curve(max(v, break)) + slope · min(v − break, 0): the two pieces meet at
# the break, so this equals the piecewise definition, and on the CPU it costs a third of torch.where (which is not
# vectorised over a boolean mask: 5 ns a pixel, more than the pow).


def _srgb_to_linear(values: torch.Tensor) -> torch.Tensor:
    curve = ((values.clamp_min(_SRGB_BREAK) + 0.055) / 1.055) ** 2.4
    return curve + (values - _SRGB_BREAK).clamp_max(0) / 12.92


def _linear_to_srgb(values: torch.Tensor) -> torch.Tensor:
    # exp2(log2(v) / 2.4) rather than pow: two thirds of the time on the CPU.
    curve = values.clamp_min(_LINEAR_BREAK).log2_().div_(2.4).exp2_().mul_(1.055).sub_(0.055 + 12.92 * _LINEAR_BREAK)
    return curve.add_(values.clamp_max(_LINEAR_BREAK), alpha=12.92)


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    return t.clamp_min(_LAB_EPSILON) ** (1 / 3) + _LAB_SLOPE * (t - _LAB_EPSILON).clamp_max(0)


def _lab_f_inverse(
    f: torch.Tensor, out: torch.Tensor | None = None, spare: torch.Tensor | None = None
) -> torch.Tensor:
    """CIELAB's f⁻¹, into ``out`` (not ``f``) if given; ``spare``, a tensor of f's shape that may be ``f`` itself,
    takes its other piece (the hot paths pass their buffers: no allocation)."""
    cube = torch.clamp_min(f, _LAB_F_BREAK, out=out).pow_(3).sub_(_LAB_F_BREAK / _LAB_SLOPE)
    return cube.add_(torch.clamp_max(f, _LAB_F_BREAK, out=spare), alpha=1 / _LAB_SLOPE)


# L* of each 8-bit sRGB value: an 8-bit gray input needs one table look-up per pixel.
_LINEAR_OF_BYTE = _srgb_to_linear(torch.arange(256, dtype=torch.float32) / 255)
_LIGHTNESS_OF_BYTE = 116 * _lab_f(_LINEAR_OF_BYTE * _XYZ_FROM_RGB[1].sum()) - 16


def _tiles(height: int, width: int):
    """(rows, columns) slices of at most _BLOCK_PIXELS pixels covering an image: runs of whole rows, or pieces of
    one row when a row alone is longer (a 1 × 100,000,000 PNG header is legal)."""
    rows = max(1, _BLOCK_PIXELS // max(width, 1))
    columns = min(width, _BLOCK_PIXELS)
    for top in range(0, height, rows):
        for left in range(0, width, columns):
            yield slice(top, min(top + rows, height)), slice(left, min(left + columns, width))


class _Buffers:
    """Scratch tensors for full-size work, by name. With ``reuse`` each is kept for the next call, so every tile of
    an image writes the same memory: on the CPU a fresh buffer costs a page fault per 4 KB on first touch, and
    reusing them took a fifth off composing edn-tiny's 24-megapixel outputs. Without ``reuse`` each call allocates,
    for results that must outlive the next call."""

    def __init__(self, device: torch.device, reuse: bool = True):
        self.device, self.reuse, self._kept = device, reuse, {}

    def __call__(self, name: str, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not self.reuse:
            return torch.empty(shape, dtype=dtype, device=self.device)
        size = math.prod(shape)
        kept = self._kept.get(name)
        if kept is None or kept.numel() < size:  # tiles come largest first, so this allocates once per name
            kept = self._kept[name] = torch.empty(size, dtype=dtype, device=self.device)
        return kept[:size].view(shape)


def lightness(pixels: torch.Tensor) -> torch.Tensor:
    """CIE L* (H, W) float32 of sRGB ``pixels`` (H, W, C), C in 1, 3, 4 (alpha is ignored), on their device.

    uint8 pixels are scaled to [0, 1]; float ones must already lie in [0, 1] (:func:`read_pixels` makes sure).
    """
    height, width, channels = pixels.shape
    out = torch.empty(height, width, dtype=torch.float32, device=pixels.device)
    weights = _XYZ_FROM_RGB[1].to(pixels.device)
    linear_of_byte = _LINEAR_OF_BYTE.to(pixels.device)
    lightness_of_byte = _LIGHTNESS_OF_BYTE.to(pixels.device)
    for rows, columns in _tiles(height, width):
        block = pixels[rows, columns]
        # Look-ups by index_select with int32 indices: indexing with a tensor first widens it to int64, and numpy's
        # look-up took 1.5 times as long on the CPU (a 24-megapixel gray scan: 110 ms against 75).
        if channels < 3 and block.dtype == torch.uint8:
            out[rows, columns] = lightness_of_byte.index_select(0, block.reshape(-1).int()).view(block.shape[:2])
            continue
        if block.dtype == torch.uint8:
            linear = linear_of_byte.index_select(0, block[..., :3].reshape(-1).int()).view(*block.shape[:2], 3)
        else:
            linear = _srgb_to_linear(block[..., :3].float().clamp(0, 1))
        y = linear @ weights if channels >= 3 else linear[..., 0] * weights.sum()
        out[rows, columns] = 116 * _lab_f(y) - 16
    return out


def luminance_to_gray(lightness_: torch.Tensor) -> torch.Tensor:
    """The sRGB value in [0, 1] of the neutral gray (R = G = B) with each L*: the exact inverse on gray input."""
    luminance = _lab_f_inverse((lightness_ + 16) / 116) / _XYZ_FROM_RGB[1].sum().to(lightness_.device)
    return _linear_to_srgb(luminance).clamp(0, 1)


def lab_chroma(rgb: torch.Tensor) -> torch.Tensor:
    """CIE a*, b* (..., 2, H, W) of sRGB images (..., 3, H, W) in [0, 1], as skimage's rgb2lab computes them.

    Differentiable (the training's chroma loss uses it); CIELAB's own linear segment near black bounds its slope.
    """
    linear = _srgb_to_linear(rgb.clamp(0, 1))
    over_white = (_XYZ_FROM_RGB / _WHITE[:, None]).to(rgb)
    f = _lab_f(torch.einsum("ck,...khw->...chw", over_white, linear))
    return torch.stack([500 * (f[..., 0, :, :] - f[..., 1, :, :]), 200 * (f[..., 1, :, :] - f[..., 2, :, :])], dim=-3)


# Linear sRGB from (X / Xn, Y, Z / Zn): skimage's matrix with the white point folded in, one row per channel.
_RGB_FROM_RELATIVE_XYZ = _RGB_FROM_XYZ * _WHITE
_RGB_ROWS = _RGB_FROM_RELATIVE_XYZ.tolist()  # as Python numbers, for the per-channel loop below


def _linear_rgb(
    fy: torch.Tensor, luminance: torch.Tensor, offsets: torch.Tensor, buffers: _Buffers | None = None
) -> torch.Tensor:
    """Linear sRGB (3, N) of CIELAB colours given as f(Y) and Y (N,) and the offsets (2, N) a*/500 and −b*/200 of
    f(X) and f(Z) from f(Y) (negative Z clipped as skimage does), in ``buffers`` (fresh ones by default). In place
    where it can: this runs on every output pixel, and a dozen times more on those outside the gamut."""
    buffers = buffers or _Buffers(fy.device, reuse=False)
    xz = torch.add(offsets, fy, out=buffers("xz", *offsets.shape))
    xz[1].clamp_min_(0)
    x, z = _lab_f_inverse(xz, out=buffers("xz_inverse", *offsets.shape), spare=xz)
    linear = buffers("linear", 3, fy.numel())
    # Channel by channel: a matrix product with two columns is three times slower.
    for channel, (to_x, to_y, to_z) in enumerate(_RGB_ROWS):
        torch.mul(luminance, to_y, out=linear[channel]).add_(x, alpha=to_x).add_(z, alpha=to_z)
    return linear


def _inside(linear: torch.Tensor, buffers: _Buffers | None = None) -> torch.Tensor:
    buffers = buffers or _Buffers(linear.device, reuse=False)
    pixels = linear.shape[1]
    # amin and amax apart: torch.aminmax over the channel dimension is eight times slower on the CPU.
    low = torch.amin(linear, 0, out=buffers("low", pixels))
    high = torch.amax(linear, 0, out=buffers("high", pixels))
    inside = torch.ge(low, -_GAMUT_TOL, out=buffers("inside", pixels, dtype=torch.bool))
    return inside.logical_and_(torch.le(high, 1 + _GAMUT_TOL, out=buffers("below_white", pixels, dtype=torch.bool)))


def _largest_fitting_scale(
    fy: torch.Tensor, luminance: torch.Tensor, offsets: torch.Tensor, steps: int
) -> torch.Tensor:
    """The largest factor in [0, 1] (to 2**-steps, by bisection) by which the chroma ``offsets`` (2, N) can be
    scaled and fit in sRGB at f(Y) and Y (N,). Scale 0, neutral gray, always fits."""
    scale = torch.zeros_like(fy)
    step = 0.5
    for _ in range(steps):
        scale.add_(_inside(_linear_rgb(fy, luminance, offsets * (scale + step))), alpha=step)
        step /= 2
    return scale


# The largest chroma that fits in sRGB, tabulated over L* (steps of 0.25) and hue (steps of half a degree) at the
# scale and precision of its bisection (to 2**-16 of 200, above the largest in sRGB, about 134 for blue); the few
# pixels that the table's interpolation leaves just outside take a bisection of their own.
_TABLE_LIGHTNESS_STEPS = 400
_TABLE_HUE_STEPS = 720
_TABLE_CHROMA, _TABLE_BISECTION_STEPS = 200.0, 16
_TABLE_MARGIN = 1e-3  # the table is read this share short of the boundary, so interpolation rarely overshoots


@functools.cache
def _max_chroma_table(device: torch.device) -> torch.Tensor:
    """The largest chroma fitting in sRGB at each (L*, hue) of a regular grid, as each cell's four corners (cells, 4:
    top left, top right, bottom left, bottom right): built once per device (tens of milliseconds), it fits an
    out-of-gamut pixel with one conversion where a bisection costs twelve (most of the composition's time on
    saturated outputs)."""
    lightness_ = torch.linspace(0, 100, _TABLE_LIGHTNESS_STEPS + 1, dtype=torch.float64)
    hue = torch.linspace(-math.pi, math.pi, _TABLE_HUE_STEPS + 1, dtype=torch.float64)
    lightness_, hue = (grid.reshape(-1) for grid in torch.meshgrid(lightness_, hue, indexing="ij"))
    fy = ((lightness_ + 16) / 116).float().to(device)
    offsets = (torch.stack([hue.cos() / 500, -hue.sin() / 200]) * _TABLE_CHROMA).float().to(device)
    scale = _largest_fitting_scale(fy, _lab_f_inverse(fy), offsets, _TABLE_BISECTION_STEPS)
    grid = scale.mul_(_TABLE_CHROMA * (1 - _TABLE_MARGIN)).view(_TABLE_LIGHTNESS_STEPS + 1, _TABLE_HUE_STEPS + 1)
    # Each cell's four corners side by side: one row look-up per pixel, where four scattered ones cost twice as much.
    corners = (grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:])
    return torch.stack(corners, dim=-1).view(-1, 4)


def _fit_to_gamut(fy: torch.Tensor, luminance: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Linear sRGB (3, N) of out-of-gamut colours with their chroma scaled down to the largest that fits: L* and
    hue kept. The largest is read from :func:`_max_chroma_table` (bilinear in L* and hue, within a few tenths of a
    chroma unit); colours still outside after it take a bisection."""
    a, b = offsets[0] * 500, offsets[1] * -200
    chroma, hue = torch.hypot(a, b), torch.atan2(b, a)
    # Table coordinates, kept inside its last cell so that the cell's right and lower neighbours exist.
    row = fy.mul(116 * _TABLE_LIGHTNESS_STEPS / 100).sub_(16 * _TABLE_LIGHTNESS_STEPS / 100)
    column = hue.add_(math.pi).mul_(_TABLE_HUE_STEPS / (2 * math.pi))
    row.clamp_(0, _TABLE_LIGHTNESS_STEPS - 1e-3)
    column.clamp_(0, _TABLE_HUE_STEPS - 1e-3)
    top_row, left = row.floor(), column.floor()
    cell = torch.mul(top_row, _TABLE_HUE_STEPS).add_(left).int()  # exact in float32: under 2**24 cells
    down, across = row.sub_(top_row), column.sub_(left)
    corners = _max_chroma_table(fy.device).index_select(0, cell)
    top = torch.lerp(corners[:, 0], corners[:, 1], across)
    bottom = torch.lerp(corners[:, 2], corners[:, 3], across)
    scaled = offsets * torch.lerp(top, bottom, down).div_(chroma.clamp_min_(1e-6)).clamp_max_(1)
    linear = _linear_rgb(fy, luminance, scaled)
    outside = _inside(linear).logical_not_().nonzero().squeeze(1)
    if len(outside):
        fy, luminance = fy.index_select(0, outside), luminance.index_select(0, outside)
        scaled = scaled.index_select(1, outside)
        scale = _largest_fitting_scale(fy, luminance, scaled, _BISECTION_STEPS)
        linear.index_copy_(1, outside, _linear_rgb(fy, luminance, scaled * scale))
    return linear


# 8-bit output encodes linear values by a table of the sRGB byte at 2**20 even steps of [0, 1] (1 MB): one look-up
# instead of the curve's eight passes over each channel (10-17 % off the composition of a 24-megapixel image). A value
# within a table step of a rounding boundary can come out one level off the float curve's rounding: about one
# value in 8,000 on a photo.
_ENCODE_STEPS = 1 << 20


@functools.cache
def _srgb_byte_table(device: torch.device) -> torch.Tensor:
    linear = torch.linspace(0, 1, _ENCODE_STEPS + 1, dtype=torch.float64)
    return _linear_to_srgb(linear).mul_(255).round_().to(torch.uint8).to(device)


def _bilinear_matrix(span: slice, source: int, target: int, device) -> tuple[slice, torch.Tensor]:
    """Bilinear weights (len(span), n) from the n source samples of ``window`` to the target indices ``span``
    (half-pixel centres, as F.interpolate's align_corners=False), so that each tile is upsampled on its own.

    A tile needs only a few source rows: a matrix product with this band costs a few multiply-adds a pixel, where
    gathering two source rows per output row and blending them costs four passes over the tile.
    """
    centre = ((torch.arange(span.start, span.stop, device=device) + 0.5) * (source / target) - 0.5).clamp_min(0)
    below = centre.floor().long().clamp_max(source - 1)
    above = (below + 1).clamp_max(source - 1)
    window = slice(int(below[0]), int(above[-1]) + 1)
    weight = (centre - below).clamp(0, 1)
    matrix = torch.zeros(len(centre), window.stop - window.start, device=device)
    matrix.scatter_add_(1, (below - window.start)[:, None], (1 - weight)[:, None])
    matrix.scatter_add_(1, (above - window.start)[:, None], weight[:, None])
    return window, matrix


def compose(lightness_: torch.Tensor, ab: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (H, W, 3) sRGB image with L* ``lightness_`` (H, W) and chroma ``ab`` (2, h, w), upsampled bilinearly.

    Where (L*, a*, b*) lies outside the sRGB gamut the chroma is scaled down per pixel, keeping L* and hue, until
    it fits: clipping RGB instead would change L*, which is exactly what EDN promises not to do. The work goes
    tile by tile, each upsampling its own chroma, so neither the full-size chroma nor (with ``dtype`` uint8, which
    rounds to 8 bits) a float copy of a 100-megapixel output ever exists.
    """
    height, width = lightness_.shape
    ab = ab.float()
    if ab.shape[-2] > height or ab.shape[-1] > width:  # a small input colourised at a larger working size
        size = (min(ab.shape[-2], height), min(ab.shape[-1], width))
        ab = F.interpolate(ab[None], size=size, mode="bilinear", antialias=True)[0]
    # f(X) and f(Z) are f(Y) + a*/500 and f(Y) − b*/200: offsets that interpolate as a*, b* do, made at low size.
    offsets = ab * torch.tensor([1 / 500, -1 / 200], device=ab.device)[:, None, None]
    source_h, source_w = offsets.shape[-2:]
    out = torch.empty(height, width, 3, dtype=dtype, device=lightness_.device)
    buffers = _Buffers(lightness_.device)
    for rows, columns in _tiles(height, width):
        window_w, across = _bilinear_matrix(columns, source_w, width, offsets.device)
        window_h, down = _bilinear_matrix(rows, source_h, height, offsets.device)
        shape = (rows.stop - rows.start, columns.stop - columns.start)
        pixels = math.prod(shape)
        tile = buffers("tile", 2, pixels)
        torch.matmul(down, offsets[:, window_h, window_w] @ across.T, out=tile.view(2, *shape))
        fy = buffers("fy", pixels)
        torch.add(lightness_[rows, columns], 16, out=fy.view(shape)).div_(116)
        luminance = _lab_f_inverse(fy, out=buffers("luminance", pixels), spare=buffers("spare", pixels))
        linear = _linear_rgb(fy, luminance, tile, buffers)
        outside = _inside(linear, buffers).logical_not_().nonzero().squeeze(1)  # indices: a mask would search again
        if len(outside):
            parts = fy.index_select(0, outside), luminance.index_select(0, outside), tile.index_select(1, outside)
            fitted = _fit_to_gamut(*parts)
            linear.index_copy_(1, outside, fitted)
        # Within the gamut's tolerance of [0, 1], and the curve's two pieces can round past 0: both are clamped.
        block = out[rows, columns]
        if dtype == torch.uint8:  # the nearest table step, by truncation of a non-negative value + 0.5
            index = buffers("index", 3, pixels, dtype=torch.int32)
            index.copy_(linear.mul_(_ENCODE_STEPS).add_(0.5).clamp_(0, _ENCODE_STEPS))
            srgb = buffers("bytes", 3, pixels, dtype=torch.uint8)
            torch.index_select(_srgb_byte_table(index.device), 0, index.view(-1), out=srgb.view(-1))
        else:
            srgb = _linear_to_srgb(linear).clamp_(0, 1)
        for channel in range(3):  # channel by channel: a third faster than one transposing copy
            block[..., channel].copy_(srgb[channel].view(block.shape[:2]))
    return out


# --------------------------------------------------------------------------
# The numpy functions
# --------------------------------------------------------------------------


def to_lightness(image) -> np.ndarray:
    """Return the CIE L* (D65, 0..100) of `image` as an (H, W) float32 array.

    Accepts a PIL image of any mode, a file path, a numpy array (H, W),
    (H, W, 1), (H, W, 3) or (H, W, 4), or a channels-first torch tensor
    (H, W), (1, H, W), (3, H, W) or (4, H, W).  Alpha is ignored.  Pixel
    values are sRGB: uint8 over 255, uint16 over 65535, bool as 0/1, float
    already in [0, 1].  Anything else raises EDNInputError.
    """
    return lightness(read_pixels(image)).numpy()


def gray_from_lightness(lightness_: np.ndarray) -> np.ndarray:
    """Return the (H, W) float32 sRGB value in [0, 1] of the neutral gray with each L*.

    Neutral means R = G = B, so this is the exact inverse of
    :func:`to_lightness` on gray input: it turns a lightness map back into a
    gray picture without shifting its L*.
    """
    return luminance_to_gray(torch.from_numpy(_checked_lightness(lightness_))).numpy()


def chroma(rgb: np.ndarray) -> np.ndarray:
    """Return the CIE a*, b* of an (H, W, 3) sRGB image as (H, W, 2) float32.

    This is all the pipeline keeps from the model's colour output.  Pixels
    follow the same rules as :func:`to_lightness` (float in [0, 1], uint8,
    uint16, bool).
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise EDNInputError(f"expected an (H, W, 3) RGB array, got {_describe_shape(rgb)}")
    _check_not_empty(rgb.shape)
    values = _unit_float(_tensor_of(rgb))
    return np.ascontiguousarray(lab_chroma(values.permute(2, 0, 1)).permute(1, 2, 0).numpy())


def compose_with_lightness(lightness_: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Return the (H, W, 3) float32 sRGB image with L* `lightness_` and hue/chroma from `ab` (H, W, 2).

    Where (L*, a*, b*) lies outside the sRGB gamut the chroma is scaled down
    per pixel, keeping L* and hue, until it fits (:func:`compose`).
    """
    lightness_ = _checked_lightness(lightness_)
    if not isinstance(ab, np.ndarray) or ab.shape != lightness_.shape + (2,):
        raise EDNInputError(
            f"ab must have shape {lightness_.shape + (2,)} to match lightness, got {_describe_shape(ab)}"
        )
    if ab.dtype.kind not in "fiu" or not np.isfinite(ab).all():
        raise EDNInputError("ab must be finite real numbers")
    ab = torch.from_numpy(np.ascontiguousarray(ab, dtype=np.float32)).permute(2, 0, 1)
    return compose(torch.from_numpy(lightness_), ab).numpy()


def gray_image(image) -> np.ndarray:
    """The (H, W) uint8 grayscale EDN makes of ``image``: its CIE L* as neutral gray (the input it keeps)."""
    return to_uint8(gray_from_lightness(to_lightness(image)))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Round a float image in [0, 1] to uint8 (values outside are clipped)."""
    rgb = np.asarray(rgb)
    if rgb.dtype.kind not in "fiub" or not np.isfinite(rgb).all():
        raise EDNInputError("image values must be finite real numbers")
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------
# Input decoding
# --------------------------------------------------------------------------


def read_pixels(image, max_pixels: int | None = None) -> torch.Tensor:
    """The sRGB pixels of ``image`` as a CPU tensor (H, W, C), C in 1, 3, 4: uint8, or float32 in [0, 1].

    Accepts what :func:`to_lightness` accepts (uint16 and bool become float32 and uint8 without loss) and raises
    EDNInputError for anything else: the one place where an input's type, shape, mode and values are checked.
    An image of more than ``max_pixels`` is refused before it is decoded (a file's size is in its header).
    """
    if isinstance(image, Image.Image):
        return _pixels_from_pil(image, source="", max_pixels=max_pixels)
    if isinstance(image, (str, os.PathLike)):
        return _pixels_from_path(image, max_pixels)
    if isinstance(image, np.ndarray):
        return _pixels_from_array(image, max_pixels)
    if isinstance(image, torch.Tensor):
        return _pixels_from_array(_array_from_tensor(image), max_pixels)
    raise EDNInputError(
        f"unsupported image type {type(image).__name__}; expected a PIL image, "
        "a file path, a numpy array or a torch tensor"
    )


def _check_size(width: int, height: int, max_pixels: int | None, source: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise EDNInputError(
            f"{source}image is {width}×{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
            f"{max_pixels / 1e6:.1f} (max_pixels raises it)"
        )


def _pixels_from_path(path, max_pixels: int | None) -> torch.Tensor:
    path = os.fspath(path)
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise EDNInputError(f"image file not found: {path}") from None
    except Exception as exc:  # PIL raises many types for unreadable files
        raise EDNInputError(f"could not read image: {path}: {one_line(exc)}") from None
    with image:
        return _pixels_from_pil(image, source=f"{path}: ", max_pixels=max_pixels)


def _pixels_from_pil(image: Image.Image, source: str, max_pixels: int | None) -> torch.Tensor:
    """Decode and upright `image`, then take its pixels according to its mode."""
    _check_size(image.width, image.height, max_pixels, source)
    try:
        image.load()
        # Only a turned or mirrored image (EXIF orientation 2-8) needs exif_transpose: for any other it returns a
        # copy, the whole image's memory again (300 MB for a 100-megapixel RGB scan) and 8 ms at 12 megapixels.
        if image.getexif().get(ExifTags.Base.Orientation, 1) in _TURNED_ORIENTATIONS:
            image = ImageOps.exif_transpose(image)
    except Exception as exc:  # truncated/corrupt data surfaces here, not at open()
        raise EDNInputError(f"could not read image: {source}{one_line(exc)}") from None
    _check_not_empty((image.height, image.width))

    mode = image.mode
    if mode == "LAB":  # PIL stores L* scaled to 0..255: back to the gray of that L*
        lab_lightness = np.asarray(image.getchannel("L"), dtype=np.float32) * np.float32(100 / 255)
        return luminance_to_gray(torch.from_numpy(lab_lightness))[..., None]
    if mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16)  # also fixes big-endian I;16B
    elif mode == "I":  # how PIL reads 16-bit PNGs
        pixels = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    elif mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
    elif mode in _GRAY_MODES_8BIT:  # "L" as it is: converting it to itself would copy it first
        pixels = np.asarray(image if mode == "L" else image.convert("L"))
    elif mode in _GRAY_ALPHA_MODES:
        pixels = np.asarray(image.convert("LA"))[..., 0]
    elif mode in _PALETTE_MODES:  # RGBA honours palette transparency
        pixels = np.asarray(image.convert("RGBA"))
    else:
        try:
            pixels = np.asarray(image.convert("RGB"))
        except ValueError:
            raise EDNInputError(f"unsupported image mode {mode!r}") from None
    return _pixels_from_array(pixels)


def _array_from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """Channels-first tensor -> channels-last numpy array, keeping uint8/bool as is."""
    shape = tuple(tensor.shape)
    if not (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3, 4))):
        raise EDNInputError(f"expected a tensor of shape (H, W), (1, H, W), (3, H, W) or (4, H, W), got shape {shape}")
    if tensor.layout != torch.strided or tensor.is_meta:
        raise EDNInputError(
            f"expected a dense tensor with pixel data, got a {tensor.layout} tensor on {tensor.device}"
        )
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        array = tensor.float().numpy()
    elif tensor.dtype in (torch.uint8, torch.bool):
        array = tensor.numpy()
    else:
        raise EDNInputError(f"unsupported tensor dtype {tensor.dtype}; expected float in [0, 1] or uint8")
    return np.moveaxis(array, 0, -1) if array.ndim == 3 else array


def _pixels_from_array(pixels: np.ndarray, max_pixels: int | None = None) -> torch.Tensor:
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
        raise EDNInputError(
            f"expected an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {pixels.shape}"
        )
    _check_not_empty(pixels.shape)
    _check_size(pixels.shape[1], pixels.shape[0], max_pixels, "")
    tensor = _tensor_of(pixels if pixels.ndim == 3 else pixels[..., None])
    return tensor if tensor.dtype == torch.uint8 else _unit_float(tensor)


def _tensor_of(pixels: np.ndarray) -> torch.Tensor:
    """A tensor of any numpy pixels; uint16 (which torch cannot compute with) as its float32 values."""
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        pixels = pixels.astype(np.float32)
        pixels /= np.float32(65535)
    elif pixels.dtype.kind == "f" and pixels.dtype != np.float32:
        pixels = pixels.astype(np.float32)
    elif pixels.dtype.kind == "b":
        pixels = pixels.astype(np.uint8) * np.uint8(255)
    if pixels.dtype.kind not in "fu" or (pixels.dtype.kind == "u" and pixels.dtype.itemsize != 1):
        raise EDNInputError(f"unsupported pixel type {pixels.dtype}; expected uint8, uint16, bool or float in [0, 1]")
    if not pixels.flags.writeable:  # e.g. np.asarray of a PIL image: torch tensors may not alias read-only memory
        pixels = pixels.copy()
    return torch.from_numpy(np.ascontiguousarray(pixels))


def _unit_float(pixels: torch.Tensor) -> torch.Tensor:
    """Scale uint8 pixels to [0, 1] float32; validate float pixels (clipping rounding noise)."""
    if pixels.dtype == torch.uint8:
        return pixels.float() / 255
    values = pixels.float()
    if not torch.isfinite(values).all():
        raise EDNInputError("image contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise EDNInputError(f"float image values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]")
    return values.clamp(0.0, 1.0)


# --------------------------------------------------------------------------
# Lab helpers
# --------------------------------------------------------------------------


def _checked_lightness(lightness: np.ndarray) -> np.ndarray:
    if not isinstance(lightness, np.ndarray) or lightness.ndim != 2:
        raise EDNInputError(f"lightness must be an (H, W) array, got {_describe_shape(lightness)}")
    _check_not_empty(lightness.shape)
    if lightness.dtype.kind not in "fiu" or not np.isfinite(lightness).all():
        raise EDNInputError("lightness must be finite real numbers")
    values = lightness.astype(np.float32)
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_SLACK or high > 100 + _RANGE_SLACK:
        raise EDNInputError(f"lightness must lie in [0, 100], got range [{low:.4g}, {high:.4g}]")
    return np.clip(values, 0.0, 100.0, out=values)


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


def _check_not_empty(shape) -> None:
    if shape[0] == 0 or shape[1] == 0:
        raise EDNInputError(f"image is empty ({shape[0]}×{shape[1]} pixels)")


def _describe_shape(value) -> str:
    if isinstance(value, np.ndarray):
        return f"shape {value.shape}"
    return f"type {type(value).__name__}"

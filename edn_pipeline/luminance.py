"""Colour science for EDN: keep the input's CIE L* exactly, take only chroma from the model.

EDN colourises grayscale photos.  The output must have the same CIE L*
(D65, sRGB) as the input, so the pipeline works in CIELAB: it measures the
input's lightness with :func:`to_lightness`, takes the model's a*/b* with
:func:`chroma`, and recombines them with :func:`compose_with_lightness`,
which shrinks chroma (never lightness) where the combination falls outside
the sRGB gamut.  All colour-space maths is delegated to scikit-image.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps
from skimage.color import lab2xyz, rgb2lab, rgb2xyz, xyz2rgb

from .errors import EDNInputError

__all__ = [
    "to_lightness",
    "gray_from_lightness",
    "gray_image",
    "chroma",
    "compose_with_lightness",
    "to_uint8",
]

# How far float input may stray outside its nominal range before it is
# treated as a mistake rather than rounding noise.
_RANGE_SLACK = 1e-3
# Linear-sRGB tolerance for "inside the gamut"; float32 round-off is ~1e-6.
_GAMUT_TOL = 1e-5
# Bisection steps: chroma ends within 2**-16 of the gamut boundary, so outputs change smoothly with input.
_BISECTION_STEPS = 16
# Pixels per block in compose_with_lightness: bounds memory on huge images
# and keeps the working set in cache.
_BLOCK_PIXELS = 1 << 18

# The XYZ -> linear-sRGB matrix, derived from skimage itself so that our
# gamut test agrees with skimage's conversions: rgb2xyz of the pure primaries
# (1 encodes to linear 1) gives the XYZ of each primary, one per row.
_XYZ_FROM_RGB = rgb2xyz(np.eye(3, dtype=np.float64)[np.newaxis])[0]
# Row c of the inverse's transpose maps (X, Y, Z) to linear channel c.
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB).T.astype(np.float32)
# XYZ of sRGB white: luminance Y times this is the neutral gray of that Y.
_XYZ_SRGB_WHITE = _XYZ_FROM_RGB.sum(axis=0).astype(np.float32)

_GRAY_MODES_8BIT = ("1", "L")
_GRAY_ALPHA_MODES = ("LA", "La")
_PALETTE_MODES = ("P", "PA")


def to_lightness(image) -> np.ndarray:
    """Return the CIE L* (D65, 0..100) of `image` as an (H, W) float32 array.

    Accepts a PIL image of any mode, a file path, a numpy array (H, W),
    (H, W, 1), (H, W, 3) or (H, W, 4), or a channels-first torch tensor
    (H, W), (1, H, W), (3, H, W) or (4, H, W).  Alpha is ignored.  Pixel
    values are sRGB: uint8 over 255, uint16 over 65535, bool as 0/1, float
    already in [0, 1].  Anything else raises EDNInputError.
    """
    if isinstance(image, Image.Image):
        return _lightness_from_pil(image, source="")
    if isinstance(image, (str, os.PathLike)):
        return _lightness_from_path(image)
    if isinstance(image, np.ndarray):
        return _lightness_from_array(image)
    if isinstance(image, torch.Tensor):
        return _lightness_from_array(_array_from_tensor(image))
    raise EDNInputError(
        f"unsupported image type {type(image).__name__}; expected a PIL image, "
        "a file path, a numpy array or a torch tensor"
    )


def gray_from_lightness(lightness: np.ndarray) -> np.ndarray:
    """Return the (H, W) float32 sRGB value in [0, 1] of the neutral gray with each L*.

    Neutral means R = G = B, so this is the exact inverse of
    :func:`to_lightness` on gray input: it turns a lightness map back into a
    gray picture without shifting its L*.
    """
    lightness = _checked_lightness(lightness)
    lab = np.zeros(lightness.shape + (3,), dtype=np.float32)
    lab[..., 0] = lightness
    luminance = lab2xyz(lab)[..., 1:2]
    return np.ascontiguousarray(xyz2rgb(luminance * _XYZ_SRGB_WHITE)[..., 1])


def chroma(rgb: np.ndarray) -> np.ndarray:
    """Return the CIE a*, b* of an (H, W, 3) sRGB image as (H, W, 2) float32.

    This is all the pipeline keeps from the model's colour output.  Pixels
    follow the same rules as :func:`to_lightness` (float in [0, 1], uint8,
    uint16, bool).
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise EDNInputError(f"expected an (H, W, 3) RGB array, got {_describe_shape(rgb)}")
    _check_not_empty(rgb.shape)
    return np.ascontiguousarray(rgb2lab(_unit_float(rgb))[..., 1:], dtype=np.float32)


def compose_with_lightness(lightness: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Return the (H, W, 3) float32 sRGB image with L* `lightness` and hue/chroma from `ab`.

    Where (L*, a*, b*) lies outside the sRGB gamut the chroma is scaled down
    per pixel, keeping L* and hue, until it fits.  Clipping RGB instead
    would change L*, which is exactly what EDN promises not to do.
    """
    lightness = _checked_lightness(lightness)
    if not isinstance(ab, np.ndarray) or ab.shape != lightness.shape + (2,):
        raise EDNInputError(
            f"ab must have shape {lightness.shape + (2,)} to match lightness, "
            f"got {_describe_shape(ab)}"
        )
    if ab.dtype.kind not in "fiu" or not np.isfinite(ab).all():
        raise EDNInputError("ab must be finite real numbers")

    lab = np.empty((lightness.size, 3), dtype=np.float32)
    lab[:, 0] = lightness.ravel()
    lab[:, 1:] = ab.reshape(-1, 2)
    rgb = np.empty_like(lab)
    with warnings.catch_warnings():
        # lab2xyz warns when a large b* (strong yellow) gives negative Z; such
        # pixels are out of gamut and get their chroma shrunk anyway.
        warnings.filterwarnings("ignore", message=".*negative Z values.*")
        for start in range(0, len(lab), _BLOCK_PIXELS):
            block = slice(start, start + _BLOCK_PIXELS)
            rgb[block] = _compose_block(lab[block])
    return rgb.reshape(lightness.shape + (3,))


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


def _lightness_from_path(path) -> np.ndarray:
    path = os.fspath(path)
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise EDNInputError(f"image file not found: {path}") from None
    except Exception as exc:  # PIL raises many types for unreadable files
        raise EDNInputError(f"could not read image: {path}: {_one_line(exc)}") from None
    with image:
        return _lightness_from_pil(image, source=f"{path}: ")


def _lightness_from_pil(image: Image.Image, source: str) -> np.ndarray:
    """Decode and upright `image`, then measure L* according to its mode."""
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # truncated/corrupt data surfaces here, not at open()
        raise EDNInputError(f"could not read image: {source}{_one_line(exc)}") from None
    _check_not_empty((image.height, image.width))

    mode = image.mode
    if mode == "LAB":  # PIL stores L* scaled to 0..255
        return np.asarray(image.getchannel("L"), dtype=np.float32) * np.float32(100 / 255)
    if mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16)  # also fixes big-endian I;16B
    elif mode == "I":  # how PIL reads 16-bit PNGs
        pixels = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    elif mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
    elif mode in _GRAY_MODES_8BIT:
        pixels = np.asarray(image.convert("L"))
    elif mode in _GRAY_ALPHA_MODES:
        pixels = np.asarray(image.convert("LA"))[..., 0]
    elif mode in _PALETTE_MODES:  # RGBA honours palette transparency
        pixels = np.asarray(image.convert("RGBA"))
    else:
        try:
            pixels = np.asarray(image.convert("RGB"))
        except ValueError:
            raise EDNInputError(f"unsupported image mode {mode!r}") from None
    return _lightness_from_array(pixels)


def _array_from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """Channels-first tensor -> channels-last numpy array, keeping uint8/bool as is."""
    shape = tuple(tensor.shape)
    if not (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3, 4))):
        raise EDNInputError(
            "expected a tensor of shape (H, W), (1, H, W), (3, H, W) or (4, H, W), "
            f"got shape {shape}"
        )
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        array = tensor.float().numpy()
    elif tensor.dtype in (torch.uint8, torch.bool):
        array = tensor.numpy()
    else:
        raise EDNInputError(
            f"unsupported tensor dtype {tensor.dtype}; expected float in [0, 1] or uint8"
        )
    return np.moveaxis(array, 0, -1) if array.ndim == 3 else array


def _lightness_from_array(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
        raise EDNInputError(
            "expected an array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got shape {pixels.shape}"
        )
    _check_not_empty(pixels.shape)
    values = _unit_float(pixels)
    if values.ndim == 3 and values.shape[2] >= 3:
        rgb = values[..., :3]
    else:  # gray value g is the neutral sRGB colour (g, g, g)
        gray = values.reshape(values.shape[:2])
        rgb = np.broadcast_to(gray[..., np.newaxis], gray.shape + (3,))
    return np.ascontiguousarray(rgb2lab(rgb)[..., 0], dtype=np.float32)


def _unit_float(pixels: np.ndarray) -> np.ndarray:
    """Scale integer pixels to [0, 1] float32; validate float pixels."""
    kind, size = pixels.dtype.kind, pixels.dtype.itemsize
    if kind == "b":
        return pixels.astype(np.float32)
    if kind == "u" and size in (1, 2):
        return pixels.astype(np.float32) / np.float32(255 if size == 1 else 65535)
    if kind != "f":
        raise EDNInputError(
            f"unsupported pixel type {pixels.dtype}; expected uint8, uint16, bool "
            "or float in [0, 1]"
        )
    values = pixels.astype(np.float32)
    if not np.isfinite(values).all():
        raise EDNInputError("image contains NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise EDNInputError(
            f"float image values must lie in [0, 1], got range [{low:.4g}, {high:.4g}]"
        )
    return np.clip(values, 0.0, 1.0, out=values)


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


def _compose_block(lab: np.ndarray) -> np.ndarray:
    """(N, 3) Lab -> (N, 3) sRGB with chroma shrunk where out of gamut."""
    xyz = lab2xyz(lab)
    outside = ~_in_gamut(xyz)
    if outside.any():
        shrunk = lab[outside]
        shrunk[:, 1:] *= _max_chroma_scale(shrunk)[:, np.newaxis]
        xyz[outside] = lab2xyz(shrunk)
    return xyz2rgb(xyz)


def _max_chroma_scale(lab: np.ndarray) -> np.ndarray:
    """Largest s in [0, 1] (to 2**-10) with (L*, s*a*, s*b*) inside sRGB, per row.

    Every row is out of gamut at s = 1; s = 0 is neutral gray, always inside.
    """
    a, b = lab[:, 1].copy(), lab[:, 2].copy()
    trial = lab.copy()
    scale = np.zeros(len(lab), dtype=np.float32)
    for step in np.float32(0.5) ** np.arange(1, _BISECTION_STEPS + 1, dtype=np.float32):
        candidate = scale + step
        np.multiply(a, candidate, out=trial[:, 1])
        np.multiply(b, candidate, out=trial[:, 2])
        np.add(scale, step, out=scale, where=_in_gamut(lab2xyz(trial)))
    return scale


def _in_gamut(xyz: np.ndarray) -> np.ndarray:
    """Whether each XYZ row is inside sRGB, judged before skimage's clipping."""
    x, y, z = (xyz[:, i].astype(np.float32, copy=False) for i in range(3))
    inside = np.ones(len(xyz), dtype=bool)
    # One channel at a time: a (N, 3) @ (3, 3) matmul goes through
    # multithreaded BLAS, which only adds contention for so little work.
    for to_x, to_y, to_z in _RGB_FROM_XYZ:
        channel = to_x * x + to_y * y + to_z * z
        inside &= np.abs(channel - np.float32(0.5)) <= np.float32(0.5 + _GAMUT_TOL)
    return inside


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


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

"""User colour hints: parsing, propagation and the adapter's condition tensor.

EDN's adapter is conditioned on [gray, hint colour map, hint confidence].  Users
give hints either as points ``(x, y, colour[, radius])`` in input-image pixels or
as an RGBA hint image whose alpha marks the hinted pixels.  Following the paper
(§1.4), hints are propagated over the grayscale image by luminance similarity
(here: Levin et al.'s edge-aware solve, :mod:`edn_pipeline.propagation`), and
every propagated colour keeps the hint's HSL hue and saturation but takes the
input's own lightness (the gray value), so hints never change the image's
structure.  The confidence channel fades with edge-aware distance from the
hints, so the adapter can tell a hinted object from one the colour only
reached by interpolation.  Training
(:mod:`edn_pipeline.training.hint_sampling`) renders its hints through the same
:func:`propagate_hints`.

Coordinates are continuous input-pixel coordinates: x grows to the right, y
downwards, and pixel (i, j) covers ``i <= x < i + 1``, ``j <= y < j + 1``.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor
from skimage.graph import MCP_Geometric

from .errors import EDNInputError
from .propagation import propagate

CONDITION_CHANNELS = 7

# Hints are propagated with the longer side at most this many pixels, then upsampled to the working size.  The
# adapter reads the hint map at the latent size (1/8 of the working size: 16 px for edn-tiny, 64 px for SD),
# and the sparse solve takes ~20 ms here against ~130 ms at 128 px, in every training example.
PROPAGATION_SIDE = 64
# The confidence channel is exp(−d / HINT_REACH), d the edge-aware distance to the nearest hint in propagation
# pixels (a sixth of the image's longer side): a click colours its object more surely than the far background.
HINT_REACH = 10.0
# Each step's cost is 1 + EDGE_COST · |∇gray|: crossing a black-to-white edge counts as EDGE_COST pixels.
EDGE_COST = 50.0
# The confidence channel of a colour-word map (render_palette): a guess from words, not a click. The adapter reads
# such a map alike at 0.3 and 1.0 (19 training-split photos, the oracle map: 28.63 against 28.64 dB).
PALETTE_CONFIDENCE = 0.5

_POINT_KEYS = {"x", "y", "color", "radius"}


@dataclass(frozen=True)
class HintPoint:
    """One validated point hint, in input-pixel coordinates."""

    x: float
    y: float
    rgb: tuple[int, int, int]
    radius: float | None = None


def parse_hints(hints, image_size: tuple[int, int]) -> list[HintPoint] | np.ndarray | None:
    """Validate user hints against the input image of size ``(width, height)``.

    Returns None (no hints), a list of HintPoint, or an (H, W, 4) uint8 RGBA
    hint image.  Every problem raises EDNInputError with a one-line message.
    """
    if hints is None:
        return None
    if isinstance(hints, Image.Image):
        return _parse_hint_image(_pil_to_rgba(hints), image_size)
    if isinstance(hints, np.ndarray):
        return _parse_hint_image(hints, image_size)
    if isinstance(hints, (list, tuple)):
        if not hints:
            return None
        return [_parse_point(i, h, image_size) for i, h in enumerate(hints)]
    raise EDNInputError(f"hints must be a list of points or an RGBA hint image, got {type(hints).__name__}")


def render_hints(
    gray: np.ndarray, hints, image_size: tuple[int, int], propagator=None
) -> tuple[np.ndarray, np.ndarray]:
    """Propagate parsed hints over ``gray`` (h, w) at the model's working size.

    Returns ``(hint_rgb, confidence)`` of :func:`propagate_hints` (with the model's ``propagator``, if it has
    one): (h, w, 3) and (h, w) float32 in [0, 1], both zero without hints.
    """
    gray = np.asarray(gray, dtype=np.float32)
    if gray.ndim != 2:
        raise ValueError(f"gray must be a 2-D (h, w) array, got shape {gray.shape}")
    h, w = gray.shape
    if hints is None or len(hints) == 0:
        seed, seed_rgb = np.zeros((h, w), bool), np.zeros((h, w, 3), np.float32)
    elif isinstance(hints, np.ndarray):
        seed, seed_rgb = _seeds_from_image(hints, (w, h))
    else:
        seed, seed_rgb = point_seeds(hints, image_size, (w, h))
    return propagate_hints(gray, seed, seed_rgb, propagator)


def render_palette(gray: np.ndarray, terms: list[str], palette_prior) -> tuple[np.ndarray, np.ndarray]:
    """The hint map of a prompt's colour words: the ``palette_prior``'s
    (:class:`~edn_pipeline.palette_prior.PalettePrior`) placement of the basic colour ``terms`` over ``gray``
    (h, w), relit like hints, at confidence PALETTE_CONFIDENCE everywhere. Returns ``(hint_rgb, confidence)`` as
    :func:`render_hints` does."""
    gray = np.asarray(gray, dtype=np.float32)
    colours = palette_prior.hint_colours(gray, terms)
    hint_rgb = relight(colours.reshape(-1, 3), gray.ravel()).reshape(colours.shape)
    return hint_rgb, np.full(gray.shape, PALETTE_CONFIDENCE, np.float32)


def propagate_hints(
    gray: np.ndarray, seed: np.ndarray, seed_rgb: np.ndarray, propagator=None
) -> tuple[np.ndarray, np.ndarray]:
    """Spread seed colours over ``gray`` (h, w): the hint map and confidence of the adapter's condition.

    ``seed`` (h, w) bool marks hinted pixels and ``seed_rgb`` (h, w, 3) their colours in [0, 1]. With a model's
    learned ``propagator`` (:class:`~edn_pipeline.hint_propagator.HintPropagator`) the hint map is its
    :meth:`~edn_pipeline.hint_propagator.HintPropagator.hint_colours`. Otherwise the seeds' colours are propagated
    edge-aware over the whole image (Levin et al.'s solve), at most PROPAGATION_SIDE pixels on the longer side,
    and relit with the gray (HSL hue and saturation of the propagated colour, lightness of the input; relighting
    after a YUV solve instead would clip bright blues to purple); seed pixels keep their own colour. Either way
    the confidence is 1 at the seeds and fades with edge-aware distance from them (HINT_REACH, EDGE_COST).
    Returns ``(hint_rgb, confidence)``, (h, w, 3) and (h, w) float32 in [0, 1]; zeros without seeds.
    """
    gray = np.asarray(gray, dtype=np.float32)
    h, w = gray.shape
    seed = np.asarray(seed, bool)
    if seed.shape != (h, w) or np.shape(seed_rgb) != (h, w, 3):
        raise ValueError(f"expected seed {(h, w)} and seed_rgb {(h, w, 3)}, got {seed.shape} and {np.shape(seed_rgb)}")
    hint_rgb = np.zeros((h, w, 3), np.float32)
    confidence = np.zeros((h, w), np.float32)
    if not seed.any():
        return hint_rgb, confidence
    scale = min(1.0, PROPAGATION_SIDE / max(h, w))
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgba = np.concatenate([seed_rgb, seed[..., None].astype(np.float32)], axis=-1)
    small_seed, small_rgb = _seeds_from_image(np.round(rgba * 255).astype(np.uint8), small)
    small_gray = _resize(gray, small)
    gradient_y, gradient_x = np.gradient(small_gray.astype(np.float64))
    distance, _ = MCP_Geometric(1.0 + EDGE_COST * np.hypot(gradient_x, gradient_y)).find_costs(np.argwhere(small_seed))
    reach = np.exp(-distance / HINT_REACH)
    if propagator is not None:
        colour = propagator.hint_colours(gray, seed, seed_rgb)
    else:
        colour = propagate(small_gray, small_seed, small_rgb)
        colour = np.stack([_resize(colour[..., c].astype(np.float32), (w, h)) for c in range(3)], axis=-1)
    colour[seed] = seed_rgb[seed]
    hint_rgb = relight(colour.reshape(-1, 3), gray.ravel()).reshape(h, w, 3)
    # Below 1 off the seeds: upsampling can reach 1 between seeds that were neighbours at the propagation size.
    confidence = np.clip(_resize(reach.astype(np.float32), (w, h)), 0.0, np.nextafter(np.float32(1), np.float32(0)))
    confidence[seed] = 1.0
    return hint_rgb, confidence


def _resize(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float32 (h, w) map resized to ``size`` (width, height), bilinear (PIL's, with antialiasing)."""
    if channel.shape[::-1] == tuple(size):
        return channel.astype(np.float32)
    return np.asarray(Image.fromarray(channel.astype(np.float32)).resize(size, Image.Resampling.BILINEAR), np.float32)


def relight(colours: np.ndarray, lightness: np.ndarray) -> np.ndarray:
    """Hue and saturation of ``colours`` (N, 3) with HSL lightness ``lightness`` (N,): hints never change tones.

    Training (:mod:`edn_pipeline.training.hint_sampling`) and inference share this rule, so their conditions match.
    """
    hue, sat = _rgb_to_hue_sat(colours)
    return _hsl_to_rgb(hue, sat, lightness)


def hint_condition(gray: np.ndarray, hint_rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Stack the adapter's (h, w, 7) condition: gray x3, hint RGB, hint confidence (``mask``).

    Gray is replicated to three channels because that is what a ControlNet fed a
    grayscale photo sees.
    """
    gray = np.asarray(gray, dtype=np.float32)
    hint_rgb = np.asarray(hint_rgb, dtype=np.float32)
    mask = np.asarray(mask, dtype=np.float32)
    if gray.ndim != 2 or hint_rgb.shape != gray.shape + (3,) or mask.shape != gray.shape:
        raise ValueError(
            f"expected gray (h, w), hint_rgb (h, w, 3), mask (h, w); got {gray.shape}, {hint_rgb.shape}, {mask.shape}"
        )
    return np.concatenate([np.repeat(gray[..., None], 3, axis=-1), hint_rgb, mask[..., None]], axis=-1)


# --- parsing -----------------------------------------------------------------


def _parse_point(index: int, hint, image_size: tuple[int, int]) -> HintPoint:
    """Turn one user point (tuple, list, dict or HintPoint) into a HintPoint."""
    if isinstance(hint, HintPoint):
        x, y, colour, radius = hint.x, hint.y, hint.rgb, hint.radius
    elif isinstance(hint, dict):
        unknown = set(hint) - _POINT_KEYS
        if unknown:
            raise EDNInputError(
                f"hint {index}: unknown key(s) {', '.join(repr(k) for k in sorted(map(str, unknown)))}; "
                "expected 'x', 'y', 'color' and optionally 'radius'"
            )
        missing = [k for k in ("x", "y", "color") if k not in hint]
        if missing:
            raise EDNInputError(f"hint {index}: missing key(s) {', '.join(map(repr, missing))}")
        x, y, colour, radius = hint["x"], hint["y"], hint["color"], hint.get("radius")
    elif isinstance(hint, (list, tuple)):
        if len(hint) not in (3, 4):
            raise EDNInputError(
                f"hint {index}: expected (x, y, colour) or (x, y, colour, radius), got {len(hint)} values"
            )
        x, y, colour = hint[:3]
        radius = hint[3] if len(hint) == 4 else None
    else:
        raise EDNInputError(
            f"hint {index}: expected a tuple (x, y, colour[, radius]) or a dict, got {type(hint).__name__}"
        )

    x = _finite(index, "x", x)
    y = _finite(index, "y", y)
    width, height = image_size
    if not (0 <= x < width and 0 <= y < height):
        raise EDNInputError(f"hint {index} at ({x:g}, {y:g}) is outside the {width}×{height} image")
    if radius is not None:
        radius = _finite(index, "radius", radius)
        if radius <= 0:
            raise EDNInputError(f"hint {index}: radius must be > 0, got {radius:g}")
    return HintPoint(x, y, _parse_colour(index, colour), radius)


def _finite(index: int, name: str, value) -> float:
    """A finite float, or an EDNInputError naming the hint and field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise EDNInputError(f"hint {index}: {name} must be a finite number, got {value!r}")
    return float(value)


def _parse_colour(index: int, colour) -> tuple[int, int, int]:
    """A colour string (anything PIL.ImageColor knows) or three ints 0..255."""
    if isinstance(colour, str):
        try:
            rgb = ImageColor.getrgb(colour)[:3]  # drop alpha, if given
        except ValueError:
            raise EDNInputError(f"hint {index}: cannot parse colour {colour!r}") from None
        hue = re.match(r"\s*hs[lvb]a?\(\s*([-+0-9.e]+)", colour.lower())
        if not all(0 <= c <= 255 for c in rgb) or (hue and not 0 <= float(hue[1]) <= 360):
            # PIL passes "rgb(300,0,0)" through, and wraps "hsl(400,...)" around the colour wheel
            raise EDNInputError(f"hint {index}: colour {colour!r} is outside the range of its notation")
        return tuple(int(c) for c in rgb)
    if isinstance(colour, (list, tuple, np.ndarray)) and len(colour) == 3:
        for c in colour:
            if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Integral):
                raise EDNInputError(f"hint {index}: colour channels must be integers 0..255, got {c!r}")
            if not 0 <= c <= 255:
                raise EDNInputError(f"hint {index}: colour channel {int(c)} is outside 0..255")
        return tuple(int(c) for c in colour)
    raise EDNInputError(f"hint {index}: colour must be a colour string or three integers 0..255, got {colour!r}")


def _pil_to_rgba(image: Image.Image) -> np.ndarray:
    """RGBA array of a PIL hint image; the image must carry transparency."""
    if image.mode != "RGBA":
        has_alpha = any(b in ("A", "a") for b in image.getbands()) or "transparency" in image.info
        if not has_alpha:
            raise EDNInputError(
                f"hint image has mode {image.mode} without alpha; give an RGBA image whose alpha marks the hints"
            )
        try:
            image = image.convert("RGBA")
        except (ValueError, OSError) as exc:
            raise EDNInputError(f"cannot convert the {image.mode} hint image to RGBA: {exc}") from None
    return np.array(image, dtype=np.uint8)


def _parse_hint_image(array: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Check an RGBA hint array's layout and size; return a private copy."""
    if array.ndim != 3 or array.shape[2] != 4 or array.dtype != np.uint8:
        raise EDNInputError(
            f"hint image array must be uint8 (H, W, 4) RGBA, got {array.dtype} array of shape {array.shape}"
        )
    height, width = array.shape[:2]
    if (width, height) != tuple(image_size):
        raise EDNInputError(f"hint image is {width}×{height} but the input image is {image_size[0]}×{image_size[1]}")
    return array.copy()


# --- rendering ---------------------------------------------------------------


def point_seeds(
    points: list[HintPoint], image_size: tuple[int, int], work_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise each point as a disk (an ellipse if the aspect changes).

    Later points paint over earlier ones where disks overlap.
    """
    (W, H), (w, h) = image_size, work_size
    sx, sy = w / W, h / H
    default_radius = max(1.0, 0.01 * max(h, w))
    seed = np.zeros((h, w), bool)
    seed_rgb = np.zeros((h, w, 3), np.float32)
    for p in points:
        cx, cy = p.x * sx, p.y * sy
        rx, ry = (default_radius, default_radius) if p.radius is None else (p.radius * sx, p.radius * sy)
        x0, x1 = max(0, int(cx - rx)), min(w, int(cx + rx) + 1)
        y0, y1 = max(0, int(cy - ry)), min(h, int(cy + ry) + 1)
        px = (np.arange(x0, x1) + 0.5 - cx) / rx
        py = (np.arange(y0, y1) + 0.5 - cy) / ry
        disk = np.zeros((h, w), bool)
        disk[y0:y1, x0:x1] = py[:, None] ** 2 + px[None, :] ** 2 <= 1.0
        disk[min(int(cy), h - 1), min(int(cx), w - 1)] = True  # the pixel under the point
        seed |= disk
        seed_rgb[disk] = np.asarray(p.rgb, np.float32) / 255.0
    return seed, seed_rgb


def _seeds_from_image(rgba: np.ndarray, work_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGBA hint image to the working size.

    Colours are premultiplied by alpha, BOX-resized and un-premultiplied, so a
    working pixel gets the alpha-weighted mean colour of the hinted input
    pixels inside it.  Any working pixel whose BOX-resized alpha is nonzero is
    a seed (max-pooling of the hint coverage), so even a single-pixel stroke in
    a large hint image survives downscaling.
    """
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) / 255.0

    def resize(channel: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(channel).resize(work_size, Image.Resampling.BOX), np.float32)

    alpha_w = resize(alpha)
    seed = alpha_w > 0
    seed_rgb = np.zeros(alpha_w.shape + (3,), np.float32)
    for c in range(3):
        seed_rgb[..., c][seed] = resize(rgb[..., c] * alpha)[seed] / alpha_w[seed]
    return seed, np.clip(seed_rgb, 0.0, 1.0)


# Vectorised RGB <-> HSL (colorsys is per pixel; scikit-image has HSV, not HSL).


def _rgb_to_hue_sat(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSL hue (in [0, 1)) and saturation of (N, 3) RGB, as colorsys.rgb_to_hls."""
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    maxc, minc = rgb.max(axis=1), rgb.min(axis=1)
    chroma = maxc - minc
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(maxc == r, (g - b) / safe, np.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(chroma > 0, (hue / 6.0) % 1.0, 0.0)
    denom = 1.0 - np.abs(maxc + minc - 1.0)
    sat = np.where(denom > 0, chroma / np.where(denom > 0, denom, 1.0), 0.0)
    return hue, np.clip(sat, 0.0, 1.0)


def _hsl_to_rgb(hue: np.ndarray, sat: np.ndarray, light: np.ndarray) -> np.ndarray:
    """(N, 3) RGB from HSL arrays (the standard piecewise-linear formula)."""
    a = sat * np.minimum(light, 1.0 - light)
    channels = []
    for n in (0.0, 8.0, 4.0):
        k = (n + hue * 12.0) % 12.0
        channels.append(light - a * np.clip(np.minimum(k - 3.0, 9.0 - k), -1.0, 1.0))
    return np.stack(channels, axis=1).astype(np.float32)

"""Basic colour terms of a photo, for captions whose words can steer colour (paper §2.1: text guides colour).

A colouriser only learns what "blue" means if its captions say "blue" where the photo is blue. Captions of
public photo sets name objects, not colours, so the training recipe adds the photo's dominant basic colour terms
computed from its ground truth ("a photo of a goldfinch, mostly yellow and green"), and the quality benchmark
names a held-out photo's colours the same way.

The eleven terms are Berlin & Kay's basic colour terms. Each pixel takes the term of the nearest prototype in
CIELAB (ΔE*ab); the prototypes are focal colours in sRGB, so the same rule works on any photo.
"""

from __future__ import annotations

import re

import numpy as np
from skimage.color import rgb2lab

from .errors import EDNInputError

__all__ = ["BASIC_COLOUR_TERMS", "CHROMATIC_TERMS", "colour_caption", "colour_terms", "named_terms", "term_chroma"]

# Focal sRGB colour of each term (Berlin & Kay's eleven basic terms).
_PROTOTYPES = {
    "red": (200, 30, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 215, 40),
    "green": (60, 150, 60),
    "blue": (45, 95, 200),
    "purple": (125, 55, 155),
    "pink": (240, 150, 180),
    "brown": (125, 80, 45),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
BASIC_COLOUR_TERMS = tuple(_PROTOTYPES)
CHROMATIC_TERMS = BASIC_COLOUR_TERMS[:8]
_PROTOTYPE_LAB = rgb2lab(np.array(list(_PROTOTYPES.values()), np.float64)[None] / 255.0)[0]
# Pixels are classified on a thumbnail: the terms describe large regions, not detail.
_THUMBNAIL_PIXELS = 64 * 64
# A term is named when it covers at least this share of the photo; at most this many terms are named.
MIN_SHARE = 0.1
MAX_TERMS = 2
# Spellings a prompt may use for a term.
_SPELLINGS = {"grey": "gray"}


def term_chroma(term: str) -> np.ndarray:
    """The CIE a*, b* of a term's prototype: where "mostly <term>" should move a photo's mean chroma."""
    if term not in _PROTOTYPES:
        raise EDNInputError(f"unknown colour term {term!r}; the basic terms are {', '.join(BASIC_COLOUR_TERMS)}")
    return _PROTOTYPE_LAB[BASIC_COLOUR_TERMS.index(term), 1:].copy()


def colour_terms(rgb: np.ndarray, min_share: float = MIN_SHARE, max_terms: int = MAX_TERMS) -> list[str]:
    """The photo's dominant basic colour terms, largest first.

    Chromatic terms are preferred: an achromatic term (black, white, gray) is named only when no chromatic term
    covers ``min_share`` of the photo, since a colouriser keeps the input's lightness anyway.

    Args:
        rgb: (H, W, 3) uint8 sRGB.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise EDNInputError(f"expected a non-empty (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    if not 0.0 <= min_share <= 1.0 or max_terms < 1:
        raise EDNInputError(f"need 0 <= min_share <= 1 and max_terms >= 1, got {min_share} and {max_terms}")
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / _THUMBNAIL_PIXELS)))
    lab = rgb2lab(rgb[::step, ::step].astype(np.float64) / 255.0).reshape(-1, 3)
    nearest = np.linalg.norm(lab[:, None] - _PROTOTYPE_LAB[None], axis=-1).argmin(axis=1)
    shares = np.bincount(nearest, minlength=len(BASIC_COLOUR_TERMS)) / len(nearest)
    order = [i for i in np.argsort(-shares, kind="stable") if shares[i] >= min_share]
    chromatic = [BASIC_COLOUR_TERMS[i] for i in order if BASIC_COLOUR_TERMS[i] in CHROMATIC_TERMS]
    chosen = chromatic or [BASIC_COLOUR_TERMS[i] for i in order]
    return chosen[:max_terms]


def colour_caption(subject: str, terms: list[str]) -> str:
    """``"<subject>, mostly <a> and <b>"``; the subject alone when there are no terms."""
    if not terms:
        return subject
    return f"{subject}, mostly {' and '.join(terms)}"


def named_terms(prompt: str) -> list[str]:
    """The basic colour terms ``prompt`` names as whole words ("grey" for gray), in order, each once.

    Whole words only, so "colored" or "reddish" name nothing; "an orange" names orange, as a caption would.
    """
    words = (_SPELLINGS.get(word, word) for word in re.findall(r"[a-z]+", prompt.lower()))
    return list(dict.fromkeys(word for word in words if word in _PROTOTYPES))

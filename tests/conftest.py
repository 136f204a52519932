"""Shared fixtures: a tiny EDN pipeline and a small real photo."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from skimage import data, transform

from edn_pipeline import EDNPipeline
from edn_pipeline.testing_utils import tiny_components


@pytest.fixture
def pipe() -> EDNPipeline:
    pipeline = EDNPipeline(**tiny_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """A small real colour photo (scikit-image's astronaut), uint8 RGB 48×40."""
    return (transform.resize(data.astronaut(), (40, 48), anti_aliasing=True) * 255).round().astype(np.uint8)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)

"""edn-tiny's output for a fixed seed, pinned bit for bit: a change that alters what the shipped model paints fails.

The pin, ``tests/data/edn_tiny_pin.npy``, is the uint8 RGB result of :func:`colourise`. Regenerate it only when the
output is meant to change (new weights in ``edn_pipeline/edn-tiny``, or a deliberate change of the model's maths),
and say so in the commit:

    python tests/test_edn_tiny_pin.py
"""

from pathlib import Path

import numpy as np
import PIL.Image
import torch
from skimage import data

from edn_pipeline import EDNPipeline

PIN = Path(__file__).resolve().parent / "data" / "edn_tiny_pin.npy"


def colourise() -> np.ndarray:
    """edn-tiny on the astronaut at 64×64 (every 8th pixel, no resampling library), gray as a scan, with a prompt
    and a hint so that the text encoder and the hint propagation are pinned too; seed 0, 20 steps. On one thread:
    torch splits sums differently over more threads, which moved one pixel by one level at two."""
    gray = PIL.Image.fromarray(data.astronaut()[::8, ::8]).convert("L")
    pipe = EDNPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        image = pipe(
            gray,
            prompt="an astronaut in a white suit before a flag",
            hints=[(44, 10, "#3060c0")],
            num_inference_steps=20,
            generator=torch.Generator().manual_seed(0),
        ).images[0]
    finally:
        torch.set_num_threads(threads)
    return np.asarray(image)


def test_edn_tiny_output_is_bit_identical_to_the_pin():
    expected, result = np.load(PIN), colourise()
    assert result.shape == expected.shape
    differ = result != expected
    worst = int(np.abs(result.astype(int) - expected).max())
    assert not differ.any(), (
        f"{int(differ.any(axis=-1).sum())} of {differ.shape[0] * differ.shape[1]} pixels differ from the pin, by up "
        f"to {worst} levels; if the change is meant, regenerate it: python tests/test_edn_tiny_pin.py"
    )


if __name__ == "__main__":
    PIN.parent.mkdir(exist_ok=True)
    np.save(PIN, colourise())
    print(f"wrote {PIN}")

"""The recipe's helper script that ships edn-tiny into the package."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edn_pipeline import EDNPipeline
from edn_pipeline.testing_utils import tiny_components

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a subprocess that imports diffusers
def test_shipping_keeps_the_weights_and_names_where_they_ship(tmp_path):
    trained, shipped = tmp_path / "run" / "stage-3f", tmp_path / "package" / "edn-tiny"
    EDNPipeline(**tiny_components()).save_pretrained(trained)
    command = [sys.executable, str(ROOT / "training/recipes/ship_tiny.py"), "--model", str(trained)]
    subprocess.run(
        [*command, "--out", str(shipped), "--default-strength", "0.3", "--vq-inference-steps", "2"], check=True
    )
    for name in ("ccd", "unet", "vae", "decoder"):  # no trace of the training run's folder
        assert json.loads((shipped / name / "config.json").read_text())["_name_or_path"] == f"edn-tiny/{name}"
    pipe, original = EDNPipeline.from_pretrained(shipped), EDNPipeline.from_pretrained(trained)
    assert pipe.config.default_strength == 0.3 and pipe.decoder.config.vq_inference_steps == 2
    for name in ("ccd", "unet", "vae", "decoder"):  # stored in float16, loaded back as float32
        weights, reference = getattr(pipe, name).state_dict(), getattr(original, name).state_dict()
        assert all(weights[key].equal(reference[key].half().float()) for key in reference)

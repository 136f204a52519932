"""The recipe's helper scripts that shape edn-tiny's data."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import PIL.Image
import pytest

from edn_pipeline import EDNPipeline
from edn_pipeline.testing_utils import tiny_components

ROOT = Path(__file__).resolve().parents[1]


def test_oversampling_repeats_photos_of_rare_terms(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    captions = ["a photo, mostly brown"] * 8 + ["a photo of a bee, mostly purple and brown", "a photo"]
    with open(data / "metadata.jsonl", "w") as metadata:
        for index, caption in enumerate(captions):
            PIL.Image.new("RGB", (8, 8)).save(data / f"{index:02d}.png")
            metadata.write(json.dumps({"file_name": f"{index:02d}.png", "text": caption}) + "\n")
    command = [sys.executable, str(ROOT / "training/recipes/oversample_colour_terms.py"), "--data", str(data)]
    subprocess.run([*command, "--out", str(out), "--target", "18", "--max-repeats", "4"], check=True)
    rows = [json.loads(line) for line in open(out / "metadata.jsonl")]
    # brown names 9 photos: round(18 / 9) = 2 copies each; purple names 1: 18 copies, capped at 4; none: 1 copy
    copies = Counter(row["text"] for row in rows)
    assert copies == {"a photo, mostly brown": 16, "a photo of a bee, mostly purple and brown": 4, "a photo": 1}
    names = [row["file_name"] for row in rows]
    assert len(set(names)) == len(names) == 21
    assert all((out / name).resolve() == (data / f"{name[:2]}.png").resolve() for name in names)


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

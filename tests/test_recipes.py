"""The recipe's helper scripts that shape edn-tiny's data."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import PIL.Image

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

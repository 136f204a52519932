"""`edn colorize` over files and folders: outputs, skipping, failures and exit status."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from skimage.color import rgb2lab

from edn_pipeline import EDNPipeline
from edn_pipeline.cli import main
from edn_pipeline.testing_utils import tiny_components


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    EDNPipeline(**tiny_components()).save_pretrained(path)
    return path


@pytest.fixture
def inputs(tmp_path, photo):
    folder = tmp_path / "scans"
    folder.mkdir()
    PIL.Image.fromarray(photo).convert("L").save(folder / "a.png")
    PIL.Image.fromarray(photo[:30, :20]).save(folder / "b.jpg")
    return folder


def colorize(model_dir, *args):
    return main(["colorize", *map(str, args), "--model", str(model_dir), "--steps", "2"])


def test_colorizes_a_folder_keeping_size_and_lightness(model_dir, inputs, tmp_path, photo):
    out = tmp_path / "out"
    assert colorize(model_dir, inputs, "--out", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    result = np.array(PIL.Image.open(out / "a.png"))
    gray = np.array(PIL.Image.fromarray(photo).convert("L"))
    assert result.shape == photo.shape
    expected = rgb2lab(np.repeat(gray[..., None], 3, axis=2) / 255.0)[..., 0]
    assert np.abs(rgb2lab(result / 255.0)[..., 0] - expected).mean() < 0.5


def test_second_run_skips_done_files_unless_overwrite(model_dir, inputs, tmp_path, capsys):
    out = tmp_path / "out"
    colorize(model_dir, inputs / "a.png", "--out", out)
    stamp = (out / "a.png").stat().st_mtime_ns
    assert colorize(model_dir, inputs / "a.png", "--out", out) == 0
    assert "skipping 1" in capsys.readouterr().err
    assert (out / "a.png").stat().st_mtime_ns == stamp
    assert colorize(model_dir, inputs / "a.png", "--out", out, "--overwrite") == 0
    assert (out / "a.png").stat().st_mtime_ns != stamp


def test_unreadable_input_is_named_skipped_and_fails_the_exit_status(model_dir, inputs, tmp_path, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    assert colorize(model_dir, inputs, "--out", out) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 3 inputs failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]  # no partial or temporary files


def test_hints_from_flags_and_from_a_json_file(model_dir, inputs, tmp_path):
    plain, flagged, from_file = (tmp_path / name for name in ("plain", "flag", "file"))
    colorize(model_dir, inputs / "a.png", "--out", plain)
    colorize(model_dir, inputs / "a.png", "--out", flagged, "--hint", "5,5,#ff0000", "--hint", "30,20,#0000ff,4")
    hints_file = tmp_path / "hints.json"
    hints_file.write_text(json.dumps({"a.png": [[5, 5, "#ff0000"], [30, 20, "#0000ff", 4]]}))
    colorize(model_dir, inputs / "a.png", "--out", from_file, "--hints", hints_file)
    images = [np.array(PIL.Image.open(d / "a.png")) for d in (plain, flagged, from_file)]
    assert not np.array_equal(images[0], images[1])
    assert np.array_equal(images[1], images[2])


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png"], "does not exist"),
        (["nothing*.png"], "no input matches"),
    ],
)
def test_bad_command_lines_give_one_line_and_exit_2(model_dir, tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert colorize(model_dir, *args, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edn: ") and message in err and "\n" not in err


def test_missing_model_is_a_one_line_error(inputs, tmp_path, capsys):
    code = main(["colorize", str(inputs), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")])
    assert code == 2
    assert "cannot load model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag", [["--steps", "0"], ["--guidance", "nan"], ["--hint", "1,2"], ["--strength", "0"], ["--strength", "1.5"]]
)
def test_bad_flags_exit_2(model_dir, inputs, tmp_path, flag):
    with pytest.raises(SystemExit) as exit_info:
        colorize(model_dir, inputs, "--out", tmp_path / "o", *flag)
    assert exit_info.value.code == 2


def test_batches_give_what_single_calls_give(model_dir, inputs, tmp_path, photo):
    for extra in ("c.png", "d.png"):
        PIL.Image.fromarray(photo).convert("L").save(inputs / extra)
    one, four = tmp_path / "one", tmp_path / "four"
    assert colorize(model_dir, inputs, "--out", one) == 0
    assert colorize(model_dir, inputs, "--out", four, "--batch-size", "4") == 0
    for name in ("a.png", "b.png", "c.png", "d.png"):
        a, b = (np.array(PIL.Image.open(d / name)).astype(int) for d in (one, four))
        assert np.abs(a - b).max() <= 1, name  # 8-bit rounding of values equal to 1e-4


def test_strength_reaches_the_pipeline(model_dir, inputs, tmp_path):
    assert colorize(model_dir, inputs, "--out", tmp_path / "half", "--strength", "0.5") == 0
    pipe = EDNPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    gray = PIL.Image.open(inputs / "a.png")
    expected = [
        np.array(pipe(gray, num_inference_steps=2, strength=s, generator=torch.Generator().manual_seed(0)).images[0])
        for s in (0.5, 1.0)
    ]
    written = np.array(PIL.Image.open(tmp_path / "half" / "a.png")).astype(int)
    assert np.abs(written - expected[0]).max() <= 1
    assert np.abs(written - expected[1]).max() > 1


def test_a_bad_hint_fails_only_its_own_image_in_a_batch(model_dir, inputs, tmp_path, capsys):
    hints_file = tmp_path / "hints.json"
    hints_file.write_text(json.dumps({"b.jpg": [[500, 500, "#ff0000"]]}))  # outside the 20×30 image
    out = tmp_path / "out"
    assert colorize(model_dir, inputs, "--out", out, "--hints", hints_file, "--batch-size", "2") == 1
    assert "b.jpg" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["a.png"]


@pytest.mark.slow
def test_two_processes_split_the_inputs(model_dir, inputs, tmp_path, photo):
    import os
    import subprocess
    import sys

    for i in range(3):
        PIL.Image.fromarray(photo).save(inputs / f"extra{i}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "edn_pipeline.cli",
               "colorize", str(inputs), "--out", str(out), "--model", str(model_dir), "--steps", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "process 0 colourised 3 of 3" in result.stderr and "process 1 colourised 2 of 2" in result.stderr
    assert len(list(out.iterdir())) == 5

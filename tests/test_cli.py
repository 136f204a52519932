"""`edn colorize` over files and folders: outputs, skipping, failures and exit status."""

import errno
import io
import json
import os
import re
import struct
import sys
import zlib

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
import torch
from skimage.color import rgb2lab

from edn_pipeline import EDNPipeline
from edn_pipeline.commands.common import load_pipeline
from edn_pipeline.commands.edn_cli import build_parser, main
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


def test_hint_guidance_reaches_the_pipeline(model_dir, inputs, tmp_path):
    hint = ("--hint", "5,5,#ff0000")
    runs = {
        "hinted": hint,
        "guided": (*hint, "--hint-guidance", "4"),
        "plain": (),
        "plain guided": ("--hint-guidance", "4"),
    }
    for name, flags in runs.items():
        assert colorize(model_dir, inputs / "a.png", "--out", tmp_path / name, *flags) == 0
    image = {name: np.array(PIL.Image.open(tmp_path / name / "a.png")) for name in runs}
    assert not np.array_equal(image["hinted"], image["guided"])
    assert np.array_equal(image["plain"], image["plain guided"])  # no hints, nothing to guide on


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
    "flag",
    [
        ["--steps", "0"],
        ["--guidance", "nan"],
        ["--hint-guidance", "-1"],
        ["--hint", "1,2"],
        ["--strength", "0"],
        ["--strength", "1.5"],
        ["--vq-steps", "-1"],
        ["--temperature", "0"],
        ["--truncation-rate", "1.5"],
    ],
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


@pytest.fixture(scope="module")
def refiner_model_dir(tmp_path_factory):
    """A tiny model whose decoder has the quantiser and the token refiner (default: refinement off)."""
    path = tmp_path_factory.mktemp("refiner_model")
    EDNPipeline(**tiny_components(vq_decoder=True)).save_pretrained(path)
    return path


def test_token_refinement_options_reach_the_pipeline(refiner_model_dir, inputs, tmp_path):
    flags = ("--vq-steps", "2", "--temperature", "1.5", "--truncation-rate", "0.5")
    assert colorize(refiner_model_dir, inputs / "a.png", "--out", tmp_path / "refined", *flags) == 0
    assert colorize(refiner_model_dir, inputs / "a.png", "--out", tmp_path / "plain") == 0
    pipe = EDNPipeline.from_pretrained(refiner_model_dir)
    pipe.set_progress_bar_config(disable=True)
    gray = PIL.Image.open(inputs / "a.png")
    expected = pipe(
        gray,
        num_inference_steps=2,
        vq_steps=2,
        temperature=1.5,
        truncation_rate=0.5,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    refined, plain = (np.array(PIL.Image.open(tmp_path / name / "a.png")).astype(int) for name in ("refined", "plain"))
    assert np.abs(refined - np.array(expected)).max() <= 1
    assert np.abs(refined - plain).max() > 1


@pytest.mark.parametrize(
    "model, flags, message",
    [
        ("plain", ["--vq-steps", "1"], "--vq-steps needs a token refiner, and this model's decoder has none"),
        ("plain", ["--temperature", "0.8"], "--temperature needs a token refiner, and this model's decoder has none"),
        ("refiner", ["--vq-steps", "11"], "--vq-steps 11 is more than the 10 steps this model's token refiner has"),
    ],
)
def test_refinement_the_model_cannot_do_is_one_usage_error(
    model_dir, refiner_model_dir, inputs, tmp_path, capsys, model, flags, message
):
    folder = model_dir if model == "plain" else refiner_model_dir
    assert colorize(folder, inputs, "--out", tmp_path / "o", *flags) == 2
    assert capsys.readouterr().err.strip() == f"edn: {message}"
    assert not (tmp_path / "o").exists()


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
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "edn_pipeline.commands.edn_cli",
        "colorize",
        str(inputs),
        "--out",
        str(out),
        "--model",
        str(model_dir),
        "--steps",
        "2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "process 0 colourised 3 of 3" in result.stderr and "process 1 colourised 2 of 2" in result.stderr
    assert len(list(out.iterdir())) == 5


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["colorize", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    defaults = (
        ("--steps", 50),
        ("--guidance", 5.0),
        ("--hint-guidance", 1.0),
        ("--seed", 0),
        ("--max-megapixels", 100.0),
    )
    for option, default in defaults:
        assert re.search(rf"{option} [A-Z_]+ ((?! --).)*\(default: {re.escape(str(default))}\)", text), option


def test_subfolders_are_mirrored_so_equal_names_keep_their_own_outputs(model_dir, tmp_path, photo):
    scans = tmp_path / "scans"
    for sub, crop in (("1950", photo), ("1951", photo[::-1])):
        (scans / sub).mkdir(parents=True)
        PIL.Image.fromarray(crop).convert("L").save(scans / sub / "001.png")
    assert colorize(model_dir, scans, "--out", tmp_path / "out") == 0
    for sub in ("1950", "1951"):  # each output is what that input gives alone
        assert colorize(model_dir, scans / sub / "001.png", "--out", tmp_path / f"alone{sub}") == 0
        expected = (tmp_path / f"alone{sub}" / "001.png").read_bytes()
        assert (tmp_path / "out" / sub / "001.png").read_bytes() == expected
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == [
        "1950/001.png",
        "1951/001.png",
    ]


@pytest.mark.parametrize("layout", [("a/x.png", "b/x.png"), ("x.png", "x.webp"), ("x.png", "X.PNG")])
def test_inputs_that_would_share_an_output_are_refused_before_anything_is_done(
    model_dir, tmp_path, photo, capsys, layout
):
    paths = [tmp_path / "in" / name for name in layout]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(photo).save(path)
    assert colorize(model_dir, *paths, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "would both be written to" in err and all(str(p) in err for p in paths)
    assert not (tmp_path / "out").exists()


def test_an_output_that_would_replace_an_input_is_refused(model_dir, inputs, capsys):
    assert colorize(model_dir, inputs / "a.png", "--out", inputs) == 2
    assert "would replace the input" in capsys.readouterr().err
    assert sorted(p.name for p in inputs.iterdir()) == ["a.png", "b.jpg"]


def test_outputs_under_out_are_not_inputs_of_the_next_run(model_dir, inputs, tmp_path):
    out = inputs / "coloured"
    assert colorize(model_dir, inputs, "--out", out) == 0
    assert colorize(model_dir, inputs, "--out", out, "--overwrite") == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["a.png", "b.png"]


def test_resume_redoes_broken_outputs_and_removes_its_stale_temporaries(model_dir, inputs, tmp_path, capsys):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert colorize(model_dir, inputs, "--out", reference) == 0
    out.mkdir()
    (out / "a.png").write_bytes(b"")  # a zero-byte output
    (out / "b.png").write_bytes((reference / "b.png").read_bytes()[:-20])  # cut before its end
    stale = [out / ".a.png.k3j_x9q2.tmp", out / ".b.png.00000000.tmp"]
    others = [out / ".c.png.abcdefgh.tmp", out / ".a.png.tmp", out / "notes.tmp"]  # not temporaries of its outputs
    for path in stale + others:
        path.write_bytes(b"partial")
    assert colorize(model_dir, inputs, "--out", out) == 0
    err = capsys.readouterr().err
    assert "removed 2 temporary file(s)" in err and err.count("redoing") == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(["a.png", "b.png"] + [p.name for p in others])
    for name in ("a.png", "b.png"):
        assert (out / name).read_bytes() == (reference / name).read_bytes()


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG signature and header declaring ``width`` × ``height`` pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("size", [(100_000, 100_000), (20_000, 20_000), (1, 100_000_001)])
def test_a_decompression_bomb_is_skipped_by_name_and_the_batch_goes_on(model_dir, inputs, tmp_path, capsys, size):
    (inputs / "bomb.png").write_bytes(bomb_png(*size))
    out = tmp_path / "out"
    assert colorize(model_dir, inputs, "--out", out) == 1
    err = capsys.readouterr().err
    assert re.search(r"skipped \S*bomb.png: larger than the limit of 100 megapixels", err)
    assert "Traceback" not in err and sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]


def test_max_megapixels_is_checked_before_decoding(model_dir, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded an image over the limit"))
    pil_limit = PIL.Image.MAX_IMAGE_PIXELS
    # a.png is 48×40 = 1,920 pixels, b.jpg 20×30 = 600
    assert colorize(model_dir, inputs, "--out", tmp_path / "out", "--max-megapixels", "0.0005") == 1
    err = capsys.readouterr().err
    for name in ("a.png", "b.jpg"):
        assert f"{name}: larger than the limit of 0.0005 megapixels (--max-megapixels)" in err
    assert PIL.Image.MAX_IMAGE_PIXELS == pil_limit  # PIL's own limit is back for the rest of the process


def test_write_failures_fail_their_input_only(model_dir, inputs, tmp_path, capsys, photo, monkeypatch):
    PIL.Image.fromarray(photo).save(inputs / "c.png")
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)  # a folder where an output goes
    real_save, saves = PIL.Image.Image.save, []

    def disk_full_for_b(image, fp, *args, **kwargs):
        saves.append(image)
        if len(saves) == 2:  # a.png, b.jpg, c.png in this order
            fp.write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(image, fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image.Image, "save", disk_full_for_b)
    assert colorize(model_dir, inputs, "--out", out, "--overwrite") == 1
    err = capsys.readouterr().err
    assert re.search(r"skipped \S*a.png: cannot write \S*a.png: Is a directory", err)
    assert re.search(r"skipped \S*b.jpg: cannot write \S*b.png: No space left on device", err)
    assert "2 of 3 inputs failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]  # c done; no temporary left
    assert (out / "a.png").is_dir()


@pytest.fixture(scope="module")
def strength_model_dir(tmp_path_factory):
    """A tiny model whose default strength, 0.3, leaves no step of fewer than 4."""
    path = tmp_path_factory.mktemp("strength_model")
    EDNPipeline(**tiny_components(), default_strength=0.3).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    "steps, strength, message",
    [
        ("1001", None, "--steps 1001 is more than the 1000 steps this model's scheduler was trained with"),
        ("3", None, "--steps 3 at strength 0.3 leaves no step to run; give --steps 4 or more"),
        ("9", "0.1", "--steps 9 at strength 0.1 leaves no step to run; give --steps 10 or more"),
    ],
)
def test_steps_the_model_cannot_take_are_one_usage_error(
    strength_model_dir, inputs, tmp_path, capsys, steps, strength, message
):
    extra = ["--strength", strength] if strength else []
    code = main(
        [
            "colorize",
            str(inputs),
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(strength_model_dir),
            "--steps",
            steps,
            *extra,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"edn: {message}"
    assert not (tmp_path / "o").exists()


def test_loading_prints_no_progress_bars_and_the_bar_only_on_a_terminal(model_dir, inputs, tmp_path, capsys):
    assert colorize(model_dir, inputs, "--out", tmp_path / "out") == 0
    assert capsys.readouterr().err == ""


def test_threads_are_used_during_the_run_and_restored(model_dir, inputs, tmp_path, monkeypatch):
    seen, real_call = [], EDNPipeline.__call__

    def call(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_call(*args, **kwargs)

    monkeypatch.setattr(EDNPipeline, "__call__", call)
    before = torch.get_num_threads()
    assert colorize(model_dir, inputs, "--out", tmp_path / "out", "--threads", "2") == 0
    assert seen == [2, 2] and torch.get_num_threads() == before


def test_threads_default_to_half_the_cpus():
    args = build_parser().parse_args(["colorize", "x", "--out", "o"])
    assert args.threads == max(1, len(os.sched_getaffinity(0)) // 2)


def test_export_hub_refuses_what_is_not_an_earlier_export(model_dir, tmp_path, capsys):
    (tmp_path / "a_file").write_text("keep")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_folder" / "notes.txt").write_text("keep")
    for target in ("a_file", "a_folder"):
        assert main(["export-hub", str(model_dir), str(tmp_path / target)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "exists and is not a folder" in err[0] and "not an export" in err[1]
    assert (tmp_path / "a_file").read_text() == "keep" and (tmp_path / "a_folder" / "notes.txt").read_text() == "keep"
    assert main(["export-hub", str(model_dir), str(tmp_path / "repo")]) == 0
    assert main(["export-hub", str(model_dir), str(tmp_path / "repo")]) == 0  # an earlier export is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder", "repo"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_evaluate_names_a_decompression_bomb_on_a_line_of_its_own_after_the_bar(tmp_path, photo, monkeypatch):
    for folder in ("pred", "gt"):
        (tmp_path / folder).mkdir()
        PIL.Image.fromarray(photo).save(tmp_path / folder / "a.png")
        (tmp_path / folder / "z.png").write_bytes(bomb_png(20_000, 20_000))
    monkeypatch.setattr(sys, "stderr", Terminal())  # the progress bar shows on a terminal
    code = main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--device", "cpu"])
    assert code == 2
    err = sys.stderr.getvalue()
    assert "evaluating:  50%" in err
    assert re.search(r"\nedn: cannot read image '\S*z.png': larger than the limit of 100 megapixels\n$", err)


def test_max_megapixels_reaches_the_pipelines_image_processor(model_dir):
    """Inputs the command accepts from their header are accepted by the pipeline too (colorize and evaluate)."""
    assert load_pipeline(str(model_dir), "cpu", "float32", 150).image_processor.config.max_pixels == 150_000_000
    assert load_pipeline(str(model_dir), "cpu", "float32").image_processor.config.max_pixels == 100_000_000

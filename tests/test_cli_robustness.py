"""The command line under fire: hundreds of malformed inputs and arguments, and a batch killed mid-way.

Every case runs ``edn`` in-process (a few also as a real process) and must give a non-zero exit status, one line on
stderr per problem, no traceback, and leave every file and folder under its working folder as it was: no partial,
zero-byte or temporary file, no other output touched. Most cases fail before a model is loaded, so the module is
quick; the kill test starts real processes and is marked slow.
"""

import gzip
import hashlib
import io
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from edn_pipeline import EDNPipeline
from edn_pipeline.commands.edn_cli import main
from edn_pipeline.testing_utils import tiny_components

MODEL = "<model>"  # replaced by the tiny model's folder
STRENGTH_MODEL = "<strength-model>"  # a tiny model whose default strength is 0.3
COLORIZE = ["colorize", "good.png", "--out", "out", "--model", MODEL]
EVALUATE = ["evaluate", "--pred", "pred", "--gt", "gt", "--device", "cpu"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------- bad bytes


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, depth: int = 8, colour: int = 0, crc_ok: bool = True) -> bytes:
    """A PNG with only a header (and its end): ``width`` × ``height`` declared, no pixel data."""
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
    if not crc_ok:
        ihdr = ihdr[:-1] + bytes([ihdr[-1] ^ 1])
    return PNG_SIGNATURE + ihdr + chunk(b"IEND", b"")


def encoded(fmt: str, shape: tuple[int, int] = (40, 48)) -> bytes:
    """A small real image (random pixels, ``shape`` = (height, width)) encoded as ``fmt``."""
    pixels = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


def bomb(fmt: str, width: int, height: int) -> bytes:
    """A real ``fmt`` file whose header declares ``width`` × ``height`` pixels."""
    if fmt == "PNG":
        return png_header(width, height)
    if fmt == "BMP":
        return patched(encoded("BMP"), 18, "<ii", width, height)
    if fmt == "GIF":
        return patched(encoded("GIF"), 6, "<HH", width, height)
    if fmt == "JPEG":
        data = encoded("JPEG")
        return patched(data, data.index(b"\xff\xc0") + 5, ">HH", height, width)
    if fmt == "WEBP":
        data = encoded("WEBP")
        return patched(data, data.index(b"\x9d\x01\x2a") + 3, "<HH", width, height)
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (278, 4, 1, height),
        (279, 4, 1, 0),
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + bytes(4)
    return b"II*\x00" + struct.pack("<I", 8) + ifd  # TIFF


FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
BOMBS = [
    ("PNG", 100_000, 100_000),
    ("PNG", 20_000, 20_000),
    ("PNG", 1, 100_000_001),
    ("PNG", 100_000_001, 1),
    ("PNG", 10_001, 10_000),
    ("PNG", 65_535, 65_535),
    ("PNG", 2**31 - 1, 2**31 - 1),
    ("PNG", 2**31 - 1, 1),
    ("PNG", 50_000, 2_001),
    ("PNG", 12_000, 9_000),
    ("BMP", 100_000, 100_000),
    ("BMP", 20_000, -20_000),
    ("BMP", 10_001, 10_000),
    ("GIF", 65_535, 65_535),
    ("GIF", 65_535, 2_000),
    ("JPEG", 65_535, 65_535),
    ("JPEG", 20_000, 6_000),
    ("WEBP", 16_383, 16_383),
    ("TIFF", 100_000, 100_000),
    ("TIFF", 1, 200_000_000),
]
NOT_IMAGES = {
    "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    "zip": b"PK\x03\x04" + bytes(26) + b"x.txt",
    "elf": b"\x7fELF\x02\x01\x01" + bytes(9),
    "gzip": gzip.compress(b"a grayscale photo"),
    "html": b"<!DOCTYPE html><html><body>scan</body></html>",
    "json": b'{"image": [1, 2, 3]}',
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "text": b"grayscale photo of a street\n",
    "zeros": bytes(1024),
    "ff-bytes": b"\xff" * 1024,
    **{f"random-{seed}": np.random.default_rng(seed).bytes(2048) for seed in range(6)},
    "png-signature-then-garbage": PNG_SIGNATURE + b"garbage" * 10,
    "jpeg-start-then-garbage": b"\xff\xd8" + b"garbage" * 10,
    "gif89-then-zeros": b"GIF89a" + bytes(64),
    "gif87-then-zeros": b"GIF87a" + bytes(64),
    "bmp-then-zeros": b"BM" + bytes(64),
    "tiff-le-then-zeros": b"II*\x00" + bytes(64),
    "tiff-be-then-zeros": b"MM\x00*" + bytes(64),
    "riff-webp-then-zeros": b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(16),
    "png-bad-header-crc": png_header(10, 10, crc_ok=False),
    "png-bit-depth-3": png_header(10, 10, depth=3),
    "png-colour-type-5": png_header(10, 10, colour=5),
    "png-zero-width": png_header(0, 10),
    "png-zero-height": png_header(10, 0),
    "eps-named-png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # not run through Ghostscript
    "xbm": b"#define x_width 10\n#define x_height 10\nstatic char x_bits[] = {0x00};\n",
    "pcx": b"\x0a\x05\x01\x08" + bytes(124),
    "dds": b"DDS " + bytes(124),
    "sgi": b"\x01\xda" + bytes(100),
    "ftex": b"FTEX" + bytes(60),
    "ppm-bomb": b"P6\n100000 100000\n255\n",
}
ODD_NAMES = ["bad\nname.png", "spaces in name.png", "ünïcödé.png", "x" * 200 + ".png", "-dash.png", "tab\tname.png"]


def truncations() -> dict[str, bytes]:
    """Each format cut inside its header: every length gives different bytes."""
    cases = {}
    for fmt in FORMATS:
        data = encoded(fmt)
        for length in (1, 2, 3, 4, 6, 8, 10, 12):
            cases[f"{fmt.lower()}-cut-at-{length}"] = data[:length]
    return cases


def decode_failures() -> dict[str, bytes]:
    """Files whose header reads but whose pixels do not: they fail once the model is loaded, by name."""
    png = encoded("PNG")
    idat = png.index(b"IDAT")
    corrupt = bytearray(png)
    corrupt[idat + 10 : idat + 40] = bytes(30)
    cases = {
        f"{fmt.lower()}-cut-at-{share}%": encoded(fmt)[: len(encoded(fmt)) * share // 100]
        for fmt in ("PNG", "BMP", "TIFF")
        for share in (60, 90)
    }
    cases["png-without-pixel-data"] = png_header(10, 10)
    cases["png-corrupt-pixel-data"] = bytes(corrupt)
    cases["ppm-without-pixel-data"] = b"P6\n10 10\n255\n"
    cases["ppm-half-its-pixels"] = b"P6\n10 10\n255\n" + bytes(150)
    return cases


# ------------------------------------------------------------------------------------------------- the harness


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by their bytes' hash, folders, links and special files by kind."""
    state = {}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder, name)
            mode = path.lstat().st_mode
            if stat.S_ISREG(mode):
                state[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[str(path.relative_to(root))] = "folder" if stat.S_ISDIR(mode) else f"special {mode:o}"
    return state


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's usage errors
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    EDNPipeline(**tiny_components()).save_pretrained(root / "tiny")
    EDNPipeline(**tiny_components(), default_strength=0.3).save_pretrained(root / "strength")
    return {MODEL: str(root / "tiny"), STRENGTH_MODEL: str(root / "strength")}


@pytest.fixture
def sandbox(tmp_path, monkeypatch, photo) -> Path:
    """good.png, scans/{a.png, b.jpg}, pred/a.png and gt/a.png, as the working folder."""
    gray = PIL.Image.fromarray(photo).convert("L")
    gray.save(tmp_path / "good.png")
    for folder, name in (("scans", "a.png"), ("scans", "b.jpg"), ("pred", "a.png"), ("gt", "a.png")):
        (tmp_path / folder).mkdir(exist_ok=True)
        PIL.Image.fromarray(photo).save(tmp_path / folder / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: str, data: bytes | str = b"\x89PNG not really"):
    """A build step: write ``data`` at ``path`` (folders made as needed)."""

    def build(root: Path) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)

    return build


def folder(path: str):
    return lambda root: (root / path).mkdir(parents=True, exist_ok=True)


def copy(source: str, path: str):
    return lambda root: write(path, (root / source).read_bytes())(root)


def steps(*builds):
    def build(root: Path) -> None:
        for step in builds:
            step(root)

    return build


# ------------------------------------------------------------------------------------------------- the cases

USAGE: list = []  # (id, argv, build, words): exit status 2 and one line holding ``words``
PER_FILE: list = []  # (id, argv, build, name): exit status 1, the input ``name`` skipped on one line


def usage(case_id: str, argv: list[str], words: str, build=None, marks=()) -> None:
    USAGE.append(pytest.param(argv, build, words, id=case_id, marks=marks))


def per_file(case_id: str, name: str, data: bytes) -> None:
    argv = ["colorize", f"./{name}", "--out", "out", "--model", MODEL]
    PER_FILE.append(pytest.param(argv, write(name, data), name, id=case_id))


# argparse: every bad value of every option of colorize
BAD_VALUES = {
    "--steps": ["0", "-1", "abc", "1.5", "", "1e3", "nan", "0x10", "½", "9" * 5000],
    "--guidance": ["nan", "inf", "-inf", "-1", "-1e-9", "abc", "", "1e309", "1,5", "NaN"],
    "--strength": ["0", "-0.1", "1.0001", "nan", "inf", "abc", "", "2", "-inf", "1e-400"],
    "--seed": ["-1", str(2**64), str(2**70), "abc", "1.5", "", "1e3", "0x1", str(-(2**63)), "2**64"],
    "--batch-size": ["0", "-3", "abc", "", "1.5"],
    "--threads": ["0", "-1", "abc", "", str(len(os.sched_getaffinity(0)) + 1), "1000000"],
    "--max-megapixels": ["0", "-1", "nan", "inf", "abc", "", "-inf", "1e400"],
    "--hint": ["1,2", "a,b,#fff", "1,2,#fff,r", "1,2,3,4,5", "", "1", "x,y,z,w", "1,,#fff"],
    "--dtype": ["float64", "int8", "fp16", "", "FLOAT32"],
}
for flag, values in BAD_VALUES.items():
    for number, value in enumerate(values):
        usage(f"colorize{flag}-{number}", [*COLORIZE, flag, value], f"argument {flag}")

for case_id, argv, words in [
    ("no-command", [], "required: command"),
    ("unknown-command", ["colourise"], "invalid choice"),
    ("colorize-nothing", ["colorize"], "required: inputs, --out"),
    ("colorize-no-out", ["colorize", "good.png"], "required: --out"),
    ("colorize-no-inputs", ["colorize", "--out", "out"], "required: inputs"),
    ("colorize-out-without-value", ["colorize", "good.png", "--out"], "expected one argument"),
    ("colorize-unknown-option", [*COLORIZE, "--foo"], "unrecognized arguments: --foo"),
    ("colorize-steps-without-value", [*COLORIZE, "--steps"], "expected one argument"),
    ("colorize-flag-with-value", [*COLORIZE, "--overwrite=yes"], "ignored explicit argument"),
    ("colorize-ambiguous-abbreviation", [*COLORIZE, "--st", "3"], "ambiguous option"),
    ("colorize-short-option", [*COLORIZE, "-s", "3"], "unrecognized arguments"),
    ("export-nothing", ["export-hub"], "required: model_dir, out_dir"),
    ("export-no-out", ["export-hub", "m"], "required: out_dir"),
    ("export-three", ["export-hub", "m", "o", "p"], "unrecognized arguments: p"),
    ("demo-port-too-high", ["demo", "--port", "70000"], "argument --port"),
    ("demo-port-negative", ["demo", "--port", "-1"], "argument --port"),
    ("demo-port-word", ["demo", "--port", "abc"], "argument --port"),
    ("demo-upload-mb-zero", ["demo", "--max-upload-mb", "0"], "argument --max-upload-mb"),
    ("demo-upload-mb-nan", ["demo", "--max-upload-mb", "nan"], "argument --max-upload-mb"),
    ("demo-megapixels-negative", ["demo", "--max-upload-megapixels", "-1"], "argument --max-upload-megapixels"),
    ("demo-threads-zero", ["demo", "--threads", "0"], "argument --threads"),
    ("demo-dtype", ["demo", "--dtype", "half"], "argument --dtype"),
    ("demo-unknown-option", ["demo", "--bogus"], "unrecognized arguments: --bogus"),
]:
    usage(case_id, argv, words)

for number, (flag, value) in enumerate(
    [
        ("--sweep", "temperature"),
        ("--sweep", "temperature="),
        ("--sweep", "nope=1"),
        ("--sweep", "steps=1.5"),
        ("--sweep", "steps=0"),
        ("--sweep", "strength=2"),
        ("--sweep", "guidance=-1"),
        ("--sweep", "temperature=0"),
        ("--sweep", "truncation_rate=0"),
        ("--sweep", "truncation_rate=1.5"),
        ("--sweep", "steps=a,b"),
        ("--sweep", "=1"),
        ("--limit", "0"),
        ("--limit", "-1"),
        ("--limit", "x"),
        ("--steps", "0"),
        ("--seed", "-1"),
        ("--seed", str(2**64)),
        ("--threads", "0"),
        ("--max-megapixels", "0"),
        ("--max-megapixels", "nan"),
        ("--dtype", "float64"),
        ("--guidance", "abc"),
        ("--temperature", "abc"),
        ("--vq-steps", "abc"),
        ("--strength", "abc"),
        ("--truncation-rate", "abc"),
    ]
):
    usage(f"evaluate{flag}-{number}", [*EVALUATE, flag, value], f"argument {flag}")

# devices this machine lacks, and names that are no device
MISSING_DEVICES = ["foo", "", "CUDA", "cuda:-1", "cuda:abc", " cpu", "cpu ", "meta", "npu", "gpu"]
if not torch.cuda.is_available():
    MISSING_DEVICES += ["cuda", "cuda:0"]
if torch.cuda.device_count() < 8:
    MISSING_DEVICES += ["cuda:7"]
if not torch.backends.mps.is_available():
    MISSING_DEVICES += ["mps", "mps:0"]
if not (hasattr(torch, "xpu") and torch.xpu.is_available()):
    MISSING_DEVICES += ["xpu"]
for number, device in enumerate(MISSING_DEVICES):
    usage(f"colorize-device-{number}", [*COLORIZE, "--device", device], "--device")
    usage(f"evaluate-device-{number}", [*EVALUATE[:-2], "--device", device], "--device")
usage("colorize-float16-on-cpu", [*COLORIZE, "--device", "cpu", "--dtype", "float16"], "--dtype float16")
usage("evaluate-float16-on-cpu", [*EVALUATE, "--dtype", "float16"], "--dtype float16")

# inputs
for case_id, inputs, words, build in [
    ("missing-file", ["missing.png"], "does not exist", None),
    ("missing-folder", ["missing/"], "does not exist", None),
    ("glob-without-match", ["nothing*.png"], "no input matches", None),
    ("recursive-glob-without-match", ["scans/**/*.tif"], "no input matches", None),
    ("bracket-glob-without-match", ["[xyz].png"], "no input matches", None),
    ("empty-folder", ["empty"], "no images in folder empty", folder("empty")),
    ("folder-of-text", ["notes"], "no images in folder notes", write("notes/a.txt", "hello")),
    ("folder-of-json", ["notes"], "no images in folder notes", write("notes/hints.json", "{}")),
    ("folder-with-a-folder-named-png", ["odd"], "no images in folder odd", folder("odd/x.png")),
    (
        "folder-with-a-broken-link",
        ["links"],
        "no images in folder links",
        steps(folder("links"), lambda root: (root / "links" / "x.png").symlink_to(root / "gone.png")),
    ),
    (
        "folder-whose-images-are-all-under-out",
        ["scans", "--out", "scans/out"],
        "no images in folder scans",
        steps(lambda root: [p.unlink() for p in (root / "scans").iterdir()], copy("good.png", "scans/out/a.png")),
    ),
    ("fifo", ["pipe.png"], "is not a file or a folder", lambda root: os.mkfifo(root / "pipe.png")),
    ("device-file", ["/dev/null"], "is not a file or a folder", None),
    ("second-input-missing", ["good.png", "missing.png"], "does not exist", None),
    (
        "same-name-two-files",
        ["scans/a.png", "other/a.png"],
        "would both be written to",
        copy("good.png", "other/a.png"),
    ),
    ("same-stem-png-and-webp", ["scans"], "would both be written to", copy("good.png", "scans/a.webp")),
    ("same-stem-jpg-and-jpeg", ["scans"], "would both be written to", copy("scans/b.jpg", "scans/b.jpeg")),
    ("names-differing-in-case", ["scans"], "would both be written to", copy("good.png", "scans/A.png")),
    ("suffixes-differing-in-case", ["scans"], "would both be written to", copy("good.png", "scans/a.PNG")),
    ("two-folders-same-names", ["scans", "more"], "would both be written to", copy("good.png", "more/a.png")),
    ("file-and-folder-same-name", ["good.png", "more"], "would both be written to", copy("good.png", "more/good.png")),
    (
        "same-name-in-subfolders-given-as-files",
        ["x/1/a.png", "x/2/a.png"],
        "would both be written to",
        steps(copy("good.png", "x/1/a.png"), copy("good.png", "x/2/a.png")),
    ),
    ("output-replaces-its-input", ["good.png", "--out", "."], "would replace the input", None),
    (
        "output-replaces-another-input",
        ["scans/b.jpg", "scans/a.png", "--out", "scans"],
        "would replace the input",
        None,
    ),
    ("out-is-the-input-folder", ["scans", "--out", "scans"], "no images in folder scans", None),
]:
    argv = ["colorize", *inputs, "--model", MODEL] + ([] if "--out" in inputs else ["--out", "out"])
    usage(f"inputs-{case_id}", argv, words, build)

not_root = pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
for case_id, out, words, build, marks in [
    ("existing-file", "good.png", "exists and is not a folder", None, ()),
    ("device-file", "/dev/null", "exists and is not a folder", None, ()),
    ("missing-parent", "nowhere/out", "--out nowhere/out: nowhere does not exist", None, ()),
    ("parent-is-a-file", "good.png/out", "--out good.png/out: good.png is not a folder", None, ()),
    ("empty", "", "--out is empty", None, ()),
    ("in-proc", "/proc/edn-out", "cannot write in /proc", None, ()),
    (
        "read-only-folder",
        "locked",
        "cannot write in locked",
        steps(folder("locked"), lambda root: (root / "locked").chmod(0o500)),
        (not_root,),
    ),
    (
        "in-read-only-folder",
        "locked/out",
        "cannot write in locked",
        steps(folder("locked"), lambda root: (root / "locked").chmod(0o500)),
        (not_root,),
    ),
]:
    usage(f"out-{case_id}", ["colorize", "good.png", "--out", out, "--model", MODEL], words, build, marks)

# --hints files
for case_id, data, words in [
    ("latin-1", '{"good.png": [[1, 2, "#ff0000"]], "café": []}'.encode("latin-1"), "can't decode"),
    ("utf-16", '{"good.png": []}'.encode("utf-16"), "can't decode"),
    ("utf-16-le", '{"good.png": []}'.encode("utf-16-le"), "UTF-8 JSON"),
    ("utf-16-be", '{"good.png": []}'.encode("utf-16-be"), "UTF-8 JSON"),
    ("utf-32", '{"good.png": []}'.encode("utf-32"), "can't decode"),
    ("binary", np.random.default_rng(1).bytes(64), "UTF-8 JSON"),
    ("png", encoded("PNG"), "can't decode"),
    ("array-100000-deep", "[" * 100_000 + "]" * 100_000, "maximum recursion depth"),
    ("object-100000-deep", '{"a":' * 100_000 + "1" + "}" * 100_000, "maximum recursion depth"),
    ("not-json", "hello", "Expecting value"),
    ("empty-file", "", "Expecting value"),
    ("whitespace", " \n\t ", "Expecting value"),
    ("truncated", '{"good.png": [[1, 2', "UTF-8 JSON"),
    ("trailing-garbage", "{} x", "Extra data"),
    ("single-quotes", "{'good.png': []}", "UTF-8 JSON"),
    ("array", "[]", "must hold a JSON object"),
    ("string", '"good.png"', "must hold a JSON object"),
    ("number", "5", "must hold a JSON object"),
    ("null", "null", "must hold a JSON object"),
    ("true", "true", "must hold a JSON object"),
    ("hints-a-number", '{"good.png": 5}', "are not a list"),
    ("hints-a-string", '{"good.png": "red"}', "are not a list"),
    ("hints-an-object", '{"good.png": {"x": 1}}', "are not a list"),
    ("hints-null", '{"good.png": null}', "are not a list"),
]:
    usage(f"hints-{case_id}", [*COLORIZE, "--hints", "hints.json"], words, write("hints.json", data))
for case_id, path, words, build in [
    ("missing", "nope.json", "does not exist", None),
    ("folder", "scans", "is not a file", None),
    ("device-file", "/dev/null", "is not a file", None),
    ("fifo", "hints.fifo", "is not a file", lambda root: os.mkfifo(root / "hints.fifo")),
]:
    usage(f"hints-{case_id}", [*COLORIZE, "--hints", path], words, build)

for number, prompt in enumerate(["\udcff", "a street in \udce9t\udce9", "\ud800"]):
    usage(f"prompt-undecodable-{number}", [*COLORIZE, "--prompt", prompt], "--prompt holds bytes")

# what needs the model to judge: its scheduler, its strength, or the model itself
for case_id, extra, words in [
    ("steps-beyond-training", ["--steps", "1001"], "more than the 1000 steps"),
    ("steps-far-beyond-training", ["--steps", "5000"], "more than the 1000 steps"),
    ("steps-a-billion", ["--steps", "1000000000"], "more than the 1000 steps"),
    ("one-step-at-strength-0.3", ["--model", STRENGTH_MODEL, "--steps", "1"], "leaves no step to run"),
    ("three-steps-at-strength-0.3", ["--model", STRENGTH_MODEL, "--steps", "3"], "give --steps 4 or more"),
    ("strength-0.01-of-50-steps", ["--strength", "0.01", "--steps", "50"], "give --steps 100 or more"),
    ("missing-model-folder", ["--model", "no/such-model"], "cannot load model"),
    ("empty-model-folder", ["--model", "empty"], "cannot load model"),
    ("model-is-an-image", ["--model", "good.png"], "cannot load model"),
]:
    build = folder("empty") if "empty" in extra else None
    usage(f"model-{case_id}", [*COLORIZE, *extra], words, build)
for case_id, index, words in [
    ("garbage-index", "garbage", "cannot load model"),
    ("list-index", "[]", "cannot load model"),
    ("string-index", '"x"', "cannot load model"),
    ("component-a-number", '{"_class_name": "EDNPipeline", "unet": 5}', "cannot load model"),
    ("unknown-component-class", '{"_class_name": "EDNPipeline", "unet": ["diffusers", "Nope"]}', "cannot load model"),
]:
    usage(f"model-{case_id}", [*COLORIZE[:-1], "broken"], words, write("broken/model_index.json", index))

# evaluate's files
for case_id, extra, words, build in [
    ("json-is-a-folder", ["--json", "scans"], "is a folder", None),
    ("json-under-a-file", ["--json", "good.png/r.json"], "is not a folder", None),
    ("json-empty", ["--json", ""], "--json is empty", None),
    ("json-in-proc", ["--json", "/proc/r.json"], "cannot write in /proc", None),
    ("markdown-is-a-folder", ["--markdown", "gt"], "is a folder", None),
    ("markdown-under-a-file", ["--markdown", "good.png/sub/r.md"], "is not a folder", None),
    ("lpips-weights-empty", ["--lpips-weights", "w.pth"], "is empty", write("w.pth", b"")),
    (
        "lpips-weights-random",
        ["--lpips-weights", "w.pth"],
        "cannot read LPIPS weights",
        write("w.pth", np.random.default_rng(2).bytes(100)),
    ),
    ("lpips-weights-one-byte", ["--lpips-weights", "w.pth"], "cannot read LPIPS weights", write("w.pth", b"\x80")),
    (
        "lpips-weights-two-bytes",
        ["--lpips-weights", "w.pth"],
        "cannot read LPIPS weights",
        write("w.pth", b"\x80\x02"),
    ),
    ("lpips-weights-json", ["--lpips-weights", "w.pth"], "cannot read LPIPS weights", write("w.pth", '{"a": 1}')),
    ("lpips-weights-png", ["--lpips-weights", "w.pth"], "cannot read LPIPS weights", write("w.pth", encoded("PNG"))),
    (
        "lpips-weights-broken-zip",
        ["--lpips-weights", "w.pth"],
        "cannot read LPIPS weights",
        write("w.pth", b"PK\x03\x04garbage"),
    ),
    ("lpips-weights-missing", ["--lpips-weights", "nope.pth"], "is not a file", None),
    ("lpips-weights-folder", ["--lpips-weights", "scans"], "is not a file", None),
    ("fid-weights-empty", ["--fid-weights", "w.pt"], "is empty", write("w.pt", b"")),
    (
        "fid-weights-random",
        ["--fid-weights", "w.pt"],
        "cannot load FID weights",
        write("w.pt", np.random.default_rng(3).bytes(100)),
    ),
    ("pred-missing", ["--pred", "nope"], "does not exist or is not a folder", None),
    ("pred-empty", ["--pred", "empty"], "no images in prediction folder", folder("empty")),
    ("pred-unpaired", ["--pred", "scans"], "have no ground truth", None),
    (
        "pred-bomb",
        [],
        "larger than the limit of 100 megapixels",
        steps(write("pred/z.png", png_header(20_000, 20_000)), copy("gt/a.png", "gt/z.png")),
    ),
    (
        "gt-bomb",
        [],
        "larger than the limit of 100 megapixels",
        steps(write("gt/z.png", png_header(1, 100_000_001)), copy("gt/a.png", "pred/z.png")),
    ),
    ("pred-garbage", [], "cannot read image", steps(write("pred/z.png"), copy("gt/a.png", "gt/z.png"))),
    ("pred-size-differs", [], "is 48x40 but ground truth", write("gt/a.png", encoded("PNG", (30, 20)))),
]:
    usage(f"evaluate-{case_id}", [*EVALUATE, *extra], words, build)
for case_id, argv, words in [
    ("neither", ["evaluate"], "give --pred and --gt"),
    ("both", [*EVALUATE, "--model", MODEL], "not both"),
    ("pred-only", ["evaluate", "--pred", "pred"], "needs both --pred and --gt"),
    ("sweep-without-data", ["evaluate", "--sweep", "steps=2"], "a sweep needs --data"),
    ("data-without-sweep", ["evaluate", "--data", "gt"], "a sweep needs --sweep"),
    ("data-not-a-folder", ["evaluate", "--data", "good.png", "--sweep", "steps=2"], "is not a folder"),
    ("sweep-repeated", ["evaluate", "--data", "gt", "--sweep", "steps=2", "--sweep", "steps=3"], "more than once"),
]:
    usage(f"evaluate-{case_id}", argv, words)

# export-hub
for case_id, argv, words, build in [
    ("onto-a-file", ["export-hub", MODEL, "good.png"], "exists and is not a folder", None),
    ("onto-a-folder-of-scans", ["export-hub", MODEL, "scans"], "not an export", None),
    ("missing-model", ["export-hub", "nothing-here", "repo"], "neither a folder nor a Hub id", None),
    ("empty-model-folder", ["export-hub", "empty", "repo"], "cannot export", folder("empty")),
]:
    usage(f"export-{case_id}", argv, words, build)

# inputs that cannot be read: each skipped by name, before the model is loaded
for case_id, data in {**NOT_IMAGES, **truncations()}.items():
    per_file(f"unreadable-{case_id}", f"{case_id}.png", data)
per_file("unreadable-empty-file", "empty.png", b"")
for fmt, width, height in BOMBS:
    per_file(f"bomb-{fmt.lower()}-{width}x{height}", f"bomb-{fmt.lower()}.{fmt.lower()}", bomb(fmt, width, height))
for limit in ("0.001", "0.0019", "1e-9"):  # good.png is 48×40 = 1,920 pixels
    PER_FILE.append(pytest.param([*COLORIZE, "--max-megapixels", limit], None, "good.png", id=f"over-limit-{limit}"))
for number, name in enumerate(ODD_NAMES):
    per_file(f"odd-name-{number}", name, b"not an image")
per_file("undecodable-name", os.fsdecode(b"bad\xff.png"), b"not an image")


# ------------------------------------------------------------------------------------------------- the tests


def with_models(argv: list[str], models: dict[str, str]) -> list[str]:
    return [models.get(arg, arg) for arg in argv]


def test_there_are_hundreds_of_cases():
    assert len(USAGE) + len(PER_FILE) + len(decode_failures()) >= 300


@pytest.mark.parametrize("argv, build, words", USAGE)
def test_a_bad_command_line_is_one_line_exit_2_and_touches_nothing(sandbox, models, capsys, argv, build, words):
    if build is not None:
        build(sandbox)
    before = snapshot(sandbox)
    code, out, err = run_in_process(with_models(argv, models), capsys)
    assert code == 2, err
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edn: ") and words in lines[0], err
    assert snapshot(sandbox) == before


@pytest.mark.parametrize("argv, build, name", PER_FILE)
def test_an_unreadable_input_is_skipped_by_name_in_one_line(sandbox, models, capsys, argv, build, name):
    if build is not None:
        build(sandbox)
    before = snapshot(sandbox)
    code, out, err = run_in_process(with_models(argv, models), capsys)
    assert code == 1, err
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[1] == "edn: 1 of 1 inputs failed", err
    assert lines[0].startswith("edn: skipped ") and (name in lines[0] or repr(name)[1:-1] in lines[0]), err
    assert snapshot(sandbox) == before  # not even an empty --out folder


@pytest.fixture(scope="module")
def decode_run(models, tmp_path_factory, photo):
    """One run over every file whose pixels cannot be decoded, beside one good image."""
    import contextlib

    root = tmp_path_factory.mktemp("decode")
    for case_id, data in decode_failures().items():
        (root / "in").mkdir(exist_ok=True)
        (root / "in" / f"{case_id}.png").write_bytes(data)  # PIL reads them by their content
    PIL.Image.fromarray(photo).convert("L").save(root / "in" / "good.png")
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(
            ["colorize", str(root / "in"), "--out", str(root / "out"), "--model", models[MODEL], "--steps", "2"]
        )
    return code, stderr.getvalue(), root


@pytest.mark.parametrize("case_id", list(decode_failures()))
def test_an_input_whose_pixels_do_not_decode_is_skipped_by_name(decode_run, case_id):
    code, err, root = decode_run
    assert code == 1 and "Traceback" not in err
    lines = err.splitlines()
    assert all(line.startswith("edn: ") for line in lines), err
    assert len([line for line in lines if f"/{case_id}." in line and line.startswith("edn: skipped ")]) == 1, err
    assert f"edn: {len(decode_failures())} of {len(decode_failures()) + 1} inputs failed" in lines
    assert [p.name for p in (root / "out").iterdir()] == ["good.png"]  # nothing else, not even a temporary


# ------------------------------------------------------------------------------------------------- real processes


# edn's main on the arguments given, then the heavy libraries it imported
IMPORTS_PROBE = """
import sys
from edn_pipeline.commands.edn_cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_info:
    code = exit_info.code
print([name for name in ("torch", "diffusers", "transformers", "peft") if name in sys.modules])
sys.exit(code)
"""
# edn's main, killed by SIGKILL when it renames its second output into place: that output's temporary file is whole
KILLED_BEFORE_SECOND_RENAME = """
import os, signal, sys
from edn_pipeline.commands.edn_cli import main
replace, outputs = os.replace, []

def replace_or_die(source, target):
    if str(target).endswith(".png"):
        outputs.append(target)
    if len(outputs) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    replace(source, target)

os.replace = replace_or_die
sys.exit(main(sys.argv[1:]))
"""


def edn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edn_pipeline.commands.edn_cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, words",
    [
        (["colorize", "good.png", "--out", "out", "--steps", "0"], "argument --steps"),
        (["colorize", "scans/a.png", "other/a.png", "--out", "out"], "would both be written to"),
        (["colorize", "good.png", "--out", "out", "--hints", "latin1.json"], "can't decode"),
        (["colorize", "good.png", "--out", "good.png"], "exists and is not a folder"),
        (["export-hub", "m", "good.png", "--bogus"], "unrecognized arguments"),
    ],
)
def test_as_a_process_errors_are_one_line_without_importing_torch(sandbox, args, words):
    """Before any work the command needs neither torch nor diffusers: usage errors answer at once."""
    (sandbox / "other").mkdir()
    (sandbox / "other" / "a.png").write_bytes((sandbox / "good.png").read_bytes())
    (sandbox / "latin1.json").write_bytes('{"café": []}'.encode("latin-1"))
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, *args], capture_output=True, text=True, env=ENV, cwd=sandbox, timeout=120
    )
    assert result.returncode == 2 and result.stdout == "[]\n"
    assert len(result.stderr.splitlines()) == 1 and words in result.stderr and "Traceback" not in result.stderr


def test_help_imports_no_model_library():
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_PROBE, "colorize", "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.endswith("[]\n") and "--threads" in result.stdout


@pytest.mark.slow
def test_importing_the_package_still_lets_plain_diffusers_load_a_saved_folder(models):
    """The package imports its pipeline lazily; diffusers must still find EDNPipeline by name once it is imported."""
    code = (
        "import sys, edn_pipeline\nfrom diffusers import DiffusionPipeline\n"
        "print(type(DiffusionPipeline.from_pretrained(sys.argv[1])).__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, models[MODEL]], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert result.returncode == 0 and result.stdout == "EDNPipeline\n", result.stderr[-2000:]


@pytest.mark.slow
def test_a_bomb_among_good_images_as_a_process(sandbox, models):
    (sandbox / "scans" / "bomb.png").write_bytes(png_header(100_000, 100_000))
    result = edn("colorize", "scans", "--out", "out", "--model", models[MODEL], "--steps", "2", cwd=sandbox)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "edn: skipped scans/bomb.png: larger than the limit of 100 megapixels (--max-megapixels)",
        "edn: 1 of 3 inputs failed",
    ]
    assert sorted(p.name for p in (sandbox / "out").iterdir()) == ["a.png", "b.png"]


def test_ctrl_c_lets_the_write_under_way_finish_and_starts_no_other(sandbox, models, monkeypatch, capsys):
    """Outputs are written on a thread while the next image runs: an interrupt there still leaves whole files."""
    import edn_pipeline.commands.colorize as colorize

    scans = sandbox / "three"
    scans.mkdir()
    for name in ("a", "b", "c"):
        PIL.Image.open(sandbox / "good.png").save(scans / f"{name}.png")
    real_save, real_call, calls = colorize.save_atomically, EDNPipeline.__call__, []

    def slow_save(image, path):  # still writing a.png when b's pipeline call is interrupted
        time.sleep(0.5)
        real_save(image, path)

    def call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(colorize, "save_atomically", slow_save)
    monkeypatch.setattr(EDNPipeline, "__call__", call)
    code, _, err = run_in_process(
        ["colorize", "three", "--out", "out", "--model", models[MODEL], "--steps", "2"], capsys
    )
    assert code == 130 and err.strip().endswith("edn: interrupted")
    assert [p.name for p in (sandbox / "out").iterdir()] == ["a.png"]  # no temporary file, nothing for b or c
    with PIL.Image.open(sandbox / "out" / "a.png") as image:
        image.verify()


@pytest.mark.slow
def test_a_batch_killed_at_any_point_resumes_to_what_an_uninterrupted_run_gives(sandbox, models, photo, capsys):
    """SIGKILL between writing an output and renaming it into place, then again mid-batch; then finish."""
    scans = sandbox / "batch"
    scans.mkdir()
    for i in range(16):
        crop = np.roll(photo, 3 * i, axis=1)
        PIL.Image.fromarray(crop).convert("L").save(scans / f"{i:02d}.png")
    args = ["colorize", "batch", "--model", models[MODEL], "--steps", "2", "--threads", "1"]
    assert main([*args, "--out", "reference"]) == 0
    reference = {p.name: p.read_bytes() for p in (sandbox / "reference").iterdir()}

    # 1. killed after writing the second output's temporary file, before renaming it
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_SECOND_RENAME, *args, "--out", "out"],
        env=ENV,
        cwd=sandbox,
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in (sandbox / "out").iterdir())
    assert len(left) == 2 and left[1] == "00.png" and re.fullmatch(r"\.01\.png\.[a-z0-9_]{8}\.tmp", left[0])

    # 2. the real command, killed as soon as it has written one more output
    process = subprocess.Popen(
        [sys.executable, "-m", "edn_pipeline.commands.edn_cli", *args, "--out", "out"],
        env=ENV,
        cwd=sandbox,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while len(list((sandbox / "out").glob("*.png"))) < 2 and process.poll() is None:
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert 2 <= len(list((sandbox / "out").glob("*.png"))) < 16

    # 3. the rerun finishes the batch
    assert main([*args, "--out", "out"]) == 0
    capsys.readouterr()
    assert {p.name: p.read_bytes() for p in (sandbox / "out").iterdir()} == reference

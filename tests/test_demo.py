"""The web demo: its plain functions, its command line, and the page driven in a real headless Chromium."""

import argparse
import io
import os
import shutil
import socket
import tempfile

import numpy as np
import PIL.Image
import pytest
from skimage import data, transform

from edn_pipeline import EDNPipeline
from edn_pipeline.commands import demo as edn_demo
from edn_pipeline.commands.demo import (
    add_demo_parser,
    add_hint,
    build_demo,
    colourise,
    demo_command,
    draw_hints,
    hints_from_table,
    launch_demo,
    load_upload,
    normalise_colour,
    preview_size,
)
from edn_pipeline.errors import EDNInputError
from edn_pipeline.luminance import chroma
from edn_pipeline.testing_utils import tiny_components

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = "/tmp/edn_demo.png"


def mean_chroma(image: PIL.Image.Image) -> float:
    ab = chroma(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
    return float(np.hypot(ab[..., 0], ab[..., 1]).mean())


@pytest.fixture
def gray_photo(photo) -> PIL.Image.Image:
    """The astronaut as a grayscale photo, 48×40."""
    return PIL.Image.fromarray(photo).convert("L")


# ----------------------------------------------------------------------------------------------- hints


def test_add_hint_at_the_clicked_pixel_with_the_picked_colour():
    hints = add_hint([], (12, 7), "#2060E0", image_size=(48, 40))
    assert hints == [[12, 7, "#2060e0"]]
    more = add_hint(hints, (0, 39), "rgba(255, 128, 0, 1)", image_size=(48, 40))
    assert more == [[12, 7, "#2060e0"], [0, 39, "#ff8000"]]
    assert hints == [[12, 7, "#2060e0"]]  # the old list is not changed


def test_add_hint_on_a_downscaled_preview_is_stored_in_photo_pixels():
    size = (4000, 3000)
    shown = preview_size(size)
    assert shown == (1024, 768)
    [[x, y, colour]] = add_hint([], (512, 384), "#00ff00", image_size=size, shown_size=shown)
    assert (x, y, colour) == (2000, 1500, "#00ff00")


def test_add_hint_refuses_bad_clicks_and_colours():
    with pytest.raises(EDNInputError, match="outside the 48×40 image"):
        add_hint([], (48, 3), "#ff0000", image_size=(48, 40))
    with pytest.raises(EDNInputError, match="cannot place a hint"):
        add_hint([], None, "#ff0000", image_size=(48, 40))
    with pytest.raises(EDNInputError, match="not a colour"):
        add_hint([], (1, 1), "reddish", image_size=(48, 40))
    with pytest.raises(EDNInputError, match="pick a hint colour"):
        add_hint([], (1, 1), None, image_size=(48, 40))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("#F00", "#ff0000"),
        ("#12ab34", "#12ab34"),
        ("#12ab34ff", "#12ab34"),
        ("rgb(1, 2, 3)", "#010203"),
        ("rgba(10.4, 20, 30, 0.5)", "#0a141e"),
        ("red", "#ff0000"),
    ],
)
def test_normalise_colour(value, expected):
    assert normalise_colour(value) == expected


def test_hints_from_table_skips_blank_rows_and_names_bad_ones():
    rows = [[10, "7", "#FF0000"], ["", "", ""], [None, None, None], [3.5, 4, "rgb(0, 0, 255)"]]
    assert hints_from_table(rows) == [(10.0, 7.0, "#ff0000"), (3.5, 4.0, "#0000ff")]
    assert hints_from_table(None) == [] and hints_from_table([]) == []
    pandas = pytest.importorskip("pandas")
    assert hints_from_table(pandas.DataFrame([[1, 2, "#ff0000"]], columns=["x", "y", "colour"])) == [
        (1.0, 2.0, "#ff0000")
    ]
    with pytest.raises(EDNInputError, match="hint row 2: x and y must be numbers"):
        hints_from_table([[1, 2, "#ff0000"], ["left", 2, "#ff0000"]])
    with pytest.raises(EDNInputError, match="hint row 1: not a colour"):
        hints_from_table([[1, 2, "sunset"]])


def test_draw_hints_puts_a_dot_of_the_hint_colour_on_a_bounded_preview(gray_photo):
    preview = draw_hints(gray_photo, [[20, 10, "#0000ff"]])
    assert preview.mode == "RGB" and preview.size == gray_photo.size
    assert preview.getpixel((20, 10)) == (0, 0, 255)
    assert gray_photo.mode == "L"  # the photo itself is untouched
    big = PIL.Image.new("L", (3000, 1500), 128)
    small = draw_hints(big, [[1500, 750, "#00ff00"], ["?", 1, "#00ff00"]], max_side=600)  # bad rows skipped
    assert small.size == (600, 300)
    assert small.getpixel((300, 150)) == (0, 255, 0)


# ----------------------------------------------------------------------------------------------- uploads


def test_load_upload_reads_an_upright_image(tmp_path, gray_photo):
    path = tmp_path / "photo.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # stored on its side: must be turned 90° clockwise to be upright
    gray_photo.save(path, exif=exif)
    image = load_upload(path)
    assert image.size == (40, 48)
    image.load()  # still usable after the file was closed


def test_load_upload_rejects_too_many_pixels_with_a_message(tmp_path):
    path = tmp_path / "big.png"
    PIL.Image.new("L", (300, 200), 128).save(path)
    message = r"300×200 \(0\.06 megapixels\); this demo accepts up to 0\.05 megapixels"
    with pytest.raises(EDNInputError, match=message):
        load_upload(path, max_upload_pixels=50_000)
    assert load_upload(path, max_upload_pixels=60_000).size == (300, 200)


def test_load_upload_rejects_too_large_files_with_a_message(tmp_path):
    path = tmp_path / "noise.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(path)
    with pytest.raises(EDNInputError, match=r"the upload is 0\.1 MB; this demo accepts files up to 0\.05 MB"):
        load_upload(path, max_upload_mb=0.05)


def test_load_upload_rejects_files_that_are_not_images(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(EDNInputError, match="cannot read the upload as an image"):
        load_upload(path)


# ----------------------------------------------------------------------------------------------- colourise


def test_colourise_returns_gray_before_and_rgb_after_of_the_input_size(pipe, gray_photo):
    steps = []
    before, after = colourise(
        pipe,
        gray_photo,
        "a red suit",
        [[20, 10, "#ff0000"]],
        steps=3,
        guidance=5,
        seed=1,
        on_step=lambda done, total: steps.append((done, total)),
    )
    assert after.mode == "RGB" and after.size == gray_photo.size
    assert before.mode == "RGB" and before.size == gray_photo.size
    assert mean_chroma(after) > 1.0
    assert mean_chroma(before) < 0.5
    assert steps == [(1, 3), (2, 3), (3, 3)]
    # the same seed gives the same result; the hint is what the pipeline was given
    again = colourise(pipe, gray_photo, "a red suit", [(20.0, 10.0, "#ff0000")], steps=3, guidance=5, seed=1)[1]
    assert np.array_equal(np.asarray(again), np.asarray(after))


def test_colourise_passes_hint_guidance_to_the_pipeline(pipe, gray_photo):
    hints = [[20, 10, "#ff0000"]]
    plain = colourise(pipe, gray_photo, "", hints, steps=2, seed=1)[1]
    guided = colourise(pipe, gray_photo, "", hints, steps=2, seed=1, hint_guidance=4)[1]
    assert not np.array_equal(np.asarray(plain), np.asarray(guided))
    with pytest.raises(EDNInputError, match="must be numbers"):
        colourise(pipe, gray_photo, "", hints, steps=2, hint_guidance="strong")


def test_colourise_progress_counts_the_steps_that_strength_runs(pipe, gray_photo):
    steps = []
    colourise(pipe, gray_photo, "", [], steps=4, strength=0.5, on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 2), (2, 2)]


def test_colourise_without_hints_or_prompt(pipe, gray_photo):
    for hints in (None, [], [["", "", ""]]):
        _, after = colourise(pipe, gray_photo, "  ", hints, steps=1)
        assert after.size == gray_photo.size and after.mode == "RGB"


def test_colourise_shows_the_pipelines_message_for_bad_hints(pipe, gray_photo):
    with pytest.raises(EDNInputError, match=r"hint 0 at \(100, 3\) is outside the 48×40 image"):
        colourise(pipe, gray_photo, "", [[100, 3, "#ff0000"]], steps=1)
    with pytest.raises(EDNInputError, match="upload a photo first"):
        colourise(pipe, None, "", [], steps=1)
    with pytest.raises(EDNInputError, match="num_inference_steps must be an integer from 1"):
        colourise(pipe, gray_photo, "", [], steps=0)


# ----------------------------------------------------------------------------------------------- page and command


def test_build_demo_makes_a_page_without_serving_it(pipe):
    import gradio as gr

    page = build_demo(pipe, max_upload_pixels=1000, max_upload_mb=1.5)
    assert isinstance(page, gr.Blocks)
    ids = {block.elem_id for block in page.blocks.values()}
    assert {"edn-input", "edn-colour", "edn-hints", "edn-prompt", "edn-run", "edn-output", "edn-download"} <= ids
    assert page.edn_max_upload_mb == 1.5


def demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edn")
    add_demo_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_demo_parser_defaults_to_this_machine_only():
    args = demo_parser().parse_args(["demo", "--model", "some/model"])
    assert (args.host, args.port, args.share, args.device) == ("127.0.0.1", None, False, None)
    assert args.max_upload_mb == 20 and args.run is demo_command
    args = demo_parser().parse_args(
        ["demo", "--model", "m", "--host", "0.0.0.0", "--port", "8080", "--share", "--max-upload-mb", "2.5"]
    )
    assert (args.host, args.port, args.share, args.max_upload_mb) == ("0.0.0.0", 8080, True, 2.5)
    for bad in (["--port", "70000"], ["--max-upload-mb", "0"]):
        with pytest.raises(SystemExit):
            demo_parser().parse_args(["demo", "--model", "m", *bad])


def test_demo_command_loads_the_model_and_serves_it(tmp_path, monkeypatch):
    EDNPipeline(**tiny_components()).save_pretrained(tmp_path / "model")
    served = {}
    monkeypatch.setattr(edn_demo, "launch_demo", lambda page, **kwargs: served.update(page=page, **kwargs))
    args = demo_parser().parse_args(
        ["demo", "--model", str(tmp_path / "model"), "--device", "cpu", "--port", "7999", "--max-upload-mb", "3"]
    )
    assert demo_command(args) == 0
    assert (served["host"], served["port"], served["share"]) == ("127.0.0.1", 7999, False)
    assert served["page"].edn_max_upload_mb == 3


def test_demo_command_without_gradio_says_what_to_install(monkeypatch):
    from edn_pipeline.commands.common import CLIError

    def no_gradio():
        raise ImportError("the demo needs Gradio: pip install 'edn-pipeline[demo]'")

    monkeypatch.setattr(edn_demo, "_require_gradio", no_gradio)
    with pytest.raises(CLIError, match=r"pip install 'edn-pipeline\[demo\]'"):
        demo_command(demo_parser().parse_args(["demo", "--model", "m"]))


def test_demo_command_reports_a_missing_model_in_one_line(tmp_path):
    from edn_pipeline.commands.common import CLIError

    args = demo_parser().parse_args(["demo", "--model", str(tmp_path / "nothing-here")])
    with pytest.raises(CLIError, match="cannot load model"):
        demo_command(args)


# ----------------------------------------------------------------------------------------------- the browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_demo():
    """The demo around edn-tiny, served on 127.0.0.1 in a background thread; yields its address."""
    pipeline = EDNPipeline.from_pretrained()
    pipeline.set_progress_bar_config(disable=True)
    page = build_demo(pipeline, max_upload_pixels=200 * 200, default_steps=20)
    port = free_port()
    launch_demo(page, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture
def browser_page():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="edn-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 900},
            )
            context.set_default_timeout(20_000)
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def wait_for_status(page, text: str) -> str:
    page.wait_for_function("text => document.querySelector('#edn-status').innerText.includes(text)", arg=text)
    return page.inner_text("#edn-status")


def fetch_image(page, url: str) -> PIL.Image.Image:
    response = page.request.get(url)
    assert response.ok, (url, response.status)
    return PIL.Image.open(io.BytesIO(response.body()))


@pytest.mark.slow
def test_page_in_a_real_browser(served_demo, browser_page, tmp_path):
    page = browser_page
    photo = PIL.Image.fromarray((transform.resize(data.astronaut(), (120, 160)) * 255).astype(np.uint8)).convert("L")
    photo.save(tmp_path / "astronaut.png")
    PIL.Image.new("L", (300, 300), 90).save(tmp_path / "huge.png")
    page.goto(served_demo)
    upload = "#edn-input input[type=file]"

    # an image over the demo's pixel limit is refused with a message
    page.set_input_files(upload, str(tmp_path / "huge.png"))
    assert "this demo accepts up to 0.04 megapixels" in wait_for_status(page, "Upload refused")

    page.set_input_files(upload, str(tmp_path / "astronaut.png"))
    wait_for_status(page, "Loaded 160×120")
    page.wait_for_function(
        "() => { const i = document.querySelector('#edn-input img');"
        " return i && i.complete && i.naturalWidth === 160 }"
    )

    # pick a colour, then click on the photo to place a hint there
    page.click("#edn-colour button.dialog-button")
    hex_input = page.locator("#edn-colour .color-picker input[type=text]")
    hex_input.fill("#2060e0")
    hex_input.press("Enter")
    page.click("h1")  # close the picker
    page.locator("#edn-input img").click(position={"x": 100, "y": 40})
    status = wait_for_status(page, "Hint 1 at")
    x, y = (float(v) for v in status.split("(")[1].split(")")[0].split(","))
    assert abs(x - 100) <= 1 and abs(y - 40) <= 1, status
    assert "#2060e0" in status
    assert "#2060e0" in page.inner_text("#edn-hints")
    preview = fetch_image(page, page.locator("#edn-input img").get_attribute("src"))
    assert preview.size == photo.size and preview.convert("RGB").getpixel((int(x), int(y))) == (0x20, 0x60, 0xE0)

    page.fill("#edn-prompt textarea, #edn-prompt input", "an astronaut in a blue suit")
    page.click("#edn-run")
    assert wait_for_status(page, "Colourised") == "Colourised 160×120."

    before_img, after_img = page.locator("#edn-output img[data-testid=imageslider-image]").all()
    before = fetch_image(page, before_img.get_attribute("src"))
    after = fetch_image(page, after_img.get_attribute("src"))
    assert after.size == before.size == photo.size
    assert mean_chroma(after) > 1.0, "the returned image has no colour"
    assert mean_chroma(before) < 0.5
    link = page.locator("#edn-download a[download]").first
    assert link.get_attribute("download") == "astronaut_colourised.png"
    downloaded = fetch_image(page, link.get_attribute("href"))
    assert np.array_equal(np.asarray(downloaded.convert("RGB")), np.asarray(after.convert("RGB")))

    page.wait_for_timeout(400)  # let the output fade in
    for close in page.locator(".toast-close").all():  # the refused upload's message: not part of the README's picture
        close.click()
    page.wait_for_function("() => !document.querySelector('[data-testid=toast-body]')")
    page.screenshot(path=SCREENSHOT, full_page=True)

    page.click("#edn-clear-hints")
    page.wait_for_function("() => !document.querySelector('#edn-hints').innerText.includes('#2060e0')")

"""The interactive web demo: ``edn demo --model MODEL`` (needs Gradio: ``pip install 'edn-pipeline[demo]'``).

Upload a photo, type a prompt, click on the photo to place colour hints with the colour picker, colourise,
compare before and after with the slider, download the result.  The page is served on 127.0.0.1 unless
``--host`` says otherwise.

The work is done by plain functions (:func:`load_upload`, :func:`add_hint`, :func:`hints_from_table`,
:func:`draw_hints`, :func:`colourise`) that raise :class:`~edn_pipeline.errors.EDNInputError` with a
one-line message; :func:`build_demo` wires them into a Gradio page and shows those messages to the user.
Gradio is imported only by :func:`build_demo` and :func:`launch_demo`, so the rest of ``edn`` works without it;
torch only by the functions that run the model, so that building the ``edn`` command line is quick.
"""

import argparse
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import PIL.Image
import PIL.ImageColor
import PIL.ImageDraw
import PIL.ImageOps

from ..errors import EDNInputError
from .common import (
    MODEL_HELP,
    CLIError,
    add_runtime_arguments,
    check_device,
    default_device,
    load_pipeline,
    positive_float,
    torch_settings,
)

MB = 1024 * 1024  # as Gradio counts its max_file_size
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_UPLOAD_PIXELS = 25_000_000
PREVIEW_MAX_SIDE = 1024  # the clickable preview is at most this large; hints are kept in the photo's pixels
DEFAULT_HINT_COLOUR = "#d03020"
HINT_HEADERS = ["x", "y", "colour"]

_RGB_FUNCTION = re.compile(r"^rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(?:,\s*[\d.]+%?\s*)?\)$")


# --------------------------------------------------------------------------------------------- plain functions


def load_upload(
    path: str | os.PathLike,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
) -> PIL.Image.Image:
    """Open an uploaded file as an upright image, refusing files or images over the limits.

    The file size and the pixel count (read from the header) are checked before the pixels are decoded.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_upload_mb * MB:
        raise EDNInputError(f"the upload is {size / MB:.1f} MB; this demo accepts files up to {max_upload_mb:g} MB")
    try:
        with PIL.Image.open(path) as image:
            width, height = image.size
            if width * height > max_upload_pixels:
                raise EDNInputError(
                    f"the image is {width}×{height} ({width * height / 1e6:.3g} megapixels); "
                    f"this demo accepts up to {max_upload_pixels / 1e6:g} megapixels"
                )
            image.load()
            upright = PIL.ImageOps.exif_transpose(image)
            if upright is image:  # nothing to turn: keep a copy that outlives the file
                upright = image.copy()
    except PIL.Image.DecompressionBombError:
        limit = f"{max_upload_pixels / 1e6:g}"
        raise EDNInputError(f"the image is too large; this demo accepts up to {limit} megapixels") from None
    except (PIL.UnidentifiedImageError, OSError) as error:
        raise EDNInputError(f"cannot read the upload as an image: {error}") from None
    return upright


def preview_size(size: tuple[int, int], max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """The (width, height) of the clickable preview of an image of ``size``: never larger than the image."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def normalise_colour(value) -> str:
    """A colour picker's value (``#rgb``, ``#rrggbb``, ``#rrggbbaa``, ``rgb(...)``, ``rgba(...)``) as ``#rrggbb``."""
    if not isinstance(value, str) or not value.strip():
        raise EDNInputError(f"pick a hint colour first (got {value!r})")
    text = value.strip()
    match = _RGB_FUNCTION.match(text)
    try:
        if match:
            rgb = tuple(round(float(c)) for c in match.groups())
            if not all(0 <= c <= 255 for c in rgb):
                raise ValueError
        elif re.fullmatch(r"#[0-9a-fA-F]{8}", text):
            rgb = PIL.ImageColor.getrgb(text[:7])
        else:
            rgb = PIL.ImageColor.getrgb(text)[:3]
    except ValueError:
        raise EDNInputError(f"not a colour: {value!r}") from None
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def add_hint(
    hints: list,
    clicked: tuple[float, float],
    colour: str,
    image_size: tuple[int, int],
    shown_size: tuple[int, int] | None = None,
) -> list:
    """``hints`` with one more ``[x, y, "#rrggbb"]`` at the clicked point.

    ``clicked`` is the pixel the browser reports on the shown preview of size ``shown_size`` (the image's
    own size when None); the hint is stored in the image's own pixel coordinates.
    """
    width, height = image_size
    shown_w, shown_h = shown_size or image_size
    try:
        cx, cy = (float(c) for c in clicked)
    except (TypeError, ValueError):
        raise EDNInputError(f"cannot place a hint at {clicked!r}") from None
    if not (0 <= cx < shown_w and 0 <= cy < shown_h):
        raise EDNInputError(f"the click at ({cx:g}, {cy:g}) is outside the {shown_w}×{shown_h} image")
    x, y = cx * width / shown_w, cy * height / shown_h
    x, y = (int(v) if v == int(v) else round(v, 1) for v in (x, y))
    return [*map(list, hints), [x, y, normalise_colour(colour)]]


def _table_rows(rows) -> list:
    """A table's value (a list of rows, a pandas DataFrame or None) as a list of rows."""
    if rows is None:
        return []
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a pandas DataFrame
        return rows.values.tolist()
    return [list(row) for row in rows]


def hints_from_table(rows) -> list[tuple[float, float, str]]:
    """The hint table's rows (``[x, y, colour]``; blank rows skipped) as the pipeline's ``hints``.

    Only the table's own shape and types are checked here; where a hint lies is checked by the pipeline.
    """
    hints = []
    for number, row in enumerate(_table_rows(rows), start=1):
        cells = ["" if c is None or (isinstance(c, float) and math.isnan(c)) else c for c in row]
        if all(str(c).strip() == "" for c in cells):
            continue
        if len(cells) != 3:
            raise EDNInputError(f"hint row {number}: expected x, y and colour, got {len(cells)} values")
        try:
            x, y = float(cells[0]), float(cells[1])
        except (TypeError, ValueError):
            got = f"{cells[0]!r}, {cells[1]!r}"
            raise EDNInputError(f"hint row {number}: x and y must be numbers, got {got}") from None
        try:
            colour = normalise_colour(cells[2])
        except EDNInputError as error:
            raise EDNInputError(f"hint row {number}: {error}") from None
        hints.append((x, y, colour))
    return hints


def draw_hints(image: PIL.Image.Image, hints, max_side: int = PREVIEW_MAX_SIDE) -> PIL.Image.Image:
    """An RGB preview of ``image`` (at most ``max_side``) with a dot in each hint's colour at each hint."""
    width, height = image.size
    shown = preview_size(image.size, max_side)
    preview = image.convert("RGB") if image.mode != "RGB" else image.copy()
    if shown != image.size:
        preview = preview.resize(shown, PIL.Image.Resampling.LANCZOS)
    draw = PIL.ImageDraw.Draw(preview)
    radius = max(3, round(max(shown) / 80))
    for x, y, colour in hints:
        try:
            fill = normalise_colour(colour)
            px, py = float(x) * shown[0] / width, float(y) * shown[1] / height
        except (EDNInputError, TypeError, ValueError):
            continue  # the table is being edited; the pipeline reports bad rows when run
        box = [px - radius, py - radius, px + radius, py + radius]
        draw.ellipse([box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2], fill="black")
        draw.ellipse([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], fill="white")
        draw.ellipse(box, fill=fill)
    return preview


def colourise(
    pipe,
    image: PIL.Image.Image | None,
    prompt: str | None = None,
    hints=None,
    steps: int = 50,
    guidance: float = 5.0,
    seed: int = 0,
    on_step: Callable[[int, int], None] | None = None,
    strength: float | None = None,
    hint_guidance: float = 1.0,
) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """Colourise ``image`` with ``pipe``; returns ``(before, after)``: its grayscale and the RGB result.

    ``hints`` are the pipeline's point hints or the hint table's rows; ``on_step(done, total)`` reports
    progress; ``strength`` ``None`` is the model's own; ``hint_guidance`` is the pipeline's ``hint_guidance_scale``.
    Bad input raises :class:`EDNInputError`.
    """
    import torch

    from ..luminance import gray_image

    if image is None:
        raise EDNInputError("upload a photo first")
    hints = hints_from_table(hints) if hints and not isinstance(hints[0], tuple) else list(hints or [])
    try:
        steps, guidance, seed, hint_guidance = int(steps), float(guidance), int(seed), float(hint_guidance)
    except (TypeError, ValueError, OverflowError):
        got = f"{steps!r}, {guidance!r}, {seed!r}, {hint_guidance!r}"
        raise EDNInputError(f"steps, guidance, seed and hint guidance must be numbers, got {got}") from None
    callback = None
    if on_step is not None:

        def callback(pipeline, index, timestep, tensors):
            on_step(index + 1, pipeline.num_timesteps)  # strength < 1 runs fewer than ``steps``
            return tensors

    prompt = prompt.strip() if isinstance(prompt, str) else prompt
    result = pipe(
        image,
        prompt=prompt or None,
        hints=hints or None,
        num_inference_steps=steps,
        strength=None if strength is None else float(strength),
        guidance_scale=guidance,
        hint_guidance_scale=hint_guidance,
        generator=torch.Generator().manual_seed(seed),
        callback_on_step_end=callback,
    ).images[0]
    return PIL.Image.fromarray(gray_image(image)).convert("RGB"), result.convert("RGB")


# --------------------------------------------------------------------------------------------- the page


def _require_gradio():
    try:
        import gradio
    except ImportError:
        raise ImportError("the demo needs Gradio: pip install 'edn-pipeline[demo]'") from None
    return gradio


def build_demo(
    pipe,
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    default_steps: int = 50,
    default_guidance: float = 5.0,
):
    """The demo page (a ``gradio.Blocks``) around a loaded ``EDNPipeline``; start it with :func:`launch_demo`."""
    gr = _require_gradio()
    output_dir = tempfile.TemporaryDirectory(prefix="edn-demo-")
    with gr.Blocks(title="EDN colourisation", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        page = _lay_out(gr, pipe.config.default_strength, default_steps, default_guidance)
        _wire_upload(gr, page, max_upload_pixels, max_upload_mb)
        _wire_hints(gr, page)
        _wire_run(gr, page, pipe, output_dir.name)
    demo.edn_max_upload_mb = max_upload_mb
    demo.edn_output_dir = output_dir  # removed when the demo object goes away
    return demo


def _lay_out(gr, default_strength: float, default_steps: int, default_guidance: float) -> SimpleNamespace:
    """The page's components, by name: the photo and its hints on the left, the result on the right."""
    gr.Markdown(
        "# EDN: colourise a grayscale photo\n"
        "Upload a photo, click on it to place colour hints (the colour comes from the picker), "
        "describe the colours in the prompt if you like, and press **Colourise**."
    )
    page = SimpleNamespace(loaded=gr.State(None))  # {"image", "name"} of the uploaded photo
    with gr.Row():
        with gr.Column():
            page.photo = gr.Image(
                label="Photo (click to place a hint)",
                type="filepath",
                image_mode=None,
                format="png",
                sources=["upload", "clipboard"],
                elem_id="edn-input",
            )
            with gr.Row():
                page.colour = gr.ColorPicker(DEFAULT_HINT_COLOUR, label="Hint colour", elem_id="edn-colour")
                page.undo = gr.Button("Undo last hint", elem_id="edn-undo")
                page.clear_hints = gr.Button("Clear hints", elem_id="edn-clear-hints")
            page.table = gr.Dataframe(
                value=[],
                headers=HINT_HEADERS,
                datatype=["number", "number", "str"],
                type="array",
                column_count=3,
                interactive=True,
                label="Hints (x, y in the photo's pixels; editable)",
                elem_id="edn-hints",
            )
            page.prompt = gr.Textbox(label="Prompt", placeholder="colored photo", lines=1, elem_id="edn-prompt")
            with gr.Accordion("Settings", open=False):
                page.steps = gr.Slider(1, 100, value=default_steps, step=1, label="Steps", elem_id="edn-steps")
                page.strength = gr.Slider(
                    0.05,
                    1,
                    value=default_strength,
                    step=0.05,
                    label="Strength",
                    elem_id="edn-strength",
                )
                page.guidance = gr.Slider(
                    0, 15, value=default_guidance, step=0.5, label="Guidance", elem_id="edn-guidance"
                )
                page.hint_guidance = gr.Slider(
                    1, 5, value=1, step=0.5, label="Hint guidance (1: off)", elem_id="edn-hint-guidance"
                )
                page.seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed", elem_id="edn-seed")
            page.run = gr.Button("Colourise", variant="primary", elem_id="edn-run")
        with gr.Column():
            page.comparison = gr.ImageSlider(
                label="Before / after",
                type="pil",
                format="png",
                interactive=False,
                buttons=["download", "fullscreen"],
                elem_id="edn-output",
            )
            page.download = gr.File(label="Download", interactive=False, elem_id="edn-download")
            page.status = gr.Markdown("Upload a photo.", elem_id="edn-status")
    return page


def _wire_upload(gr, page: SimpleNamespace, max_upload_pixels: int, max_upload_mb: float) -> None:
    """An upload within the limits becomes the loaded photo (its preview, no hints yet); clearing it unloads it."""

    def on_upload(path):
        if path is None:
            return None, None, [], "Upload a photo."
        try:
            image = load_upload(path, max_upload_pixels, max_upload_mb)
        except EDNInputError as error:
            gr.Warning(str(error))
            return None, None, [], f"**Upload refused:** {error}"
        name = Path(path).stem or "photo"
        return (
            draw_hints(image, []),
            {"image": image, "name": name},
            [],
            f"Loaded {image.width}×{image.height}. Click on the photo to place colour hints.",
        )

    def on_clear():
        return None, [], "Upload a photo."

    page.photo.upload(on_upload, page.photo, [page.photo, page.loaded, page.table, page.status])
    page.photo.clear(on_clear, None, [page.loaded, page.table, page.status])


def _wire_hints(gr, page: SimpleNamespace) -> None:
    """A click on the preview adds a hint in the picked colour; the table's edits, undo and clear redraw the dots."""

    def on_click(loaded, rows, colour, event: gr.SelectData):
        if not loaded:
            gr.Warning("upload a photo first")
            return gr.skip(), gr.skip(), gr.skip()
        image = loaded["image"]
        try:
            current = [list(h) for h in hints_from_table(rows)]
            rows = add_hint(current, event.index, colour, image.size, preview_size(image.size))
        except EDNInputError as error:
            gr.Warning(str(error))
            return gr.skip(), gr.skip(), f"**Hint not added:** {error}"
        x, y, picked = rows[-1]
        return draw_hints(image, rows), rows, f"Hint {len(rows)} at ({x}, {y}), colour {picked}."

    def on_table_edit(loaded, rows):
        if not loaded:
            return gr.skip()
        return draw_hints(loaded["image"], _table_rows(rows))

    def on_undo(loaded, rows):
        try:
            rows = [list(h) for h in hints_from_table(rows)][:-1]
        except EDNInputError:
            rows = _table_rows(rows)[:-1]
        return (draw_hints(loaded["image"], rows) if loaded else gr.skip()), rows

    def on_clear_hints(loaded):
        return (draw_hints(loaded["image"], []) if loaded else gr.skip()), []

    page.photo.select(on_click, [page.loaded, page.table, page.colour], [page.photo, page.table, page.status])
    page.table.input(on_table_edit, [page.loaded, page.table], page.photo)
    page.undo.click(on_undo, [page.loaded, page.table], [page.photo, page.table])
    page.clear_hints.click(on_clear_hints, page.loaded, [page.photo, page.table])


def _wire_run(gr, page: SimpleNamespace, pipe, output_dir: str) -> None:
    """Colourise runs the pipeline, one run at a time, with a progress bar; the result is shown and downloadable."""

    def on_run(loaded, prompt, rows, steps, strength, guidance, hint_guidance, seed, progress=gr.Progress()):  # noqa: B008
        if not loaded:
            raise gr.Error("upload a photo first")
        try:
            before, after = colourise(
                pipe,
                loaded["image"],
                prompt,
                hints_from_table(rows),
                steps,
                guidance,
                seed,
                on_step=lambda done, total: progress((done, total), desc="colourising"),
                strength=strength,
                hint_guidance=hint_guidance,
            )
        except EDNInputError as error:
            raise gr.Error(str(error)) from None
        out_path = Path(tempfile.mkdtemp(dir=output_dir)) / f"{loaded['name']}_colourised.png"
        after.save(out_path)
        return (before, after), str(out_path), f"Colourised {after.width}×{after.height}."

    page.run.click(
        on_run,
        [
            page.loaded,
            page.prompt,
            page.table,
            page.steps,
            page.strength,
            page.guidance,
            page.hint_guidance,
            page.seed,
        ],
        [page.comparison, page.download, page.status],
        concurrency_limit=1,
    )


def launch_demo(
    demo,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    prevent_thread_lock: bool = False,
    quiet: bool = False,
):
    """Serve ``demo``; Gradio itself refuses uploads over the demo's ``max_upload_mb`` before they are stored."""
    max_mb = getattr(demo, "edn_max_upload_mb", DEFAULT_MAX_UPLOAD_MB)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=prevent_thread_lock,
        quiet=quiet,
        max_file_size=math.ceil(max_mb * MB),
        ssr_mode=False,
        mcp_server=False,
        show_error=True,
    )


# --------------------------------------------------------------------------------------------- command line


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number in 1..65535, got {value}")
    return value


def add_demo_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``edn demo`` to the ``edn`` command's subparsers."""
    demo = subparsers.add_parser("demo", help="serve the interactive web demo (needs the [demo] extra)")
    demo.add_argument("--model", default=None, help=MODEL_HELP)
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine)")
    demo.add_argument("--port", type=_port, default=None, help="port (default: the first free one from 7860)")
    add_runtime_arguments(demo)
    demo.add_argument(
        "--max-upload-mb", type=positive_float, default=DEFAULT_MAX_UPLOAD_MB, help="largest upload accepted, in MB"
    )
    demo.add_argument(
        "--max-upload-megapixels",
        type=positive_float,
        default=DEFAULT_MAX_UPLOAD_PIXELS / 1e6,
        help="largest image accepted, in megapixels",
    )
    demo.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    demo.set_defaults(run=demo_command)
    return demo


def demo_command(args: argparse.Namespace) -> int:
    try:
        _require_gradio()
    except ImportError as error:
        raise CLIError(str(error)) from None
    device = check_device(args.device) if args.device is not None else default_device()
    with torch_settings(device, args.dtype, args.threads):
        pipe = load_pipeline(args.model, device, args.dtype)
        demo = build_demo(
            pipe,
            max_upload_pixels=round(args.max_upload_megapixels * 1e6),
            max_upload_mb=args.max_upload_mb,
        )
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"edn: serving on {args.host}: anyone who can reach it can use this demo", file=sys.stderr)
        try:
            launch_demo(demo, host=args.host, port=args.port, share=args.share)
        except OSError as error:
            raise CLIError(f"cannot serve the demo on {args.host}:{args.port or 'auto'}: {error}") from None
    return 0

"""What several ``edn`` commands share: the model and runtime options, argument types, checks and model loading.

A leaf of the command line: it imports no command. torch, diffusers and transformers are imported inside the
functions that need them, so that building the parser stays quick.
"""

import argparse
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import PIL.Image

from ..errors import one_line

DTYPES = ("bfloat16", "float16", "float32")  # torch dtype names (torch is imported only when a command runs)
MODEL_HELP = "a Hub id or a local folder saved with save_pretrained (default: edn-tiny, shipped with edn)"
# An A4 page scanned at 1,000 dpi is 97 megapixels; a larger one is more likely a broken or hostile header.
DEFAULT_MAX_MEGAPIXELS = 100.0  # as EDNImageProcessor.max_pixels
MAX_SEED = 2**64 - 1  # the range of torch.Generator.manual_seed


class CLIError(Exception):
    """A problem with the command line itself: reported in one line, exit status 2."""


def shown(path) -> str:
    """A path as it can be printed on one line (quoted, with escapes, if it holds a newline or undecodable bytes)."""
    return str(path) if str(path).isprintable() else repr(str(path))


def generation_settings(args: argparse.Namespace) -> dict:
    """The pipeline arguments of ``--steps``, ``--guidance``, ``--hint-guidance``, ``--strength``, ``--vq-steps``,
    ``--temperature`` and ``--truncation-rate``: shared by every call of one run (``edn colorize``, the quality
    benchmark)."""
    return dict(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        hint_guidance_scale=args.hint_guidance,
        strength=args.strength,
        vq_steps=args.vq_steps,
        temperature=args.temperature,
        truncation_rate=args.truncation_rate,
    )


# ------------------------------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def unit_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64-1, got {text}")
    return value


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_count(text: str) -> int:
    value, cpus = int(text), usable_cpus()
    if not 1 <= value <= cpus:
        raise argparse.ArgumentTypeError(f"must be from 1 to {cpus} (the CPUs this process may use), got {value}")
    return value


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --threads, as every command that runs a model takes them."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if there is one)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="float16 needs a GPU (default: float32)")
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=max(1, usable_cpus() // 2),
        help="torch's CPU threads (default: half the CPUs, here %(default)s: torch's threads wait for each other, "
        "so with one per core a core busy elsewhere stalls them all)",
    )


# ------------------------------------------------------------------------------------------------- shared checks


def check_device(name: str) -> str:
    """``name`` if this machine has that device; a CLIError saying what it has otherwise."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cpu":
        return name
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None or accelerator.type != device.type:
        has = f"its accelerator is {accelerator.type}" if accelerator is not None else "it has only the cpu"
        raise CLIError(f"--device {name!r}: this machine has no {device.type} device ({has})")
    count = torch.accelerator.device_count()
    if device.index is not None and device.index >= count:
        raise CLIError(f"--device {name!r}: this machine has {count} {device.type} device(s), numbered from 0")
    return name


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def torch_settings(device: str, dtype: str, threads: int):
    """Refuse float16 on a CPU (it runs there several times slower than float32); torch on ``threads`` threads."""
    import torch

    if dtype == "float16" and torch.device(device).type == "cpu":
        raise CLIError("--dtype float16 runs several times slower than float32 on a CPU; use it on a GPU")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def pixel_limit(megapixels: float):
    """PIL refuses images over ``megapixels`` when it reads their header, before decoding a pixel.

    PIL itself only warns between its limit and twice it; here both raise, and are reported as one skipped input.
    """
    previous = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = max(1, int(megapixels * 1e6))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            yield
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = previous


def check_output_file(flag: str, path: str) -> None:
    """A report file named by ``flag`` must be writable before hours of work, not after (missing folders are made)."""
    target = Path(path)
    if path == "":
        raise CLIError(f"{flag} is empty")
    if target.is_dir():
        raise CLIError(f"{flag} {shown(path)} is a folder, not a file name")
    existing = next(folder for folder in target.absolute().parents if os.path.lexists(folder))
    check_writable_folder(flag, path, existing)


def check_writable_folder(flag: str, value, folder: Path) -> None:
    if not folder.is_dir():
        problem = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise CLIError(f"{flag} {shown(value)}: {shown(folder)} {problem}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise CLIError(f"{flag} {shown(value)}: cannot write in {shown(folder)}: {error.strerror or error}") from None


def load_pipeline(model: str | None, device: str, dtype: str, max_megapixels: float | None = None):
    """The named model, or edn-tiny when ``model`` is None, quietly: no loading progress bars or log lines; with
    ``max_megapixels``, its image processor takes inputs up to that size (the command's --max-megapixels)."""
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    from ..pipeline_edn import EDNPipeline

    for logging in (diffusers.utils.logging, transformers.utils.logging):
        logging.disable_progress_bar()
        logging.set_verbosity_error()
    try:
        pipe = EDNPipeline.from_pretrained(model, dtype=getattr(torch, dtype))
    except Exception as error:  # a malformed model folder can make diffusers fail in any way, not only OSError
        raise CLIError(f"cannot load model {model!r}: {one_line(error)}") from None
    pipe.set_progress_bar_config(disable=True)
    if max_megapixels is not None:
        limit = int(max_megapixels * 1e6)
        pipe.image_processor = type(pipe.image_processor).from_config(pipe.image_processor.config, max_pixels=limit)
    return pipe.to(device)

"""``edn evaluate``: score colourised folders (Tables 1–2) or sweep a model's settings (Table 4).

The work is :mod:`edn_pipeline.evaluation.evaluate`'s; this is its command line: the options, their checks before
any work, and the reports (printed, and written as JSON or Markdown).
"""

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

from ..errors import EDNInputError, one_line
from ..evaluation.evaluate import (
    DEFAULTS,
    PARAMETERS,
    check_value,
    evaluate_folders,
    folders_markdown,
    parameter_name,
    sweep,
    sweep_markdown,
    table4,
)
from ..files import atomic_write
from .common import (
    DEFAULT_MAX_MEGAPIXELS,
    MODEL_HELP,
    CLIError,
    add_runtime_arguments,
    check_device,
    check_output_file,
    default_device,
    load_pipeline,
    pixel_limit,
    positive_float,
    positive_int,
    seed,
    torch_settings,
)


def parse_sweep(text: str) -> tuple[str, list]:
    """``name=v1,v2,...`` for ``--sweep``."""
    name, sep, values = text.partition("=")
    try:
        if not sep or not values.strip():
            raise EDNInputError(f"sweep {text!r} is not NAME=V1,V2,...")
        name = parameter_name(name.strip())
        return name, [
            check_value(name, float(v) if PARAMETERS[name][1] is float else _int(v)) for v in values.split(",")
        ]
    except EDNInputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise EDNInputError(f"expected an integer, got {text.strip()!r}") from None


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``evaluate`` to an ``argparse`` subparsers object; it runs :func:`evaluate_command`."""
    ev = subparsers.add_parser(
        "evaluate",
        help="metrics of colourised folders (--pred/--gt) or a parameter sweep of a model (--model/--data/--sweep)",
        description=(
            "Either score colourised photos against ground truth (--pred DIR --gt DIR, paired by file name) or "
            "colourise the grayscale of a data set under settings varied one at a time (--model M --data DIR "
            "--sweep NAME=V1,V2 ...) and score each, as the paper's Tables 1-2 and 4. FID and LPIPS need local "
            "weights (--fid-weights, --lpips-weights) and are reported unavailable without them."
        ),
    )
    folders = ev.add_argument_group("scoring folders")
    folders.add_argument("--pred", help="folder of colourised photos")
    folders.add_argument("--gt", help="folder of ground-truth colour photos (same file names, any extension)")
    model = ev.add_argument_group("sweeping a model")
    model.add_argument("--model", help=MODEL_HELP)
    model.add_argument("--data", help="folder of ground-truth colour photos; their grayscale is colourised")
    model.add_argument(
        "--sweep",
        action="append",
        type=parse_sweep,
        metavar="NAME=V1,V2,...",
        help=f"values of one parameter ({', '.join(PARAMETERS)}); repeatable",
    )
    model.add_argument("--steps", type=positive_int, default=DEFAULTS["steps"], help="default denoising steps")
    model.add_argument("--guidance", type=_float_arg, default=DEFAULTS["guidance"], help="default guidance weight")
    model.add_argument("--temperature", type=_float_arg, default=DEFAULTS["temperature"], help="default temperature")
    model.add_argument("--vq-steps", type=int, default=None, help="default token refinement steps (decoder's own)")
    model.add_argument("--strength", type=_float_arg, default=None, help="default strength (the model's own)")
    model.add_argument(
        "--truncation-rate", type=_float_arg, default=None, help="default token truncation rate (the decoder's own)"
    )
    model.add_argument("--seed", type=seed, default=0, help="seed of every photo's generator (default: %(default)s)")
    model.add_argument("--limit", type=positive_int, default=None, help="only the first N photos (by name)")
    ev.add_argument("--fid-weights", help="TorchScript Inception-v3 feature extractor (e.g. inception-2015-12-05.pt)")
    ev.add_argument("--lpips-weights", help="AlexNet ImageNet state dict (e.g. alexnet-owt-7be5be79.pth)")
    add_runtime_arguments(ev)
    ev.add_argument(
        "--max-megapixels",
        type=positive_float,
        default=DEFAULT_MAX_MEGAPIXELS,
        help="refuse larger photos, judged from their header before decoding (default: %(default)s)",
    )
    ev.add_argument("--json", help="write the results as JSON to this file")
    ev.add_argument("--markdown", help="write the tables as Markdown to this file")
    ev.set_defaults(run=evaluate_command)
    return ev


def evaluate_command(args: argparse.Namespace) -> int:
    """Run ``edn evaluate``; print the tables, write --json/--markdown; returns the exit status."""
    scoring = args.pred is not None or args.gt is not None
    sweeping = args.model is not None or args.data is not None or bool(args.sweep)
    if scoring and sweeping:
        raise CLIError("give either --pred and --gt, or --model, --data and --sweep, not both")
    if not scoring and not sweeping:
        raise CLIError("give --pred and --gt to score folders, or --data and --sweep (and --model) to sweep a model")
    for flag, value in (("--fid-weights", args.fid_weights), ("--lpips-weights", args.lpips_weights)):
        if value is not None and not Path(value).is_file():
            raise CLIError(f"{flag} {value!r} is not a file")
        if value is not None and Path(value).stat().st_size == 0:
            raise CLIError(f"{flag} {value!r} is empty")
    for flag, value in (("--json", args.json), ("--markdown", args.markdown)):
        if value is not None:
            check_output_file(flag, value)
    device = check_device(args.device) if args.device is not None else default_device()
    with torch_settings(device, args.dtype, args.threads), pixel_limit(args.max_megapixels):
        markdown, data = _evaluate(args, device, scoring)
    print(markdown, end="")
    try:
        if args.json:
            write_json(data, args.json)
        if args.markdown:
            write_atomically(markdown, args.markdown)
    except OSError as error:  # checked before the work, but a disk can fill up meanwhile
        raise CLIError(f"cannot write the results: {one_line(error)}") from None
    return 0


def _evaluate(args: argparse.Namespace, device: str, scoring: bool) -> tuple[str, dict]:
    """The Markdown tables and the JSON data of ``edn evaluate``."""
    if scoring:
        if args.pred is None or args.gt is None:
            raise CLIError("scoring folders needs both --pred and --gt")
        result = evaluate_folders(
            args.pred, args.gt, args.fid_weights, args.lpips_weights, device, progress=sys.stderr.isatty()
        )
        markdown, data = folders_markdown(result), result
    else:
        missing = [flag for flag, value in (("--data", args.data), ("--sweep", args.sweep)) if not value]
        if missing:
            raise CLIError(f"a sweep needs {', '.join(missing)}")
        names = [name for name, _ in args.sweep]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise CLIError(f"--sweep {repeated[0]} is given more than once; list all its values in one --sweep")
        if not Path(args.data).is_dir():
            raise CLIError(f"--data {args.data!r} is not a folder")
        base = {
            "steps": args.steps,
            "guidance": args.guidance,
            "temperature": args.temperature,
            "vq_steps": args.vq_steps,
            "strength": args.strength,
            "truncation_rate": args.truncation_rate,
        }
        pipe = load_pipeline(args.model, device, args.dtype, args.max_megapixels)
        for name in ("temperature", "truncation_rate"):
            if name in dict(args.sweep) and getattr(pipe.decoder, "refiner", None) is None:
                print(
                    f"edn: warning: this model's decoder has no token refiner, so {name} does not change its output",
                    file=sys.stderr,
                )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no token refiner.*")
            rows = sweep(
                pipe,
                args.data,
                dict(args.sweep),
                args.seed,
                base=base,
                limit=args.limit,
                fid_weights=args.fid_weights,
                lpips_weights=args.lpips_weights,
                device=device,
                progress=sys.stderr.isatty(),  # a bar in a log file is noise
            )
        summary = table4(rows)
        markdown = sweep_markdown(rows, summary)
        data = {
            "model": args.model,
            "data": args.data,
            "seed": args.seed,
            "limit": args.limit,
            "defaults": dict(base),
            "rows": rows,
            "table4": summary,
        }
    return markdown, data


def write_atomically(text: str, path) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # PSNR of identical images is inf; JSON has no such number
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(data, path) -> None:
    """Write ``data`` as JSON (``inf`` as the string "inf"), atomically."""
    write_atomically(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n", path)

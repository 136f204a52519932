"""``edn evaluate``: the paper's Tables 1–2 (metrics of colourised folders) and Table 4 (parameter sweeps).

* :func:`evaluate_folders` pairs predictions with ground-truth photos by file stem and reports FID, PSNR, SSIM,
  LPIPS and colourfulness (:mod:`edn_pipeline.metrics`); PSNR, SSIM, LPIPS and colourfulness are means over
  the image pairs, FID is between the two sets.
* :func:`sweep` colourises the grayscale of each ground-truth photo under settings that vary one parameter at
  a time around the defaults, and scores each setting; :func:`table4` summarises the rows as ranges.
* :func:`add_evaluate_parser` / :func:`evaluate_command` are the command line.

torch, numpy and the metrics are imported where they are used, so that building the ``edn`` command line is quick.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image
import PIL.ImageOps

from .errors import EDNInputError, one_line
from .files import IMAGE_SUFFIXES, atomic_write

if TYPE_CHECKING:
    import numpy as np
    import torch

# Sweepable parameters: command-line name -> (EDNPipeline.__call__ argument, value type, Table 4 label).
PARAMETERS = {
    "temperature": ("temperature", float, "Temperature parameter"),
    "guidance": ("guidance_scale", float, "Guidance weight"),
    "steps": ("num_inference_steps", int, "Denoising step"),
    "vq_steps": ("vq_steps", int, "Token refinement steps"),
    "strength": ("strength", float, "Strength"),
}
ALIASES = {"guidance_scale": "guidance", "num_inference_steps": "steps"}
# The paper's defaults (§2.5: DDIM, 50 steps, guidance 5; temperature 1); vq_steps and strength None = the model's.
DEFAULTS = {"temperature": 1.0, "guidance": 5.0, "steps": 50, "vq_steps": None, "strength": None}
METRICS = ("fid", "psnr", "ssim", "lpips", "colourfulness")


# ------------------------------------------------------------------------------------------------- files


def images_by_stem(folder, role: str) -> dict[str, Path]:
    """The images under ``folder`` (recursively) keyed by file stem; a stem used twice is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EDNInputError(f"{role} folder {str(folder)!r} does not exist or is not a folder")
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        if path.stem in found:
            raise EDNInputError(f"{role} folder has two images named {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    if not found:
        raise EDNInputError(f"no images in {role} folder {str(folder)!r}")
    return found


def _names(stems: list[str], files: dict[str, Path], shown: int = 5) -> str:
    text = ", ".join(files[s].name for s in stems[:shown])
    return text + (f" and {len(stems) - shown} more" if len(stems) > shown else "")


def pair_folders(pred_dir, gt_dir) -> list[tuple[str, Path, Path]]:
    """(stem, prediction, ground truth) for every stem; any unpaired file is an error naming it."""
    preds, gts = images_by_stem(pred_dir, "prediction"), images_by_stem(gt_dir, "ground-truth")
    no_gt, no_pred = sorted(set(preds) - set(gts)), sorted(set(gts) - set(preds))
    problems = []
    if no_gt:
        problems.append(
            f"{len(no_gt)} prediction(s) in {pred_dir} have no ground truth in {gt_dir}: {_names(no_gt, preds)}"
        )
    if no_pred:
        problems.append(
            f"{len(no_pred)} ground-truth photo(s) in {gt_dir} have no prediction in {pred_dir}: "
            + _names(no_pred, gts)
        )
    if problems:
        raise EDNInputError("; ".join(problems) + " (files are paired by name without extension)")
    return [(stem, preds[stem], gts[stem]) for stem in sorted(preds)]


def read_image(path) -> np.ndarray:
    """An image file as an upright uint8 RGB array."""
    import numpy as np

    try:
        with PIL.Image.open(path) as image:
            return np.asarray(PIL.ImageOps.exif_transpose(image).convert("RGB"))
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        limit = f"{PIL.Image.MAX_IMAGE_PIXELS / 1e6:g}"
        raise EDNInputError(f"cannot read image {str(path)!r}: larger than the limit of {limit} megapixels") from None
    except OSError as error:
        raise EDNInputError(f"cannot read image {str(path)!r}: {error}") from None


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


# ------------------------------------------------------------------------------------------------- scoring


class Scorer:
    """Scores sets of (prediction, ground truth) pairs; FID and LPIPS only with their weights.

    The ground-truth statistics of FID are computed on the first :meth:`score` and reused after, so score the
    same ground truth each time (as :func:`sweep` does).
    """

    def __init__(self, fid_weights=None, lpips_weights=None, device: str | torch.device = "cpu"):
        from . import metrics

        self.unavailable: dict[str, str] = {}
        self.lpips = metrics.LPIPS.from_file(lpips_weights, device) if lpips_weights else None
        self.fid = metrics.FID.from_file(fid_weights, device) if fid_weights else None
        if self.lpips is None:
            self.unavailable["lpips"] = metrics.LPIPS_UNAVAILABLE
        if self.fid is None:
            self.unavailable["fid"] = metrics.FID_UNAVAILABLE
        self._real_done = False

    def score(self, pairs) -> dict:
        """``pairs``: iterable of (name, prediction, ground truth, prediction label, ground-truth label), images
        as arrays or PIL. Returns ``{"images", "metrics", "unavailable", "per_image"}``; metrics are means over
        the pairs (FID over the sets) and ``None`` where unavailable, with the reason in ``unavailable``."""
        import numpy as np

        from . import metrics

        if self.fid is not None:
            self.fid.reset_fake()
        per_image = []
        for name, pred, gt, pred_label, gt_label in pairs:
            pred, gt = metrics.to_array(pred), metrics.to_array(gt)
            if pred.shape != gt.shape:
                raise EDNInputError(
                    f"prediction {pred_label} is {pred.shape[1]}x{pred.shape[0]} but ground truth {gt_label} is "
                    f"{gt.shape[1]}x{gt.shape[0]}"
                )
            entry = {
                "name": name,
                "psnr": metrics.psnr(pred, gt),
                "ssim": metrics.ssim(pred, gt),
                "lpips": self.lpips(pred, gt) if self.lpips is not None else None,
                "colourfulness": metrics.colourfulness(pred),
                "colourfulness_gt": metrics.colourfulness(gt),
            }
            per_image.append(entry)
            if self.fid is not None:
                self.fid.update(pred, real=False)
                if not self._real_done:
                    self.fid.update(gt, real=True)
        if not per_image:
            raise EDNInputError("no image pairs to evaluate")
        self._real_done = True

        unavailable = dict(self.unavailable)
        summary = {
            key: float(np.mean([e[key] for e in per_image]))
            for key in ("psnr", "ssim", "lpips", "colourfulness", "colourfulness_gt")
            if key not in unavailable
        }
        if self.fid is not None:
            try:
                summary["fid"] = self.fid.compute()
            except EDNInputError as error:
                unavailable["fid"] = str(error)
        result_metrics = {key: summary.get(key) for key in (*METRICS, "colourfulness_gt")}
        return {
            "images": len(per_image),
            "metrics": result_metrics,
            "unavailable": unavailable,
            "per_image": per_image,
        }


def evaluate_folders(
    pred_dir, gt_dir, fid_weights=None, lpips_weights=None, device: str | torch.device = "cpu", progress: bool = False
) -> dict:
    """Metrics of the colourised photos in ``pred_dir`` against those in ``gt_dir``, paired by file stem.

    Returns ``{"pred", "gt", "images", "metrics": {fid, psnr, ssim, lpips, colourfulness, colourfulness_gt},
    "unavailable": {metric: reason}, "per_image": [...]}``. Unpaired files, unreadable images and a prediction
    whose size differs from its ground truth raise :class:`EDNInputError` naming the files.
    """
    from tqdm.auto import tqdm

    pairs = pair_folders(pred_dir, gt_dir)
    scorer = Scorer(fid_weights, lpips_weights, device)

    def load(bar):
        for stem, pred_path, gt_path in bar:
            yield stem, read_image(pred_path), read_image(gt_path), str(pred_path), str(gt_path)

    with tqdm(pairs, desc="evaluating", unit="image", disable=not progress) as bar:  # closed before any error prints
        return {"pred": str(pred_dir), "gt": str(gt_dir), **scorer.score(load(bar))}


# ------------------------------------------------------------------------------------------------- sweeps


def parameter_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in PARAMETERS:
        raise EDNInputError(f"unknown sweep parameter {name!r}; choose from {', '.join(PARAMETERS)}")
    return name


def check_value(name: str, value):
    """``value`` converted to the parameter's type and range-checked."""
    kind = PARAMETERS[name][1]
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        converted = kind(value)
    except (TypeError, ValueError):
        raise EDNInputError(
            f"{name} values must be {'integers' if kind is int else 'numbers'}, got {value!r}"
        ) from None
    in_range = {
        "temperature": converted > 0,
        "guidance": converted >= 0,
        "steps": converted >= 1,
        "vq_steps": converted >= 0,
        "strength": 0 < converted <= 1,
    }
    if not (math.isfinite(converted) and in_range[name]):
        bounds = {
            "temperature": "> 0",
            "guidance": ">= 0",
            "steps": ">= 1",
            "vq_steps": ">= 0",
            "strength": "in (0, 1]",
        }
        raise EDNInputError(f"{name} must be a finite number {bounds[name]}, got {value!r}")
    return converted


def data_photos(data_dir, limit: int | None = None) -> list[Path]:
    """The photos under ``data_dir`` in name order, the first ``limit`` of them."""
    photos = list(images_by_stem(data_dir, "data").values())
    photos.sort(key=lambda p: (p.stem, str(p)))
    return photos[:limit] if limit else photos


def _settings_label(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)


def sweep(
    pipe,
    data_dir,
    sweeps: dict[str, list],
    seed: int = 0,
    *,
    base: dict | None = None,
    limit: int | None = None,
    fid_weights=None,
    lpips_weights=None,
    device: str | torch.device | None = None,
    prompt: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Colourise the grayscale of each photo in ``data_dir`` under each setting and score it (Table 4).

    ``sweeps`` maps a parameter (``temperature``, ``guidance``, ``steps``, ``vq_steps``, ``strength``) to its
    values; each value is tried with every other parameter at ``base`` (default :data:`DEFAULTS`), as the paper's
    Table 4. A setting
    that comes up twice (the defaults, typically) is colourised once. Each photo uses a generator seeded with
    ``seed``. Returns one row per (parameter, value): ``{"parameter", "value", "settings", "images", "metrics",
    "unavailable"}``.
    """
    import torch
    from tqdm.auto import tqdm

    from .luminance import gray_image

    sweeps = {
        parameter_name(name): [check_value(parameter_name(name), v) for v in values] for name, values in sweeps.items()
    }
    if not sweeps or not all(sweeps.values()):
        raise EDNInputError("give at least one parameter with at least one value to sweep")
    settings_base = dict(DEFAULTS)
    for name, value in (base or {}).items():
        settings_base[parameter_name(name)] = None if value is None else check_value(parameter_name(name), value)
    refiner = getattr(getattr(pipe, "decoder", None), "refiner", None)
    if "temperature" in sweeps and refiner is None:
        warnings.warn("this model's decoder has no token refiner, so temperature does not change its output")

    photos = data_photos(data_dir, limit)
    scorer = Scorer(fid_weights, lpips_weights, device or "cpu")
    settings_list = []
    for name, values in sweeps.items():
        for value in values:
            settings_list.append((name, value, {**settings_base, name: value}))
    unique = {tuple(s.items()): s for _, _, s in settings_list}
    bar = tqdm(total=len(unique) * len(photos), desc="sweeping", unit="image", disable=not progress)

    def colourised(settings: dict):
        kwargs = {PARAMETERS[name][0]: value for name, value in settings.items() if value is not None}
        for path in photos:
            gt = read_image(path)
            result = pipe(
                gray_image(gt),
                prompt=prompt,
                generator=torch.Generator().manual_seed(seed),
                **kwargs,
            ).images[0]
            bar.update()
            yield path.stem, result, gt, f"{path.name} ({_settings_label(settings)})", str(path)

    scores: dict[tuple, dict] = {}
    rows = []
    try:
        for name, value, settings in settings_list:
            key = tuple(settings.items())
            if key not in scores:
                scores[key] = scorer.score(colourised(settings))
            score = scores[key]
            rows.append(
                {
                    "parameter": name,
                    "value": value,
                    "settings": dict(settings),
                    "images": score["images"],
                    "metrics": dict(score["metrics"]),
                    "unavailable": dict(score["unavailable"]),
                }
            )
    finally:
        bar.close()
    return rows


def table4(rows: list[dict]) -> list[dict]:
    """The paper's Table 4 from :func:`sweep` rows: per parameter, its range and the PSNR and FID ranges."""
    summary = []
    for name in dict.fromkeys(row["parameter"] for row in rows):
        group = [row for row in rows if row["parameter"] == name]
        entry = {"parameter": name, "label": PARAMETERS[name][2], "range": _span([r["value"] for r in group])}
        for metric in ("psnr", "fid"):
            values = [r["metrics"][metric] for r in group]
            entry[f"{metric}_range"] = None if any(v is None for v in values) else _span(values)
        reasons = {r["unavailable"]["fid"] for r in group if "fid" in r["unavailable"]}
        if reasons:
            entry["fid_unavailable"] = "; ".join(sorted(reasons))
        summary.append(entry)
    return summary


def _span(values: list) -> list:
    return [min(values), max(values)]


# ------------------------------------------------------------------------------------------------- markdown

_FORMATS = {"fid": "{:.2f}", "psnr": "{:.2f}", "ssim": "{:.3f}", "lpips": "{:.3f}", "colourfulness": "{:.2f}"}


def _cell(metric: str, value) -> str:
    if value is None:
        return "unavailable"
    return _FORMATS.get(metric, "{:g}").format(value)


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range_cell(metric: str, span) -> str:
    if span is None:
        return "unavailable"
    return f"{_cell(metric, span[0])}–{_cell(metric, span[1])}"


def _reasons(unavailable: dict) -> list[str]:
    return [f"{metric.upper()}: unavailable ({reason})" for metric, reason in sorted(unavailable.items())]


def folders_markdown(result: dict) -> str:
    """A Table 1/2 style row for one folder of predictions, with the reasons for unavailable metrics."""
    m = result["metrics"]
    name = Path(result["pred"]).name or result["pred"]
    lines = [
        "| predictions | images | FID | PSNR/dB | SSIM | LPIPS | colourfulness | colourfulness (ground truth) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {name} | {result['images']} | "
        + " | ".join(_cell(k, m[k]) for k in METRICS)
        + f" | {_cell('colourfulness', m['colourfulness_gt'])} |",
    ]
    reasons = _reasons(result["unavailable"])
    return "\n".join(lines + ([""] + reasons if reasons else [])) + "\n"


def sweep_markdown(rows: list[dict], summary: list[dict] | None = None) -> str:
    """The per-setting table and the paper's Table 4 range summary."""
    summary = table4(rows) if summary is None else summary
    # Each parameter's base value: what it is in the rows that vary another parameter.
    base = {k: v for row in rows for k, v in row["settings"].items() if k != row["parameter"] and v is not None}
    others = ", ".join(f"{k}={_number(v)}" for k, v in base.items())
    lines = [
        f"Parameter sweep over {rows[0]['images'] if rows else 0} photos, one parameter varied at a time"
        + (f" (the others at {others})" if others else ""),
        "",
        "| parameter | value | PSNR/dB | SSIM | LPIPS | colourfulness | FID |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        m = row["metrics"]
        lines.append(
            f"| {row['parameter']} | {_number(row['value'])} | "
            + " | ".join(_cell(k, m[k]) for k in ("psnr", "ssim", "lpips", "colourfulness", "fid"))
            + " |"
        )
    lines += [
        "",
        "Table 4: parameter sensitivity",
        "",
        "| parameter | range | PSNR range/dB | FID range |",
        "| --- | --- | --- | --- |",
    ]
    for entry in summary:
        low, high = entry["range"]
        lines.append(
            f"| {entry['label']} | {_number(low)}–{_number(high)} | {_range_cell('psnr', entry['psnr_range'])} | "
            f"{_range_cell('fid', entry['fid_range'])} |"
        )
    unavailable = {}
    for row in rows:
        unavailable.update(row["unavailable"])
    reasons = _reasons(unavailable)
    return "\n".join(lines + ([""] + reasons if reasons else [])) + "\n"


# ------------------------------------------------------------------------------------------------- command line


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
    from .cli import DEFAULT_MAX_MEGAPIXELS, MODEL_HELP, add_runtime_arguments, positive_float, positive_int, seed

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
    from .cli import CLIError, check_device, check_output_file, default_device, pixel_limit, torch_settings

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
    from .cli import CLIError, load_pipeline

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
        }
        pipe = load_pipeline(args.model, device, args.dtype, args.max_megapixels)
        if "temperature" in dict(args.sweep) and getattr(pipe.decoder, "refiner", None) is None:
            print(
                "edn: warning: this model's decoder has no token refiner, so temperature does not change its output",
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

"""The paper's Tables 1–2 (metrics of colourised folders) and Table 4 (parameter sweeps), as ``edn evaluate`` runs them.

* :func:`evaluate_folders` pairs predictions with ground-truth photos by file stem and reports FID, PSNR, SSIM,
  LPIPS and colourfulness (:mod:`edn_pipeline.evaluation.metrics`); PSNR, SSIM, LPIPS and colourfulness are means
  over the image pairs, FID is between the two sets.
* :func:`sweep` colourises the grayscale of each ground-truth photo under settings that vary one parameter at
  a time around the defaults, and scores each setting; :func:`table4` summarises the rows as ranges.
* :func:`folders_markdown` and :func:`sweep_markdown` write the tables.

torch, numpy and the metrics are imported where they are used, so that building the ``edn`` command line is quick.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image
import PIL.ImageOps

from ..errors import EDNInputError
from ..files import IMAGE_SUFFIXES

if TYPE_CHECKING:
    import numpy as np
    import torch

# Sweepable parameters: command-line name -> (EDNPipeline.__call__ argument, value type, Table 4 label).
PARAMETERS = {
    "temperature": ("temperature", float, "Temperature parameter"),
    "guidance": ("guidance_scale", float, "Guidance weight"),
    "steps": ("num_inference_steps", int, "Denoising step"),
    "vq_steps": ("vq_steps", int, "Token refinement steps"),
    "truncation_rate": ("truncation_rate", float, "Token truncation rate"),
    "strength": ("strength", float, "Strength"),
}
ALIASES = {"guidance_scale": "guidance", "num_inference_steps": "steps"}
# The paper's defaults (§2.5: DDIM, 50 steps, guidance 5; temperature 1); None = the model's own.
DEFAULTS = {
    "temperature": 1.0,
    "guidance": 5.0,
    "steps": 50,
    "vq_steps": None,
    "strength": None,
    "truncation_rate": None,
}
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
        "truncation_rate": 0 < converted <= 1,
    }
    if not (math.isfinite(converted) and in_range[name]):
        bounds = {
            "temperature": "> 0",
            "guidance": ">= 0",
            "steps": ">= 1",
            "vq_steps": ">= 0",
            "strength": "in (0, 1]",
            "truncation_rate": "in (0, 1]",
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

    ``sweeps`` maps a parameter (``temperature``, ``guidance``, ``steps``, ``vq_steps``, ``strength``,
    ``truncation_rate``) to its
    values; each value is tried with every other parameter at ``base`` (default :data:`DEFAULTS`), as the paper's
    Table 4. A setting
    that comes up twice (the defaults, typically) is colourised once. Each photo uses a generator seeded with
    ``seed``. Returns one row per (parameter, value): ``{"parameter", "value", "settings", "images", "metrics",
    "unavailable"}``.
    """
    import torch
    from tqdm.auto import tqdm

    from ..luminance import gray_image

    sweeps = {
        parameter_name(name): [check_value(parameter_name(name), v) for v in values] for name, values in sweeps.items()
    }
    if not sweeps or not all(sweeps.values()):
        raise EDNInputError("give at least one parameter with at least one value to sweep")
    settings_base = dict(DEFAULTS)
    for name, value in (base or {}).items():
        settings_base[parameter_name(name)] = None if value is None else check_value(parameter_name(name), value)
    refiner = getattr(getattr(pipe, "decoder", None), "refiner", None)
    for name in ("temperature", "truncation_rate"):
        if name in sweeps and refiner is None:
            warnings.warn(f"this model's decoder has no token refiner, so {name} does not change its output")

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

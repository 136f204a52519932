"""`edn evaluate`: folder pairing, outputs, unavailable metrics, and the Table 4 sweep on a tiny EDN."""

import argparse
import json
import math

import numpy as np
import PIL.Image
import pytest
import torch

from edn_pipeline import EDNPipeline
from edn_pipeline.commands.common import CLIError
from edn_pipeline.commands.evaluate import add_evaluate_parser
from edn_pipeline.errors import EDNInputError
from edn_pipeline.evaluation import metrics
from edn_pipeline.evaluation.evaluate import evaluate_folders, sweep, sweep_markdown, table4
from edn_pipeline.luminance import gray_image
from edn_pipeline.testing_utils import tiny_components


def run(*argv) -> int:
    """`edn evaluate ...` as edn_cli.main runs it, without touching edn_cli.py."""
    parser = argparse.ArgumentParser(prog="edn")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["evaluate", *map(str, argv)])
    try:
        return args.run(args)
    except (CLIError, EDNInputError) as error:
        print(f"edn: {error}")
        return 2


def save(image: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image).save(path)


def shifted(image: np.ndarray, offset: int) -> np.ndarray:
    return np.clip(image.astype(int) + offset, 0, 255).astype(np.uint8)


@pytest.fixture
def folders(tmp_path, photo):
    """Ground truth (PNG and a lossless TIFF) and predictions (PNG) with known differences."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    truths = {"a": photo, "b": photo[:, ::-1].copy()}
    save(truths["a"], gt / "a.png")
    save(truths["b"], gt / "nested" / "b.tif")
    save(shifted(truths["a"], 10), pred / "a.png")
    save(truths["b"][..., [1, 2, 0]].copy(), pred / "b.png")
    return pred, gt, truths


def test_pairs_by_stem_and_reports_means_of_the_pairs(folders):
    pred, gt, truths = folders
    result = evaluate_folders(pred, gt)
    predictions = {p.stem: np.array(PIL.Image.open(p)) for p in pred.iterdir()}
    assert result["images"] == 2 and [e["name"] for e in result["per_image"]] == ["a", "b"]
    m = result["metrics"]
    for name, metric in (("psnr", metrics.psnr), ("ssim", metrics.ssim)):
        assert m[name] == pytest.approx(np.mean([metric(predictions[s], truths[s]) for s in "ab"]))
    assert m["colourfulness"] == pytest.approx(np.mean([metrics.colourfulness(predictions[s]) for s in "ab"]))
    assert m["colourfulness_gt"] == pytest.approx(metrics.colourfulness(truths["a"]))
    assert result["per_image"][0]["psnr"] < 10 * math.log10(255**2 / 10**2) + 1e-6  # clipping only lowers it


def test_fid_and_lpips_are_unavailable_without_weights(folders):
    result = evaluate_folders(*folders[:2])
    assert result["metrics"]["fid"] is None and result["metrics"]["lpips"] is None
    assert "--fid-weights" in result["unavailable"]["fid"] and "torchvision" in result["unavailable"]["fid"]
    assert "--lpips-weights" in result["unavailable"]["lpips"]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda pred, gt: save(np.zeros((40, 48, 3), np.uint8), pred / "c.png"),
            r"1 prediction\(s\) .* no ground truth .*c\.png",
        ),
        (lambda pred, gt: (pred / "b.png").unlink(), r"1 ground-truth photo\(s\) .* no prediction .*b\.tif"),
        (lambda pred, gt: save(np.zeros((40, 48, 3), np.uint8), gt / "a.jpg"), r"two images named 'a'"),
        (
            lambda pred, gt: save(np.zeros((41, 48, 3), np.uint8), pred / "a.png"),
            r"prediction .*a\.png is 48x41 but ground truth .*a\.png is 48x40",
        ),
    ],
    ids=["extra prediction", "missing prediction", "duplicate stem", "size mismatch"],
)
def test_unpaired_or_mismatched_files_are_named(folders, change, message):
    pred, gt, _ = folders
    change(pred, gt)
    with pytest.raises(EDNInputError, match=message):
        evaluate_folders(pred, gt)


def test_command_prints_and_writes_json_and_markdown(folders, tmp_path, capsys):
    pred, gt, _ = folders
    out_json, out_md = tmp_path / "out" / "metrics.json", tmp_path / "metrics.md"
    assert run("--pred", pred, "--gt", gt, "--json", out_json, "--markdown", out_md) == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert out_md.read_text() == printed
    assert result["images"] == 2 and result["metrics"]["fid"] is None
    row = next(line for line in printed.splitlines() if line.startswith("| pred |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["pred", "2", "unavailable"]
    assert float(cells[3]) == pytest.approx(result["metrics"]["psnr"], abs=0.005)
    assert float(cells[4]) == pytest.approx(result["metrics"]["ssim"], abs=0.0005)
    assert cells[5] == "unavailable"
    assert float(cells[6]) == pytest.approx(result["metrics"]["colourfulness"], abs=0.005)
    assert (
        "FID: unavailable (needs --fid-weights" in printed and "LPIPS: unavailable (needs --lpips-weights" in printed
    )
    assert [p.name for p in out_json.parent.iterdir()] == ["metrics.json"]  # no temporary files left


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Locally built weights in the formats --lpips-weights and --fid-weights take."""
    from test_metrics import TinyInception

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    torch.save(
        {f"features.{k}": v for k, v in metrics._alexnet_features().state_dict().items()}, folder / "alexnet.pth"
    )
    torch.jit.script(TinyInception()).save(str(folder / "inception.pt"))
    return folder / "alexnet.pth", folder / "inception.pt"


def test_command_with_weights_on_identical_folders(folders, tmp_path, weights):
    _, gt, _ = folders
    out_json = tmp_path / "metrics.json"
    assert (
        run("--pred", gt, "--gt", gt, "--lpips-weights", weights[0], "--fid-weights", weights[1], "--json", out_json)
        == 0
    )
    result = json.loads(out_json.read_text())
    assert result["unavailable"] == {}
    assert result["metrics"]["lpips"] == 0 and result["metrics"]["fid"] == pytest.approx(0, abs=1e-9)
    assert result["metrics"]["psnr"] == "inf" and result["metrics"]["ssim"] == pytest.approx(1)


def test_fid_of_a_single_pair_is_unavailable_with_the_reason(folders, weights):
    pred, gt, _ = folders
    (pred / "b.png").unlink()
    next(gt.rglob("b.tif")).unlink()
    result = evaluate_folders(pred, gt, fid_weights=weights[1])
    assert result["metrics"]["fid"] is None and "at least 2 images" in result["unavailable"]["fid"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--pred", "p"], "needs both --pred and --gt"),
        (["--pred", "p", "--gt", "g", "--model", "m"], "not both"),
        ([], "give --pred and --gt"),
        (["--model", "m", "--data", "d"], "needs --sweep"),
        (["--model", "m", "--data", "d", "--sweep", "guidance=3", "--sweep", "guidance=5"], "more than once"),
        (["--pred", "p", "--gt", "g", "--fid-weights", "nowhere.pt"], "--fid-weights 'nowhere.pt' is not a file"),
    ],
)
def test_command_line_problems_exit_2_with_one_line(argv, message, capsys):
    assert run(*argv) == 2
    out = capsys.readouterr().out
    assert message in out and out.count("\n") == 1


@pytest.mark.parametrize(
    "bad", ["guidance", "colour=1,2", "steps=1.5", "temperature=0", "guidance=-1", "strength=0", "strength=1.5"]
)
def test_malformed_sweeps_are_rejected_by_the_parser(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("--model", "m", "--data", "d", "--sweep", bad)
    assert exit_info.value.code == 2
    assert "--sweep" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- sweeps


@pytest.fixture
def data_dir(tmp_path, photo):
    folder = tmp_path / "data"
    save(photo, folder / "p1.png")
    save(photo[::-1].copy(), folder / "p2.png")
    save(photo[:, ::-1].copy(), folder / "p3.png")
    return folder


class CountingPipe:
    """The pipeline, counting its calls."""

    def __init__(self, pipe):
        self.pipe, self.decoder, self.calls = pipe, pipe.decoder, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.pipe(*args, **kwargs)


def test_sweep_rows_match_a_direct_colourisation(pipe, data_dir, photo):
    counting = CountingPipe(pipe)
    rows = sweep(
        counting, data_dir, {"guidance": [3, 5], "steps": [1]}, seed=7, base={"steps": 1}, limit=2, progress=False
    )
    assert [(r["parameter"], r["value"]) for r in rows] == [("guidance", 3.0), ("guidance", 5.0), ("steps", 1)]
    assert counting.calls == 2 * 2  # (guidance 5, steps 1) is the default setting: colourised once
    assert rows[1]["metrics"] == rows[2]["metrics"] and rows[0]["settings"]["guidance"] == 3.0
    assert all(r["images"] == 2 and r["metrics"]["fid"] is None for r in rows)

    truths = [photo, photo[::-1].copy()]
    outputs = [
        pipe(
            gray_image(gt), guidance_scale=5.0, num_inference_steps=1, generator=torch.Generator().manual_seed(7)
        ).images[0]
        for gt in truths
    ]
    assert rows[1]["metrics"]["psnr"] == pytest.approx(np.mean([metrics.psnr(o, t) for o, t in zip(outputs, truths)]))
    assert rows[1]["metrics"]["colourfulness"] == pytest.approx(np.mean([metrics.colourfulness(o) for o in outputs]))


def test_grayscale_input_keeps_the_photos_lightness(photo):
    from skimage.color import rgb2lab

    gray = gray_image(photo)
    assert gray.shape == photo.shape[:2] and gray.dtype == np.uint8
    lightness = rgb2lab(np.repeat(gray[..., None], 3, axis=2) / 255.0)[..., 0]
    assert np.abs(lightness - rgb2lab(photo / 255.0)[..., 0]).max() < 0.5


def test_temperature_sweep_warns_when_the_decoder_has_no_refiner(pipe, data_dir):
    with pytest.warns(UserWarning, match="no token refiner"):
        sweep(pipe, data_dir, {"temperature": [1.0]}, base={"steps": 1}, limit=1, progress=False)


def test_table4_summarises_ranges_per_parameter():
    def row(parameter, value, psnr, fid):
        return {
            "parameter": parameter,
            "value": value,
            "metrics": {"psnr": psnr, "fid": fid, "ssim": 0.9, "lpips": None, "colourfulness": 30.0},
            "settings": {},
            "images": 4,
            "unavailable": {},
        }

    rows = [
        row("temperature", 0.8, 22.3, 33.7),
        row("temperature", 1.2, 23.1, 28.2),
        row("temperature", 1.0, 22.9, 30.0),
        row("steps", 30, 20.1, None),
        row("steps", 70, 23.1, None),
    ]
    rows[3]["unavailable"] = rows[4]["unavailable"] = {"fid": "needs --fid-weights"}
    summary = table4(rows)
    assert summary[0] == {
        "parameter": "temperature",
        "label": "Temperature parameter",
        "range": [0.8, 1.2],
        "psnr_range": [22.3, 23.1],
        "fid_range": [28.2, 33.7],
    }
    assert summary[1]["range"] == [30, 70] and summary[1]["fid_range"] is None
    text = sweep_markdown(rows, summary)
    assert "| Temperature parameter | 0.8–1.2 | 22.30–23.10 | 28.20–33.70 |" in text
    assert "| Denoising step | 30–70 | 20.10–23.10 | unavailable |" in text
    assert "| temperature | 0.8 | 22.30 | 0.900 | unavailable | 30.00 | 33.70 |" in text


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    EDNPipeline(**tiny_components(vq_decoder=True)).save_pretrained(path)
    return path


def test_sweep_command_on_a_saved_tiny_model(model_dir, data_dir, tmp_path, capsys):
    out_json, out_md = tmp_path / "sweep.json", tmp_path / "sweep.md"
    argv = ["--model", model_dir, "--data", data_dir, "--limit", "2", "--steps", "1", "--sweep", "guidance=3,5"]
    assert run(*argv, "--json", out_json, "--markdown", out_md, "--device", "cpu") == 0
    printed = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert out_md.read_text() == printed
    rows = result["rows"]
    assert [(r["parameter"], r["value"], r["images"]) for r in rows] == [("guidance", 3.0, 2), ("guidance", 5.0, 2)]
    assert all(r["settings"]["steps"] == 1 and r["settings"]["temperature"] == 1.0 for r in rows)
    psnrs = [r["metrics"]["psnr"] for r in rows]
    assert all(0 < p < 60 for p in psnrs)
    assert result["table4"][0]["psnr_range"] == [min(psnrs), max(psnrs)]
    assert f"| guidance | 3 | {psnrs[0]:.2f} |" in printed
    assert f"| Guidance weight | 3–5 | {min(psnrs):.2f}–{max(psnrs):.2f} | unavailable |" in printed

"""Time EDNPipeline against diffusers' StableDiffusionControlNetPipeline with the same small components, per size.

Both pipelines share the UNet, text encoder, scheduler and adapter weights (EDN's CCD loaded into a
``ControlNetModel``) and run the same steps at the same working size, so the difference is what EDN adds: reading
the input's L*, hint propagation, the luminance-aware decoder and the L*-preserving recomposition at the input's
size. The image processor's pre- and post-processing are timed on their own (file decoding is its own column and
is in neither), and each size runs in a fresh process so that its peak resident memory is its own. EDN's wall time
at each size is timed in turn with EDN at 512×384 in that process: their ratio is the cost of the size.

    python benchmarks/pipeline_overhead.py --sizes 512x384,4000x3000,6000x4000 --steps 20 --repeats 3
"""

import argparse
import multiprocessing
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from skimage import data

from edn_pipeline import EDNPipeline
from edn_pipeline.testing_utils import tiny_components

GRAY_PHOTO = PIL.Image.fromarray(data.astronaut()).convert("L")  # a scan is gray: EDN's usual input
# The wall ratio's base size, timed in every size's process in turn with that size: on a shared machine the
# model's own time drifts by a third within minutes, which ratios of times from different processes would carry.
BASE_SIZE = (512, 384)


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def timed(fn) -> float:
    """Seconds one call takes, to the end of the work it queued on a GPU (kernels run asynchronously)."""
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(timed(fn) for _ in range(repeats))


def alternating_medians(first, second, repeats: int) -> tuple[float, float]:
    """Medians of two calls timed in turn, so that the machine's drift weighs on both alike."""
    first(), second()  # warm-up
    times = ([], [])
    for _ in range(repeats):
        for fn, fn_times in zip((first, second), times):
            fn_times.append(timed(fn))
    return statistics.median(times[0]), statistics.median(times[1])


def peak_device_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated by torch in this process; None on the CPU (peak RSS covers it there)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def point_hints(size: tuple[int, int], count: int) -> list[tuple[float, float, str]]:
    rng = np.random.default_rng(0)
    return [(float(rng.uniform(0, size[0])), float(rng.uniform(0, size[1])), "#c83c28") for _ in range(count)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(size: tuple[int, int], args: argparse.Namespace) -> dict:
    """Every figure of one input size, in this (fresh) process."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.model:  # a trained model's colours: how many pixels need the gamut fit is what a user sees
        edn = EDNPipeline.from_pretrained(args.model)
        parts = dict(edn.components)
        edn = edn.to(device)
    else:
        parts = tiny_components(sample_size=args.sample_size, channels=(32, 64))
        edn = EDNPipeline(**parts).to(device)
    controlnet = ControlNetModel.from_config(parts["ccd"].config)
    controlnet.load_state_dict(parts["ccd"].state_dict())
    reference = StableDiffusionControlNetPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        controlnet=controlnet,
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device)
    for pipe in (edn, reference):
        pipe.set_progress_bar_config(disable=True)

    width, height = size
    hints = point_hints(size, args.hints)
    work_w, work_h = edn.working_size(width, height)
    control = torch.rand(1, 7, work_h, work_w, generator=torch.Generator().manual_seed(0)).to(device)
    common = dict(num_inference_steps=args.steps, guidance_scale=5.0, prompt="a colored photo")

    def run_edn(image, image_hints=hints):  # strength 1: all the steps, as the reference runs them
        edn(image, hints=image_hints, strength=1.0, generator=torch.Generator().manual_seed(0), **common)

    run_edn(GRAY_PHOTO.resize((64, 48)), None)  # the model's own memory, before any large input
    model_rss, model_device_mb = peak_rss_mb(), peak_device_mb(device)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scan.png"
        GRAY_PHOTO.resize(size, PIL.Image.Resampling.BICUBIC).save(path)

        def decode():
            with PIL.Image.open(path) as image:
                image.load()
                return image.copy()

        decode_s = median_seconds(decode, args.repeats)
        photo = decode()
    processor = edn.image_processor
    propagator = edn.hint_propagator  # the model's learned hint propagation, if it has one, as the pipeline runs it
    inputs = processor.preprocess([photo], [hints], device, propagator)
    # A decoded image with a photo's colours (random pixels would put most of them outside the gamut).
    colours = np.asarray(PIL.Image.fromarray(data.astronaut()).resize((work_w, work_h)), np.float32) / 255
    decoded = torch.from_numpy(colours).permute(2, 0, 1)[None].to(device)
    pre_s = median_seconds(lambda: processor.preprocess([photo], [hints], device, propagator), args.repeats)
    post_s = median_seconds(lambda: processor.postprocess(decoded, inputs.lightness, "pil"), args.repeats)
    base_photo = GRAY_PHOTO.resize(BASE_SIZE, PIL.Image.Resampling.BICUBIC)
    base_hints = point_hints(BASE_SIZE, args.hints)
    edn_s, edn_base_s = alternating_medians(
        lambda: run_edn(photo), lambda: run_edn(base_photo, base_hints), args.repeats
    )
    reference_s = median_seconds(
        lambda: reference(
            image=control, height=work_h, width=work_w, generator=torch.Generator().manual_seed(0), **common
        ),
        args.repeats,
    )
    return {
        "size": f"{width}x{height}",
        "megapixels": width * height / 1e6,
        "working": f"{work_w}x{work_h}",
        "decode_s": decode_s,
        "pre_s": pre_s,
        "post_s": post_s,
        "edn_s": edn_s,
        "edn_base_s": edn_base_s,
        "reference_s": reference_s,
        "model_rss_mb": model_rss,
        "peak_rss_mb": peak_rss_mb(),
        "model_device_mb": model_device_mb,
        "peak_device_mb": peak_device_mb(device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=lambda t: [parse_size(s) for s in t.split(",")],
        default="512x384,4000x3000,6000x4000",
        help="input sizes WIDTHxHEIGHT, comma-separated",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sample-size", type=int, default=32, help="UNet latent size (working size = 2x)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hints", type=int, default=5, help="point hints given to EDN")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to run it on a GPU")
    parser.add_argument(
        "--model",
        help="a saved EDN pipeline (e.g. edn_pipeline/edn-tiny) instead of random tiny components, whose "
        "saturated colours put a third of the pixels outside sRGB",
    )
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")  # a fresh process per size: its peak memory is its own
    rows = []
    for size in args.sizes:
        with context.Pool(1) as pool:
            rows.append(pool.apply(measure, (size, args)))

    print(
        f"torch {torch.__version__}, {args.threads} threads, device {args.device}, {args.steps} steps, CFG 5.0, "
        f"{args.hints} hints, median of {args.repeats}, components: {args.model or 'random tiny'}"
    )
    base = "{}×{}".format(*BASE_SIZE)
    print(
        "| input | MP | working | decode s | EDN pre s | EDN post s | pre+post ms/MP | EDN s | ControlNet s | EDN/ControlNet "
        f"| EDN / EDN at {base} | peak RSS MB | beyond the model MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_mp = (r["pre_s"] + r["post_s"]) / r["megapixels"] * 1e3
        print(
            f"| {r['size']} | {r['megapixels']:.1f} | {r['working']} | {r['decode_s']:.3f} | {r['pre_s']:.3f} | {r['post_s']:.3f} "
            f"| {per_mp:.1f} | {r['edn_s']:.3f} | {r['reference_s']:.3f} | {r['edn_s'] / r['reference_s']:.2f} "
            f"| {r['edn_s'] / r['edn_base_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['model_rss_mb']:.0f} |"
        )
    if rows[0]["peak_device_mb"] is not None:
        print("| input | peak GPU MB | beyond the model MB |\n|---|---|---|")
        for r in rows:
            print(f"| {r['size']} | {r['peak_device_mb']:.0f} | {r['peak_device_mb'] - r['model_device_mb']:.0f} |")
    largest = rows[-1]
    print(
        f"EDN wall time, {largest['size']} / {base} timed in turn in one process: "
        f"{largest['edn_s'] / largest['edn_base_s']:.2f} (largest / smallest row, separate processes: "
        f"{largest['edn_s'] / rows[0]['edn_s']:.2f})"
    )


if __name__ == "__main__":
    main()

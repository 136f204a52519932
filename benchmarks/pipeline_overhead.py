"""Time EDNPipeline against diffusers' StableDiffusionControlNetPipeline with the same small components.

Both pipelines share the UNet, text encoder, scheduler and adapter weights (EDN's CCD loaded into a
``ControlNetModel``) and run the same steps at the same working size, so the ratio is what EDN adds: reading
the input, hint propagation, the luminance-aware decoder and the L*-preserving recomposition at the input's
size.

    python benchmarks/pipeline_overhead.py --steps 20 --size 512x384 --repeats 5
"""

import argparse
import statistics
import time

import numpy as np
import PIL.Image
import torch
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from skimage import data

from edn_pipeline import EDNPipeline
from edn_pipeline.testing_utils import tiny_components


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=parse_size, default=(512, 384), help="input WIDTHxHEIGHT")
    parser.add_argument("--sample-size", type=int, default=32, help="UNet latent size (working size = 2x)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hints", type=int, default=5, help="point hints given to EDN")
    args = parser.parse_args()

    parts = tiny_components(sample_size=args.sample_size, channels=(32, 64))
    edn = EDNPipeline(**parts)
    controlnet = ControlNetModel.from_config(parts["ccd"].config)
    controlnet.load_state_dict(parts["ccd"].state_dict())
    reference = StableDiffusionControlNetPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"], unet=parts["unet"],
        controlnet=controlnet, scheduler=parts["scheduler"], safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    for pipe in (edn, reference):
        pipe.set_progress_bar_config(disable=True)

    width, height = args.size
    photo = PIL.Image.fromarray(data.astronaut()).resize((width, height)).convert("L")
    work_w, work_h = edn.working_size(width, height)
    rng = np.random.default_rng(0)
    hints = [(float(rng.uniform(0, width)), float(rng.uniform(0, height)), "#c83c28") for _ in range(args.hints)]
    control = torch.rand(1, 7, work_h, work_w, generator=torch.Generator().manual_seed(0))
    common = dict(num_inference_steps=args.steps, guidance_scale=5.0, prompt="a colored photo")

    def run_edn():
        edn(photo, hints=hints, generator=torch.Generator().manual_seed(0), **common)

    def run_reference():
        reference(image=control, height=work_h, width=work_w, generator=torch.Generator().manual_seed(0), **common)

    torch.set_num_threads(torch.get_num_threads())
    edn_times = timed(run_edn, args.repeats)
    ref_times = timed(run_reference, args.repeats)
    edn_med, ref_med = statistics.median(edn_times), statistics.median(ref_times)
    print(f"input {width}x{height}, working size {work_w}x{work_h}, {args.steps} steps, CFG 5.0, {args.hints} hints")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, {args.repeats} repeats")
    print(f"{'pipeline':<40}{'median s':>10}{'min s':>10}")
    print(f"{'StableDiffusionControlNetPipeline':<40}{ref_med:>10.3f}{min(ref_times):>10.3f}")
    print(f"{'EDNPipeline':<40}{edn_med:>10.3f}{min(edn_times):>10.3f}")
    print(f"ratio EDN / ControlNet (median): {edn_med / ref_med:.2f}")


if __name__ == "__main__":
    main()

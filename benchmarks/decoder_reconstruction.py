"""Reconstruct real colour photos through EDN's decoders, as the paper's Table 3 compares them.

Each photo is resized to the model's working size, encoded to the colour latent with the model's VAE and
decoded back three ways, given the photo's grayscale image:

1. the plain SD (KL-f8) VAE decoder;
2. the luminance-aware decoder with the token refinement off (its quantiser, if it has one, still runs);
3. the luminance-aware decoder with the refinement on (``--vq-steps``).

A decoder with a quantiser also gets a row without it (the continuous latent): the gap between that row and row 2
is all that quantising costs, so it bounds what any refinement of correct tokens could give back.

It prints PSNR / SSIM against the photo (from :mod:`edn_pipeline.evaluation.metrics`), the decoding time per
image, and how many of the codebook's codes the photos' tokens use.

    python benchmarks/decoder_reconstruction.py --model edn-tiny --data ../shared/data/photos/bsd100 --held-out
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from edn_pipeline import EDNPipeline
from edn_pipeline.evaluation.metrics import psnr, ssim
from edn_pipeline.files import IMAGE_SUFFIXES


def load(path: Path, pipe: EDNPipeline) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The photo at the working size (uint8), as VAE input in [-1, 1], and its grayscale in [-1, 1]."""
    with PIL.Image.open(path) as image:
        original = image.convert("RGB")
    size = pipe.working_size(*original.size)
    photo = np.array(original.resize(size, PIL.Image.Resampling.BICUBIC))
    pixels = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 127.5 - 1
    gray = pipe.image_processor.preprocess([original], [None]).gray * 2 - 1  # as the pipeline sees the photo
    return photo, pixels, gray


def to_uint8(sample: torch.Tensor) -> np.ndarray:
    return ((sample[0].permute(1, 2, 0).float().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an EDN pipeline folder or Hub id (with its vae)")
    parser.add_argument("--data", required=True, type=Path, help="a folder of colour photos")
    parser.add_argument("--held-out", action="store_true", help="only img_09* (the data set's held-out split)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--vq-steps", type=int, default=None, help="refinement steps (default: the model's)")
    parser.add_argument("--temperature", type=float, default=1.0, help="of the refiner's token logits")
    parser.add_argument(
        "--truncation-rate", type=float, default=None, help="of the refiner's token sampling (default: the model's)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pipe = EDNPipeline.from_pretrained(args.model).to(args.device)
    if pipe.vae is None:
        parser.error("the model has no vae: it is needed to encode the photos")
    paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if args.held_out:
        paths = [p for p in paths if p.name.startswith("img_09")]
    paths = paths[: args.limit]
    if not paths:
        parser.error(f"no photos in {args.data}")
    refiner = pipe.decoder.refiner is not None
    vq_steps = args.vq_steps if args.vq_steps is not None else pipe.decoder.config.vq_inference_steps
    text, _ = pipe.encode_prompt("colored photo", args.device, 1, False)
    decoders = {
        "KL-f8 VAE decoder": lambda z, g: pipe.vae.decode(z).sample,
        "luminance-aware, refinement off": lambda z, g: pipe.decoder(z, g, text, vq_steps=0).sample,
    }
    if pipe.decoder.quantizer is not None:
        decoders["luminance-aware, no quantiser (continuous latent)"] = lambda z, g: pipe.decoder.decode_quantized(
            z, pipe.decoder.encode_gray(g)
        )
    if refiner:
        decoders[f"luminance-aware, refinement on ({vq_steps} steps)"] = lambda z, g: (
            pipe.decoder(
                z,
                g,
                text,
                vq_steps=vq_steps,
                temperature=args.temperature,
                truncation_rate=args.truncation_rate,
                generator=torch.Generator(args.device).manual_seed(args.seed),
            ).sample
        )
    scores = {name: {"psnr": [], "ssim": [], "seconds": []} for name in decoders}
    tokens = []
    with torch.no_grad():
        for path in paths:
            photo, pixels, gray = load(path, pipe)
            latents = pipe.vae.encode(pixels.to(args.device)).latent_dist.mode()
            gray = gray.to(args.device)
            if pipe.decoder.quantizer is not None:
                tokens.append(pipe.decoder.quantize(latents).tokens.flatten().cpu())
            for name, decode in decoders.items():
                start = time.perf_counter()
                sample = decode(latents, gray)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                scores[name]["seconds"].append(time.perf_counter() - start)
                result = to_uint8(sample.cpu())
                scores[name]["psnr"].append(psnr(result, photo))
                scores[name]["ssim"].append(ssim(result, photo))

    print(f"model {args.model}, {len(paths)} photos from {args.data}, device {args.device}, torch {torch.__version__}")
    print(f"working size {pipe.resolution} px on the longer side")
    print("| decoder | PSNR (dB) | SSIM | ms / image |\n|---|---|---|---|")
    for name, values in scores.items():
        print(
            f"| {name} | {statistics.mean(values['psnr']):.2f} | {statistics.mean(values['ssim']):.4f} | "
            f"{1000 * statistics.median(values['seconds']):.1f} |"
        )
    if not refiner:
        print("(this model's decoder has no token refiner: no refinement row)")
    if tokens:
        counts = torch.bincount(torch.cat(tokens), minlength=pipe.decoder.config.codebook_size)
        share = counts[counts > 0].double() / counts.sum()
        perplexity = torch.exp(-(share * share.log()).sum()).item()  # the effective number of codes
        print(
            f"codes in use: {int((counts > 0).sum())} of {counts.numel()} among the photos' {int(counts.sum())} "
            f"tokens (perplexity {perplexity:.0f})"
        )


if __name__ == "__main__":
    main()

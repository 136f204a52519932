"""Copy a trained edn-tiny into the package, where `edn colorize` and `EDNPipeline.from_pretrained()` find it.

The inference defaults chosen with `edn evaluate --sweep` on training photos go into the configs: the
pipeline's ``default_strength`` and the decoder's ``vq_inference_steps``. The diffusers networks are stored in
float16 to halve the package (diffusers loads them back as float32 unless asked otherwise); the CLIP text
encoder stays float32, since transformers would load it as stored. The model card (``README.md`` of the target
folder) is kept: it is written by hand from the recipe's figures.

    python training/recipes/ship_tiny.py --model edn-tiny/ccd --decoder edn-tiny/refiner-long/decoder \
        --default-strength 0.05 --vq-inference-steps 0
"""

import argparse
import shutil
from pathlib import Path

import torch
from diffusers import ModelMixin

from edn_pipeline import EDNPipeline, LuminanceDecoder
from edn_pipeline.files import atomic_folder

HALF_PRECISION = ("vae", "unet", "ccd", "decoder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the recipe's last stage output (a saved EDN)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "edn_pipeline" / "edn-tiny")
    parser.add_argument("--default-strength", type=float, required=True)
    parser.add_argument("--vq-inference-steps", type=int, required=True)
    parser.add_argument(
        "--decoder", type=Path, help="a decoder folder to ship instead of the model's (the refiner stages' output)"
    )
    args = parser.parse_args()

    pipe = EDNPipeline.from_pretrained(args.model)
    if args.decoder is not None:
        pipe.register_modules(decoder=LuminanceDecoder.from_pretrained(args.decoder))
    pipe.register_to_config(default_strength=args.default_strength, _name_or_path=args.out.name)
    for name, component in pipe.components.items():  # the name it ships under, not the training run's local path
        if isinstance(component, ModelMixin):
            component.register_to_config(_name_or_path=f"{args.out.name}/{name}")
    pipe.decoder.register_to_config(vq_inference_steps=args.vq_inference_steps)
    for name in HALF_PRECISION:
        getattr(pipe, name).to(torch.float16)
    card = args.out / "README.md"
    with atomic_folder(args.out) as staging:
        pipe.save_pretrained(staging)
        if card.is_file():
            shutil.copy2(card, staging / "README.md")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()

"""Build edn-tiny's starting point: its training folder and an untrained, Stable-Diffusion-shaped base model.

There is no pretrained prior at this size, so every network of the base is freshly initialised (and trained
by the recipe, ``edn_tiny.sh``); the CLIP tokenizer's BPE vocabulary is learned here from the captions.

    python training/recipes/build_tiny_base.py --photos ../shared/data/photos --data edn-tiny/data --base edn-tiny/base
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image, ImageOps
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from edn_pipeline.colour_terms import BASIC_COLOUR_TERMS, colour_caption, colour_terms
from edn_pipeline.files import IMAGE_SUFFIXES
from edn_pipeline.training.data import GENERIC_PROMPTS

HELD_OUT = "img_09"  # bsd100/img_09* and urban100/img_09*: never trained on (shared/data/photos/README.md)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


# clothing/ is there to teach hints (a garment's colour cannot be guessed from its gray); every CLOTHING_EVERY-th
# photo is used so that garments stay a minority of the no-hint prior (400 of 2,335 photos).
CLOTHING_EVERY = 2
# The captions' colour words come from a thumbnail (colour_terms describes large regions).
THUMBNAIL = 128


def subject_for(path: Path) -> str:
    """What the photo shows, from its file name where the data set says it (ImageNet classes, ants and bees)."""
    folder = path.parent.name
    if folder == "imagenet-sample":
        return "a photo of a " + path.stem.split("_", 1)[1].replace("_", " ")
    if folder == "hymenoptera":
        return "a photo of an ant" if "_ants_" in path.name else "a photo of a bee"
    if folder == "clothing":
        return "a photo of a garment"
    return "a photo"


def caption_for(path: Path) -> str:
    """The subject and the photo's dominant basic colour terms: "a photo of a bee, mostly yellow and green"."""
    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL, THUMBNAIL))
        thumbnail = ImageOps.exif_transpose(image).convert("RGB")
        thumbnail.thumbnail((THUMBNAIL, THUMBNAIL))
        return colour_caption(subject_for(path), colour_terms(np.asarray(thumbnail)))


def training_photos(photos: Path) -> list[Path]:
    """Every photo outside the held-out split, garments thinned to every CLOTHING_EVERY-th."""
    found = [
        p
        for p in sorted(photos.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not (p.name.startswith(HELD_OUT) and p.parent.name in ("bsd100", "urban100"))
    ]
    clothing = [p for p in found if p.parent.name == "clothing"]
    dropped = set(clothing) - set(clothing[::CLOTHING_EVERY])
    return [p for p in found if p not in dropped]


def build_data_folder(photos: Path, data: Path) -> list[str]:
    """Symlinks to the training split and an imagefolder ``metadata.jsonl`` of captions and sources.

    Links are numbered: ``datasets`` would read words like "test" in a file name as a split.
    """
    data.mkdir(parents=True, exist_ok=True)
    captions = []
    with open(data / "metadata.jsonl", "w") as metadata:
        for index, path in enumerate(training_photos(photos)):
            name = f"{index:05d}{path.suffix.lower()}"
            link = data / name
            if not link.exists():
                os.symlink(path.resolve(), link)
            caption = caption_for(path)
            captions.append(caption)
            source = f"{path.parent.name}/{path.name}"
            metadata.write(json.dumps({"file_name": name, "text": caption, "source": source}) + "\n")
    return captions


def train_tokenizer(corpus: list[str], vocab_size: int, max_length: int) -> CLIPTokenizer:
    """A CLIP tokenizer (same normaliser, pre-tokeniser and BPE form) whose merges are learned from ``corpus``."""
    reference = CLIPTokenizer(vocab={BOS: 0, EOS: 1}, merges=[])._tokenizer
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token=EOS))
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = reference.pre_tokenizer
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS], initial_alphabet=alphabet, end_of_word_suffix="</w>"
    )
    bpe.train_from_iterator(corpus, trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab = dict(state["vocab"])
    for char in sorted(alphabet):  # every byte must tokenise, at a word's end too
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_base(tokenizer: CLIPTokenizer, seed: int) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=128,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True, help="shared/data/photos")
    parser.add_argument("--data", type=Path, required=True, help="training folder to create")
    parser.add_argument("--base", type=Path, required=True, help="where to save the untrained base model")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    captions = build_data_folder(args.photos, args.data)
    # every colour word is in the corpus, so the benchmark's one-colour prompts tokenise as whole words
    corpus = captions + list(GENERIC_PROMPTS) + [colour_caption("a photo", [term]) for term in BASIC_COLOUR_TERMS]
    tokenizer = train_tokenizer(corpus, args.vocab_size, max_length=32)
    base = build_base(tokenizer, args.seed)
    base.save_pretrained(args.base)
    for name in ("vae", "text_encoder", "unet"):
        count = sum(p.numel() for p in getattr(base, name).parameters())
        print(f"{name}: {count / 1e6:.2f} M parameters")
    print(f"{len(captions)} training photos in {args.data}; tokenizer of {len(tokenizer)} tokens")


if __name__ == "__main__":
    main()

"""Fine-tune EDN with 🤗 accelerate, in the manner of diffusers' ``examples/controlnet/train_controlnet.py``.

The scripts in ``training/`` are thin entry points to :func:`main`:

* ``--stage ccd`` trains the CCD adapter against a frozen SD with ``L_dif + λ1·L_CCD`` (optionally a LoRA on
  the UNet, or the whole UNet for a model without a pretrained prior);
* ``--stage decoder`` trains the luminance-aware decoder: reconstruction, the quantiser's commitment loss and
  ``λ2·L_VQ-Dif`` for its token refiner;
* ``--stage refiner`` trains only the decoder's token refiner (``L_VQ-Dif``), everything else frozen: it runs at
  the latent size, so many more steps fit than in the decoder stage, whose reconstruction decodes every image;
* ``--stage propagator`` trains the learned hint propagator
  (:class:`~edn_pipeline.hint_propagator.HintPropagator`, made new if the model has none) to give every pixel the
  ground truth's a*b* from 1 to ``--max_hint_points`` ground-truth points, everything else unused; the CCD stages
  then spread their training hints with it, as the pipeline spreads a user's;
* ``--stage palette`` trains the colour-word prior (:class:`~edn_pipeline.palette_prior.PalettePrior`, made new if
  the model has none) to give every pixel the ground truth's a*b* from the basic colour terms that ground truth
  names (:func:`~edn_pipeline.colour_terms.colour_terms`, as the captions name them), everything else unused;
* ``--stage joint`` optimises Eq. 1, ``L_dif + λ1·L_CCD + λ2·L_VQ-Dif`` (plus the decoder's reconstruction);
* ``--stage vae`` trains the autoencoder itself (L1 + a small KL term), for a model without a pretrained SD
  such as edn-tiny, and sets the VAE's ``scaling_factor`` to 1 / std of its latents, as SD's was. With
  ``--vae_decoder kl`` the VAE's own decoder is trained and the exported luminance-aware decoder restarts from
  it; with ``--vae_decoder luminance`` the encoder is trained together with the luminance-aware decoder, which
  sees the grayscale image, so the latent need only carry colour (``--chroma_weight`` adds an L1 on CIE a*b*).

``--prediction_type v_prediction`` (ccd and joint stages) trains the UNet on v instead of ε and saves that in the
exported scheduler; ``--timestep_bias_strategy`` draws some timesteps more often, as diffusers' SDXL script.
``--hinted_start_prob`` trains what ``strength < 1`` runs: a share of the examples starts from the latent of the
photo as its hints colour it, noised part-way, and learns the step that lands on the photo's latent
(``--hinted_start_loss clean`` weighs that step's error as the clean latent's, for starts near the schedule's end).
``--train_text_encoder`` (ccd and joint stages) trains the text encoder with the adapter, as diffusers' DreamBooth
example does, for a model whose encoder was never trained on words (edn-tiny's colour terms);
``--train_word_embeddings`` trains only the named words' token embeddings, so prompts without them are unchanged.
``--per_channel_latents`` (ccd and joint stages) measures the VAE latents' mean and std per channel before training
and scales every channel to zero mean and unit variance for the UNet (:mod:`edn_pipeline.latent_scale`).

All losses come from :mod:`edn_pipeline.training.losses`. Randomness of a step (noise, timesteps, latents, tokens) is
drawn from a generator seeded by (seed, epoch, step, process), so a resumed run repeats an uninterrupted one.
"""

import argparse
import copy
import json
import logging
import math
import os
import platform
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ModelMixin
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn

try:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
except ImportError as error:  # the colourising install leaves the training dependencies out
    raise ImportError("training needs the train extra: pip install 'edn-pipeline[train]'") from error

from ..colour_terms import colour_terms
from ..errors import EDNInputError
from ..hint_propagator import CHROMA_SCALE, HintPropagator
from ..latent_scale import scale_latents, unscale_latents
from ..luminance import lab_chroma, to_uint8
from ..mask_and_replace import q_sample
from ..palette_prior import PalettePrior, allowed_terms
from ..pipeline_edn import EDNPipeline
from .losses import (
    ccd_loss,
    chroma_l1,
    clean_error_weight,
    diffusion_loss,
    latent_chroma_l1,
    predicted_x0,
    target_toward,
    total_loss,
    vq_diffusion_loss,
)

STAGES = ("vae", "ccd", "decoder", "refiner", "joint", "propagator", "palette")
# the pipeline's networks, in the order they are frozen, placed and put in eval mode (the optional ones may be None)
# the stages that train neither the UNet nor the text encoder
STAGES_WITHOUT_DIFFUSION = ("decoder", "refiner", "vae", "propagator", "palette")
NETWORKS = ("vae", "text_encoder", "unet", "ccd", "decoder", "hint_propagator", "palette_prior")
CHECKPOINT_PREFIX = "checkpoint-"
LORA_WEIGHTS = "unet_lora.safetensors"


# ----------------------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None, stage: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune EDN with accelerate.")
    add = parser.add_argument
    if stage is None:
        add("--stage", choices=STAGES, required=True, help="what to train (see the module docstring)")
    add("--pretrained_model_name_or_path", required=True, help="an SD v1.x checkpoint or an EDN pipeline")
    add(
        "--controlnet_model_name_or_path",
        default=None,
        help="start the CCD from this ControlNet (3-channel condition)",
    )
    add("--revision", default=None)
    add("--variant", default=None)
    add("--output_dir", default="edn-model")
    add("--seed", type=int, default=0)
    # data
    add("--train_data_dir", default=None, help="an image folder, with an optional metadata.jsonl of captions")
    add("--dataset_name", default=None, help="a Hub dataset with image and caption columns")
    add("--dataset_config_name", default=None)
    add("--image_column", default="image")
    add("--caption_column", default="text")
    add("--streaming", action="store_true", help="stream the data set instead of downloading it")
    add("--cache_dir", default=None)
    add("--resolution", type=int, default=512)
    add("--random_crop", action="store_true", help="random instead of centre crops")
    add("--hint_ratio", type=float, nargs=2, default=(0.3, 0.5), metavar=("LOW", "HIGH"))
    add("--no_hint_prob", type=float, default=0.1, help="share of examples trained without hints")
    add(
        "--point_hint_prob",
        type=float,
        default=0.5,
        help="share of hinted examples given points (as users click) instead of the paper's superpixel regions",
    )
    add("--max_hint_points", type=int, default=50, help="most points of a point-hinted example")
    add("--generic_prompt_prob", type=float, default=0.5, help="chance a caption becomes a generic prompt")
    add(
        "--proportion_empty_prompts",
        type=float,
        default=0.0,
        help="share of examples trained with the empty prompt, the unconditional branch of classifier-free guidance",
    )
    add("--dataloader_num_workers", type=int, default=0)
    add(
        "--cache_views",
        type=int,
        default=0,
        help="ccd stage: make and VAE-encode this many views of every photo once, and train on view epoch mod N "
        "(edn_pipeline.training.latent_cache); 0 makes every example anew",
    )
    # decoder architecture when the starting model has no VQ stage
    add("--decoder_vq", action="store_true", help="give the decoder its quantiser and token refiner")
    add("--codebook_size", type=int, default=1024)
    add("--vq_num_train_timesteps", type=int, default=100)
    add("--refiner_layers", type=int, default=4)
    add("--refiner_dim", type=int, default=256)
    # optimisation
    add("--train_batch_size", type=int, default=4)
    add("--num_train_epochs", type=int, default=1)
    add("--max_train_steps", type=int, default=None)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--gradient_checkpointing", action="store_true")
    add("--learning_rate", type=float, default=1e-5)
    add("--scale_lr", action="store_true")
    add("--lr_scheduler", default="constant")
    add("--lr_warmup_steps", type=int, default=0)
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.999)
    add("--adam_weight_decay", type=float, default=1e-2)
    add("--adam_epsilon", type=float, default=1e-8)
    add("--max_grad_norm", type=float, default=1.0)
    add("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    add("--allow_tf32", action="store_true")
    add("--enable_xformers_memory_efficient_attention", action="store_true", help="PyTorch SDPA otherwise")
    add("--use_ema", action="store_true")
    add("--ema_decay", type=float, default=0.9999)
    add(
        "--per_channel_latents",
        action="store_true",
        help="scale each latent channel to zero mean and unit variance for the UNet, measured on the data before "
        "training (the VAE's and decoder's latents_mean / latents_std)",
    )
    add(
        "--prediction_type",
        choices=["epsilon", "v_prediction"],
        default=None,
        help="ccd and joint stages: what the UNet learns to predict, saved in the exported scheduler; the starting "
        "model's otherwise. ε-prediction weighs an x̃_0 error by the SNR, so at high noise, where colour is decided, "
        "it barely counts; v-prediction weighs it by SNR + 1",
    )
    # timestep bias, as diffusers' examples/text_to_image/train_text_to_image_sdxl.py
    add(
        "--timestep_bias_strategy",
        choices=["none", "earlier", "later", "range"],
        default="none",
        help="ccd and joint stages: sample some timesteps more often; 'later' (high noise) trains the steps where a "
        "sample's colours are decided",
    )
    add("--timestep_bias_multiplier", type=float, default=1.0, help="how much more often the biased timesteps come")
    add("--timestep_bias_portion", type=float, default=0.25, help="share of timesteps 'earlier'/'later' bias")
    add("--timestep_bias_begin", type=int, default=0, help="first timestep of the 'range' strategy")
    add("--timestep_bias_end", type=int, default=1000, help="the 'range' strategy's end (exclusive)")
    add(
        "--hinted_start_prob",
        type=float,
        default=0.0,
        help="ccd and joint stages: share of examples that start as strength < 1 does, from the VAE latent of the "
        "photo as its hints colour it (the gray one without hints) noised to a timestep of --hinted_start_timesteps, "
        "and learn the UNet output whose x̃_0 is the photo's latent: one step from there lands on the photo",
    )
    add(
        "--hinted_start_timesteps",
        type=int,
        nargs=2,
        default=[100, 400],
        metavar=("FIRST", "LAST"),
        help="the timesteps (both included) that --hinted_start_prob noises the hint-coloured start to",
    )
    add(
        "--hinted_start_loss",
        choices=("prediction", "clean"),
        default="prediction",
        help="how a hinted start's error is weighed: as the UNet's output (v or ε), or as the clean latent it implies "
        "('clean': the output's error times sqrt(1 - ᾱ_t) for v); at the few timesteps a low strength runs the "
        "output's target grows as 1 / sqrt(1 - ᾱ_t) and would drown every other example",
    )
    add("--lambda_ccd", type=float, default=0.1, help="λ1 of Eq. 1")
    add("--lambda_vq", type=float, default=0.6, help="λ2 of Eq. 1")
    add("--vq_aux_weight", type=float, default=0.0, help="VQ-Diffusion's auxiliary cross-entropy weight")
    add("--kl_weight", type=float, default=1e-6, help="KL weight of the vae stage")
    add(
        "--vae_decoder",
        choices=("kl", "luminance"),
        default="kl",
        help="vae stage: train the encoder with the VAE's own decoder, or with the luminance-aware decoder",
    )
    add("--chroma_weight", type=float, default=0.0, help="vae stage: weight of the L1 on CIE a*b* (units of 100)")
    add(
        "--latent_chroma_weight",
        type=float,
        default=0.0,
        help="vae stage: weight of an L1 that makes the first two latent channels the a*b* averaged over each cell",
    )
    add("--train_unet_lora", action="store_true", help="add a peft LoRA to the UNet and train it")
    add("--lora_rank", type=int, default=4)
    add("--train_unet", action="store_true", help="train the whole UNet (no pretrained prior, e.g. edn-tiny)")
    add(
        "--train_text_encoder",
        action="store_true",
        help="ccd and joint stages: train the text encoder too (as diffusers' DreamBooth example), so that words "
        "an untrained encoder only tells apart get meanings the adapter reads; not averaged by --use_ema",
    )
    add(
        "--train_word_embeddings",
        nargs="+",
        metavar="WORD",
        default=None,
        help="ccd and joint stages: train only these words' token embeddings (textual inversion, as diffusers' "
        "example), every network frozen; each word must be one token of the tokenizer",
    )
    add(
        "--ccd_condition_init",
        choices=("keep", "random"),
        default="keep",
        help="random: restart the CCD's condition input from PyTorch's default initialisation instead of zero",
    )
    # checkpoints, logging, validation, hub
    add("--checkpointing_steps", type=int, default=500)
    add("--checkpoints_total_limit", type=int, default=None)
    add("--resume_from_checkpoint", default=None, help='a checkpoint folder or "latest"')
    add("--report_to", default="tensorboard", help='"tensorboard", "wandb", "all" or "none"')
    add("--logging_dir", default="logs")
    add("--tracker_project_name", default="edn")
    add("--validation_image", nargs="*", default=[], help="grayscale photos colourised during training")
    add("--validation_prompt", nargs="*", default=[], help="one per validation image, or one for all")
    add("--validation_steps", type=int, default=100)
    add("--validation_inference_steps", type=int, default=20)
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None)
    add("--hub_token", default=None)
    add("--training_data_description", default=None, help="what the model card says about the data")
    args = parser.parse_args(argv)
    if stage is not None:
        args.stage = stage
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Problems a user can fix from the command line end the run before any model is loaded."""
    if (args.train_data_dir is None) == (args.dataset_name is None):
        parser.error("give one of --train_data_dir or --dataset_name")
    if args.train_data_dir is not None and not os.path.isdir(args.train_data_dir):
        parser.error(f"--train_data_dir {args.train_data_dir} is not a folder")
    if args.resolution % 8:
        parser.error("--resolution must be a multiple of 8")
    if args.train_unet and args.train_unet_lora:
        parser.error("--train_unet and --train_unet_lora exclude each other")
    if args.stage in STAGES_WITHOUT_DIFFUSION and (args.train_unet or args.train_unet_lora):
        parser.error(f"the {args.stage} stage does not train the UNet")
    if args.stage in STAGES_WITHOUT_DIFFUSION and (args.train_text_encoder or args.train_word_embeddings):
        parser.error(f"the {args.stage} stage does not train the text encoder")
    others = args.train_unet or args.train_unet_lora or args.train_text_encoder or args.ccd_condition_init != "keep"
    if args.train_word_embeddings and others:
        parser.error(
            "--train_word_embeddings trains nothing else: leave out --train_unet, --train_unet_lora, "
            "--train_text_encoder and --ccd_condition_init"
        )
    for name in ("no_hint_prob", "point_hint_prob", "generic_prompt_prob", "proportion_empty_prompts"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            parser.error(f"--{name} must lie in [0, 1]")
    if args.max_hint_points < 1:
        parser.error("--max_hint_points must be at least 1")
    if args.ccd_condition_init != "keep" and args.stage not in ("ccd", "joint"):
        parser.error("--ccd_condition_init belongs to the ccd and joint stages")
    if args.stage != "vae" and (args.vae_decoder != "kl" or args.chroma_weight or args.latent_chroma_weight):
        parser.error("--vae_decoder, --chroma_weight and --latent_chroma_weight belong to the vae stage")
    if args.cache_views < 0:
        parser.error("--cache_views must be 0 (off) or a number of views")
    if args.cache_views and (args.stage != "ccd" or args.lambda_ccd or args.streaming):
        parser.error(
            "--cache_views stores latents, not pixels: it needs the ccd stage, --lambda_ccd 0 and no --streaming"
        )
    if args.per_channel_latents and args.stage not in ("ccd", "joint"):
        parser.error("--per_channel_latents belongs to the ccd and joint stages (the UNet's input)")
    if args.prediction_type and args.stage not in ("ccd", "joint"):
        parser.error("--prediction_type belongs to the ccd and joint stages (the UNet's target)")
    if args.timestep_bias_strategy != "none":
        if args.stage not in ("ccd", "joint"):
            parser.error("--timestep_bias_strategy belongs to the ccd and joint stages (the UNet's timesteps)")
        if args.timestep_bias_multiplier <= 0:
            parser.error("--timestep_bias_multiplier must be positive")
        if not 0 < args.timestep_bias_portion <= 1:
            parser.error("--timestep_bias_portion must lie in (0, 1]")
        if not 0 <= args.timestep_bias_begin < args.timestep_bias_end:
            parser.error("--timestep_bias_begin must be at least 0 and below --timestep_bias_end")
    if args.hinted_start_loss != "prediction" and not args.hinted_start_prob:
        parser.error("--hinted_start_loss weighs the hinted starts of --hinted_start_prob, which is 0")
    if args.hinted_start_prob:
        if args.stage not in ("ccd", "joint"):
            parser.error("--hinted_start_prob belongs to the ccd and joint stages (the UNet's start)")
        if not 0 < args.hinted_start_prob <= 1:
            parser.error("--hinted_start_prob must lie in [0, 1]")
        first, last = args.hinted_start_timesteps
        if not 1 <= first <= last:
            parser.error("--hinted_start_timesteps must be FIRST LAST with 1 <= FIRST <= LAST")
    if args.validation_prompt and len(args.validation_prompt) not in (1, len(args.validation_image)):
        parser.error("give one --validation_prompt, or one per --validation_image")
    for path in args.validation_image:
        if not os.path.isfile(path):
            parser.error(f"--validation_image {path} does not exist")


# ----------------------------------------------------------------------------------------------- the model


class EDNTrainingModel(nn.Module):
    """Every component of a training step, with the step's loss as ``forward``.

    One module whose forward computes the loss is what accelerate (DDP, FSDP, DeepSpeed) needs to wrap: the
    gradients of the trainable parts are synchronised however many of them there are.
    """

    def __init__(
        self,
        pipe,
        noise_scheduler,
        stage: str,
        lambda_ccd: float,
        lambda_vq: float,
        vq_aux_weight: float,
        kl_weight: float,
        vae_decoder: str = "kl",
        chroma_weight: float = 0.0,
        latent_chroma_weight: float = 0.0,
        timestep_weights: torch.Tensor | None = None,
        hinted_start_prob: float = 0.0,
        hinted_start_timesteps: tuple[int, int] = (100, 400),
        hinted_start_loss: str = "prediction",
        max_points: int = 50,
    ):
        super().__init__()
        self.max_points = max_points
        self.timestep_weights = timestep_weights  # None: uniform
        self.hinted_start_prob, self.hinted_start_timesteps = hinted_start_prob, tuple(hinted_start_timesteps)
        self.hinted_start_loss = hinted_start_loss
        if hinted_start_prob and self.hinted_start_timesteps[1] >= noise_scheduler.config.num_train_timesteps:
            raise ValueError(
                f"--hinted_start_timesteps {self.hinted_start_timesteps} must end below the scheduler's "
                f"{noise_scheduler.config.num_train_timesteps} training timesteps"
            )
        self.kl_weight, self.vae_decoder, self.chroma_weight = kl_weight, vae_decoder, chroma_weight
        self.latent_chroma_weight = latent_chroma_weight
        self.vae, self.text_encoder, self.unet = pipe.vae, pipe.text_encoder, pipe.unet
        self.ccd, self.decoder = pipe.ccd, pipe.decoder
        self.hint_propagator, self.palette_prior = pipe.hint_propagator, pipe.palette_prior
        self.noise_scheduler = noise_scheduler
        self.stage = stage
        self.lambda_ccd, self.lambda_vq, self.vq_aux_weight = lambda_ccd, lambda_vq, vq_aux_weight

    def forward(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.stage == "vae":
            return self.vae_losses(batch["pixel_values"], batch["gray_values"], generator)
        if self.stage == "propagator":
            return self.propagator_losses(batch["pixel_values"], batch["gray_values"], generator)
        if self.stage == "palette":
            return self.palette_losses(batch["pixel_values"], batch["gray_values"])
        pixels, gray = batch.get("pixel_values"), batch.get("gray_values")  # absent from cached views
        with torch.no_grad():
            latents = latent_posterior(self.vae, batch).sample(generator).float()
        text = self.text_encoder(batch["input_ids"], return_dict=False)[0]  # with gradients if it is trained
        losses = {}
        zero = latents.new_zeros(())
        l_dif = l_ccd = l_vq = zero
        if self.stage in ("ccd", "joint"):
            l_dif, l_ccd = self.ccd_losses(latents, text, batch, generator)
            losses.update(diffusion=l_dif, ccd=l_ccd)
        extra = zero
        if self.stage in ("decoder", "joint"):
            reconstruction, commitment, l_vq = self.decoder_losses(latents, text, pixels, gray, generator)
            losses.update(reconstruction=reconstruction, commitment=commitment, vq_diffusion=l_vq)
            extra = reconstruction + commitment
        if self.stage == "refiner":
            _, _, l_vq = self.decoder_losses(latents, text, pixels, gray, generator, reconstruct=False)
            losses.update(vq_diffusion=l_vq)
        losses["loss"] = total_loss(l_dif, l_ccd, l_vq, self.lambda_ccd, self.lambda_vq) + extra
        return losses

    def propagator_losses(self, pixels, gray, generator):
        """MSE of the propagated a*b* (in units of 100) against the photo's, from 1 to ``max_points`` of its pixels
        as hints (log-uniform count, uniform positions: as :func:`~edn_pipeline.training.hint_sampling.
        sample_training_hints` draws points)."""
        batch, _, height, width = pixels.shape
        chroma = lab_chroma((pixels.float() + 1) / 2)
        counts = torch.exp(
            torch.rand(batch, generator=generator, device=pixels.device) * math.log(self.max_points + 1)
        )
        counts = counts.long().clamp(1, self.max_points)
        valid = torch.arange(self.max_points, device=pixels.device)[None] < counts[:, None]
        size = torch.tensor([height, width], device=pixels.device)
        positions = (torch.rand(batch, self.max_points, 2, generator=generator, device=pixels.device) * size).long()
        flat = (positions[..., 0] * width + positions[..., 1])[:, None].expand(-1, 2, -1)
        colours = chroma.flatten(2).gather(2, flat).transpose(1, 2)
        predicted = self.hint_propagator((gray.float() + 1) / 2, positions, colours, valid)
        loss = F.mse_loss(predicted / CHROMA_SCALE, chroma / CHROMA_SCALE)
        return {"propagation": loss, "loss": loss}

    def palette_losses(self, pixels, gray):
        """MSE of the palette prior's a*b* (in units of 100) against the photo's, each example naming the basic
        colour terms of its own ground truth as a caption would (:func:`~edn_pipeline.colour_terms.colour_terms`)."""
        rgb = (pixels.float() + 1) / 2
        named = [colour_terms(to_uint8(image)) for image in rgb.permute(0, 2, 3, 1).cpu().numpy()]
        allowed = torch.stack([allowed_terms(terms, pixels.device) for terms in named])
        predicted = self.palette_prior((gray.float() + 1) / 2, allowed)
        loss = F.mse_loss(predicted / CHROMA_SCALE, lab_chroma(rgb) / CHROMA_SCALE)
        return {"palette": loss, "loss": loss}

    def vae_losses(self, pixels, gray, generator):
        """L1 reconstruction (plus ``chroma_weight`` times an L1 on a*b*, and ``latent_chroma_weight`` times the
        latent's distance to the cells' a*b*) and a small KL to the unit Gaussian. The luminance-aware decoder is
        given the grayscale image."""
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.sample(generator)
        if self.vae_decoder == "luminance":
            decoded = self.decoder(latents, gray, vq_steps=0).sample
        else:
            decoded = self.vae.decode(latents).sample
        reconstruction = F.l1_loss(decoded, pixels)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        losses = {"reconstruction": reconstruction, "kl": kl}
        loss = reconstruction + self.kl_weight * kl
        if self.chroma_weight:
            losses["chroma"] = chroma_l1((decoded.float() + 1) / 2, (pixels.float() + 1) / 2)
            loss = loss + self.chroma_weight * losses["chroma"]
        if self.latent_chroma_weight:
            losses["latent_chroma"] = latent_chroma_l1(posterior.mean, (pixels.float() + 1) / 2)
            loss = loss + self.latent_chroma_weight * losses["latent_chroma"]
        return {"loss": loss, **losses}

    def ccd_losses(self, latents, text, batch, generator):
        """L_dif of the adapter-steered UNet, and L_CCD on the image decoded from its x̃_0 (Eq. 2-4)."""
        scheduler = self.noise_scheduler
        scaled = scale_latents(latents, self.vae.config)
        noise = torch.randn(scaled.shape, generator=generator, device=scaled.device)
        if self.timestep_weights is None:
            timesteps = torch.randint(
                0, scheduler.config.num_train_timesteps, (scaled.shape[0],), generator=generator, device=scaled.device
            )
        else:
            weights = self.timestep_weights.to(generator.device)
            timesteps = torch.multinomial(weights, scaled.shape[0], replacement=True, generator=generator)
            timesteps = timesteps.to(scaled.device)
        noisy = scheduler.add_noise(scaled, noise, timesteps)
        hinted = None
        if self.hinted_start_prob:
            hinted, timesteps, noisy = self.hinted_starts(noise, timesteps, noisy, batch, generator)
        unet_dtype = self.unet.dtype
        down, mid = self.ccd(
            noisy.to(self.ccd.dtype),
            timesteps,
            encoder_hidden_states=text.to(self.ccd.dtype),
            controlnet_cond=batch["conditioning_pixel_values"].to(self.ccd.dtype),
            return_dict=False,
        )
        prediction = self.unet(
            noisy.to(unet_dtype),
            timesteps,
            encoder_hidden_states=text.to(unet_dtype),
            down_block_additional_residuals=[d.to(unet_dtype) for d in down],
            mid_block_additional_residual=mid.to(unet_dtype),
            return_dict=False,
        )[0].float()
        alphas = scheduler.alphas_cumprod.to(scaled.device)[timesteps]
        if scheduler.config.prediction_type == "epsilon":
            target, eps = noise, prediction
        elif scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(scaled, noise, timesteps)
            a = alphas.view(-1, 1, 1, 1)
            eps = a.sqrt() * prediction + (1 - a).sqrt() * noisy
        else:
            raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
        weights = None
        if hinted is not None:
            toward = target_toward(scaled, noisy, alphas, scheduler.config.prediction_type)
            target = torch.where(hinted.view(-1, 1, 1, 1), toward, target)
            if self.hinted_start_loss == "clean":
                weights = torch.where(hinted, clean_error_weight(alphas, scheduler.config.prediction_type), 1.0)
        l_dif = diffusion_loss(prediction, target.float(), weights)
        if self.lambda_ccd == 0:
            return l_dif, l_dif.new_zeros(())
        x0 = unscale_latents(predicted_x0(noisy, eps, alphas), self.vae.config)
        decoded = self.decoder(x0.to(self.decoder.dtype), gray_for(self.decoder, batch), vq_steps=0).sample.float()
        target_rgb, pred_rgb = (batch["pixel_values"].float() + 1) / 2, (decoded.clamp(-1, 1) + 1) / 2
        l_ccd = ccd_loss(pred_rgb, target_rgb, gray=(batch["gray_values"].float() + 1) / 2).total
        return l_dif, l_ccd

    def hinted_starts(self, noise, timesteps, noisy, batch, generator):
        """Which examples start from the hint-coloured photo (``hinted_start_prob`` of them), and the timesteps and
        noisy latents of the batch with theirs replaced: the photo as :meth:`EDNPipeline.hinted_photo` colours it,
        encoded by the VAE (its mode, as the pipeline encodes it) and noised to a timestep drawn from
        ``hinted_start_timesteps``, exactly where ``strength < 1`` inference starts."""
        count, device = noise.shape[0], noise.device
        chosen = torch.rand(count, generator=generator, device=device) < self.hinted_start_prob
        first, last = self.hinted_start_timesteps
        starts = torch.randint(first, last + 1, (count,), generator=generator, device=device)
        if not chosen.any():
            return chosen, timesteps, noisy
        condition = batch["conditioning_pixel_values"][chosen].to(device, torch.float32)
        with torch.no_grad():
            pixels = (EDNPipeline.hinted_photo(condition) * 2 - 1).to(self.vae.dtype)
            start = scale_latents(self.vae.encode(pixels).latent_dist.mode().float(), self.vae.config)
        noisy, timesteps = noisy.clone(), timesteps.clone()
        noisy[chosen] = self.noise_scheduler.add_noise(start, noise[chosen], starts[chosen]).to(noisy.dtype)
        timesteps[chosen] = starts[chosen]
        return chosen, timesteps, noisy

    def decoder_losses(self, latents, text, pixels, gray, generator, reconstruct: bool = True):
        """Reconstruction (L1), the quantiser's commitment loss and Eq. 6 for the token refiner; without
        ``reconstruct``, only Eq. 6 (the reconstruction, zero, decodes nothing)."""
        decoder = self.decoder
        latents = latents.to(decoder.dtype)
        features = decoder.encode_gray(gray.to(decoder.dtype)) if decoder.gray_encoder is not None else None
        commitment = l_vq = pixels.new_zeros(())
        if decoder.quantizer is not None:
            quantized = decoder.quantize(latents)
            latents, commitment = quantized.latents, quantized.commitment_loss
            if decoder.refiner is not None:
                x_0 = quantized.tokens.flatten(1)
                steps = decoder.config.vq_num_train_timesteps
                scheduler = decoder.vq_scheduler
                scheduler.set_timesteps(steps, device=x_0.device)
                t = torch.randint(0, steps, (x_0.shape[0],), generator=generator, device=x_0.device)
                x_t = q_sample(x_0, t, scheduler, generator)
                log_x0 = decoder.token_log_probs(x_t.view_as(quantized.tokens), t, features, text.to(decoder.dtype))
                l_vq = vq_diffusion_loss(log_x0, x_0, x_t, t, scheduler, self.vq_aux_weight).total
        if not reconstruct:
            return pixels.new_zeros(()), commitment, l_vq
        reconstruction = F.l1_loss(decoder.decode_quantized(latents, features).float(), pixels.float())
        return reconstruction, commitment, l_vq


def timestep_weights(args: argparse.Namespace, num_timesteps: int) -> torch.Tensor | None:
    """The sampling weights of each training timestep under ``--timestep_bias_strategy`` (None: uniform), as
    diffusers' ``generate_timestep_weights``: the biased timesteps weigh ``--timestep_bias_multiplier`` times more."""
    if args.timestep_bias_strategy == "none":
        return None
    weights = torch.ones(num_timesteps)
    biased = max(1, int(args.timestep_bias_portion * num_timesteps))
    if args.timestep_bias_strategy == "later":
        weights[-biased:] *= args.timestep_bias_multiplier
    elif args.timestep_bias_strategy == "earlier":
        weights[:biased] *= args.timestep_bias_multiplier
    else:
        weights[args.timestep_bias_begin : min(args.timestep_bias_end, num_timesteps)] *= args.timestep_bias_multiplier
    return weights / weights.sum()


def latent_posterior(vae, batch: dict) -> DiagonalGaussianDistribution:
    """The VAE posterior of a batch's photos: read from the cached views (``--cache_views``), or encoded."""
    if "latent_parameters" in batch:
        return DiagonalGaussianDistribution(batch["latent_parameters"].to(vae.device, vae.dtype))
    return vae.encode(batch["pixel_values"].to(vae.device, vae.dtype)).latent_dist


def gray_for(decoder, batch) -> torch.Tensor | None:
    return batch["gray_values"].to(decoder.dtype) if decoder.gray_encoder is not None else None


# ----------------------------------------------------------------------------------------------- set-up


def start_accelerator(
    output_dir: str,
    logging_dir: str,
    seed: int,
    gradient_accumulation_steps: int,
    mixed_precision: str | None,
    report_to: str,
    allow_tf32: bool,
):
    """accelerate's Accelerator for the run (trackers logging into ``output_dir/logging_dir``, ``report_to``
    "none" for none), the libraries' logging set for this process, and the seed set."""
    import diffusers
    import transformers
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        mixed_precision=mixed_precision,
        log_with=None if report_to == "none" else report_to,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    get_logger(__name__).info(accelerator.state, main_process_only=False)
    if accelerator.is_local_main_process:
        transformers.utils.logging.set_verbosity_warning()
        diffusers.utils.logging.set_verbosity_info()
    else:
        transformers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.set_verbosity_error()
    set_seed(seed)
    if allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
    return accelerator


def load_training_dataset(args: argparse.Namespace):
    """The photos of ``--train_data_dir`` or ``--dataset_name``; a problem with them ends the run in one line,
    before any model is loaded."""
    from .data import load_image_dataset

    try:
        return load_image_dataset(
            data_dir=args.train_data_dir,
            dataset_name=args.dataset_name,
            dataset_config=args.dataset_config_name,
            image_column=args.image_column,
            caption_column=args.caption_column,
            streaming=args.streaming,
            cache_dir=args.cache_dir,
        )
    except EDNInputError as error:
        raise SystemExit(f"edn training: {error}") from None


def load_starting_pipeline(
    source: str,
    revision: str | None = None,
    variant: str | None = None,
    controlnet: str | None = None,
    vq_options: dict | None = None,
):
    """An EDN pipeline to start from (a saved EDN as it is, or an untrained EDN around an SD checkpoint; its adapter
    from the ControlNet ``controlnet`` if given), and whether its decoder got a new, untrained codebook.

    ``vq_options`` (``--decoder_vq``: ``codebook_size``, ``vq_num_train_timesteps``, ``refiner_layers``,
    ``refiner_dim``) give a decoder without a quantiser one, and a token refiner.
    """
    from huggingface_hub import hf_hub_download

    from ..ccd import load_ccd
    from ..luminance_decoder import LuminanceDecoder
    from ..pipeline_edn import EDNPipeline

    index = Path(source, "model_index.json")
    if not index.is_file():
        index = Path(hf_hub_download(source, "model_index.json", revision=revision))
    load = dict(revision=revision, variant=variant)
    if json.loads(index.read_text()).get("_class_name") == "EDNPipeline":
        pipe = EDNPipeline.from_pretrained(source, **load)
        if controlnet:
            pipe.register_modules(ccd=load_ccd(controlnet, revision=revision))
    else:
        pipe = EDNPipeline.from_stable_diffusion(source, ccd=controlnet, **load)
    if vq_options is not None and pipe.decoder.quantizer is None:
        config = {k: v for k, v in pipe.decoder.config.items() if not k.startswith("_")}
        config.update(
            use_quantizer=True,
            use_refiner=True,
            codebook_size=vq_options["codebook_size"],
            vq_num_train_timesteps=vq_options["vq_num_train_timesteps"],
            vq_inference_steps=min(config.get("vq_inference_steps", 20), vq_options["vq_num_train_timesteps"]),
            refiner_layers=vq_options["refiner_layers"],
            refiner_dim=vq_options["refiner_dim"],
            refiner_cross_attention_dim=pipe.text_encoder.config.hidden_size,
        )
        decoder = LuminanceDecoder(**config)
        decoder.load_state_dict(pipe.decoder.state_dict(), strict=False)  # keeps the decoder and gray encoder
        pipe.register_modules(decoder=decoder)
        return pipe, True
    return pipe, False


@torch.no_grad()
def init_codebook_from_data(pipe, dataloader, seed: int) -> None:
    """Start a new codebook at latent vectors of the training photos.

    nn.Embedding's initial codes sit near zero while SD latents spread over several units, so the codes would
    take thousands of steps to reach the data (the commitment loss stays at the latents' variance meanwhile).
    """
    quantizer = pipe.decoder.quantizer
    size = quantizer.embedding.weight.shape[0]
    vectors, count = [], 0
    for batch in dataloader:
        if batch["num_examples"] == 0:
            continue
        pixels = batch["pixel_values"].to(pipe.vae.device, pipe.vae.dtype)
        latents = pipe.vae.encode(pixels).latent_dist.mode()
        vectors.append(latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float().cpu())
        count += vectors[-1].shape[0]
        if count >= 4 * size:
            break
    vectors = torch.cat(vectors)
    chosen = torch.randperm(vectors.shape[0], generator=torch.Generator().manual_seed(seed))[:size]
    if len(chosen) < size:  # fewer latent vectors than codes: repeat them
        chosen = chosen.repeat(math.ceil(size / len(chosen)))[:size]
    quantizer.embedding.weight.copy_(vectors[chosen].to(quantizer.embedding.weight))


def trainable_modules(
    pipe,
    stage: str,
    vae_decoder: str = "kl",
    ccd_condition_init: str = "keep",
    train_unet: bool = False,
    train_text_encoder: bool = False,
) -> dict[str, nn.Module]:
    """Freeze what the stage keeps fixed; return the trained components by name."""
    if stage == "propagator" and pipe.hint_propagator is None:
        pipe.register_modules(hint_propagator=HintPropagator())
    if stage == "palette" and pipe.palette_prior is None:
        pipe.register_modules(palette_prior=PalettePrior())
    for name in NETWORKS:
        if getattr(pipe, name) is not None:
            getattr(pipe, name).requires_grad_(False)
    trained = {}
    if stage == "propagator":
        trained["hint_propagator"] = pipe.hint_propagator
    if stage == "palette":
        trained["palette_prior"] = pipe.palette_prior
    if stage == "vae":
        trained["vae"] = pipe.vae
        if vae_decoder == "luminance":
            trained["decoder"] = pipe.decoder
    if stage in ("ccd", "joint"):
        trained["ccd"] = pipe.ccd
        if ccd_condition_init == "random":
            # ControlNet's zero convolution protects a pretrained UNet from an untrained adapter; trained together
            # from scratch there is nothing to protect, and from zero the condition stayed unused (edn-tiny: after
            # 500 steps it moved the adapter's residuals by about 1 %, and every photo got the same colours).
            pipe.ccd.controlnet_cond_embedding.conv_out.reset_parameters()
    if stage in ("decoder", "joint"):
        trained["decoder"] = pipe.decoder
    if stage == "refiner":
        if pipe.decoder.refiner is None:
            raise ValueError("the refiner stage needs a decoder with a token refiner (train one with --decoder_vq)")
        trained["decoder"] = pipe.decoder  # saved whole; only its refiner's parameters are given gradients below
    if train_unet:
        trained["unet"] = pipe.unet
    if train_text_encoder:
        trained["text_encoder"] = pipe.text_encoder
    for module in trained.values():
        module.requires_grad_(True)
        module.train()
    if stage == "refiner":
        pipe.decoder.requires_grad_(False)
        pipe.decoder.refiner.requires_grad_(True)
    return trained


def word_token_ids(tokenizer, words: list[str]) -> list[int]:
    """The token id of each word, which must be a single token (between the tokenizer's start and end tokens)."""
    ids = []
    for word in words:
        tokens = tokenizer(word).input_ids[1:-1]
        if len(tokens) != 1:
            raise SystemExit(
                f"edn training: --train_word_embeddings {word!r} is {len(tokens)} tokens "
                f"({' '.join(tokenizer.convert_ids_to_tokens(tokens))}); each word must be one token"
            )
        ids.extend(tokens)
    return ids


def train_only_word_embeddings(pipe, token_ids: list[int]) -> dict[str, nn.Module]:
    """Freeze every network but the text encoder's token embeddings, and give gradients only to ``token_ids``' rows:
    the words' meanings change, every prompt without them is encoded exactly as before."""
    for module in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.ccd, pipe.decoder):
        module.requires_grad_(False)
    embeddings = pipe.text_encoder.get_input_embeddings().weight
    embeddings.requires_grad_(True)
    rows = torch.zeros(embeddings.shape[0], 1, dtype=embeddings.dtype, device=embeddings.device)
    rows[token_ids] = 1
    embeddings.register_hook(lambda grad: grad * rows.to(grad))
    pipe.text_encoder.train()
    return {"text_encoder": pipe.text_encoder}


def keep_other_embeddings(optimizer, embeddings: nn.Parameter, token_ids: list[int]) -> None:
    """After each optimiser step, put back every row but ``token_ids``': AdamW's weight decay shrinks whole
    parameters, gradients or not (diffusers' textual inversion example restores them the same way)."""
    original = embeddings.detach().clone()
    others = torch.ones(embeddings.shape[0], dtype=torch.bool, device=embeddings.device)
    others[token_ids] = False

    def restore(*_):
        with torch.no_grad():
            embeddings[others] = original[others]

    optimizer.register_step_post_hook(restore)


def add_unet_lora(unet, rank: int) -> None:
    """A peft LoRA on the frozen UNet's attention projections: only its own weights are trained."""
    from peft import LoraConfig

    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )


def save_memory(pipe, trained: dict[str, nn.Module], lora: bool, gradient_checkpointing: bool, xformers: bool) -> None:
    """Gradient checkpointing in what is trained (the UNet too, for its LoRA); xformers' attention in the UNet and
    the adapter."""
    if gradient_checkpointing:
        for module in (*trained.values(), *([pipe.unet] if lora else [])):
            if isinstance(module, ModelMixin):
                module.enable_gradient_checkpointing()
            else:  # the transformers text encoder
                module.gradient_checkpointing_enable()
    if xformers:
        for module in (pipe.unet, pipe.ccd):
            module.enable_xformers_memory_efficient_attention()


def place_components(pipe, trained: dict[str, nn.Module], lora: bool, accelerator) -> torch.dtype:
    """Every component on the accelerator's device, the frozen ones in the mixed-precision dtype (trained ones stay
    float32); returns that dtype."""
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for name in NETWORKS:
        if getattr(pipe, name) is None:
            continue
        module = getattr(pipe, name).to(accelerator.device)
        if name not in trained and not (name == "unet" and lora) and module.dtype != weight_dtype:
            module.to(dtype=weight_dtype)
    return weight_dtype


def ema_models(trained: dict[str, nn.Module], decay: float) -> dict[str, EMAModel]:
    """An exponential moving average of each trained diffusers component (``--use_ema``); model_cls and model_config
    let EMAModel save itself in diffusers' format, which a transformers text encoder has not."""
    return {
        name: EMAModel(module.parameters(), decay=decay, model_cls=type(module), model_config=module.config)
        for name, module in trained.items()
        if isinstance(module, ModelMixin)
    }


def training_dataloader(dataset, tokenizer, args: argparse.Namespace, accelerator, vae, hint_propagator=None):
    """What the loop sets each epoch on (the examples' transform, or with ``--cache_views`` the cached views, made
    first by the main process with ``vae``) and the DataLoader of the transformed ``dataset``. The stages that
    read hints spread them with the model's ``hint_propagator`` (a frozen CPU copy, for the loader's workers)."""
    from .data import TrainingExampleTransform, collate_fn, with_training_transform
    from .latent_cache import cache_views

    uses_hints = args.stage in ("ccd", "joint")
    if hint_propagator is not None and uses_hints:
        hint_propagator = copy.deepcopy(hint_propagator).to("cpu", torch.float32).eval().requires_grad_(False)
    transform = TrainingExampleTransform(
        resolution=args.resolution,
        tokenizer=tokenizer,
        image_column=args.image_column,
        caption_column=args.caption_column,
        hint_ratio=tuple(args.hint_ratio),
        no_hint_prob=args.no_hint_prob if uses_hints else 1.0,  # no hints where unused
        point_hint_prob=args.point_hint_prob,
        max_hint_points=args.max_hint_points,
        generic_prompt_prob=args.generic_prompt_prob,
        proportion_empty_prompts=args.proportion_empty_prompts,
        seed=args.seed,
        center_crop=not args.random_crop,
        hint_propagator=hint_propagator if uses_hints else None,
    )
    if args.cache_views:
        with accelerator.main_process_first():
            transform = dataset = cache_views(dataset, transform, vae, args.cache_views)
    else:
        dataset = with_training_transform(dataset, transform)
    dataloader = torch.utils.data.DataLoader(
        dataset,
        shuffle=not args.streaming,
        collate_fn=collate_fn,
        batch_size=args.train_batch_size,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),  # so iterators never draw from the global RNG
    )
    return transform, dataloader


def trained_parameters(trained: dict[str, nn.Module], unet) -> list[nn.Parameter]:
    """The parameters given gradients, each once: the trained components' and the UNet's LoRA."""
    parameters = [p for module in (*trained.values(), unet) for p in module.parameters() if p.requires_grad]
    return list({id(p): p for p in parameters}.values())


def optimisation(parameters, dataloader, num_processes: int, args: argparse.Namespace):
    """AdamW over ``parameters``, its learning-rate schedule, and the updates in an epoch (None for a stream).

    First the options the run derives are filled into ``args``, as the trackers and the model card record them:
    the rate scaled by ``--scale_lr``, and ``--max_train_steps`` from ``--num_train_epochs``.
    """
    from diffusers.optimization import get_scheduler

    if args.scale_lr:
        args.learning_rate *= args.gradient_accumulation_steps * args.train_batch_size * num_processes
    optimizer = torch.optim.AdamW(
        parameters,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    if args.streaming and args.max_train_steps is None:
        raise SystemExit("edn training: --streaming needs --max_train_steps (a stream has no length)")
    updates_per_epoch = (
        None if args.streaming else math.ceil(len(dataloader) / num_processes / args.gradient_accumulation_steps)
    )
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=args.max_train_steps * num_processes,
    )
    return optimizer, lr_scheduler, updates_per_epoch


# ----------------------------------------------------------------------------------------------- the loop


def epoch_batches(accelerator, dataloader, transform, epoch: int, skip: int = 0):
    """(step, batch) of one epoch, without its first ``skip`` batches (those a resumed run has done)."""
    transform.set_epoch(epoch)
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    return enumerate(accelerator.skip_first_batches(dataloader, skip) if skip else dataloader, start=skip)


def step_generator(seed: int, epoch: int, step: int, process: int, device) -> torch.Generator:
    """The step's randomness depends only on where the run is, so a resumed run draws what it would have."""
    return torch.Generator(device=device).manual_seed(hash((seed, epoch, step, process)) % 2**63)


def optimisation_step(accelerator, model, optimizer, lr_scheduler, parameters, max_grad_norm: float, batch, generator):
    """The batch's losses, backpropagated; the optimiser steps once accelerate has accumulated a whole update."""
    with accelerator.accumulate(model):
        losses = model(batch, generator)
        accelerator.backward(losses["loss"])
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return losses


def train_loop(
    accelerator,
    model,
    optimizer,
    lr_scheduler,
    dataloader,
    transform,
    parameters,
    trained: dict[str, nn.Module],
    ema: dict[str, EMAModel],
    start: tuple[int, int, int],
    pipe,
    args: argparse.Namespace,
) -> tuple[int, int]:
    """Update the model from ``start`` (:func:`resume_point`) to ``--max_train_steps`` updates, logging each update,
    checkpointing every ``--checkpointing_steps`` and validating every ``--validation_steps``; returns the updates
    done and the unreadable images skipped."""
    from accelerate.logging import get_logger
    from tqdm.auto import tqdm

    log = get_logger(__name__)
    global_step, first_epoch, resume_batches = start
    log.info(
        f"Training stage {args.stage}: {args.max_train_steps} steps, {sum(p.numel() for p in parameters):,} trained parameters"
    )
    progress = tqdm(
        range(args.max_train_steps), initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    skipped = examples_seen = 0
    epoch = first_epoch
    while global_step < args.max_train_steps:  # by steps, not epochs: skipped images can shorten an epoch
        skip = resume_batches if epoch == first_epoch else 0
        for step, batch in epoch_batches(accelerator, dataloader, transform, epoch, skip):
            skipped += batch["num_skipped"]
            examples_seen += batch["num_examples"]
            if batch["num_examples"] == 0:
                continue
            generator = step_generator(args.seed, epoch, step, accelerator.process_index, accelerator.device)
            losses = optimisation_step(
                accelerator, model, optimizer, lr_scheduler, parameters, args.max_grad_norm, batch, generator
            )
            if not accelerator.sync_gradients:
                continue
            for name, averaged in ema.items():
                averaged.step(trained[name].parameters())
            progress.update(1)
            global_step += 1
            logs = {k: v.detach().item() for k, v in losses.items()}
            logs.update(lr=lr_scheduler.get_last_lr()[0], skipped_images=skipped)
            progress.set_postfix(loss=logs["loss"])
            accelerator.log(logs, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                path = save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
                log.info(f"Saved {path}")
            if args.validation_image and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                log_validation(accelerator, pipe, global_step, *validation_settings(args))
            if global_step >= args.max_train_steps:
                break
        epoch += 1

    accelerator.wait_for_everyone()
    checksum = sum(float(p.detach().double().sum()) for p in parameters)
    log.info(
        f"process {accelerator.process_index}: {examples_seen} examples, trained-weight checksum {checksum:.10e}",
        main_process_only=False,
    )
    return global_step, skipped


# ----------------------------------------------------------------------------------------------- checkpoints


def checkpoint_step(name: str) -> int | None:
    suffix = name[len(CHECKPOINT_PREFIX) :]
    return int(suffix) if name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first (a save interrupted midway leaves only a hidden temporary folder)."""
    if not os.path.isdir(output_dir):
        return []
    names = [d for d in os.listdir(output_dir) if checkpoint_step(d) is not None]
    return sorted(names, key=checkpoint_step)


def save_checkpoint(accelerator, output_dir: str, step: int, total_limit: int | None) -> str:
    """``accelerator.save_state`` into a temporary folder, renamed into place once complete, then pruning."""
    final = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{step}")
    temporary = os.path.join(output_dir, f".{CHECKPOINT_PREFIX}{step}.tmp")
    if accelerator.is_main_process and os.path.exists(temporary):
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(temporary, final)
        if total_limit is not None:
            for name in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(os.path.join(output_dir, name))
    accelerator.wait_for_everyone()
    return final


def resume_point(
    accelerator, checkpoint: str | None, output_dir: str, updates_per_epoch: int | None, accumulation: int
) -> tuple[int, int, int]:
    """Where the run starts: (updates done, epoch, batches of that epoch done). With ``checkpoint`` (a folder, or
    "latest" of ``output_dir``) accelerate's state is loaded from it; one not found starts a new run."""
    if not checkpoint:
        return 0, 0, 0
    if checkpoint == "latest":
        found = list_checkpoints(output_dir)
        path = os.path.join(output_dir, found[-1]) if found else None
    else:
        path = checkpoint
    if path is None or not os.path.isdir(path):
        accelerator.print(f"Checkpoint {checkpoint!r} not found; starting a new run.")
        return 0, 0, 0
    accelerator.print(f"Resuming from {path}")
    accelerator.load_state(path)
    global_step = checkpoint_step(os.path.basename(os.path.normpath(path))) or 0
    if updates_per_epoch:
        return global_step, global_step // updates_per_epoch, (global_step % updates_per_epoch) * accumulation
    return global_step, 0, global_step * accumulation


def register_checkpoint_hooks(accelerator, trained: dict[str, nn.Module], unet, lora: bool, ema: dict) -> None:
    """Checkpoints hold the trained components in diffusers' format (safetensors), not pickles."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for name, module in trained.items():
                module.save_pretrained(os.path.join(output_dir, name))
            if lora:
                save_file(get_peft_model_state_dict(unet), os.path.join(output_dir, LORA_WEIGHTS))
            for name, averaged in ema.items():
                averaged.save_pretrained(os.path.join(output_dir, f"ema_{name}"))
        weights.clear()  # everything is saved above

    def load_hook(models, input_dir):
        models.clear()
        for name, module in trained.items():
            loaded = type(module).from_pretrained(os.path.join(input_dir, name))
            module.load_state_dict(loaded.state_dict())
        if lora:  # in place, so the optimizer keeps the same parameters
            set_peft_model_state_dict(unet, load_file(os.path.join(input_dir, LORA_WEIGHTS)))
        for name, averaged in ema.items():
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, f"ema_{name}"), type(trained[name]))
            averaged.load_state_dict(loaded.state_dict())

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# ----------------------------------------------------------------------------------------------- validation


def validation_settings(args: argparse.Namespace) -> tuple[list[str], list[str], int, int]:
    """:func:`log_validation`'s photos, prompts, steps and seed, as the command line gives them."""
    return args.validation_image, args.validation_prompt, args.validation_inference_steps, args.seed


def log_validation(
    accelerator, pipe, step: int, photos: list[str], prompts: list[str], inference_steps: int, seed: int
) -> list:
    """Colourise the validation ``photos`` (with one prompt for all, or one each) with a fixed seed and send them
    to the trackers."""
    import numpy as np
    from PIL import Image

    pipe.set_progress_bar_config(disable=True)
    prompts = prompts or [None]
    images = []
    for i, path in enumerate(photos):
        with Image.open(path) as photo, accelerator.autocast():
            result = pipe(
                photo,
                prompt=prompts[i] if len(prompts) > 1 else prompts[0],
                num_inference_steps=inference_steps,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]
        images.append(result)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for i, image in enumerate(images):
                tracker.writer.add_image(f"validation/{i}", np.asarray(image), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(image) for image in images]}, step=step)
    return images


# ----------------------------------------------------------------------------------------------- export


@torch.no_grad()
def measure_latent_std(vae, dataloader, max_batches: int = 32) -> float:
    """The std of the trained encoder's latents over the first batches of the data (1 / SD's scaling_factor).

    Measured once after training, with the final weights: a resumed run has no statistics of its earlier steps.
    """
    count = total = squares = 0.0
    for index, batch in enumerate(dataloader):
        if index == max_batches:
            break
        if batch["num_examples"] == 0:
            continue
        mean = latent_posterior(vae, batch).mean.double()
        count, total, squares = count + mean.numel(), total + float(mean.sum()), squares + float(mean.square().sum())
    return math.sqrt(max(squares / count - (total / count) ** 2, 1e-12))


@torch.no_grad()
def measure_latent_channels(vae, examples, count: int = 512, batch_size: int = 32) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the VAE's posterior means over the first ``count`` of ``examples`` (the
    transformed data set at epoch 0, or the cached views' first). Measured the same way when a run resumes."""
    from .data import collate_fn

    means = []
    for start in range(0, min(count, len(examples)), batch_size):
        batch = collate_fn([examples[i] for i in range(start, min(start + batch_size, count, len(examples)))])
        if batch["num_examples"]:
            means.append(latent_posterior(vae, batch).mean.double())
    channels = torch.cat(means).transpose(0, 1).flatten(1)
    return channels.mean(dim=1).tolist(), channels.std(dim=1).tolist()


def adopt_per_channel_latents(pipe, mean: list[float], std: list[float]) -> None:
    """The VAE and decoder configs that scale each latent channel to zero mean and unit variance for the UNet."""
    for component in (pipe.vae, pipe.decoder):
        component.register_to_config(latents_mean=mean, latents_std=std, scaling_factor=1.0)


def adopt_trained_vae(pipe, latent_std: float, vae_decoder: str) -> None:
    """After the vae stage: SD's latent scaling (1 / std), and a luminance-aware decoder that decodes the new
    latents: the one trained with the encoder (its weights also copied into the VAE's own decoder, which then
    lacks only the grayscale features), or one restarted from the new VAE decoder."""
    from ..luminance_decoder import VAE_CONFIG_KEYS, LuminanceDecoder

    scale = dict(scaling_factor=1.0 / latent_std, latents_mean=None, latents_std=None)  # a new latent: one factor
    pipe.vae.register_to_config(**scale)
    if vae_decoder == "luminance":
        pipe.decoder.register_to_config(**scale)
        pipe.vae.decoder.load_state_dict(pipe.decoder.decoder.state_dict())
        if pipe.decoder.post_quant_conv is not None:
            pipe.vae.post_quant_conv.load_state_dict(pipe.decoder.post_quant_conv.state_dict())
        return
    options = {k: v for k, v in pipe.decoder.config.items() if not k.startswith("_") and k not in VAE_CONFIG_KEYS}
    pipe.register_modules(decoder=LuminanceDecoder.from_vae(pipe.vae, **options))


def model_card(args: argparse.Namespace, global_step: int):
    """The trained model's card: what it started from, its data, the run's hyperparameters and hardware."""
    from .model_card import render_model_card

    hyperparameters = {
        key: getattr(args, key)
        for key in (
            "stage",
            "resolution",
            "train_batch_size",
            "gradient_accumulation_steps",
            "learning_rate",
            "lr_scheduler",
            "max_train_steps",
            "mixed_precision",
            "lambda_ccd",
            "lambda_vq",
            "hint_ratio",
            "no_hint_prob",
            "point_hint_prob",
            "generic_prompt_prob",
            "proportion_empty_prompts",
            "train_unet_lora",
            "train_unet",
            "train_text_encoder",
            "train_word_embeddings",
            "ccd_condition_init",
            "use_ema",
            "seed",
        )
    }
    data = args.training_data_description or args.dataset_name or f"image folder `{Path(args.train_data_dir).name}`"
    return render_model_card(
        repo_id=args.hub_model_id or Path(args.output_dir).name,
        base_model=args.pretrained_model_name_or_path,
        stage=args.stage,
        training_data=data,
        hyperparameters=hyperparameters,
        steps=global_step,
        hardware=f"{torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or 'CPU'}",
    )


def export_pipeline(pipe, trained, ema, lora: bool, output_dir: str, card) -> None:
    """Save the complete pipeline (EMA weights if kept, LoRA merged) and its model ``card`` into ``output_dir``."""
    for name, averaged in ema.items():
        averaged.copy_to(trained[name].parameters())
    if lora:
        pipe.unet.fuse_lora()
        pipe.unet.unload_lora()
    for name in NETWORKS:
        if getattr(pipe, name) is not None:
            getattr(pipe, name).eval()
    staging = Path(output_dir, ".export.tmp")
    if staging.exists():
        shutil.rmtree(staging)
    pipe.save_pretrained(staging)
    card.save(staging / "README.md")
    for entry in staging.iterdir():  # move into place one entry at a time, each an atomic rename
        target = Path(output_dir, entry.name)
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    staging.rmdir()


def push_to_hub(output_dir: str, repo_id: str, token: str | None = None) -> None:
    """Upload the model as a repo that plain diffusers loads too (see :mod:`edn_pipeline.training.hub_export`)."""
    import tempfile

    from huggingface_hub import create_repo, upload_folder

    from .hub_export import export_hub

    repo_id = create_repo(repo_id, exist_ok=True, token=token).repo_id
    with tempfile.TemporaryDirectory() as staging:
        repo = export_hub(output_dir, Path(staging, "repo"))
        upload_folder(repo_id=repo_id, folder_path=repo, token=token, commit_message="End of training")


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None, stage: str | None = None) -> None:
    from accelerate.logging import get_logger
    from diffusers import DDPMScheduler

    args = parse_args(argv, stage)
    accelerator = start_accelerator(
        args.output_dir,
        args.logging_dir,
        args.seed,
        args.gradient_accumulation_steps,
        args.mixed_precision,
        args.report_to,
        args.allow_tf32,
    )
    dataset = load_training_dataset(args)
    vq_options = {
        k: getattr(args, k) for k in ("codebook_size", "vq_num_train_timesteps", "refiner_layers", "refiner_dim")
    }
    pipe, new_codebook = load_starting_pipeline(
        args.pretrained_model_name_or_path,
        args.revision,
        args.variant,
        args.controlnet_model_name_or_path,
        vq_options if args.decoder_vq else None,
    )
    timesteps = pipe.scheduler.config.num_train_timesteps
    if args.hinted_start_prob and args.hinted_start_timesteps[1] >= timesteps:  # before the views are made
        raise SystemExit(f"edn training: --hinted_start_timesteps must end below the model's {timesteps} timesteps")
    lora = args.train_unet_lora
    words = word_token_ids(pipe.tokenizer, args.train_word_embeddings) if args.train_word_embeddings else None
    if words:
        trained = train_only_word_embeddings(pipe, words)
    else:
        trained = trainable_modules(
            pipe, args.stage, args.vae_decoder, args.ccd_condition_init, args.train_unet, args.train_text_encoder
        )
    if lora:
        add_unet_lora(pipe.unet, args.lora_rank)
    save_memory(pipe, trained, lora, args.gradient_checkpointing, args.enable_xformers_memory_efficient_attention)
    weight_dtype = place_components(pipe, trained, lora, accelerator)
    ema = ema_models(trained, args.ema_decay) if args.use_ema else {}
    register_checkpoint_hooks(accelerator, trained, pipe.unet, lora, ema)
    transform, dataloader = training_dataloader(
        dataset, pipe.tokenizer, args, accelerator, pipe.vae, pipe.hint_propagator
    )
    if new_codebook:
        init_codebook_from_data(pipe, dataloader, args.seed)
    if args.per_channel_latents:
        adopt_per_channel_latents(pipe, *measure_latent_channels(pipe.vae, dataloader.dataset))
    if args.prediction_type:
        pipe.scheduler.register_to_config(prediction_type=args.prediction_type)

    parameters = trained_parameters(trained, pipe.unet)
    optimizer, lr_scheduler, updates_per_epoch = optimisation(parameters, dataloader, accelerator.num_processes, args)
    if words:
        keep_other_embeddings(optimizer, pipe.text_encoder.get_input_embeddings().weight, words)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    model = EDNTrainingModel(
        pipe,
        noise_scheduler,
        args.stage,
        args.lambda_ccd,
        args.lambda_vq,
        args.vq_aux_weight,
        args.kl_weight,
        args.vae_decoder,
        args.chroma_weight,
        args.latent_chroma_weight,
        timestep_weights(args, noise_scheduler.config.num_train_timesteps),
        args.hinted_start_prob,
        args.hinted_start_timesteps,
        args.hinted_start_loss,
        args.max_hint_points,
    )
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    for averaged in ema.values():
        averaged.to(accelerator.device)
    if accelerator.is_main_process:
        config = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
        accelerator.init_trackers(args.tracker_project_name, config=config)
    start = resume_point(
        accelerator, args.resume_from_checkpoint, args.output_dir, updates_per_epoch, args.gradient_accumulation_steps
    )
    global_step, skipped = train_loop(
        accelerator,
        model,
        optimizer,
        lr_scheduler,
        dataloader,
        transform,
        parameters,
        trained,
        ema,
        start,
        pipe,
        args,
    )
    if accelerator.is_main_process:
        if skipped:
            get_logger(__name__).warning(f"{skipped} unreadable images were skipped")
        if weight_dtype != torch.float32:
            pipe.to(torch.float32)
        if args.stage == "vae":
            pipe.vae.eval()
            adopt_trained_vae(pipe, measure_latent_std(pipe.vae, dataloader), args.vae_decoder)
        export_pipeline(pipe, trained, ema, lora, args.output_dir, model_card(args, global_step))
        if args.validation_image:
            log_validation(accelerator, pipe, global_step, *validation_settings(args))
        if args.push_to_hub:
            push_to_hub(args.output_dir, args.hub_model_id or Path(args.output_dir).name, args.hub_token)
    accelerator.end_training()

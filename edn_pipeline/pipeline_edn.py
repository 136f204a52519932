"""EDNPipeline: colourise grayscale photos with CCD-steered Stable Diffusion and a luminance-aware decoder."""

import inspect
import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from .ccd import CCDModel, load_ccd
from .colour_terms import named_terms
from .errors import EDNInputError, one_line
from .hint_propagator import HintPropagator
from .image_processor import EDNImageProcessor
from .latent_scale import scale_latents, unscale_latents
from .luminance_decoder import LuminanceDecoder
from .palette_prior import PalettePrior, places_colour
from .pipeline_output import EDNPipelineOutput

# The generic prompts EDN is trained with in place of captions (paper §2.1); used when no prompt is given.
DEFAULT_PROMPT = "colored photo"
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# edn-tiny, trained by training/recipes/edn_tiny.sh and shipped in the package: colourisation works offline,
# with no model named.
EDN_TINY = str(Path(__file__).resolve().parent / "edn-tiny")


def _as_image_list(image) -> list:
    """A single image, a list of images, or a 4-D batch (numpy NHWC / torch NCHW) as a list."""
    if isinstance(image, (list, tuple)):
        return list(image)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        return list(image)
    return [image]


def _is_integer(value) -> bool:
    """An int, numpy integer included, that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    """A real number, numpy's included, that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_tensor(name: str, tensor) -> None:
    """A tensor argument must be a dense, finite tensor with data (not on the meta device)."""
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise EDNInputError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.layout != torch.strided or tensor.is_meta:
        raise EDNInputError(
            f"{name} must be a dense tensor with data, got a {tensor.layout} tensor on {tensor.device}"
        )
    if not torch.isfinite(tensor).all():
        raise EDNInputError(f"{name} contains NaN or infinite values")


def _batch_length(name: str, count: int, batch_size: int) -> None:
    if count not in (1, batch_size):
        raise EDNInputError(f"mismatched batch lengths: {count} {name} for a batch of {batch_size}")


class EDNPipeline(DiffusionPipeline, StableDiffusionMixin):
    r"""Colourise grayscale photos with EDN (Expressive Diffusion Network).

    A CCD adapter (a ControlNet) steers a frozen Stable Diffusion UNet with the grayscale image, colour hints
    and a text prompt; the luminance-aware decoder turns the colour latent into pixels using the grayscale
    image; the output keeps the input's CIE L* and takes only its chroma from the model.

    Args:
        vae ([`AutoencoderKL`], *optional*): SD's autoencoder; its encoder makes training latents. Inference
            does not use it, so it may be ``None``.
        text_encoder ([`~transformers.CLIPTextModel`]): frozen CLIP text encoder.
        tokenizer ([`~transformers.CLIPTokenizer`]): its tokenizer.
        unet ([`UNet2DConditionModel`]): frozen SD UNet.
        ccd ([`CCDModel`]): the adapter, conditioned on grayscale image, hint colours and hint mask.
        decoder ([`LuminanceDecoder`]): decodes colour latents with the grayscale image.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler; DDIM by default (eta 0, as the paper).
        default_strength (`float`): the ``strength`` of calls that give none, saved in ``model_index.json``: 1.0
            (the paper) for full models; a small model trained briefly may colour better from the photo's latent.
        hint_propagator ([`HintPropagator`], *optional*): spreads the hints into the adapter's hint map; without
            it Levin et al.'s edge-aware solve does (:func:`~edn_pipeline.hints.propagate_hints`).
        palette_prior ([`PalettePrior`], *optional*): for an image without hints whose prompt names basic colour
            terms ("a photo, mostly blue and green"), places those colours in the adapter's hint map; without it
            colour words act through the text encoder alone.
    """

    model_cpu_offload_seq = "hint_propagator->palette_prior->text_encoder->ccd->unet->decoder"
    # vae: only training and the reconstruction benchmark encode images; hint_propagator: Levin's solve instead;
    # palette_prior: colour words through the text encoder alone
    _optional_components = ["vae", "hint_propagator", "palette_prior"]
    _exclude_from_cpu_offload = []
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds", "condition"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        ccd: CCDModel,
        decoder: LuminanceDecoder,
        scheduler: KarrasDiffusionSchedulers,
        default_strength: float = 1.0,
        hint_propagator: HintPropagator | None = None,
        palette_prior: PalettePrior | None = None,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            ccd=ccd,
            decoder=decoder,
            scheduler=scheduler,
            hint_propagator=hint_propagator,
            palette_prior=palette_prior,
        )
        self.register_to_config(default_strength=default_strength)
        self.vae_scale_factor = self.decoder.scale_factor if self.decoder is not None else 8
        multiple = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        self.image_processor = EDNImageProcessor(resolution=self.resolution, size_multiple=multiple)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike | None = None, **kwargs
    ) -> "EDNPipeline":
        """As ``DiffusionPipeline.from_pretrained``; with no model named, edn-tiny (:data:`EDN_TINY`).

        A folder or Hub id it cannot load raises EDNInputError saying what it needs (diffusers' own error chained).
        """
        name = os.fspath(pretrained_model_name_or_path or EDN_TINY)  # diffusers takes a missing Path for a Hub id
        try:
            return super().from_pretrained(name, **kwargs)
        except (OSError, ValueError) as error:
            raise EDNInputError(
                f"cannot load an EDN pipeline from {str(name)!r}: {one_line(error)} -- give a folder saved with "
                "save_pretrained (it holds model_index.json), or a Hub id while online"
            ) from error

    @classmethod
    def from_stable_diffusion(
        cls, pretrained_model_name_or_path: str, ccd: CCDModel | ControlNetModel | str | None = None, **kwargs
    ) -> "EDNPipeline":
        """Build an EDN around a Stable Diffusion v1.x checkpoint (a Hub id or a local folder).

        By default the CCD adapter is copied from the UNet's encoder with zero outputs; ``ccd`` may instead be
        a :class:`CCDModel`, or a diffusers ``ControlNetModel`` with a 3-channel condition (or its Hub id /
        folder), turned into a CCD by :meth:`CCDModel.from_controlnet`: a working colouriser from existing
        Hub weights before any EDN training. The decoder starts as the VAE's decoder with zero grayscale
        injection, so it reproduces SD's exactly. ``kwargs`` (``dtype``, ``variant``, ``revision``, ...) go to
        ``StableDiffusionPipeline.from_pretrained``.
        """
        from diffusers import StableDiffusionPipeline  # here: importing it makes transformers warn about torchvision

        sd = StableDiffusionPipeline.from_pretrained(
            pretrained_model_name_or_path,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **kwargs,
        )
        if isinstance(ccd, str):
            ccd = load_ccd(ccd, **{k: v for k, v in kwargs.items() if k in ("dtype", "revision")})
        if ccd is None:
            ccd = CCDModel.from_unet(sd.unet, vae_scale_factor=sd.vae_scale_factor)
        elif not isinstance(ccd, CCDModel):
            ccd = CCDModel.from_controlnet(ccd).to(sd.unet.device)
        return cls(
            vae=sd.vae,
            text_encoder=sd.text_encoder,
            tokenizer=sd.tokenizer,
            unet=sd.unet,
            ccd=ccd,
            decoder=LuminanceDecoder.from_vae(sd.vae),
            scheduler=DDIMScheduler.from_config(sd.scheduler.config),
        )

    # ----------------------------------------------------------------------------------------------- sizes

    @property
    def resolution(self) -> int:
        """The image size (longer side, pixels) the model colourises at."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) at which an input of that size is colourised: its aspect, longer side = resolution.

        Both sides are multiples of what the UNet's downsampling needs, so any input size works.
        """
        return self.image_processor.working_size(width, height)

    # ----------------------------------------------------------------------------------------------- text

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode prompts with CLIP, as diffusers' Stable Diffusion pipelines do.

        Returns ``(prompt_embeds, negative_prompt_embeds)``, each repeated ``num_images_per_prompt`` times;
        the negative embeddings are ``None`` without classifier-free guidance.
        """
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self._encode_text(prompts, device, clip_skip)
        batch_size = prompt_embeds.shape[0]
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device).repeat_interleave(num_images_per_prompt, dim=0)

        if do_classifier_free_guidance:
            if negative_prompt_embeds is None:
                negatives = negative_prompt if negative_prompt is not None else ""
                negatives = [negatives] * batch_size if isinstance(negatives, str) else list(negatives)
                _batch_length("negative prompts", len(negatives), batch_size)
                negative_prompt_embeds = self._encode_text(negatives * (batch_size // len(negatives)), device, None)
            negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        else:
            negative_prompt_embeds = None
        return prompt_embeds, negative_prompt_embeds

    def _encode_text(self, texts: list[str], device: torch.device, clip_skip: int | None) -> torch.Tensor:
        ids = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        if clip_skip is None:
            return self.text_encoder(ids)[0]
        hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        # transformers 5's CLIPTextModel holds the final norm itself; earlier ones in `text_model`.
        return getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm(hidden)

    # ----------------------------------------------------------------------------------------------- checks

    def check_inputs(
        self,
        images: list,
        prompt,
        hints,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        num_inference_steps,
        strength,
        guidance_scale,
        eta,
        num_images_per_prompt,
        vq_steps,
        temperature,
        output_type,
        generator,
        callback_on_step_end_tensor_inputs,
        latents=None,
        ccd_conditioning_scale=1.0,
        clip_skip=None,
        hint_guidance_scale=1.0,
        truncation_rate=None,
    ) -> int:
        """Validate every call argument; returns the batch size (before ``num_images_per_prompt``)."""
        if not images:
            raise EDNInputError("no image given")
        trained_steps = self.scheduler.config.num_train_timesteps
        if not _is_integer(num_inference_steps) or not 1 <= num_inference_steps <= trained_steps:
            raise EDNInputError(
                f"num_inference_steps must be an integer from 1 to the scheduler's {trained_steps} training steps, "
                f"got {num_inference_steps!r}"
            )
        if not _is_real(strength) or not 0 < strength <= 1:
            raise EDNInputError(f"strength must be a number in (0, 1], got {strength!r}")
        if strength < 1 and self.vae is None:
            raise EDNInputError("strength < 1 starts from the photo's latent and needs a vae; this pipeline has none")
        if strength < 1 and latents is not None:
            raise EDNInputError("latents are the starting noise of strength 1; give one or the other")
        if int(num_inference_steps * strength) < 1:
            raise EDNInputError(f"strength {strength} of {num_inference_steps} steps leaves no step to run")
        for name, value in (
            ("guidance_scale", guidance_scale),
            ("hint_guidance_scale", hint_guidance_scale),
            ("eta", eta),
        ):
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise EDNInputError(f"{name} must be a finite number >= 0, got {value!r}")
        if not _is_real(ccd_conditioning_scale) or not math.isfinite(ccd_conditioning_scale):
            raise EDNInputError(f"ccd_conditioning_scale must be a finite number, got {ccd_conditioning_scale!r}")
        if not _is_integer(num_images_per_prompt) or num_images_per_prompt < 1:
            raise EDNInputError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        if clip_skip is not None:
            layers = self.text_encoder.config.num_hidden_layers
            if not _is_integer(clip_skip) or not 0 <= clip_skip < layers:
                raise EDNInputError(
                    f"clip_skip must be an integer from 0 to {layers - 1} (the text encoder has "
                    f"{layers} layers), got {clip_skip!r}"
                )
        if vq_steps is not None:
            limit = self.decoder.config.vq_num_train_timesteps if self.decoder.refiner is not None else 0
            if not _is_integer(vq_steps) or not 0 <= vq_steps <= limit:
                where = "this model's decoder has no token refiner" if limit == 0 else f"the decoder has {limit}"
                raise EDNInputError(f"vq_steps must be an integer in [0, {limit}] ({where}), got {vq_steps!r}")
        if not _is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
            raise EDNInputError(f"temperature must be a finite number > 0, got {temperature!r}")
        if truncation_rate is not None and (not _is_real(truncation_rate) or not 0 < truncation_rate <= 1):
            raise EDNInputError(f"truncation_rate must be a number in (0, 1], got {truncation_rate!r}")
        generators = generator if isinstance(generator, list) else [generator]
        if not all(g is None or isinstance(g, torch.Generator) for g in generators):
            raise EDNInputError(
                f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}"
            )
        for name, tensor in (
            ("latents", latents),
            ("prompt_embeds", prompt_embeds),
            ("negative_prompt_embeds", negative_prompt_embeds),
        ):
            _check_tensor(name, tensor)
        if output_type not in OUTPUT_TYPES:
            raise EDNInputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise EDNInputError(f"callback_on_step_end_tensor_inputs {unknown} not in {self._callback_tensor_inputs}")

        if prompt is not None and prompt_embeds is not None:
            raise EDNInputError("give either prompt or prompt_embeds, not both")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise EDNInputError("give either negative_prompt or negative_prompt_embeds, not both")
        for name, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if (
                value is not None
                and not isinstance(value, str)
                and not (isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value))
            ):
                raise EDNInputError(f"{name} must be a string or a list of strings, got {type(value).__name__}")
            for text in [value] if isinstance(value, str) else value or []:
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate: bytes that were not text, decoded leniently
                    raise EDNInputError(f"{name} {text!r} is not valid text (it holds a lone surrogate)") from None
        if prompt_embeds is not None:
            width = self.text_encoder.config.hidden_size
            if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != width:
                raise EDNInputError(
                    f"prompt_embeds must have shape (batch, tokens, {width}), got {tuple(prompt_embeds.shape)}"
                )
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise EDNInputError(
                    f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                    f"{tuple(negative_prompt_embeds.shape)} must have the same shape"
                )

        if prompt_embeds is not None:
            prompt_count = prompt_embeds.shape[0]
        else:
            prompt_count = len(prompt) if isinstance(prompt, (list, tuple)) else 1
        batch_size = max(len(images), prompt_count)
        _batch_length("images", len(images), batch_size)
        _batch_length("prompts", prompt_count, batch_size)
        if isinstance(negative_prompt, (list, tuple)):
            _batch_length("negative prompts", len(negative_prompt), batch_size)
        if isinstance(hints, list) and len(hints) != len(images):
            raise EDNInputError(f"mismatched batch lengths: {len(hints)} hint lists for {len(images)} images")
        if isinstance(generator, list) and len(generator) != batch_size * num_images_per_prompt:
            raise EDNInputError(
                f"mismatched batch lengths: {len(generator)} generators for {batch_size * num_images_per_prompt} images"
            )
        return batch_size

    # ----------------------------------------------------------------------------------------------- images

    def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None):
        shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise EDNInputError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img.StableDiffusionImg2ImgPipeline.get_timesteps
    def get_timesteps(self, num_inference_steps, strength, device):
        # get the original timestep using init_timestep
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)

        t_start = max(num_inference_steps - init_timestep, 0)
        timesteps = self.scheduler.timesteps[t_start * self.scheduler.order :]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(t_start * self.scheduler.order)

        return timesteps, num_inference_steps - t_start

    @staticmethod
    def hinted_photo(condition: torch.Tensor) -> torch.Tensor:
        """The photo as its hints colour it, (B, 3, h, w) in [0, 1]: the propagated hint colours, which cover the
        whole image (:func:`~edn_pipeline.hints.propagate_hints`), or the palette prior's map of the colours its
        prompt names (:func:`~edn_pipeline.hints.render_palette`), or the gray itself for an image with neither.

        Everywhere, not only as far as the confidence reaches: on 12 training photos with 10 hints, edn-tiny at
        strength 0.3 scored 29.3 dB from the full propagation against 27.2 dB from the gray faded toward it."""
        gray, hint_rgb, confidence = condition[:, :3], condition[:, 3:6], condition[:, 6:7]
        hinted = confidence.amax(dim=(1, 2, 3), keepdim=True) > 0
        return torch.where(hinted, hint_rgb, gray)

    @staticmethod
    def without_hints(condition: torch.Tensor) -> torch.Tensor:
        """The condition of the same gray images with no hints: hint colours and confidence zero, as
        :func:`~edn_pipeline.hints.render_hints` makes them for an image without hints."""
        return torch.cat([condition[:, :3], torch.zeros_like(condition[:, 3:])], dim=1)

    def noised_image_latents(self, pixels: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """The VAE latent of ``pixels`` (B, 3, h, w) in [0, 1], noised to ``timestep``: where strength < 1 starts."""
        pixels = (pixels * 2 - 1).to(device=noise.device, dtype=self.vae.dtype)
        image_latents = self.vae.encode(pixels).latent_dist.mode()
        image_latents = scale_latents(image_latents, self.vae.config).to(noise.dtype)
        noise = noise / self.scheduler.init_noise_sigma
        return self.scheduler.add_noise(image_latents, noise, timestep.repeat(noise.shape[0]))

    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.prepare_extra_step_kwargs
    def prepare_extra_step_kwargs(self, generator, eta):
        # prepare extra kwargs for the scheduler step, since not all schedulers have the same signature
        # eta (η) is only used with the DDIMScheduler, it will be ignored for other schedulers.
        # eta corresponds to η in DDIM paper: https://huggingface.co/papers/2010.02502
        # and should be between [0, 1]

        accepts_eta = "eta" in set(inspect.signature(self.scheduler.step).parameters.keys())
        extra_step_kwargs = {}
        if accepts_eta:
            extra_step_kwargs["eta"] = eta

        # check if the scheduler accepts generator
        accepts_generator = "generator" in set(inspect.signature(self.scheduler.step).parameters.keys())
        if accepts_generator:
            extra_step_kwargs["generator"] = generator
        return extra_step_kwargs

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        prompt_embeds: torch.Tensor,
        condition: torch.Tensor,
        guidance_scale: float | None = None,
        ccd_conditioning_scale: float = 1.0,
        cross_attention_kwargs: dict[str, Any] | None = None,
        hint_guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """One noise prediction: CCD residuals added to the UNet, as diffusers runs a ControlNet.

        With a ``guidance_scale``, classifier-free guidance is applied and ``prompt_embeds`` and ``condition``
        must already hold the negative prompt's batch first. With a ``hint_guidance_scale``, they must end with a
        batch of the prompt's embeddings and the condition without hints, and the prediction moves that many
        times as far from it as the hints alone move it (as InstructPix2Pix guides on its second condition).
        """
        branches = 1 + (guidance_scale is not None) + (hint_guidance_scale is not None)
        latent_model_input = torch.cat([latents] * branches) if branches > 1 else latents
        latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
        down_block_res_samples, mid_block_res_sample = self.ccd(
            latent_model_input,
            t,
            encoder_hidden_states=prompt_embeds,
            controlnet_cond=condition,
            conditioning_scale=ccd_conditioning_scale,
            return_dict=False,
        )
        noise_pred = self.unet(
            latent_model_input,
            t,
            encoder_hidden_states=prompt_embeds,
            cross_attention_kwargs=cross_attention_kwargs,
            down_block_additional_residuals=down_block_res_samples,
            mid_block_additional_residual=mid_block_res_sample,
            return_dict=False,
        )[0]
        if branches == 1:
            return noise_pred
        predictions = list(noise_pred.chunk(branches))
        without_hints = predictions.pop() if hint_guidance_scale is not None else None
        noise_pred = predictions[-1]
        if guidance_scale is not None:
            noise_pred_uncond, noise_pred_text = predictions
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
        if without_hints is not None:
            noise_pred = noise_pred + (hint_guidance_scale - 1) * (predictions[-1] - without_hints)
        return noise_pred

    def decode_latents(
        self,
        latents: torch.Tensor,
        gray: torch.Tensor,
        prompt_embeds: torch.Tensor | None = None,
        vq_steps: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        truncation_rate: float | None = None,
    ) -> torch.Tensor:
        """Colour latents to images in [0, 1] with the luminance-aware (VQ-Diffusion) decoder."""
        latents = unscale_latents(latents, self.decoder.config)
        dtype = self.decoder.dtype
        gray = (gray * 2 - 1).to(latents.device, dtype)  # decoder.device is "meta" when offloaded
        if prompt_embeds is not None:
            prompt_embeds = prompt_embeds.to(dtype)
        image = self.decoder(
            latents.to(dtype), gray, prompt_embeds, vq_steps, temperature, generator, truncation_rate=truncation_rate
        )
        return (image.sample.float() / 2 + 0.5).clamp(0, 1)

    # ----------------------------------------------------------------------------------------------- memory

    def enable_vae_slicing(self):
        """Decode (and encode, with the VAE) one image at a time, so a batch needs the memory of one image."""
        self.decoder.enable_slicing()
        if self.vae is not None:
            self.vae.enable_slicing()

    def disable_vae_slicing(self):
        self.decoder.disable_slicing()
        if self.vae is not None:
            self.vae.disable_slicing()

    def enable_vae_tiling(self):
        """Not offered: EDN decodes at the model's working resolution whatever the input size.

        Large inputs are colourised at that resolution and only their chroma is upsampled, so decoding never
        needs more memory than one working-size image; tiles would also cut the grayscale encoder's context.
        """
        raise NotImplementedError(
            "EDN does not tile its decoder: it always decodes at the model's working resolution and only "
            "upsamples the chroma of large inputs, so decoding memory does not grow with the input size"
        )

    # ----------------------------------------------------------------------------------------------- state

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def clip_skip(self):
        return self._clip_skip

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    @property
    def cross_attention_kwargs(self):
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def interrupt(self):
        return self._interrupt

    # ----------------------------------------------------------------------------------------------- call

    @torch.no_grad()
    def __call__(
        self,
        image,
        prompt: str | list[str] | None = None,
        hints=None,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 50,
        strength: float | None = None,
        guidance_scale: float = 5.0,
        hint_guidance_scale: float = 1.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        num_images_per_prompt: int = 1,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        vq_steps: int | None = None,
        temperature: float = 1.0,
        truncation_rate: float | None = None,
        ccd_conditioning_scale: float = 1.0,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
    ):
        r"""Colourise one grayscale photo or a batch.

        Args:
            image: a PIL image of any mode (colour is turned to grayscale; EXIF rotation applied), a file path,
                a numpy array (H, W[, C]) or a torch tensor ([C,] H, W) in [0, 1] (or uint8), any size; or a
                list of them, or a 4-D batch.
            prompt: text describing the colours; ``None`` uses the generic prompt the model was trained with.
            hints: colour hints for the image: a list of ``(x, y, colour)`` or ``(x, y, colour, radius)`` in
                input pixels, colour ``"#rrggbb"`` or an RGB tuple; or an RGBA image of the input's size whose
                alpha marks hinted pixels. For a list of images, a list with one such entry per image.
            negative_prompt: what to guide away from (classifier-free guidance).
            num_inference_steps: denoising steps (paper: 50).
            strength: how much of the noise schedule to run, from the latent of the photo as its hints colour it
                (the grayscale photo without hints; :meth:`hinted_photo`) noised to that level, as diffusers'
                img2img pipelines do: 1.0 (the paper) starts from pure noise; lower keeps the colours closer to
                the hints' (or to neutral gray), and runs ``strength * num_inference_steps`` steps. Below 1
                needs the pipeline's ``vae``. ``None``: the pipeline's ``default_strength``.
            guidance_scale: classifier-free guidance weight (paper: 5.0; below 4 or above 6 is worse).
            hint_guidance_scale: guidance on the hints: each step also predicts without them and moves this many
                times as far from that prediction as the hints move it; 1.0 turns it off, above 1 the hints count
                for more (a third batch per step, so each step costs half as much again). No effect without hints.
            eta: DDIM's variance weight; 0 (the paper's choice) is deterministic.
            generator: one ``torch.Generator`` or one per output image, for reproducible results.
            output_type: "pil", "np", "pt", or "latent" for the colour latents before decoding.
            return_dict: return an :class:`EDNPipelineOutput` rather than a tuple.
            callback_on_step_end: called after every step as ``callback(pipe, step, timestep, tensors)``; the
                dict it returns may replace any of the tensors named in ``callback_on_step_end_tensor_inputs``.
            num_images_per_prompt: how many colourisations of each input.
            latents: initial noise, instead of drawing it from ``generator``.
            prompt_embeds / negative_prompt_embeds: precomputed text embeddings instead of text.
            vq_steps: steps of the decoder's token refinement (re-noise the colour tokens to that step of the
                mask-and-replace process and denoise them); 0 turns it off, ``None`` uses the decoder's default.
                Only for decoders with a refiner.
            temperature: divides the refiner's token logits before sampling (paper: stable within 0.8-1.2).
            truncation_rate: the refiner samples only among its likeliest tokens whose probabilities add up to
                this (diffusers' VQ-Diffusion pipeline's truncation; small values keep only the likeliest token);
                ``None`` uses the decoder's default.
            ccd_conditioning_scale: weight of the adapter's residuals.
            cross_attention_kwargs: passed to the UNet's attention processors.
            clip_skip: CLIP layers to skip from the end when encoding the prompt.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Check inputs
        images = _as_image_list(image)
        is_batch = isinstance(image, (list, tuple)) or (
            isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4
        )
        if is_batch and hints is not None and not isinstance(hints, (list, tuple)):
            raise EDNInputError("for a batch of images, hints must be a list with one entry per image")
        per_image_hints = list(hints) if is_batch and hints is not None else None
        strength = self.config.default_strength if strength is None else strength
        batch_size = self.check_inputs(
            images=images,
            prompt=prompt,
            hints=per_image_hints,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            num_inference_steps=num_inference_steps,
            strength=strength,
            guidance_scale=guidance_scale,
            eta=eta,
            num_images_per_prompt=num_images_per_prompt,
            vq_steps=vq_steps,
            temperature=temperature,
            output_type=output_type,
            generator=generator,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            latents=latents,
            ccd_conditioning_scale=ccd_conditioning_scale,
            clip_skip=clip_skip,
            hint_guidance_scale=hint_guidance_scale,
            truncation_rate=truncation_rate,
        )
        if per_image_hints is None:
            per_image_hints = [None if is_batch else hints] * len(images)
        self._guidance_scale = guidance_scale
        self._clip_skip = clip_skip
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False
        device = self._execution_device

        # 2. Read the images and hints: each input's L*, the gray images and the adapter's condition
        inputs = self.image_processor.preprocess(images, per_image_hints, device, self.hint_propagator)
        repeat = batch_size // len(images)
        lightness = inputs.lightness * repeat
        gray, condition = inputs.gray.repeat(repeat, 1, 1, 1), inputs.condition.repeat(repeat, 1, 1, 1)
        # 3. Encode the prompt
        if prompt_embeds is None:
            prompts = DEFAULT_PROMPT if prompt is None else prompt
            prompts = (
                [prompts] * batch_size if isinstance(prompts, str) else list(prompts) * (batch_size // len(prompts))
            )
        else:
            prompts = None
        if isinstance(negative_prompt, (list, tuple)):
            negative_prompt = list(negative_prompt) * (batch_size // len(negative_prompt))
        # the colour words of an image without hints, placed by the palette prior where it has a colour to place
        # (the batch tiles images and prompts)
        if self.palette_prior is not None and prompts is not None:
            for index, text in enumerate(prompts):
                terms = named_terms(text)
                if places_colour(terms) and not condition[index, 6].any():  # channel 6: hint confidence; hints win
                    condition[index] = self.image_processor.palette_condition(gray[index], terms, self.palette_prior)
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompts,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            clip_skip=clip_skip,
        )

        lightness = [l_star for l_star in lightness for _ in range(num_images_per_prompt)]
        gray = gray.repeat_interleave(num_images_per_prompt, dim=0)
        condition = condition.repeat_interleave(num_images_per_prompt, dim=0).to(device, self.ccd.dtype)

        # 4. Prepare timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, strength, device)
        self._num_timesteps = len(timesteps)
        # 5. Prepare latents: noise, or below strength 1 the photo as its hints colour it, noised
        height, width = gray.shape[-2:]
        latents = self.prepare_latents(
            batch_size * num_images_per_prompt,
            self.unet.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )
        if strength < 1:
            latents = self.noised_image_latents(self.hinted_photo(condition), latents, timesteps[:1])
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        hint_guidance = hint_guidance_scale != 1 and bool(condition[:, 6].any())  # channel 6: hint confidence

        # 6. Denoising loop
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                # the batches: [negative prompt,] prompt[, prompt without the hints], each step anew (a callback
                # may replace the embeddings or the condition)
                step_embeds, step_conditions = [prompt_embeds], [condition]
                if self.do_classifier_free_guidance:
                    step_embeds.insert(0, negative_prompt_embeds)
                    step_conditions.insert(0, condition)
                if hint_guidance:
                    step_embeds.append(prompt_embeds)
                    step_conditions.append(self.without_hints(condition))
                noise_pred = self.predict_noise(
                    latents,
                    t,
                    torch.cat(step_embeds),
                    torch.cat(step_conditions),
                    guidance_scale=self.guidance_scale if self.do_classifier_free_guidance else None,
                    ccd_conditioning_scale=ccd_conditioning_scale,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    hint_guidance_scale=hint_guidance_scale if hint_guidance else None,
                )
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                        "condition": condition,
                    }
                    callback_kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    if not isinstance(callback_outputs, dict):
                        raise EDNInputError(
                            f"callback_on_step_end must return a dict of tensors, got {type(callback_outputs).__name__}"
                        )
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                    condition = callback_outputs.pop("condition", condition)

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 7. Decode the colour latents and compose their chroma on each input's L*
        if output_type == "latent":
            images_out = latents
        else:
            if not torch.isfinite(latents).all():
                raise EDNInputError(
                    "denoising produced NaN or infinite latents: guidance_scale or ccd_conditioning_scale is too large "
                    f"for this model (got {guidance_scale} and {ccd_conditioning_scale}), or a callback returned them"
                )
            decoded = self.decode_latents(
                latents, gray, prompt_embeds, vq_steps, temperature, generator, truncation_rate
            )
            images_out = self.image_processor.postprocess(decoded, lightness, output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images_out,)
        return EDNPipelineOutput(images=images_out)

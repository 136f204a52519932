"""EDN's training losses (paper Eqs. 1–6) as plain differentiable functions, so training scripts only wire them."""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from diffusers import VQDiffusionScheduler

from ..luminance import lab_chroma
from ..mask_and_replace import _check_timesteps, _check_tokens, posterior_log_probs, prior_kl, true_posterior_kl

__all__ = [
    "CCDLoss",
    "VQDiffusionLoss",
    "ccd_loss",
    "chroma_l1",
    "diffusion_loss",
    "predicted_x0",
    "target_toward",
    "total_loss",
    "vq_diffusion_loss",
]


class CCDLoss(NamedTuple):
    """The three terms of Eq. 4, each already weighted, and their sum."""

    color: torch.Tensor
    exposure: torch.Tensor
    smoothness: torch.Tensor
    total: torch.Tensor


class VQDiffusionLoss(NamedTuple):
    """Eq. 6 in nats per token; see :func:`vq_diffusion_loss` for the estimator."""

    l0: torch.Tensor
    lt: torch.Tensor
    lT: torch.Tensor
    vlb: torch.Tensor
    total: torch.Tensor


def diffusion_loss(noise_pred: torch.Tensor, noise: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2: mean squared error between the predicted and the true noise; with ``weights`` (B,), each example's
    squared error is weighed by its own (the mean of the weighted errors, as diffusers' min-SNR weighting)."""
    if noise_pred.shape != noise.shape:  # mse_loss would broadcast a mismatch with only a warning
        raise ValueError(f"noise_pred {tuple(noise_pred.shape)} and noise {tuple(noise.shape)} differ in shape")
    if weights is None:
        return F.mse_loss(noise_pred, noise)
    per_example = F.mse_loss(noise_pred, noise, reduction="none").mean(dim=tuple(range(1, noise.ndim)))
    return (per_example * weights.to(per_example)).mean()


def clean_error_weight(alphas_cumprod_t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The factor (B,) that turns a squared error of the UNet's output into that of the clean latent it implies:
    x̃_0 = sqrt(ᾱ_t)·x_t − sqrt(1 − ᾱ_t)·v, so 1 − ᾱ_t for v; x̃_0 = (x_t − sqrt(1 − ᾱ_t)·ε) / sqrt(ᾱ_t), so
    (1 − ᾱ_t) / ᾱ_t for ε."""
    if prediction_type == "v_prediction":
        return 1 - alphas_cumprod_t
    if prediction_type == "epsilon":
        return (1 - alphas_cumprod_t) / alphas_cumprod_t
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, alphas_cumprod_t: torch.Tensor | float) -> torch.Tensor:
    """Eq. 3: the clean sample implied by a noise prediction, x̃_0 = (x_t − sqrt(1 − ᾱ_t)·ε) / sqrt(ᾱ_t).

    The paper writes α_t in the denominator; the forward process x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε is
    inverted by the cumulative ᾱ_t (as in DDPM), which is what this uses. ``alphas_cumprod_t`` is a scalar or
    one value per example, shape (B,) (e.g. ``scheduler.alphas_cumprod[timesteps]``).
    """
    if x_t.shape != eps.shape:
        raise ValueError(f"x_t {tuple(x_t.shape)} and eps {tuple(eps.shape)} differ in shape")
    alpha_bar = torch.as_tensor(alphas_cumprod_t, dtype=x_t.dtype, device=x_t.device)
    if alpha_bar.ndim == 1 and alpha_bar.shape[0] == x_t.shape[0]:
        alpha_bar = alpha_bar.view(-1, *[1] * (x_t.ndim - 1))
    elif alpha_bar.ndim != 0:
        raise ValueError(
            f"alphas_cumprod_t must be a scalar or have shape ({x_t.shape[0]},), got {tuple(alpha_bar.shape)}"
        )
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def target_toward(
    x_0: torch.Tensor, x_t: torch.Tensor, alphas_cumprod_t: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The UNet output whose implied clean sample from ``x_t`` is ``x_0``: ε = (x_t − sqrt(ᾱ_t)·x_0) / sqrt(1 − ᾱ_t),
    or v = (sqrt(ᾱ_t)·x_t − x_0) / sqrt(1 − ᾱ_t). For x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε these are the usual
    noise and velocity; for an ``x_t`` noised from another start (the hint-coloured photo) it is the step that
    lands on ``x_0`` instead. ``alphas_cumprod_t`` has one value per example, shape (B,), below 1."""
    if x_0.shape != x_t.shape:
        raise ValueError(f"x_0 {tuple(x_0.shape)} and x_t {tuple(x_t.shape)} differ in shape")
    alpha_bar = alphas_cumprod_t.to(x_t).view(-1, *[1] * (x_t.ndim - 1))
    if prediction_type == "epsilon":
        return (x_t - alpha_bar.sqrt() * x_0) / (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return (alpha_bar.sqrt() * x_t - x_0) / (1 - alpha_bar).sqrt()
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


# BT.601 full-range (JPEG) RGB -> YCbCr rows; the chroma offsets of +0.5 are left out as only differences are used.
_RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    # By hand because skimage.color.rgb2ycbcr is NumPy-only and so not differentiable.
    return torch.einsum("ck,bkhw->bchw", _RGB_TO_YCBCR.to(rgb), rgb)


def ccd_loss(
    pred_rgb: torch.Tensor,
    ref_rgb: torch.Tensor,
    gray: torch.Tensor | None = None,
    patch_size: int = 8,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> CCDLoss:
    """Eq. 4 on RGB images in [0, 1], shape (B, 3, H, W); ``gray`` (B, 1, H, W) is the grayscale input.

    The paper names its terms without fixing them; this is the reading used:

    * colour consistency, Σ_k |R_k − R_E|: both images are cut into ``patch_size``² regions (the last row and
      column of regions may be smaller) and R is a region's mean chroma; the term is the mean L1 distance over
      regions and the two chroma channels. It is zero whenever the regional colour distributions agree.
    * exposure, Σ (Y_m − Y_n)²: Zero-DCE's spatial consistency. For every pair of 4-adjacent regions (m, n) the
      luminance step Y_m − Y_n of the prediction must equal that of the reference (``gray`` if given, else the
      reference's luma): the mean over pairs of ((Ŷ_m − Ŷ_n) − (Y_m − Y_n))². It ignores a uniform brightness
      offset and penalises flattening or inverting the reference's luminance structure.
    * smoothness, Σ_c (|∇_h M_c| + |∇_v M_c|)²: total variation of the prediction's chroma maps M_c, with
      forward differences (zero past the last row and column), summed over the two channels and averaged over
      pixels.

    Colour is measured in YCbCr: a linear map, so gradients are as well-behaved as in RGB (CIELAB's cube root
    has an unbounded slope near black), and it splits luma, used by the exposure term, from chroma, used by the
    other two, exactly.
    """
    if pred_rgb.ndim != 4 or pred_rgb.shape[1] != 3:
        raise ValueError(f"pred_rgb must have shape (B, 3, H, W), got {tuple(pred_rgb.shape)}")
    if ref_rgb.shape != pred_rgb.shape:
        raise ValueError(f"ref_rgb {tuple(ref_rgb.shape)} must match pred_rgb {tuple(pred_rgb.shape)}")
    batch, _, height, width = pred_rgb.shape
    if gray is not None and gray.shape != (batch, 1, height, width):
        raise ValueError(f"gray must have shape ({batch}, 1, {height}, {width}), got {tuple(gray.shape)}")
    if math.ceil(height / patch_size) * math.ceil(width / patch_size) < 2:
        raise ValueError(f"a {height}x{width} image has fewer than two {patch_size}x{patch_size} regions")

    pred, ref = _ycbcr(pred_rgb), _ycbcr(ref_rgb)
    pred_regions = F.avg_pool2d(pred, patch_size, ceil_mode=True)
    ref_regions = F.avg_pool2d(ref, patch_size, ceil_mode=True)

    color = (pred_regions[:, 1:] - ref_regions[:, 1:]).abs().mean()

    ref_luma = ref_regions[:, :1] if gray is None else F.avg_pool2d(gray, patch_size, ceil_mode=True)
    offset = pred_regions[:, :1] - ref_luma  # a step mismatch between m and n is offset_m - offset_n
    steps = torch.cat([offset.diff(dim=-1).flatten(1), offset.diff(dim=-2).flatten(1)], dim=1)
    exposure = steps.square().mean()

    chroma = pred[:, 1:]
    grad_h = F.pad(chroma.diff(dim=-1), (0, 1))
    grad_v = F.pad(chroma.diff(dim=-2), (0, 0, 0, 1))
    smoothness = (grad_h.abs() + grad_v.abs()).square().sum(dim=1).mean()

    color, exposure, smoothness = (w * term for w, term in zip(weights, (color, exposure, smoothness)))
    return CCDLoss(color, exposure, smoothness, color + exposure + smoothness)


def chroma_l1(pred_rgb: torch.Tensor, target_rgb: torch.Tensor) -> torch.Tensor:
    """Mean |Δa*| and |Δb*| / 100 between two sRGB images in [0, 1]: the only part of a decoded image EDN keeps."""
    return (lab_chroma(pred_rgb) - lab_chroma(target_rgb)).abs().mean() / 100


# a*b* are divided by this to become latent targets: CIE chroma of photos spreads over about ±40, latents ~±3.
LATENT_CHROMA_UNIT = 20.0


def latent_chroma_l1(latent_mean: torch.Tensor, target_rgb: torch.Tensor) -> torch.Tensor:
    """Mean |Δ| between the first two latent channels and the image's CIE a*b* averaged over each latent cell
    (in units of ``LATENT_CHROMA_UNIT``): a latent that holds the colour of its cell by construction, which a
    luminance-aware decoder only has to spread along the gray image's edges."""
    chroma = F.adaptive_avg_pool2d(lab_chroma(target_rgb.float()), latent_mean.shape[-2:]) / LATENT_CHROMA_UNIT
    return (latent_mean[:, :2].float() - chroma).abs().mean()


def vq_diffusion_loss(
    log_model_x0: torch.Tensor,
    x_0: torch.LongTensor,
    x_t: torch.LongTensor,
    t: torch.LongTensor,
    scheduler: VQDiffusionScheduler,
    aux_weight: float = 0.0,
) -> VQDiffusionLoss:
    """Eq. 6, the variational bound L_0 + Σ_t L_t + L_T of the mask-and-replace process, from one t per example.

    ``log_model_x0`` (B, K, N) is the model's normalised log p(x_0 | x_t) (a log_softmax) at ``x_t`` (B, N),
    drawn with :func:`~edn_pipeline.mask_and_replace.q_sample` from ``x_0`` (B, N) at ``t`` (B,), t uniform in
    [0, T). With the scheduler's indexing, the paper's x_1 … x_T are its steps 0 … T − 1, and per example:

    * t = 0: L_0 = −log p(x_0 | x_1), the NLL of ``x_0`` under ``log_model_x0``;
    * t ≥ 1: L_t = KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t)), the model's side from
      :func:`~edn_pipeline.mask_and_replace.posterior_log_probs`, the true side in closed form
      (:func:`~edn_pipeline.mask_and_replace.true_posterior_kl`);
    * L_T = KL(q(x_{T−1} | x_0) ‖ p(x_T)) with the prior p(x_T) the forward marginal at T − 1 of a uniform x_0
      (ā/K + b̄ per token, c̄ for [MASK]: almost all [MASK]). It has no model parameters; it is reported and
      included in ``vlb``.

    All terms are in nats per token (averaged over N). ``l0`` and ``lt`` are batch means of the sampled term
    split by case (an example contributes to one of them and zero to the other), ``lT`` the batch mean of L_T.
    Since E_t[T · L_t] = Σ_{t=0}^{T−1} L_t, the unbiased estimate of the bound is
    ``vlb = T · (l0 + lt) + lT``, and ``total = vlb + aux_weight · CE`` with CE the cross-entropy of ``x_0``
    under ``log_model_x0`` (VQ-Diffusion's auxiliary loss). Computed in float32 whatever the input dtype.
    """
    num_tokens = scheduler.config.num_vec_classes - 1
    _check_tokens(x_0, "x_0")
    if x_t.shape != x_0.shape:
        raise ValueError(f"x_0 {tuple(x_0.shape)} and x_t {tuple(x_t.shape)} must share one shape (B, N)")
    batch, length = x_0.shape
    if log_model_x0.shape != (batch, num_tokens, length):
        raise ValueError(
            f"log_model_x0 must have shape (B, K, N) = ({batch}, {num_tokens}, {length}), "
            f"got {tuple(log_model_x0.shape)}"
        )
    _check_timesteps(t, batch, scheduler)
    num_steps = scheduler.config.num_train_timesteps
    log_model_x0 = log_model_x0.float()

    nll = -log_model_x0.gather(1, x_0.unsqueeze(1)).squeeze(1).mean(dim=-1)
    # t = 0 examples take the NLL; evaluating their (unused) KL at t = 1 keeps the batch in one vectorised call.
    t_kl = t.clamp(min=1)
    log_model = posterior_log_probs(log_model_x0, x_t, t_kl, scheduler)
    is_first = t == 0
    l0 = torch.where(is_first, nll, 0.0).mean()
    lt = torch.where(is_first, 0.0, true_posterior_kl(log_model, x_0, x_t, t_kl, scheduler)).mean()
    lT = prior_kl(scheduler).to(l0.device)

    vlb = num_steps * (l0 + lt) + lT
    return VQDiffusionLoss(l0, lt, lT, vlb, vlb + aux_weight * nll.mean())


def total_loss(
    l_dif: torch.Tensor, l_ccd: torch.Tensor, l_vq: torch.Tensor, lambda_ccd: float = 0.1, lambda_vq: float = 0.6
) -> torch.Tensor:
    """Eq. 1: L_dif + λ1·L_CCD + λ2·L_VQ-Dif, with the paper's λ1 = 0.1 and λ2 = 0.6 by default."""
    return l_dif + lambda_ccd * l_ccd + lambda_vq * l_vq

"""EDN's losses (Eqs. 1–6) on hand-computed cases and known limits."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, VQDiffusionScheduler
from diffusers.schedulers.scheduling_vq_diffusion import index_to_log_onehot

from edn_pipeline.mask_and_replace import q_sample
from edn_pipeline.training.losses import (
    LATENT_CHROMA_UNIT,
    ccd_loss,
    clean_error_weight,
    diffusion_loss,
    latent_chroma_l1,
    predicted_x0,
    target_toward,
    total_loss,
    vq_diffusion_loss,
)

# BT.601 full-range chroma rows, the convention ccd_loss documents.
CB = (-0.168736, -0.331264, 0.5)
CR = (0.5, -0.418688, -0.081312)


def flat(rgb, height=8, width=8) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, height, width).clone()


def gray_image(*columns_of_values, height=4, patch=4) -> torch.Tensor:
    """A gray RGB image made of side-by-side patch-wide columns of the given values."""
    row = torch.tensor(columns_of_values, dtype=torch.float32).repeat_interleave(patch)
    return row.expand(1, 3, height, -1).clone()


# --- Eq. 2 and Eq. 3 --------------------------------------------------------------------------------------


def test_diffusion_loss_is_the_mean_squared_error():
    assert diffusion_loss(torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)).item() == 1.0
    pred, noise = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [1.0, 6.0]])
    assert diffusion_loss(pred, noise).item() == pytest.approx((1 + 4 + 4 + 4) / 4)
    with pytest.raises(ValueError, match="differ in shape"):
        diffusion_loss(torch.zeros(2, 4), torch.zeros(4))
    # weighed per example: (1 + 4) / 2 · 0.5 and (4 + 4) / 2 · 2, averaged
    assert diffusion_loss(pred, noise, torch.tensor([0.5, 2.0])).item() == pytest.approx((2.5 * 0.5 + 4 * 2) / 2)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_clean_error_weight_turns_an_output_error_into_the_clean_latent_error(prediction_type):
    scheduler = DDPMScheduler(prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(0)
    x_t, output, error = (torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    alpha_bar = scheduler.alphas_cumprod.double()[torch.tensor([1, 21, 400])]
    a = alpha_bar.view(-1, 1, 1, 1)

    def clean(out):  # the clean latent an output implies, written out from the forward process
        return (
            (x_t - (1 - a).sqrt() * out) / a.sqrt()
            if prediction_type == "epsilon"
            else a.sqrt() * x_t - (1 - a).sqrt() * out
        )

    per_example = ((clean(output + error) - clean(output)) ** 2).mean(dim=(1, 2, 3))
    expected = clean_error_weight(alpha_bar, prediction_type) * (error**2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(per_example, expected)
    with pytest.raises(ValueError, match="unsupported prediction_type"):
        clean_error_weight(alpha_bar, "sample")


def test_predicted_x0_inverts_the_forward_process_per_sample():
    alphas_cumprod = DDPMScheduler().alphas_cumprod.double()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
    alpha_bar = alphas_cumprod[torch.tensor([0, 500, 999])]
    x_t = alpha_bar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(predicted_x0(x_t, eps, alpha_bar), x0, rtol=0, atol=1e-10)

    scalar = alphas_cumprod[300].item()
    torch.testing.assert_close(predicted_x0(math.sqrt(scalar) * x0 + math.sqrt(1 - scalar) * eps, eps, scalar), x0)
    with pytest.raises(ValueError, match="alphas_cumprod_t"):
        predicted_x0(x_t, eps, alpha_bar[:2])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_target_toward_is_the_usual_target_on_the_forward_process_and_lands_on_x0_elsewhere(prediction_type):
    from diffusers import DDIMScheduler

    scheduler = DDPMScheduler(prediction_type=prediction_type)
    gen = torch.Generator().manual_seed(0)
    x0, eps, other = (torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([100, 250, 400])
    alpha_bar = scheduler.alphas_cumprod.double()[t]
    # on x_t noised from x0 itself: the noise, or diffusers' velocity
    x_t = scheduler.add_noise(x0, eps, t)
    expected = eps if prediction_type == "epsilon" else scheduler.get_velocity(x0, eps, t)
    torch.testing.assert_close(target_toward(x0, x_t, alpha_bar, prediction_type), expected, rtol=0, atol=1e-10)
    # on x_t noised from another start: one DDIM step to the end of the schedule with it gives x0
    start = scheduler.add_noise(other, eps, t)
    target = target_toward(x0, start, alpha_bar, prediction_type)
    ddim = DDIMScheduler(prediction_type=prediction_type, clip_sample=False)
    ddim.set_timesteps(1000)
    for i in range(3):
        step = ddim.step(target[i : i + 1], int(t[i]), start[i : i + 1], return_dict=True)
        torch.testing.assert_close(step.pred_original_sample, x0[i : i + 1], rtol=0, atol=1e-6)  # float32 ᾱ
    with pytest.raises(ValueError, match="unsupported prediction_type"):
        target_toward(x0, x_t, alpha_bar, "sample")


# --- Eq. 4 ------------------------------------------------------------------------------------------------


def test_ccd_comparison_terms_vanish_for_identical_images():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 16, 16, generator=gen)
    loss = ccd_loss(image, image.clone(), patch_size=4)
    assert loss.color.item() == pytest.approx(0.0, abs=1e-7)
    assert loss.exposure.item() == pytest.approx(0.0, abs=1e-7)
    # Smoothness regularises the prediction alone: it ignores the reference, and is zero only for flat chroma.
    assert loss.smoothness.item() > 0
    assert ccd_loss(image, torch.rand(2, 3, 16, 16, generator=gen), patch_size=4).smoothness == loss.smoothness
    flat_pair = ccd_loss(flat((0.2, 0.6, 0.4)), flat((0.2, 0.6, 0.4)), patch_size=4)
    assert all(term.item() == pytest.approx(0.0, abs=1e-7) for term in flat_pair)


def test_color_term_is_the_hand_chroma_distance_for_flat_images():
    pred, ref = (0.8, 0.4, 0.2), (0.3, 0.5, 0.6)
    delta = [p - r for p, r in zip(pred, ref)]
    d_cb = sum(w * d for w, d in zip(CB, delta))  # -0.2512416
    d_cr = sum(w * d for w, d in zip(CR, delta))  # 0.3243936
    loss = ccd_loss(flat(pred), flat(ref), patch_size=4)
    assert loss.color.item() == pytest.approx((abs(d_cb) + abs(d_cr)) / 2, rel=1e-5)
    assert loss.color.item() == pytest.approx(0.2878176, rel=1e-5)
    assert loss.exposure.item() == pytest.approx(0.0, abs=1e-10)  # flat images have no luminance structure
    assert loss.smoothness.item() == pytest.approx(0.0, abs=1e-10)


def test_color_term_grows_with_a_chroma_shift():
    ref = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    values = [ccd_loss(ref + s * red, ref, patch_size=4).color.item() for s in (0.0, 0.05, 0.1, 0.2)]
    assert values[0] == pytest.approx(0.0, abs=1e-7)
    assert all(lo < hi for lo, hi in zip(values, values[1:]))


def test_exposure_ignores_a_uniform_brightness_offset():
    ref = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.8
    loss = ccd_loss(ref + 0.1, ref, patch_size=4)
    assert loss.exposure.item() == pytest.approx(0.0, abs=1e-10)
    assert loss.color.item() == pytest.approx(0.0, abs=1e-7)  # a gray offset carries no chroma


def test_exposure_penalises_flattening_a_two_region_image():
    ref = gray_image(0.2, 0.8)  # two 4x4 regions side by side: one adjacent pair
    flat_pred = gray_image(0.5, 0.5)
    # Step in the prediction 0, in the reference 0.6: (0 - 0.6)^2
    assert ccd_loss(flat_pred, ref, patch_size=4).exposure.item() == pytest.approx(0.36, rel=1e-5)
    gray = ref[:, :1]
    assert ccd_loss(flat_pred, flat_pred, gray=gray, patch_size=4).exposure.item() == pytest.approx(0.36, rel=1e-5)
    assert ccd_loss(ref, flat_pred, gray=gray, patch_size=4).exposure.item() == pytest.approx(0.0, abs=1e-10)


def test_smoothness_is_zero_for_constant_chroma_and_the_hand_value_for_a_ramp():
    luma_ramp = torch.linspace(0, 1, 8).expand(1, 3, 4, 8).clone()  # gray: chroma constant (zero)
    assert ccd_loss(luma_ramp, luma_ramp, patch_size=4).smoothness.item() == pytest.approx(0.0, abs=1e-10)

    ramp = flat((0.0, 0.5, 0.5), height=4, width=8)
    ramp[:, 0] = 0.1 * torch.arange(8.0)  # R rises 0.1 per pixel to the right
    # Per pixel: (|dCb| + 0)^2 + (|dCr| + 0)^2, except the last column, whose forward difference is 0.
    per_pixel = (CB[0] * 0.1) ** 2 + (CR[0] * 0.1) ** 2
    assert ccd_loss(ramp, ramp, patch_size=4).smoothness.item() == pytest.approx(per_pixel * 7 / 8, rel=1e-5)


def test_ccd_total_is_the_weighted_sum():
    gen = torch.Generator().manual_seed(3)
    pred, ref = torch.rand(2, 3, 16, 12, generator=gen), torch.rand(2, 3, 16, 12, generator=gen)
    plain = ccd_loss(pred, ref, patch_size=4)
    weighted = ccd_loss(pred, ref, patch_size=4, weights=(2.0, 3.0, 0.5))
    torch.testing.assert_close(weighted.color, 2.0 * plain.color)
    torch.testing.assert_close(weighted.exposure, 3.0 * plain.exposure)
    torch.testing.assert_close(weighted.smoothness, 0.5 * plain.smoothness)
    torch.testing.assert_close(weighted.total, weighted.color + weighted.exposure + weighted.smoothness)


def test_ccd_gradients_flow():
    gen = torch.Generator().manual_seed(4)
    pred = torch.rand(2, 3, 12, 20, generator=gen).requires_grad_()  # sizes not multiples of the patch
    ref, gray = torch.rand(2, 3, 12, 20, generator=gen), torch.rand(2, 1, 12, 20, generator=gen)
    ccd_loss(pred, ref, gray=gray).total.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_ccd_rejects_bad_shapes():
    image = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="pred_rgb"):
        ccd_loss(image[:, :1], image[:, :1])
    with pytest.raises(ValueError, match="ref_rgb"):
        ccd_loss(image, image[..., :8])
    with pytest.raises(ValueError, match="gray"):
        ccd_loss(image, image, gray=image)
    with pytest.raises(ValueError, match="fewer than two"):
        ccd_loss(image, image, patch_size=16)


# --- Eq. 6 ------------------------------------------------------------------------------------------------

K, T, N = 5, 10, 16


def vq_scheduler(**kwargs) -> VQDiffusionScheduler:
    return VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=T, **kwargs)


def noised(batch_t: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x_0 = torch.randint(K, (batch_t.shape[0], N), generator=gen)
    return x_0, q_sample(x_0, batch_t, vq_scheduler(), generator=gen)


@pytest.mark.parametrize("floor", ["-inf", "1e-30"])
def test_kl_terms_vanish_when_the_model_predicts_x0(floor):
    t = torch.arange(T)
    x_0, x_t = noised(t)
    one_hot = torch.nn.functional.one_hot(x_0, K).permute(0, 2, 1).float()
    log_model = one_hot.log() if floor == "-inf" else index_to_log_onehot(x_0, K)
    loss = vq_diffusion_loss(log_model, x_0, x_t, t, vq_scheduler(), aux_weight=1.0)
    assert abs(loss.l0.item()) < 1e-5 and abs(loss.lt.item()) < 1e-5
    assert loss.vlb.item() == pytest.approx(loss.lT.item(), abs=1e-4)
    assert loss.total.item() == pytest.approx(loss.vlb.item(), abs=1e-4)  # the cross-entropy is 0 too


def test_lt_is_positive_and_grows_as_the_prediction_moves_away():
    t = torch.full((4,), 5)
    x_0, x_t = noised(t, seed=1)
    truth = torch.nn.functional.one_hot(x_0, K).permute(0, 2, 1).float()
    wrong = torch.nn.functional.one_hot((x_0 + 1) % K, K).permute(0, 2, 1).float()
    values = []
    for weight in (0.1, 0.3, 0.6, 0.9):
        loss = vq_diffusion_loss(((1 - weight) * truth + weight * wrong).log(), x_0, x_t, t, vq_scheduler())
        assert loss.l0.item() == 0.0  # no example drew t = 0
        values.append(loss.lt.item())
    assert values[0] > 0 and all(lo < hi for lo, hi in zip(values, values[1:]))


def test_l0_is_the_nll_of_x0_and_vlb_the_documented_estimator():
    t = torch.zeros(3, dtype=torch.long)
    x_0, x_t = noised(t, seed=2)
    uniform = torch.full((3, K, N), -math.log(K))
    loss = vq_diffusion_loss(uniform, x_0, x_t, t, vq_scheduler(), aux_weight=0.5)
    assert loss.l0.item() == pytest.approx(math.log(K), rel=1e-6)
    assert loss.lt.item() == 0.0
    assert loss.vlb.item() == pytest.approx(T * math.log(K) + loss.lT.item(), rel=1e-6)
    assert loss.total.item() == pytest.approx(loss.vlb.item() + 0.5 * math.log(K), rel=1e-6)


def test_lT_matches_a_hand_computation_on_three_classes():
    # Schedule ending at ā = 0.3, c̄ = 0.5 so that the prior term is far from zero.
    scheduler = VQDiffusionScheduler(num_vec_classes=4, num_train_timesteps=5, alpha_cum_end=0.3, gamma_cum_end=0.5)
    a, c = 0.3, 0.5
    b = (1 - a - c) / 3
    q = np.array([a + b, b, b, c])  # q(x_T | x_0 = 0)
    prior = np.array([a / 3 + b] * 3 + [c])
    expected = float(np.sum(q * np.log(q / prior)))
    x_0 = torch.tensor([[0, 1, 2], [2, 2, 1]])
    t = torch.tensor([1, 3])
    loss = vq_diffusion_loss(torch.full((2, 3, 3), -math.log(3)), x_0, x_0.clone(), t, scheduler)
    assert expected > 0.05
    assert loss.lT.item() == pytest.approx(expected, rel=1e-4)


def test_lT_is_small_and_non_negative_for_the_default_schedule():
    t = torch.arange(T)
    x_0, x_t = noised(t)
    lT = vq_diffusion_loss(torch.full((T, K, N), -math.log(K)), x_0, x_t, t, vq_scheduler()).lT.item()
    assert 0.0 <= lT < 1e-4


def test_the_bound_is_trainable():
    scheduler = VQDiffusionScheduler(num_vec_classes=9, num_train_timesteps=20)
    num_tokens, steps, length = 8, 20, 16
    gen = torch.Generator().manual_seed(0)
    x_0 = torch.randint(num_tokens, (1, length), generator=gen).expand(steps, -1)
    t = torch.arange(steps)  # every step once: the estimator is then the full sum over t
    logits = torch.nn.Parameter(torch.zeros(num_tokens, length))
    optimizer = torch.optim.Adam([logits], lr=0.1)

    def bound(seed: int) -> torch.Tensor:
        x_t = q_sample(x_0, t, scheduler, generator=torch.Generator().manual_seed(seed))
        return vq_diffusion_loss(logits.log_softmax(0).expand(steps, -1, -1), x_0, x_t, t, scheduler).vlb

    with torch.no_grad():
        initial = bound(seed=1000).item()
    for step in range(50):
        optimizer.zero_grad()
        bound(seed=step).backward()
        optimizer.step()
    with torch.no_grad():
        final = bound(seed=1000).item()
    assert final < 0.5 * initial


def test_vq_diffusion_loss_rejects_bad_shapes():
    t = torch.ones(2, dtype=torch.long)
    x = torch.zeros(2, N, dtype=torch.long)
    with pytest.raises(ValueError, match="log_model_x0"):
        vq_diffusion_loss(torch.zeros(2, K + 1, N), x, x, t, vq_scheduler())
    with pytest.raises(ValueError, match="share one shape"):
        vq_diffusion_loss(torch.zeros(2, K, N), x, x[:, :4], t, vq_scheduler())
    with pytest.raises(ValueError, match="t must lie"):
        vq_diffusion_loss(torch.zeros(2, K, N), x, x, torch.tensor([-1, 0]), vq_scheduler())


# --- Eq. 1 ------------------------------------------------------------------------------------------------


def test_total_loss_weights_the_terms():
    assert total_loss(1.0, 2.0, 3.0) == pytest.approx(1.0 + 0.1 * 2.0 + 0.6 * 3.0)
    terms = torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0)
    assert total_loss(*terms, lambda_ccd=0.5, lambda_vq=1.0).item() == pytest.approx(5.0)


def test_latent_chroma_l1_is_the_distance_to_each_cells_colour():
    from skimage.color import rgb2lab

    # Two latent cells of 8×8 pixels, one red and one blue: each cell's target is its own CIE a*b*.
    rgb = np.zeros((8, 16, 3))
    rgb[:, :8] = (0.8, 0.1, 0.1)
    rgb[:, 8:] = (0.1, 0.2, 0.9)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    cells = np.stack([rgb2lab(rgb[:1, :1])[0, 0, 1:], rgb2lab(rgb[:1, 8:9])[0, 0, 1:]], axis=-1) / LATENT_CHROMA_UNIT
    exact = torch.zeros(1, 4, 1, 2)
    exact[0, :2, 0] = torch.from_numpy(cells).float()
    exact[0, 2:] = 5.0  # the other channels are free
    assert latent_chroma_l1(exact, image).item() == pytest.approx(0.0, abs=1e-4)
    off = exact.clone()
    off[0, 0, 0, 1] += 0.4  # a* of the blue cell off by 0.4 units: one of four values
    assert latent_chroma_l1(off, image).item() == pytest.approx(0.1, abs=1e-4)

"""The paper's metrics against values computed independently on small cases."""

import math
import sys

import numpy as np
import PIL.Image
import pytest
import scipy.linalg
import torch
from skimage import data
from skimage.metrics import structural_similarity

from edn_pipeline.errors import EDNInputError
from edn_pipeline.evaluation import metrics


def noisy(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def mid_gray_photo() -> np.ndarray:
    """A 64×64 random RGB image with values in [60, 195], so noise of σ ≤ 10 is (practically) never clipped."""
    return np.random.default_rng(1).integers(60, 196, (64, 64, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------- PSNR


@pytest.mark.parametrize("offset", [1, 10, 40])
def test_psnr_of_a_uniform_offset_is_exact(mid_gray_photo, offset):
    shifted = (mid_gray_photo.astype(int) + offset).astype(np.uint8)
    assert metrics.psnr(shifted, mid_gray_photo) == pytest.approx(10 * math.log10(255**2 / offset**2), abs=1e-5)


@pytest.mark.parametrize("sigma", [3.0, 8.0])
def test_psnr_of_gaussian_noise_is_close_to_the_noise_level(mid_gray_photo, sigma):
    assert metrics.psnr(noisy(mid_gray_photo, sigma), mid_gray_photo) == pytest.approx(
        20 * math.log10(255 / sigma), abs=0.1
    )


def test_psnr_of_identical_images_is_infinite(photo):
    assert metrics.psnr(photo, photo) == math.inf


# ------------------------------------------------------------------------------------------------- SSIM


def test_ssim_of_an_image_with_itself_is_one(photo):
    assert metrics.ssim(photo, photo) == pytest.approx(1.0, abs=1e-6)


def test_ssim_decreases_with_noise(photo):
    scores = [metrics.ssim(noisy(photo, sigma), photo) for sigma in (2, 10, 30, 60)]
    assert 1 > scores[0] > scores[1] > scores[2] > scores[3] > 0


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # Flat images have no variance, so SSIM = (2ab + C1) / (a² + b² + C1) with C1 = (0.01·255)². (Float32
    # leaves a variance of rounding noise on flat areas: hence only 1e-3.)
    a, b, c1 = 100.0, 130.0, (0.01 * 255) ** 2
    flat_a, flat_b = np.full((32, 32, 3), a, np.uint8), np.full((32, 32, 3), b, np.uint8)
    assert metrics.ssim(flat_a, flat_b) == pytest.approx((2 * a * b + c1) / (a**2 + b**2 + c1), abs=1e-3)


def test_ssim_in_float32_is_float64_ssim_on_a_photo(photo):
    from torchmetrics.functional.image import structural_similarity_index_measure

    degraded = noisy(photo, 10)
    as_float64 = [torch.tensor(x).permute(2, 0, 1)[None].double() for x in (degraded, photo)]
    expected = float(structural_similarity_index_measure(*as_float64, data_range=255.0))
    assert metrics.ssim(degraded, photo) == pytest.approx(expected, abs=1e-5)


def test_ssim_agrees_with_scikit_image_on_a_photo():
    # Different border handling (torchmetrics reflects, scikit-image crops), so only close.
    image = data.astronaut()[::3, ::3]
    degraded = noisy(image, 15)
    reference = structural_similarity(
        degraded, image, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2
    )
    assert metrics.ssim(degraded, image) == pytest.approx(reference, abs=0.02)


def test_sizes_must_match_and_images_must_be_uint8(photo):
    with pytest.raises(EDNInputError, match="48x40 but ground truth is 40x48"):
        metrics.psnr(photo, photo.transpose(1, 0, 2))
    with pytest.raises(EDNInputError, match="uint8"):
        metrics.ssim(photo / 255.0, photo)


# ------------------------------------------------------------------------------------------------- colourfulness


def test_colourfulness_of_a_gray_image_is_zero(photo):
    gray = np.array(PIL.Image.fromarray(photo).convert("L"))
    assert metrics.colourfulness(gray) == 0
    assert metrics.colourfulness(PIL.Image.fromarray(gray).convert("RGB")) == 0


def test_colourfulness_of_a_flat_colour_is_the_mean_term():
    # rg = 200 - 100 = 100, yb = (200 + 100)/2 - 50 = 100: no spread, so M = 0.3 · √(100² + 100²).
    flat = np.zeros((5, 7, 3), np.uint8) + np.array([200, 100, 50], np.uint8)
    assert metrics.colourfulness(flat) == pytest.approx(0.3 * math.sqrt(2) * 100, abs=1e-9)


def test_colourfulness_of_a_red_and_a_blue_pixel_by_hand():
    # red: rg = 255, yb = 127.5; blue: rg = 0, yb = -255.
    # σ_rg = 127.5, μ_rg = 127.5; σ_yb = 191.25, μ_yb = -63.75.
    image = PIL.Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8))
    expected = math.sqrt(127.5**2 + 191.25**2) + 0.3 * math.sqrt(127.5**2 + 63.75**2)
    assert metrics.colourfulness(image) == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory):
    """Random AlexNet weights in torchvision's state-dict layout (classifier included, as torchvision saves it)."""
    torch.manual_seed(0)
    features = metrics._alexnet_features()
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.1.weight"] = torch.randn(16, 9216)  # ignored by LPIPS
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save(state, path)
    return path, features


def test_lpips_with_local_weights_is_zero_for_identical_images_and_positive_otherwise(alexnet_file, photo):
    net = metrics.LPIPS.from_file(alexnet_file[0])
    assert net(photo, photo) == 0
    assert net(noisy(photo, 30), photo) > net(noisy(photo, 5), photo) > 0


def test_lpips_matches_torchmetrics_given_the_same_backbone(alexnet_file, photo, monkeypatch):
    """torchmetrics' own LPIPS, its torchvision backbone replaced by the same AlexNet weights, agrees exactly."""
    import torchmetrics.functional.image.lpips as tm_lpips

    path, features = alexnet_file
    monkeypatch.setattr(tm_lpips, "_get_tv_model_features", lambda net, pretrained=False: features)
    reference = tm_lpips._LPIPS(pretrained=True, net="alex", pnet_rand=True)
    other = noisy(photo, 20)
    as_tensor = [torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1 for x in (other, photo)]
    expected = float(reference(*as_tensor))
    assert metrics.LPIPS.from_file(path)(other, photo) == pytest.approx(expected, rel=1e-5)

    full = path.parent / "lpips_full.pth"  # torchmetrics' own state-dict layout loads too
    torch.save(reference.state_dict(), full)
    assert metrics.LPIPS.from_file(full)(other, photo) == pytest.approx(expected, rel=1e-5)


def test_lpips_rejects_weights_that_are_not_alexnet(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(EDNInputError, match="not AlexNet weights"):
        metrics.LPIPS.from_file(path)
    with pytest.raises(EDNInputError, match="do not exist"):
        metrics.LPIPS.from_file(tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------------------- FID


class TinyInception(torch.nn.Module):
    """Stands in for a TorchScript Inception: same call convention, 3 features."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d((img.to(torch.float32) - 128) / 128, 13)
        features = self.conv(pooled).relu().mean(dim=(2, 3))
        return features if return_features else features.sum(dim=1)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fid") / "inception.pt"
    torch.jit.script(TinyInception()).save(str(path))
    return path


@pytest.fixture(scope="module")
def image_sets():
    rng = np.random.default_rng(2)
    real = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(10)]
    fake = [(image // 2 + rng.integers(0, 80, image.shape)).astype(np.uint8) for image in real]
    return real, fake


def test_fid_of_a_set_with_itself_is_zero(inception_file, image_sets):
    real, _ = image_sets
    assert fid(real, real, inception_file) == pytest.approx(0, abs=1e-9)


def test_fid_matches_the_frechet_distance_computed_with_scipy(inception_file, image_sets):
    real, fake = image_sets
    network = torch.jit.load(str(inception_file))
    with torch.no_grad():
        feats = [
            torch.cat([network(metrics.FID.prepare(x), return_features=True) for x in images]).double().numpy()
            for images in (fake, real)
        ]
    (mu1, mu2), (s1, s2) = [f.mean(axis=0) for f in feats], [np.cov(f, rowvar=False) for f in feats]
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert expected > 1e-4
    assert fid(fake, real, inception_file) == pytest.approx(expected, rel=1e-6)


def test_fid_needs_two_images_and_a_torchscript_file(inception_file, image_sets, tmp_path):
    real, fake = image_sets
    with pytest.raises(EDNInputError, match="at least 2 images"):
        fid(fake[:1], real, inception_file)
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"not a network")
    with pytest.raises(EDNInputError, match="TorchScript"):
        metrics.FID.from_file(junk)


def test_lpips_and_fid_never_need_torchvision(alexnet_file, inception_file, image_sets, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # any `import torchvision` now fails
    real, fake = image_sets
    assert fid(fake, real, inception_file) > 0
    assert metrics.LPIPS.from_file(alexnet_file[0])(fake[0], real[0]) > 0


class PlainFeatures(torch.nn.Module):
    """A TorchScript feature network called plainly (no return_features argument)."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(img, 100).flatten(1)  # 3 × 2 × 2 = 12 features


def test_fid_takes_a_network_without_return_features(tmp_path, image_sets):
    path = tmp_path / "plain.pt"
    torch.jit.script(PlainFeatures()).save(str(path))
    metric = metrics.FID.from_file(path)
    assert metric.metric.inception.kwargs == {} and metric.metric.inception.num_features == 12
    real, fake = image_sets
    assert fid(real, real, path) == pytest.approx(0, abs=1e-4)  # features of 0..255: float64 rounding


def fid(preds: list, gts: list, weights) -> float:
    """FID of two image lists through the FID class, as ``edn evaluate`` computes it."""
    metric = metrics.FID.from_file(weights)
    metric.update(list(gts), real=True)
    metric.update(list(preds), real=False)
    return metric.compute()

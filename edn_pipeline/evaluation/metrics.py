"""Image metrics of the paper's §2.2: PSNR, SSIM, colourfulness, LPIPS and FID.

Images are uint8 arrays (H, W), (H, W, 3) or (H, W, 4), or PIL images of any mode; all are compared as RGB.

* PSNR and SSIM are torchmetrics' (``data_range`` 255, SSIM with its default 11×11 Gaussian window, σ 1.5).
* Colourfulness (Hasler & Süsstrunk 2003) is written here by hand: it is a few lines and no maintained
  library ships it (torchmetrics, scikit-image, piq and pyiqa do not have it).
* LPIPS (v0.1, AlexNet) follows torchmetrics' implementation and uses the linear-layer weights that torchmetrics
  ships, but builds the AlexNet backbone here: torchmetrics builds it with torchvision, which EDN does not
  depend on. The backbone's ImageNet weights come from a local file (``LPIPS.from_file``).
* FID is torchmetrics' Fréchet distance over features of a TorchScript Inception network loaded from a local
  file (``FID.from_file``): torchmetrics' own Inception comes from torch-fidelity, which requires torchvision.

A metric whose weights are not given is *unavailable*; nothing here downloads weights or guesses a value.
"""

import pickle
import re
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..errors import EDNInputError

LPIPS_UNAVAILABLE = (
    "needs --lpips-weights, ImageNet AlexNet weights such as torchvision's alexnet-owt-7be5be79.pth; "
    "torchmetrics' LPIPS would fetch them through torchvision, which EDN does not install"
)
FID_UNAVAILABLE = (
    "needs --fid-weights, a TorchScript Inception-v3 feature extractor such as NVlabs' inception-2015-12-05.pt; "
    "torchmetrics' own FID network comes from torch-fidelity, which requires torchvision"
)
FID_SIZE = 299  # the Inception network's input size; images are resized to it (bilinear, as TF1's FID)


def to_array(image) -> np.ndarray:
    """An image as a uint8 (H, W, 3) RGB array."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise EDNInputError(f"images must be uint8 arrays or PIL images, got an array of {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array[..., :3]
    raise EDNInputError(f"images must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {array.shape}")


def _tensor(image, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(1, 3, H, W) floats in 0..255."""
    return torch.tensor(to_array(image)).permute(2, 0, 1)[None].to(dtype)


def _pair(pred, gt, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    pred, gt = _tensor(pred, dtype), _tensor(gt, dtype)
    if pred.shape != gt.shape:
        raise EDNInputError(
            f"prediction is {pred.shape[3]}x{pred.shape[2]} but ground truth is {gt.shape[3]}x{gt.shape[2]}"
        )
    return pred, gt


def psnr(pred, gt) -> float:
    """Peak signal-to-noise ratio in dB over all RGB values (peak 255); ``inf`` for identical images."""
    pred, gt = _pair(pred, gt)
    return float(peak_signal_noise_ratio(pred, gt, data_range=255.0))


def ssim(pred, gt) -> float:
    """Structural similarity (torchmetrics' Gaussian-window SSIM over the RGB channels, range 255).

    Computed in float32, as float64 convolutions are ten times slower on a CPU: within ~1e-5 of float64 on
    photos, up to ~5e-4 on large perfectly flat areas (where the variances cancel).
    """
    pred, gt = _pair(pred, gt, torch.float32)
    return float(structural_similarity_index_measure(pred, gt, data_range=255.0))


def colourfulness(image) -> float:
    """Hasler & Süsstrunk's colourfulness M = σ_rgyb + 0.3·μ_rgyb of an sRGB image (values 0..255).

    rg = R − G and yb = (R + G)/2 − B per pixel; σ_rgyb = √(σ_rg² + σ_yb²), μ_rgyb = √(μ_rg² + μ_yb²), with
    population standard deviations over the pixels. A gray image scores 0.
    """
    rgb = to_array(image).astype(np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = (rgb[..., 0] + rgb[..., 1]) / 2 - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


# ------------------------------------------------------------------------------------------------- LPIPS

# torchvision's AlexNet ``features`` (the layout of its state dict) and where LPIPS taps it: after each ReLU.
_ALEX_CONVS = {
    0: (3, 64, 11, 4, 2),
    3: (64, 192, 5, 1, 2),
    6: (192, 384, 3, 1, 1),
    8: (384, 256, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
_ALEX_TAPS = (1, 4, 7, 9, 11)
_BACKBONE_KEY = re.compile(r"^(?:features|net\.slice\d)\.(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"^lin(\d)\.model\.\d\.weight$")


def _alexnet_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(12):
        if index in _ALEX_CONVS:
            c_in, c_out, kernel, stride, padding = _ALEX_CONVS[index]
            layers.append(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding))
        elif index in (2, 5):
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _torchmetrics_lin_weights() -> dict:
    import torchmetrics.functional.image.lpips as tm_lpips

    path = Path(tm_lpips.__file__).parent / "lpips_models" / "alex.pth"
    if not path.is_file():
        raise EDNInputError(f"torchmetrics ships no LPIPS linear weights at {path}; give a full LPIPS state dict")
    return torch.load(path, map_location="cpu", weights_only=True)


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone, as torchmetrics' ``learned_perceptual_image_patch_similarity``.

    Build it with :meth:`from_file`. ``lpips(pred, gt)`` returns the distance of two images (0 when identical).
    """

    chns = (64, 192, 384, 256, 256)

    def __init__(self):
        super().__init__()
        self.features = _alexnet_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.chns)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False)
        self.requires_grad_(False).eval()

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu") -> "LPIPS":
        """Load the AlexNet backbone from ``path``: torchvision's AlexNet state dict (``features.N.*``; the
        classifier is ignored) or a full LPIPS state dict as torchmetrics' ``_LPIPS`` saves it (``net.sliceK.N.*``
        and ``linK.model.1.weight``). Linear layers missing from the file are torchmetrics' shipped v0.1 ones.
        """
        state = _load_state_dict(path, "LPIPS")
        backbone, lins = {}, {}
        for key, value in state.items():
            if match := _BACKBONE_KEY.match(key):
                backbone[f"{match[1]}.{match[2]}"] = value
            elif match := _LIN_KEY.match(key):
                lins[f"{match[1]}.weight"] = value
        model = cls()
        expected = set(model.features.state_dict())
        if set(backbone) != expected:
            missing = sorted(expected - set(backbone), key=lambda k: int(k.split(".")[0]))
            unexpected = sorted(set(backbone) - expected)
            raise EDNInputError(
                f"LPIPS weights {str(path)!r} are not AlexNet weights (torchvision's features.N layout): "
                + "; ".join(
                    f"{what} {', '.join(keys)}"
                    for what, keys in (("missing", missing), ("unexpected", unexpected))
                    if keys
                )
            )
        if not lins:
            lins = {f"{_LIN_KEY.match(k)[1]}.weight": v for k, v in _torchmetrics_lin_weights().items()}
        try:
            model.features.load_state_dict(backbone)
            model.lins.load_state_dict(lins)
        except RuntimeError as error:
            raise EDNInputError(
                f"LPIPS weights {str(path)!r} do not fit AlexNet: {str(error).splitlines()[-1].strip()}"
            ) from None
        return model.to(device)

    def distance(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS of (N, 3, H, W) batches in [-1, 1]."""
        total = 0
        x0, x1 = (pred - self.shift) / self.scale, (gt - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            x0, x1 = layer(x0), layer(x1)
            if index in _ALEX_TAPS:
                n0 = x0 / torch.sqrt(1e-8 + x0.square().sum(dim=1, keepdim=True))
                n1 = x1 / torch.sqrt(1e-8 + x1.square().sum(dim=1, keepdim=True))
                total = total + self.lins[_ALEX_TAPS.index(index)]((n0 - n1).square()).mean(dim=(2, 3))
        return total.flatten()

    @torch.no_grad()
    def forward(self, pred, gt) -> float:
        pred, gt = _pair(pred, gt, torch.float32)
        if min(pred.shape[-2:]) < 32:
            raise EDNInputError(
                f"LPIPS (AlexNet) needs images at least 32 px a side, got {pred.shape[3]}x{pred.shape[2]}"
            )
        device = self.shift.device
        pred, gt = (t.to(device) / 127.5 - 1 for t in (pred, gt))
        return float(self.distance(pred, gt)[0])


# ------------------------------------------------------------------------------------------------- FID


class _FeatureNetwork(nn.Module):
    """A TorchScript feature extractor as torchmetrics' FID wants it: images in, (N, D) features out."""

    def __init__(self, network: torch.jit.ScriptModule, kwargs: dict, num_features: int):
        super().__init__()
        self.network, self.kwargs, self.num_features = network, kwargs, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images, **self.kwargs).reshape(images.shape[0], -1)


class FID:
    """Fréchet inception distance over images fed with :meth:`update`; build it with :meth:`from_file`.

    The distance itself is torchmetrics' ``FrechetInceptionDistance`` (float64 statistics); the features come
    from a TorchScript network called on (N, 3, 299, 299) float32 images with values 0..255 (bilinear resize,
    as the TF1 FID and NVlabs' ``inception-2015-12-05.pt`` do), with ``return_features=True`` when the network
    accepts that argument. Real-image statistics survive :meth:`reset_fake`, so a data set's are computed once.
    """

    def __init__(self, network: nn.Module, device: str | torch.device = "cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.device = torch.device(device)
        self.metric = FrechetInceptionDistance(feature=network, reset_real_features=False).to(self.device)

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu") -> "FID":
        try:
            network = torch.jit.load(str(path), map_location=device).eval()
        except (OSError, RuntimeError, ValueError) as error:
            raise EDNInputError(
                f"cannot load FID weights {str(path)!r} as a TorchScript network: {str(error).splitlines()[0]}"
            ) from None
        arguments = [a.name for a in network.forward.schema.arguments] if hasattr(network.forward, "schema") else []
        kwargs = {"return_features": True} if "return_features" in arguments else {}
        probe = torch.zeros(1, 3, FID_SIZE, FID_SIZE, device=device)
        try:
            with torch.no_grad():
                num_features = network(probe, **kwargs).reshape(1, -1).shape[1]
        except RuntimeError as error:
            raise EDNInputError(
                f"FID network {str(path)!r} fails on a (1, 3, 299, 299) image: {str(error).splitlines()[0]}"
            ) from None
        return cls(_FeatureNetwork(network, kwargs, num_features), device)

    @staticmethod
    def prepare(image) -> torch.Tensor:
        """One image as a (1, 3, 299, 299) float32 tensor with values 0..255."""
        batch = _tensor(image, torch.float32)
        if batch.shape[-2:] == (FID_SIZE, FID_SIZE):
            return batch
        return F.interpolate(batch, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def update(self, images, real: bool) -> None:
        """Add one image or a list of images (any sizes) to the real or the generated set."""
        for image in images if isinstance(images, list) else [images]:
            self.metric.update(self.prepare(image).to(self.device), real=real)

    @property
    def counts(self) -> tuple[int, int]:
        """(real, generated) images seen."""
        return int(self.metric.real_features_num_samples), int(self.metric.fake_features_num_samples)

    def compute(self) -> float:
        real, fake = self.counts
        if min(real, fake) < 2:
            raise EDNInputError(f"FID needs at least 2 images in each set, got {fake} generated and {real} real")
        return float(self.metric.compute())

    def reset_fake(self) -> None:
        """Forget the generated images, keep the real ones."""
        self.metric.reset()


def _load_state_dict(path, what: str) -> dict:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EDNInputError(f"{what} weights {str(path)!r} do not exist") from None
    except (OSError, RuntimeError, ValueError, EOFError, IndexError, pickle.UnpicklingError) as error:  # not weights
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise EDNInputError(f"cannot read {what} weights {str(path)!r}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EDNInputError(f"{what} weights {str(path)!r} hold a {type(state).__name__}, not a state dict")
    return state

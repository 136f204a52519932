"""Views of the training photos made and encoded once, so that the adapter stage steps at the latent size.

Without it every step of the ccd stage makes its examples anew (decoding, L*, superpixels or points, Levin's solve:
37 ms a photo at 128 px on the development CPU) and runs the VAE encoder over them (13 ms a photo): on edn-tiny
that is about twice the adapter's own forward and backward pass. ``--cache_views N`` makes N views of every photo,
the crop, hints and caption that epochs 0 … N-1 draw, and stores each view's VAE posterior (mean and
log-variance, so that every step still draws its own latent sample), condition and token ids with
``datasets.Dataset.map``, in the data set's cache where a resumed run finds them again; epoch e then trains on
view e mod N. The text encoder still runs every step: on the token ids, it is cheap next to the UNet, and SD's
77 × 768 embeddings would take a quarter of a megabyte a view.
"""

from __future__ import annotations

import hashlib

import torch

from ..hints import CONDITION_CHANNELS
from .data import TrainingExampleTransform

__all__ = ["CachedViews", "cache_views"]


class CachedViews(torch.utils.data.Dataset):
    """The training examples of view ``epoch mod N``: what the DataLoader reads when ``--cache_views`` is set.

    ``set_epoch`` plays the part of :meth:`TrainingExampleTransform.set_epoch`: the loop calls it before each epoch.
    """

    def __init__(self, views: list):
        if not views:
            raise ValueError("CachedViews needs at least one view")
        self.views = views
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return min(len(view) for view in self.views)  # a photo unreadable in one view is unreadable in all

    def __getitem__(self, index: int) -> dict:
        return self.views[self.epoch % len(self.views)][index]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # one Arrow read per batch instead of one per example
        batch = self.views[self.epoch % len(self.views)][indices]
        return [{key: values[i] for key, values in batch.items()} for i in range(len(indices))]


def cache_views(dataset, transform: TrainingExampleTransform, vae, count: int, batch_size: int = 32) -> CachedViews:
    """Make and encode ``count`` views of ``dataset`` (a map-style 🤗 ``Dataset`` of photos) with ``transform``
    and ``vae``; each is computed once and then read from the data set's cache (keyed by the data, the transform's
    settings, the tokenizer and the VAE's weights)."""
    import datasets
    from datasets.fingerprint import Hasher

    if transform.tokenizer is None:
        raise ValueError("cached views store token ids: the transform needs a tokenizer")
    latent_side = transform.resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    side = transform.resolution
    features = datasets.Features(
        {
            "latent_parameters": datasets.Array3D(
                (2 * vae.config.latent_channels, latent_side, latent_side), "float32"
            ),
            # float16 holds [0, 1] to 2**-11, far below the 8-bit steps of the photos the condition is made from
            "conditioning_pixel_values": datasets.Array3D((CONDITION_CHANNELS, side, side), "float16"),
            "input_ids": datasets.Sequence(datasets.Value("int64"), length=transform.tokenizer.model_max_length),
        }
    )
    settings = {k: v for k, v in vars(transform).items() if k not in ("tokenizer", "epoch")}
    key = [dataset._fingerprint, settings, transform.tokenizer.get_vocab(), _weights_digest(vae)]
    views = []
    for view in range(count):
        transform.set_epoch(view)
        encoded = dataset.map(
            _encode_view,
            batched=True,
            batch_size=batch_size,
            remove_columns=dataset.column_names,
            features=features,
            fn_kwargs={"transform": transform, "vae": vae},
            new_fingerprint=Hasher.hash([*key, view]),
            desc=f"Encoding view {view + 1} of {count}",
        )
        views.append(encoded.with_format("torch"))
    return CachedViews(views)


@torch.no_grad()
def _encode_view(examples: dict, transform: TrainingExampleTransform, vae) -> dict:
    """One batch of a view: the readable photos' VAE posterior parameters, conditions and token ids."""
    made = transform(examples)
    keep = [i for i, pixels in enumerate(made["pixel_values"]) if pixels is not None]
    if not keep:
        return {"latent_parameters": [], "conditioning_pixel_values": [], "input_ids": []}
    pixels = torch.stack([made["pixel_values"][i] for i in keep]).to(vae.device, vae.dtype)
    return {
        "latent_parameters": vae.encode(pixels).latent_dist.parameters.float().cpu().numpy(),
        "conditioning_pixel_values": torch.stack([made["conditioning_pixel_values"][i] for i in keep]).half().numpy(),
        "input_ids": torch.stack([made["input_ids"][i] for i in keep]).numpy(),
    }


def _weights_digest(module: torch.nn.Module) -> str:
    """A BLAKE2b digest of the module's weights: a retrained VAE must not read the old VAE's cached latents."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

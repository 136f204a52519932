from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class EDNPipelineOutput(BaseOutput):
    """Output of :class:`~edn_pipeline.EDNPipeline`.

    Args:
        images: colourised images, each the size of its input: a list of PIL images; or, for ``output_type``
            "np" / "pt", an array (B, H, W, 3) / tensor (B, 3, H, W) in [0, 1] (a list of them when the inputs
            differ in size); or the colour latents for "latent".
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list[np.ndarray] | list[torch.Tensor]

"""EDN: diffusion-based colourisation of grayscale photos, as a native diffusers pipeline."""

import diffusers

from .ccd import CCDModel
from .errors import EDNInputError
from .luminance_decoder import LuminanceDecoder
from .pipeline_edn import EDNPipeline
from .pipeline_output import EDNPipelineOutput

# `DiffusionPipeline.from_pretrained` looks a saved pipeline's class up by name in the diffusers namespace.
diffusers.EDNPipeline = EDNPipeline

__all__ = ["CCDModel", "EDNInputError", "EDNPipeline", "EDNPipelineOutput", "LuminanceDecoder"]
__version__ = "0.1.0"

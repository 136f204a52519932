"""EDN: diffusion-based colourisation of grayscale photos, as a native diffusers pipeline."""

import diffusers

from .ccd import CCDModel
from .errors import EDNInputError
from .luminance_decoder import LuminanceDecoder
from .pipeline_edn import EDN_TINY, EDNPipeline
from .pipeline_output import EDNPipelineOutput

# `DiffusionPipeline.from_pretrained` (and diffusers' tooling) look a pipeline class up by name in diffusers'
# namespace; registering EDN there lets plain diffusers load a saved EDN folder once this package is imported.
diffusers.EDNPipeline = diffusers.pipelines.EDNPipeline = EDNPipeline

__all__ = ["EDN_TINY", "CCDModel", "EDNInputError", "EDNPipeline", "EDNPipelineOutput", "LuminanceDecoder"]
__version__ = "0.1.0"

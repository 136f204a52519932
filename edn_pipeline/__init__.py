"""EDN: diffusion-based colourisation of grayscale photos, as a native diffusers pipeline.

The public names are imported on first use (PEP 562), so that ``import edn_pipeline`` (and with it ``edn --help``
and every usage error of the command line) does not load torch, diffusers and transformers.
"""

import importlib
import importlib.abc
import sys

from .errors import EDNInputError

# public name -> the module defining it
_LAZY = {
    "EDN_TINY": "pipeline_edn",
    "EDNPipeline": "pipeline_edn",
    "CCDModel": "ccd",
    "EDNPipelineOutput": "pipeline_output",
    "EDNVideoPipeline": "video",
    "HintPropagator": "hint_propagator",
    "LuminanceDecoder": "luminance_decoder",
    "PalettePrior": "palette_prior",
}
_PIPELINE_MODULE = f"{__name__}.pipeline_edn"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


class _RegisterWithDiffusers(importlib.abc.MetaPathFinder):
    """Puts EDNPipeline into diffusers' namespace as soon as both are imported, in whichever order.

    ``DiffusionPipeline.from_pretrained`` looks a pipeline class up by name there. This finder only wraps the
    loaders of diffusers and of this package's modules: once diffusers has run, and no module of this package is
    half-way through its own imports (``pipeline_edn`` imports them), it imports ``pipeline_edn``; after
    ``pipeline_edn`` runs, it registers its class.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "diffusers" and not name.startswith(f"{__name__}."):
            return None
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if finder is not self else None
            if spec is not None and spec.loader is not None:
                run = spec.loader.exec_module

                def exec_module(module, run=run):
                    run(module)
                    _after_import(module.__name__)

                spec.loader.exec_module = exec_module
                return spec
        return None


def _after_import(name: str) -> None:
    if name == _PIPELINE_MODULE:
        diffusers = sys.modules["diffusers"]
        diffusers.EDNPipeline = diffusers.pipelines.EDNPipeline = sys.modules[_PIPELINE_MODULE].EDNPipeline
    elif "diffusers" in sys.modules and _PIPELINE_MODULE not in sys.modules and not _importing(besides=name):
        importlib.import_module(_PIPELINE_MODULE)


def _importing(besides: str) -> bool:
    """Whether a module of this package other than ``besides`` is still running its own code."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for module_name, module in list(sys.modules.items())
        if module_name.startswith(f"{__name__}.") and module_name != besides
    )


sys.meta_path.insert(0, _RegisterWithDiffusers())
if "diffusers" in sys.modules:  # imported already: register now
    importlib.import_module(_PIPELINE_MODULE)

__all__ = [
    "EDN_TINY",
    "CCDModel",
    "EDNInputError",
    "EDNPipeline",
    "EDNPipelineOutput",
    "EDNVideoPipeline",
    "HintPropagator",
    "LuminanceDecoder",
]
__version__ = "0.1.0"

"""Write an EDN model as a Hub repo that plain diffusers loads, without this package installed.

diffusers loads a pipeline's own code when ``model_index.json`` names it: ``_class_name`` as
``[module, class]`` with ``module.py`` beside the index, and each custom component as ``[module, class]``
with ``module.py`` in the component's folder (``pipeline_loading_utils.get_class_obj_and_candidates``).
The code files are the shipped model's own modules (flat at the package's top), copied with the modules they
import, so ``DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)`` runs the same code as ``edn_pipeline``.
diffusers copies only the files an entry module imports *directly*, so each entry point is a generated module
that imports every module of its closure.
"""

import json
import os
import re
import shutil
from pathlib import Path

from ..files import atomic_folder

PACKAGE = Path(__file__).resolve().parents[1]  # the shipped model: modules that import each other as ``from .x``
PIPELINE_MODULE = "pipeline_edn"
# component -> the module defining its class (a model without an optional one has none to write)
CUSTOM_COMPONENTS = {
    "ccd": "ccd",
    "decoder": "luminance_decoder",
    "hint_propagator": "hint_propagator",
    "palette_prior": "palette_prior",
}
ENTRY_PREFIX = "edn_remote_"


def module_closure(module: str) -> list[str]:
    """``module`` and every package module it imports relatively, directly or not."""
    needed, todo = [], [module]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.append(name)
        source = (PACKAGE / f"{name}.py").read_text()
        todo += re.findall(r"^\s*from\s+\.(\w+)\s+import", source, flags=re.MULTILINE)
    return needed


def write_code(module: str, class_name: str, folder: Path) -> str:
    """Copy ``module``'s closure into ``folder`` with an entry module exporting ``class_name``; return its name."""
    closure = module_closure(module)
    for name in closure:
        shutil.copyfile(PACKAGE / f"{name}.py", folder / f"{name}.py")
    entry = ENTRY_PREFIX + module
    lines = [f'"""Entry point of {class_name} for diffusers\' trust_remote_code loading (from edn_pipeline)."""', ""]
    lines += [f"from .{name} import *  # noqa: F401,F403  makes diffusers copy {name}.py" for name in closure[1:]]
    lines.append(f"from .{module} import {class_name}  # noqa: F401")
    (folder / f"{entry}.py").write_text("\n".join(lines) + "\n")
    return entry


def export_hub(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Save ``model_dir`` (an EDN folder or Hub id) as a self-describing repo folder at ``out_dir``.

    Written to a temporary folder beside ``out_dir`` and renamed into place, so a failed export leaves no
    half-written repo. ``out_dir`` may be missing, empty or an earlier export (which is replaced); anything else
    there is refused with FileExistsError before the model is loaded, rather than replaced.
    """
    from ..pipeline_edn import EDNPipeline

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{str(out_dir)!r} exists and is not a folder")
    if out_dir.is_dir() and not (out_dir / "model_index.json").is_file() and any(out_dir.iterdir()):
        raise FileExistsError(f"{str(out_dir)!r} is a folder with files but no model_index.json: not an export")
    pipe = EDNPipeline.from_pretrained(model_dir)
    with atomic_folder(out_dir) as staging:
        pipe.save_pretrained(staging)
        index_path = staging / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [write_code(PIPELINE_MODULE, type(pipe).__name__, staging), type(pipe).__name__]
        for component, module in CUSTOM_COMPONENTS.items():
            if getattr(pipe, component) is None:
                continue
            class_name = type(getattr(pipe, component)).__name__
            index[component] = [write_code(module, class_name, staging / component), class_name]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        readme = Path(model_dir, "README.md")
        if readme.is_file():  # the card training wrote
            shutil.copyfile(readme, staging / "README.md")
        else:
            from .model_card import render_model_card

            unknown = "not recorded"
            render_model_card(
                repo_id=out_dir.name,
                base_model=None,
                stage=unknown,
                training_data=unknown,
                hyperparameters={},
                steps=unknown,
                hardware=unknown,
            ).save(staging / "README.md")
    return out_dir

"""The Hub model page of a trained EDN, rendered with huggingface_hub from the package's ``model_card_template.md``."""

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TEMPLATE = Path(__file__).resolve().parent / "model_card_template.md"  # package data: wheels carry it
TAGS = ["colorization", "image-colorization", "diffusers", "controlnet", "edn", "image-to-image"]


def render_model_card(
    repo_id: str,
    base_model: str | None,
    stage: str,
    training_data: str,
    hyperparameters: dict,
    steps: int | str,
    hardware: str,
    evaluation: str | None = None,
    license: str = "creativeml-openrail-m",
) -> ModelCard:
    """Fill the template: YAML front matter the Hub understands, usage, training recipe, evaluation, citation.

    The default licence is Stable Diffusion v1's, which a model fine-tuned from it inherits.
    """
    card_data = ModelCardData(
        license=license,
        base_model=base_model,
        library_name="diffusers",
        pipeline_tag="image-to-image",
        tags=TAGS,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        stage=stage,
        training_data=training_data,
        hyperparameters=hyperparameters,
        steps=steps,
        hardware=hardware,
        evaluation=evaluation,
    )

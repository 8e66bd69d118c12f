"""Hand-crafted prompts. The per-dataset templates are SPEC §4's (data in the dataset specs);
the 7-template ImageNet ensemble and the 80 CLIP templates come from open_clip."""

from __future__ import annotations

TEMPLATE_SETS = ("dataset", "ensemble7", "openai80")


def prompt_texts(classname: str, template_set: str, dataset_template: str) -> list[str]:
    """All prompts for one class under a template set; "_" in class names becomes a space."""
    name = classname.replace("_", " ")
    if template_set == "dataset":
        return [dataset_template.format(name)]
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    templates = {"ensemble7": SIMPLE_IMAGENET_TEMPLATES, "openai80": OPENAI_IMAGENET_TEMPLATES}[template_set]
    return [t(name) for t in templates]


def class_text_features(backbone, classnames: list[str], template_set: str, dataset_template: str):
    """[C, d] classifier weights: each template's features normalised, averaged, renormalised."""
    texts = [t for name in classnames for t in prompt_texts(name, template_set, dataset_template)]
    feats = backbone.encode_text(texts).reshape(len(classnames), -1, backbone.embed_dim)
    mean = feats.mean(1)
    return mean / mean.norm(dim=-1, keepdim=True)

"""Prompt and caption templates, in one place: TCKR's prompt variants and the dataset-neutral caption
made from a class name (the ``classname`` captioner, prompts without a caption store)."""

from __future__ import annotations

# TCKR's prompt variants (Sec. 4.3): class name only, caption only, and "class: caption" (default)
TEMPLATES = {"class": "{label}", "caption": "{caption}", "class_caption": "{label}: {caption}"}
DEFAULT_TEMPLATE = "class_caption"
DEFAULT_CLASS_TEMPLATE = "a photo of a {label}"  # a caption from the class name alone (dataset-neutral)


def build_prompt(label: str, caption: str, template: str = DEFAULT_TEMPLATE) -> str:
    """A generation prompt from a class name and a caption.

    ``template`` is a name from :data:`TEMPLATES` or a format string using ``{label}`` and/or
    ``{caption}``.
    """
    fmt = TEMPLATES.get(template, template)
    if "{label}" not in fmt and "{caption}" not in fmt:
        raise ValueError(
            f"unknown prompt template {template!r}; use one of {', '.join(TEMPLATES)} "
            "or a format string with {label} and/or {caption}"
        )
    return fmt.format(label=label, caption=caption)

"""Captioners (registry), the versioned caption store, import/export formats, prompts, curation."""

"""pipeline: private synthetic training sets for image classifiers (TCKR / Knowledge Recycling).

One module per stage, each with one entry function taking a frozen config:

- ``data.load_dataset``         labelled images, stable ids, member / non-member split
- ``captions.caption``          caption images into a versioned ``caption_store``
- ``finetune.finetune``         train / LoRA-fine-tune a generator
- ``generate.synthesize``       synthetic training set with a manifest (resumable)
- ``distill``                   teacher and GKD student (``train_teacher``, ``train_student``)
- ``privacy``                   LiRA membership-inference audit (maths in ``privacy_math``)
- ``experiment.run_experiment`` the whole loop; ``quickstart_config()`` is the offline default

Public names are imported lazily so that ``import pipeline`` stays fast and side-effect free.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetConfig": "data", "ImageDataset": "data", "load_dataset": "data", "parse_dataset_spec": "data",
    "CaptionConfig": "captions", "CaptionResult": "captions", "caption": "captions",
    "build_prompt": "captions", "TEMPLATES": "captions",
    "CaptionerConfig": "captioners", "create_captioner": "captioners", "CAPTIONERS": "captioners",
    "CaptionStore": "caption_store", "CaptionConflictError": "caption_store",
    "import_captions": "caption_io", "export_captions": "caption_io",
    "Project": "project", "RunRegistry": "runs", "Link": "runs",
    "FinetuneConfig": "finetune", "finetune": "finetune", "load_generator": "finetune",
    "GenerateConfig": "generate", "synthesize": "generate", "SyntheticSet": "generate",
    "create_generator": "generators", "GENERATORS": "generators",
    "TrainConfig": "train", "DistillConfig": "distill", "train_teacher": "distill", "train_student": "distill",
    "AuditConfig": "privacy", "lira_scores": "privacy_math", "aop": "privacy_math",
    "ExperimentConfig": "experiment", "run_experiment": "experiment", "quickstart_config": "experiment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

"""pipeline: private synthetic training sets for image classifiers (TCKR / Knowledge Recycling).

The top level holds the stages in the order a run goes through them, each one module with one
entry function taking a frozen config:

- ``caption.caption``           1. caption images into a versioned caption store
- ``finetune.finetune``         2. train / LoRA-fine-tune a generator
- ``generate.synthesize``       3. synthetic rounds with a manifest (resumable)
- ``distill``                   4. teacher on real members, GKD student on synthetic data
- ``audit.audit``               5. membership-inference audit (attacks and shadows in ``privacy``)
- ``experiment.run_experiment`` the whole loop; ``presets`` chooses its config from the data
  (``quickstart_config()`` is the offline default)

Components live in subpackages: ``data``, ``captions``, ``generators``, ``classifiers``, ``methods``
(other transfer methods: activation maximisation, boundary samples, DP-SGD), ``privacy``,
``core`` (project, run registry, jobs), ``cli`` and ``views`` (read side for the studio).

Public names are imported lazily so that ``import pipeline`` stays fast and side-effect free.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetConfig": "data.datasets", "ImageDataset": "data.datasets", "load_dataset": "data.datasets", "parse_dataset_spec": "data.datasets",
    "CaptionConfig": "caption", "CaptionResult": "caption", "caption": "caption",
    "build_prompt": "captions.prompts", "TEMPLATES": "captions.prompts",
    "CaptionerConfig": "captions.captioners", "create_captioner": "captions.captioners", "CAPTIONERS": "captions.captioners",
    "CaptionStore": "captions.store", "CaptionConflictError": "captions.store",
    "import_captions": "captions.formats", "export_captions": "captions.formats",
    "Project": "core.project", "RunRegistry": "core.runs", "Link": "core.runs",
    "FinetuneConfig": "finetune", "finetune": "finetune", "load_generator": "finetune",
    "GenerateConfig": "generate", "synthesize": "generate", "SyntheticSet": "generate",
    "create_generator": "generators", "GENERATORS": "generators",
    "TrainConfig": "classifiers.train", "DistillConfig": "distill", "train_teacher": "distill", "train_student": "distill",
    "AuditConfig": "audit", "audit": "audit", "AuditResult": "audit", "lira_scores": "privacy.attacks.lira", "rmia_scores": "privacy.attacks.rmia",
    "aop": "privacy.metrics", "memorisation_audit": "privacy.memorisation", "data_copying_test": "privacy.memorisation",
    "create_method": "methods", "method_names": "methods",
    "ExperimentConfig": "experiment", "run_experiment": "experiment", "quickstart_config": "presets", "preset_config": "presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")

"""Shared fixtures and helpers of the suite (pytest applies this file to tests/faults/ too).

Test modules never import each other: what several of them share lives here, as fixtures. Values are
fixtures (``tiny_config``, ``audited_run``, ``prompt_pool``); functions and classes that tests call with
arguments are factory fixtures that return them (``fake_metrics``, ``add_finished_run``, ``wait_until``,
``open_page``, ``fake_generator``, ``memorised_attack_inputs``, ``tiny_sd_pipeline``).
"""

from __future__ import annotations

import os

# The suite runs in one pytest-xdist worker per core (the README's test command). Each worker and the
# processes it starts get their share of the cores' threads before numpy and torch are imported: two processes
# each on every core make OpenMP threads spin against each other, ten times slower than one thread each.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _share)))

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
STUDIO_APP = str(Path(__file__).resolve().parents[1] / "studio" / "app.py")
# Waits end on the event they wait for, or when it can no longer happen (the process died); the
# ceiling only keeps a wedged run from hanging CI, so it is far above what a loaded machine needs.
CEILING_S = 600


def write_image_folder(root: Path, classes=("cat", "dog"), per_class: int = 6, size: int = 8,
                       splits: bool = False) -> Path:
    """PNG files root/<class>/<n>.png (or root/{train,test}/<class>/...), class-coloured."""
    rng = np.random.default_rng(0)
    for split in (("train", "test") if splits else (None,)):
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + 100 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{n:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "images")


@pytest.fixture
def project(tmp_path: Path):
    from pipeline.core.project import Project

    return Project.open(tmp_path / "project")


# -- the tiny experiment -------------------------------------------------------------------------------------
def make_tiny_config():
    """The quickstart shrunk to a ~30 s end-to-end run: 240 digits, 2 rounds, 4 + 2 shadows, one AM method."""
    from pipeline.audit import AuditConfig
    from pipeline.data.datasets import DatasetConfig
    from pipeline.presets import quickstart_config

    base = quickstart_config()
    return replace(
        base,
        dataset=DatasetConfig(limit=240),
        rounds=2,
        cardinality=1.0,
        generation_batch=16,  # several manifest batches per round (the kill test stops one mid-round)
        generator_options=(("train_steps", 6), ("block_out_channels", [16, 32]), ("checkpoint_every", 3)),
        # 2 epochs: no floor of steps, no early stopping (the presets size real runs)
        teacher=replace(base.teacher, epochs=2, min_steps=0, patience_share=None),
        distill=replace(base.distill, student=replace(base.distill.student, epochs=2, min_steps=0,
                                                      patience_share=None), regen_every=1),
        audit=AuditConfig(n_shadows=4, pipeline_shadows=2, workers=1, bootstrap=20),
        methods=(("am", {"images_per_class": 4, "steps": 5}),),
    )


@pytest.fixture
def tiny_config():
    """The tiny experiment's ExperimentConfig (a fresh one per test)."""
    return make_tiny_config()


@pytest.fixture(scope="session")
def audited_run(tmp_path_factory: pytest.TempPathFactory):
    """(project, experiment run id) of one finished tiny experiment with its audit, built once per session
    (``run_experiment`` of the tiny config takes about half a minute). Tests only read it."""
    from pipeline.core.project import Project
    from pipeline.experiment import run_experiment

    project = Project.open(tmp_path_factory.mktemp("audited") / "project")
    return project, run_experiment(make_tiny_config(), project).run_id


# -- background runs -----------------------------------------------------------------------------------------
def _wait_until(predicate, gone=lambda: False, timeout: float = CEILING_S) -> bool:
    """True once ``predicate()`` holds; stops early (with ``predicate()``'s answer) once ``gone()``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if gone():
            return predicate()
        time.sleep(0.3)  # a poll interval, not a wait for time to pass
    return False


@pytest.fixture(scope="session")
def wait_until():
    """``wait_until(predicate, gone=..., timeout=...)``: poll until the event or its impossibility."""
    return _wait_until


# -- finished runs without running them ----------------------------------------------------------------------
def _fake_metrics(teacher=(0.95, 0.60), student=(0.90, 0.52), dataset="digits", backend="scratch",
                  cardinality=1.0, classes=3) -> dict:
    def model(acc: float, auc: float) -> dict:
        return {"accuracy": acc, "per_class_accuracy": [acc] * classes, "aop": acc / (2 * auc) ** 2,
                "mia": {"auc": auc, "auc_ci95": [auc - 0.02, auc + 0.02], "tpr_at_0.1pct_fpr": 0.01,
                        "tpr_at_1pct_fpr": 0.05, "balanced_accuracy": 0.55, "n_members": 10, "n_nonmembers": 10,
                        "roc": {"fpr": [0.0, 0.001, 0.5, 1.0], "tpr": [0.0, 0.01, 0.6, 1.0]},
                        "loss_attack": {"auc": auc}},
                "train": {}, "history": [{"epoch": 1, "loss": 1.0, "val_accuracy": 0.5}]}

    return {"teacher": model(*teacher), "student": model(*student), "shadows": {"n": 4},
            "dataset": {"name": dataset, "fingerprint": "f", "members": 10, "nonmembers": 10, "test": 10},
            "synthetic": {"rounds": 2, "images_per_round": 10, "cardinality": cardinality},
            "generator": {"backend": backend}, "timings": {}, "seconds": 1.0}


def _add_finished_run(project, metrics: dict, status: str = "done") -> str:
    """An experiment run in the registry with a metrics.json, as experiment.py leaves it."""
    from pipeline.core.common import write_json

    registry = project.registry()
    run = registry.create("experiment", {"dataset": {"source": "digits"}})
    registry.start(run.id)
    write_json(run.run_dir / "metrics.json", metrics)
    if status == "done":
        registry.finish(run.id, teacher_accuracy=metrics["teacher"]["accuracy"])
    return run.id


@pytest.fixture(scope="session")
def fake_metrics():
    """``fake_metrics(teacher=(acc, auc), student=(acc, auc), ...)``: a metrics.json of a finished run."""
    return _fake_metrics


@pytest.fixture(scope="session")
def add_finished_run():
    """``add_finished_run(project, metrics, status="done")``: registers an experiment run, returns its id."""
    return _add_finished_run


# -- the studio in AppTest -----------------------------------------------------------------------------------
@pytest.fixture
def env(project, monkeypatch):
    """The project the studio opens (TCKR_PROJECT)."""
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    return project


def _open_page(page: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(STUDIO_APP, default_timeout=180).run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


@pytest.fixture(scope="session")
def open_page():
    """``open_page("runs")``: the studio's page in AppTest, run once, without an exception."""
    return _open_page


# -- generation without a generator --------------------------------------------------------------------------
def _fake_generator_class():
    from pipeline.generators import Generator

    class FakeGenerator(Generator):
        """Deterministic stand-in: the image's pixels encode its label and seed (pixel (0, 0); the blue
        channel is a gradient, so that each image is a picture, not one flat colour); can die mid-run."""

        name = "fake"
        config_class = dict

        def __init__(self, die_after_calls: int | None = None) -> None:
            super().__init__({})
            self.calls, self.die_after, self.generated = 0, die_after_calls, []

        def fit(self, images, prompts, labels, out_dir, progress=None):
            return {}

        def generate(self, prompts, labels, seeds, progress=None):
            if self.die_after is not None and self.calls == self.die_after:
                raise KeyboardInterrupt("killed")
            self.calls += 1
            self.generated += list(seeds)
            gradient = 7 + 16 * np.add.outer(np.arange(4), np.arange(4))
            return [Image.fromarray(np.dstack([np.full((4, 4), label * 20), np.full((4, 4), seed % 251),
                                               gradient]).astype(np.uint8)) for label, seed in zip(labels, seeds)]

        def save(self, directory):
            pass

        @classmethod
        def load(cls, directory, **overrides):
            return cls()

    return FakeGenerator


@pytest.fixture(scope="session")
def fake_generator():
    """The class ``FakeGenerator(die_after_calls=None)``: pixels encode label and seed; can die mid-run."""
    return _fake_generator_class()


@pytest.fixture(scope="session")
def prompt_pool():
    """Three classes with 2, 1 and 3 prompts."""
    from pipeline.captions.prompts import PromptPool

    return PromptPool(("cat", "dog", "eel"), (("cat: a", "cat: b"), ("dog: a",), ("eel: a", "eel: b", "eel: c")),
                      "test")


# -- membership inference -----------------------------------------------------------------------------------
def _memorised_attack_inputs(labels, shadow_in, is_member, z_labels, num_classes: int, views: int = 2,
                             online: bool = True, seed: int = 0):
    """AttackInputs of models that memorised what they trained on: the true class's logit is +12 on an
    example a model trained on and +0.5 elsewhere (over standard-normal logits) -- the target on
    ``is_member``, shadow i on ``shadow_in[i]``, nobody on the reference population."""
    from pipeline.privacy.attacks import AttackInputs

    rng = np.random.default_rng(seed)
    labels, z_labels, shadow_in = np.asarray(labels), np.asarray(z_labels), np.asarray(shadow_in, bool)

    def logits(trained: np.ndarray, y: np.ndarray) -> np.ndarray:  # trained: (models, examples) bool
        out = rng.normal(size=(len(trained), views, len(y), num_classes))
        out[:, :, np.arange(len(y)), y] += np.where(trained, 12.0, 0.5)[:, None, :]
        return out

    m, nz = len(shadow_in), len(z_labels)
    return AttackInputs(labels, logits(np.asarray(is_member, bool)[None], labels)[0], logits(shadow_in, labels),
                        shadow_in, z_labels, logits(np.zeros((1, nz), bool), z_labels)[0],
                        logits(np.zeros((m, nz), bool), z_labels), online=online)


@pytest.fixture(scope="session")
def memorised_attack_inputs():
    """``memorised_attack_inputs(labels, shadow_in, is_member, z_labels, num_classes, online=True)``: attack
    inputs where the target and the shadows memorised their training examples (an attack must rank the
    target's members first)."""
    return _memorised_attack_inputs


# -- tiny offline models -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_sd_pipeline():
    """``tiny_sd_pipeline(seed=0, sd2=False)``: a tiny random StableDiffusionPipeline built offline
    (tests/tiny_models.py; ``sd2=True``: the SD 2 layout with a v-prediction scheduler); skips without
    diffusers."""
    pytest.importorskip("diffusers")
    from tiny_models import tiny_sd_pipeline

    return tiny_sd_pipeline


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """A tiny random BLIP checkpoint (model + processor) saved to a folder (tests/tiny_models.py)."""
    from tiny_models import make_tiny_blip

    return make_tiny_blip(tmp_path_factory.mktemp("tiny-blip"))


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    """A tiny random BLIP-2 checkpoint (OPT decoder) saved to a folder (tests/tiny_models.py)."""
    from tiny_models import make_tiny_blip2

    return make_tiny_blip2(tmp_path_factory.mktemp("tiny-blip2"))


@pytest.fixture(scope="session")
def blip2_query_tokens() -> int:
    """How many Q-Former queries (= <image> tokens) the tiny BLIP-2 has."""
    from tiny_models import NUM_QUERY_TOKENS

    return NUM_QUERY_TOKENS

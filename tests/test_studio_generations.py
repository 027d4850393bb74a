"""pipeline.views.compare and the Generations page: versions of a trained generator side by side.

A tiny scratch generator (4 steps, checkpoints at 2 and 4) is trained once through ``finetune`` on
40 digits; the sd-lora case uses the tiny random Stable Diffusion of conftest's ``tiny_sd_pipeline``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pipeline.caption import CaptionConfig, caption
from pipeline.captions.captioners import CaptionerConfig
from pipeline.core.project import Project
from pipeline.data.datasets import DatasetConfig
from pipeline.finetune import FinetuneConfig, finetune
from pipeline.generators.scratch import ScratchConfig
from pipeline.views import compare

APP = str(Path(__file__).resolve().parents[1] / "studio" / "app.py")
DIGITS = DatasetConfig(limit=40)
TINY_SCRATCH = (("block_out_channels", (8, 16)), ("norm_groups", 4), ("train_steps", 4), ("batch_size", 8),
                ("sampling_steps", 2), ("generate_batch_size", 16), ("checkpoint_every", 2), ("threads", 1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(project, finetune run id, generator folder) of a tiny scratch generator trained on captions."""
    project = Project.open(tmp_path_factory.mktemp("gen") / "project")
    captions = caption(CaptionConfig(dataset=DIGITS, captioner=CaptionerConfig(class_template="a digit {label}")),
                       project)
    result = finetune(FinetuneConfig(dataset=DIGITS, generator="scratch", options=TINY_SCRATCH,
                                     store=captions.store, store_version=captions.version), project)
    return project, result.run_id, result.generator_dir


def test_scratch_versions_are_checkpoints_then_final(trained):
    project, run_id, generator_dir = trained
    assert compare.resolve_generator(project, run_id) == generator_dir
    variants = compare.list_variants(generator_dir)
    # issue 25 item 9: the checkpoint of the last step (4) is the final generator: listed once, as "final"
    assert [v.name for v in variants] == ["step 2", "final"]
    assert variants[-1].step == 4 and variants[-1].checkpoint is None
    assert [step for step, _ in compare.checkpoints(generator_dir)] == [2, 4]  # still kept on disk
    assert compare.default_variants(variants) == ["step 2", "final"]
    assert compare.sampling_defaults(generator_dir) == {"steps": 2, "guidance": ScratchConfig().guidance_scale}


def test_compare_uses_the_same_seed_for_every_version(trained):
    _, _, generator_dir = trained
    result = compare.compare_generations(generator_dir, ["0", "1", "2"], [0, 1, 2], [5, 6, 7],
                                         ["step 2", "final"], steps=2, guidance=1.5)
    assert result.variants == ("step 2", "final")
    assert all(len(result.images[v]) == 3 and result.images[v][0].size == (8, 8) for v in result.variants)
    pixels = {v: np.stack([np.asarray(im) for im in result.images[v]]) for v in result.variants}
    assert not np.array_equal(pixels["step 2"], pixels["final"])
    # the last checkpoint with its EMA weights is the final generator (why it is not listed as a version)
    step, folder = compare.checkpoints(generator_dir)[-1]
    last = compare.load_variant(compare.Variant(f"step {step}", "scratch", generator_dir, folder, step=step),
                                sampling_steps=2, guidance_scale=1.5)
    assert np.array_equal(np.stack([np.asarray(im) for im in last.generate(["0", "1", "2"], [0, 1, 2], [5, 6, 7])]),
                          pixels["final"])
    with pytest.raises(ValueError, match="unknown variants"):
        compare.compare_generations(generator_dir, ["0"], [0], [0], ["base"])
    with pytest.raises(ValueError, match="as many prompts"):
        compare.compare_generations(generator_dir, ["0"], [0, 1], [0])


def test_loader_gets_the_sampling_overrides(trained):
    _, _, generator_dir = trained
    calls = []

    def loader(variant, **overrides):
        calls.append((variant.name, overrides))
        return compare.load_variant(variant, **overrides)

    compare.compare_generations(generator_dir, ["0"], [0], [0], ["final"], steps=3, guidance=1.0, loader=loader)
    assert calls == [("final", {"sampling_steps": 3, "guidance_scale": 1.0})]
    assert compare.sampling_overrides("sd-lora", 5, 7.5) == {"num_inference_steps": 5, "guidance_scale": 7.5}
    from pipeline.core.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="valid names: scratch, sd-lora"):
        compare.sampling_overrides("gan")


def test_class_grid_and_resolution_errors(trained):
    project, _, _ = trained
    prompts, labels, seeds = compare.class_grid(["cat", "dog"], 2, seed=10)
    assert prompts == ["cat", "cat", "dog", "dog"] and labels == [0, 0, 1, 1] and seeds == [10, 11, 10, 11]
    with pytest.raises(ValueError, match="outside the project"):
        compare.resolve_generator(project, "../../etc")
    with pytest.raises(FileNotFoundError):
        compare.resolve_generator(project, "runs")


def test_generations_page_side_by_side_and_grid(trained, monkeypatch):
    project, _, _ = trained
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/generations.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.button(key="gen_side").click().run()
    assert not at.error, [e.value for e in at.error]
    # 3 chosen captions x (real image + 2 versions: step 2, final)
    assert len(at.get("image")) == 3 * 3
    versions = next(m for m in at.multiselect if m.label == "Versions to compare")
    assert versions.options == ["step 2", "final (step 4)"]  # the step-4 checkpoint is "final": shown once
    assert any(c.value.startswith("prompt: 0: a digit 0") for c in at.caption)
    at.slider(key="gen_per_class").set_value(2).run()
    at.button(key="gen_grid").click().run()
    assert not at.error
    # plus, for each of the 2 versions, one row per class of 2 images, each in a cell of its own (issue 25
    # item 9: a list in one st.image was drawn edge to edge), with space between the cells
    assert len(at.get("image")) == 3 * 3 + 2 * 10 * 2
    assert sum(len(c.get("image")) == 1 for c in at.columns) == 3 * 3 + 2 * 10 * 2


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread (see test_sd_lora)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sd_lora_versions_are_base_checkpoints_and_fine_tuned(tmp_path, one_thread, tiny_sd_pipeline):
    base = tmp_path / "tiny-sd"
    tiny_sd_pipeline().save_pretrained(base)
    project = Project.open(tmp_path / "project")
    options = (("base", str(base)), ("rank", 4), ("alpha", 8.0), ("lr", 1e-2), ("steps", 2), ("batch_size", 2),
               ("resolution", 16), ("checkpoint_every", 1), ("device", "cpu"), ("dtype", "fp32"),
               ("num_inference_steps", 2), ("sample_batch_size", 4))
    result = finetune(FinetuneConfig(dataset=DIGITS, generator="sd-lora", options=options), project)
    variants = compare.list_variants(result.generator_dir)
    # the step-2 checkpoint is the fine-tuned LoRA itself: listed once (issue 25 item 9)
    assert [v.name for v in variants] == ["base", "step 1", "fine-tuned"] and variants[-1].step == 2
    assert compare.default_variants(variants) == ["base", "fine-tuned"]
    out = compare.compare_generations(result.generator_dir, ["a digit 3"] * 2, [3, 3], [1, 2],
                                      ["base", "fine-tuned"], steps=2)
    pixels = {v: np.stack([np.asarray(im) for im in out.images[v]]) for v in out.variants}
    step, folder = compare.checkpoints(result.generator_dir)[-1]
    last = compare.load_variant(compare.Variant(f"step {step}", "sd-lora", result.generator_dir, folder, step=step),
                                num_inference_steps=2)
    assert np.array_equal(np.stack([np.asarray(im) for im in last.generate(["a digit 3"] * 2, [3, 3], [1, 2])]),
                          pixels["fine-tuned"])  # the last checkpoint is the final LoRA
    assert not np.array_equal(pixels["base"], pixels["fine-tuned"])  # the LoRA changes the images
    base_generator = compare.load_variant(variants[0])
    assert not base_generator.has_lora


def test_nearest_real_images_tab_shows_each_synthetic_image_with_its_neighbours(trained, monkeypatch):
    """Issue 11.4: the memorisation audit's per-image neighbours, synthetic | member | non-member."""
    import json

    from pipeline.classifiers.models import build_classifier
    from pipeline.data.context import DataContext
    from pipeline.experiment import ExperimentConfig
    from pipeline.fidelity import round_memorisation
    from pipeline.generate import GenerateConfig, synthesize

    project, _, generator_dir = trained
    config = ExperimentConfig(dataset=DIGITS, rounds=1)
    record = project.registry().create("experiment", config)
    made = synthesize(GenerateConfig(generator=str(generator_dir), dataset=DIGITS, num_images=10,
                                     out_dir=str(record.run_dir / "synthetic" / "round-0")), project)
    data = DataContext.open(DIGITS)
    dataset = data.dataset
    teacher = build_classifier(config.teacher, data.num_classes)  # untrained: any feature space will do
    memorisation = round_memorisation(teacher, data, [made.synthetic], config.teacher.image_size,
                                      config.memorisation)
    with project.registry().track(record.id):
        pass
    assert memorisation["rounds"][0]["pixels"]["images"] == 10

    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    at = AppTest.from_file(APP, default_timeout=120).run()
    at.switch_page("views/generations.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.number_input(key="mem_limit").set_value(4).run()
    at.selectbox(key="mem_space").set_value("pixels").run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    copies = memorisation["rounds"][0]["pixels"]["copies"]
    assert any(f"{copies} of 10 synthetic images flagged as copies" in m.value for m in at.markdown)
    assert len(at.get("image")) == 4 * 3  # synthetic | nearest member | nearest non-member
    first = json.loads((record.run_dir / "synthetic" / "round-0" / "neighbours.jsonl").read_text().splitlines()[0])
    assert first["pixels"]["member"] in dataset.membership().members

"""The stakeholder demo (pipeline.views.demo + studio/demo.py) on a fake finished run, without a server;
and the launch commands of the studio and the demo (localhost by default)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.captions.prompts import pool_from_class_names
from pipeline.classifiers.models import build_classifier
from pipeline.classifiers.train import images_to_tensor
from pipeline.core.common import write_json
from pipeline.data.datasets import DatasetConfig
from pipeline.generate import GenerationPlan, generate_set
from pipeline.generators import Generator
from pipeline.presets import quickstart_config
from pipeline.views import demo as demo_lib

CLASSES = ["cat", "dog", "frog"]


class ColourGenerator(Generator):
    """Stands in for a trained generator: an 8x8 image whose colour depends on the class."""

    name = "colour"
    config_class = dict

    def fit(self, *args, **kwargs):  # pragma: no cover - not used
        return {}

    def generate(self, prompts, labels, seeds, progress=None):
        colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
        shade = np.add.outer(np.arange(8), np.arange(8))[..., None]  # a picture, not one flat colour
        return [Image.fromarray((np.array(colours[y]) + shade).astype(np.uint8)) for y in labels]

    def save(self, directory):  # pragma: no cover - not used
        pass

    @classmethod
    def load(cls, directory, **overrides):  # pragma: no cover - not used
        return cls({})


@pytest.fixture
def finished_run(project, fake_metrics):
    """An experiment run as experiment.py leaves it: config, teacher.pt, student.pt, synthetic rounds."""
    config = replace(quickstart_config(), dataset=DatasetConfig(limit=40))
    registry = project.registry()
    run = registry.create("experiment", config)
    for role, recipe in (("teacher", config.teacher), ("student", config.distill.student)):
        torch.save(build_classifier(recipe, len(CLASSES)).state_dict(), run.run_dir / f"{role}.pt")
    for k in range(2):
        generate_set(ColourGenerator({}), pool_from_class_names(CLASSES), GenerationPlan(total=6, round=k),
                     run.run_dir / "synthetic" / f"round-{k}")
    write_json(run.run_dir / "metrics.json", fake_metrics(classes=len(CLASSES)))
    registry.finish(run.id)
    return project, run.id


def test_load_demo_rebuilds_models_and_lists_only_synthetic_images(finished_run, monkeypatch):
    project, run_id = finished_run

    def no_real_data(*args, **kwargs):
        raise AssertionError("the demo must not load the real dataset")

    monkeypatch.setattr("pipeline.data.datasets.load_dataset", no_real_data)
    demo = demo_lib.load_demo(project, run_id)
    assert demo.class_names == CLASSES and demo.input_size == (8, 8)
    assert set(demo.models) == {"teacher", "student"} and not demo.models["teacher"].training
    synthetic = project.runs_dir / run_id / "synthetic"
    assert len(demo.samples) == 12 and all(synthetic in s.path.parents for s in demo.samples)
    assert {s.round for s in demo.samples} == {0, 1}
    assert demo.metrics["teacher"]["accuracy"] == 0.95


def test_predict_gives_sorted_top_k_probabilities(finished_run):
    project, run_id = finished_run
    demo = demo_lib.load_demo(project, run_id)
    image = Image.new("RGB", (64, 48), (200, 30, 30))  # any size: resized to the models' input
    out = demo_lib.predict(demo, image, top_k=2)
    assert set(out) == {"teacher", "student"}
    for predictions in out.values():
        probs = [p.probability for p in predictions]
        assert len(predictions) == 2 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(p.class_name in CLASSES for p in predictions)
    # the same numbers as the teacher on the resized image
    x = images_to_tensor([image.resize((8, 8), Image.Resampling.BICUBIC)])
    with torch.no_grad():
        expected = torch.softmax(demo.models["teacher"](x)[0], dim=0).max().item()
    assert out["teacher"][0].probability == pytest.approx(expected, rel=1e-5)
    assert len(demo_lib.predict(demo, image, top_k=10)["student"]) == 3  # capped at the number of classes
    assert demo_lib.as_scores(out["teacher"]) == {p.class_name: p.probability for p in out["teacher"]}
    with pytest.raises(ValueError, match="top_k"):
        demo_lib.predict(demo, image, top_k=0)


def test_samples_of_cover_every_class(finished_run):
    project, run_id = finished_run
    demo = demo_lib.load_demo(project, run_id)
    first = demo_lib.samples_of(demo, limit=3)
    assert [s.class_name for s in first] == CLASSES
    dogs = demo_lib.samples_of(demo, "dog")
    assert len(dogs) == 4 and {s.class_name for s in dogs} == {"dog"}
    image = np.asarray(Image.open(dogs[0].path))
    assert tuple(image[0, 0]) == (30, 200, 30)


def test_load_demo_errors(finished_run):
    project, run_id = finished_run
    with pytest.raises(KeyError):
        demo_lib.load_demo(project, "experiment-nope")
    other = project.registry().create("caption", {})
    with pytest.raises(ValueError, match="experiment run"):
        demo_lib.load_demo(project, other.id)
    (project.runs_dir / run_id / "student.pt").unlink()
    with pytest.raises(FileNotFoundError, match="student.pt"):
        demo_lib.load_demo(project, run_id)


def test_build_demo_makes_blocks_without_launching(finished_run):
    gr = pytest.importorskip("gradio")
    from studio.demo import build_demo

    project, run_id = finished_run
    blocks = build_demo(project, run_id)
    assert isinstance(blocks, gr.Blocks)
    kinds = {type(b).__name__ for b in blocks.blocks.values()}
    assert {"Image", "Label", "Gallery", "Slider", "Dropdown"} <= kinds
    labels = [b.label for b in blocks.blocks.values() if type(b).__name__ == "Label"]
    assert labels == ["teacher (real data)", "student on synthetic data (GKD)"]  # as on the Trade-offs page
    markdown = " ".join(b.value for b in blocks.blocks.values() if type(b).__name__ == "Markdown")
    assert "| student on synthetic data (GKD) | 0.900 | 0.520 |" in markdown and "0.5 = a coin flip" in markdown


def test_launch_commands_bind_to_localhost(tmp_path):
    from pipeline.core.launch import STUDIO_APP, demo_command, studio_command

    command = studio_command(tmp_path, port=8765)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4] == str(STUDIO_APP)
    flags = dict(zip(command[5::2], command[6::2]))
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8765"
    assert flags["--browser.gatherUsageStats"] == "false" and flags["--server.headless"] == "true"
    assert command[-2:] == ["--project", str(tmp_path.resolve())]
    demo = demo_command(tmp_path, "experiment-x")
    assert demo[1:3] == ["-m", "studio.demo"] and demo[demo.index("--host") + 1] == "127.0.0.1"
    assert Path(STUDIO_APP).is_file()


def test_cli_studio_and_demo_commands(finished_run, monkeypatch):
    from pipeline.cli.main import main

    project, run_id = finished_run
    calls = []
    monkeypatch.setattr("pipeline.core.launch.launch_studio", lambda root, host, port: calls.append((root, host, port)) or 0)
    monkeypatch.setattr("pipeline.core.launch.launch_demo",
                        lambda root, run, host, port: calls.append((root, run, host, port)) or 0)
    assert main(["studio", "--project", str(project.root), "--port", "8600"]) == 0
    assert main(["demo", "--project", str(project.root), "--run", run_id]) == 0
    assert calls == [(project.root, "127.0.0.1", 8600), (project.root, run_id, "127.0.0.1", 7860)]
    assert main(["demo", "--project", str(project.root), "--run", "experiment-missing"]) == 2


def test_demo_start_up_says_its_address_without_gradios_share_hint(tmp_path, monkeypatch, capsys):
    """Issue 25 item 8: Gradio's "set `share=True` in `launch()`" is advice a user of `python -m pipeline
    demo` cannot act on; the demo says where it runs instead."""
    gr = pytest.importorskip("gradio")
    import socket

    from studio import demo

    made = []

    def tiny_demo(project, run_id):
        with gr.Blocks() as blocks:
            gr.Markdown(f"run {run_id}")
        made.append(blocks)
        return blocks

    monkeypatch.setattr(demo, "build_demo", tiny_demo)
    monkeypatch.setattr(gr.Blocks, "block_thread", lambda self: None)  # serve, but return at once
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        assert demo.main(["--run", "experiment-x", "--project", str(tmp_path / "p"), "--port", str(port)]) == 0
    finally:
        for blocks in made:
            blocks.close()
    out = capsys.readouterr().out
    assert "share=True" not in out and "public link" not in out
    assert f"The demo of run experiment-x is on http://127.0.0.1:{port}" in out

"""The paper's route end to end at toy size, offline, on the CPU: ``run --preset paper`` pointed at local
model folders (a tiny Stable Diffusion 2 (768-v) layout pipeline and a tiny BLIP-2, saved with
``save_pretrained``; a timm MobileNetV3 without pretrained weights) with ``--base``, ``--captioner-model``
and ``--classifier``, its printed config shrunk to a few images, steps and shadows
(``benchmarks/paper_toy.py``, which runs the same toy on a GPU): BLIP-2 captions -> LoRA fine-tune ->
generation -> teacher -> student -> fidelity -> audit in both modes; the studio lists the run."""

from __future__ import annotations

import pytest
import torch

from benchmarks import paper_toy
from pipeline.captions.store import caption_store
from pipeline.core.common import read_json
from pipeline.core.project import Project
from pipeline.views.legend import model_name

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_sd_pipeline, blip2_dir):
    """(project, run id, metrics.json, SD folder, BLIP-2 folder) of one toy paper run (about 15 s)."""
    root = tmp_path_factory.mktemp("paper")
    sd2 = root / "sd2-768-v"
    tiny_sd_pipeline(sd2=True).save_pretrained(sd2)
    images = paper_toy.write_images(root / "images")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than their maths on a busy machine
    try:
        run_id, metrics, _ = paper_toy.run_toy(images, sd2, blip2_dir, root / "project", "cpu")
    finally:
        torch.set_num_threads(threads)
    return Project.open(root / "project"), run_id, metrics, sd2, blip2_dir


def test_the_paper_preset_runs_every_stage_on_local_model_folders(toy_run):
    project, run_id, metrics, sd2, blip2 = toy_run
    registry = project.registry()
    record = registry.get(run_id)
    assert record.status == "done"
    # the preset's choices, pointed at the local folders by the flags
    config = record.config
    options = dict(config["generator_options"])
    assert config["generator"] == "sd-lora" and options["base"] == str(sd2) and options["rank"] == 4
    assert config["captioner"] == {**config["captioner"], "name": "blip2", "model": str(blip2)}
    assert config["teacher"]["model"] == config["distill"]["student"]["model"] == paper_toy.TOY_CLASSIFIER
    assert config["teacher"]["pretrained"] is False and config["template"] == "{caption}"
    # every stage ran, in the order of the loop
    assert set(paper_toy.STAGES) <= set(metrics["timings"])
    kinds = [r.kind for r in registry.list()]
    assert {"caption", "finetune", "generate", "teacher", "student", "audit"} <= set(kinds)
    # 1. BLIP-2 captions from the local folder
    [store] = {link.ref.rpartition("@")[0] for link in record.links if link.role == "captions"}
    captions = caption_store(project, store).records()
    assert captions and {c.source["captioner"] for c in captions.values()} == {"blip2"}
    assert {c.source["model"] for c in captions.values()} == {str(blip2)}
    # 2. a LoRA fine-tuned on the v-prediction base, with its checkpoints
    [finetune] = [r for r in registry.list(kind="finetune")]
    assert finetune.metrics["prediction_type"] == "v_prediction" and finetune.metrics["steps_run"] == 2
    # 3. two synthetic rounds of 16 px images; 4. teacher and student; 5. the audit in both modes
    assert metrics["synthetic"]["rounds"] == 2 and metrics["synthetic"]["images_per_round"] > 0
    assert 0.0 <= metrics["teacher"]["accuracy"] <= 1.0 and 0.0 <= metrics["student"]["accuracy"] <= 1.0
    assert set(metrics["student"]["mia_modes"]) == {"transfer", "pipeline"}
    shadows = metrics["audit"]["shadows"]
    assert (shadows["transfer"]["n"], shadows["pipeline"]["n"]) == (2, 1)
    assert "frechet_distance" in metrics["fidelity"]
    assert read_json(record.run_dir / "metrics.json") == metrics


def test_the_studio_shows_the_toy_paper_run(toy_run, monkeypatch, open_page):
    project, run_id, _, _, _ = toy_run
    monkeypatch.setenv("TCKR_PROJECT", str(project.root))
    runs = open_page("runs")
    assert run_id in runs.selectbox(key="runs_selected").options
    runs.selectbox(key="runs_selected").set_value(run_id).run()
    assert {m.label: m.value for m in runs.metric}["Status"] == "done"
    tradeoffs = open_page("tradeoffs")
    table = tradeoffs.table[0].value
    mine = table[table["run"] == run_id] if "run" in table.columns else table  # a run column with several runs
    assert set(mine["model"]) >= {model_name("teacher"), model_name("student")}
    assert "sd-lora" in tradeoffs.multiselect(key="to_generators").options

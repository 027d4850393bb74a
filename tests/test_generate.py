"""Synthetic-set generation: class balance, seeds, manifest, and resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.captions.prompts import pool_from_file
from pipeline.generate import GenerationPlan, SyntheticSet, balanced_total, generate_set, plan_items


def test_plan_is_class_balanced_seeded_and_per_round(prompt_pool):
    items = plan_items(prompt_pool, GenerationPlan(total=10, seed=1))
    counts = np.bincount([i.label for i in items])
    assert counts.tolist() == [4, 3, 3]
    assert [i.index for i in items] == list(range(10))
    assert len({i.seed for i in items}) == 10
    assert all(i.prompt.startswith(prompt_pool.class_names[i.label]) for i in items)
    assert plan_items(prompt_pool, GenerationPlan(total=10, seed=1)) == items
    other_round = plan_items(prompt_pool, GenerationPlan(total=10, seed=1, round=1))
    assert {i.seed for i in other_round}.isdisjoint({i.seed for i in items})
    assert {i.prompt for i in items if i.label == 0} == {"cat: a", "cat: b"}  # whole pool used


def test_balanced_total_and_bad_input(prompt_pool):
    assert balanced_total(700, 1.5, 10) == 1050
    assert balanced_total(3, 0.1, 10) == 10
    with pytest.raises(ValueError, match="cardinality"):
        balanced_total(10, 0, 2)
    with pytest.raises(ValueError, match="at least one image per class"):
        plan_items(prompt_pool, GenerationPlan(total=2))


def test_manifest_matches_files(tmp_path: Path, prompt_pool, fake_generator):
    synthetic = generate_set(fake_generator(), prompt_pool, GenerationPlan(total=9, batch_size=4), tmp_path, "fake-run")
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    files = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "images").rglob("*.png"))
    assert sorted(entry["file"] for entry in lines) == files and len(files) == 9
    for entry in lines:
        pixel = np.asarray(Image.open(tmp_path / entry["file"]))[0, 0]
        assert pixel[0] == entry["label"] * 20 and pixel[1] == entry["seed"] % 251
        assert entry["class"] == prompt_pool.class_names[entry["label"]] and entry["generator"] == "fake-run"
    assert len(synthetic) == 9 and synthetic.labels().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_resume_after_kill_makes_each_image_exactly_once(tmp_path: Path, prompt_pool, fake_generator):
    plan = GenerationPlan(total=12, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        generate_set(fake_generator(die_after_calls=2), prompt_pool, plan, tmp_path)
    # simulate a kill in the middle of the next manifest write and a leftover temp file
    with open(tmp_path / "manifest.jsonl", "a") as f:
        f.write('{"index": 9, "lab')
    leftover = tmp_path / "images" / "dog" / ".r00-000008.png.x.tmp"
    leftover.write_bytes(b"half")
    with pytest.raises(ValueError, match="incomplete"):
        SyntheticSet.load(tmp_path)

    second = fake_generator()
    synthetic = generate_set(second, prompt_pool, plan, tmp_path)
    expected = {i.seed for i in plan_items(prompt_pool, plan)}
    assert len(second.generated) == 4  # only the batch the killed run never finished
    assert not leftover.exists()
    assert {i.seed for i in synthetic.items} == expected and len(synthetic) == 12
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len({json.loads(x)["index"] for x in lines}) == 12
    # a third run has nothing left to do
    third = fake_generator()
    generate_set(third, prompt_pool, plan, tmp_path)
    assert third.generated == []


def test_an_image_without_its_manifest_line_is_redone(tmp_path: Path, prompt_pool, fake_generator):
    plan = GenerationPlan(total=6, batch_size=3)
    generate_set(fake_generator(), prompt_pool, plan, tmp_path)
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # killed before the last line
    again = fake_generator()
    synthetic = generate_set(again, prompt_pool, plan, tmp_path)
    assert len(again.generated) == 1 and len(synthetic) == 6


def test_a_different_plan_in_the_same_folder_is_refused(tmp_path: Path, prompt_pool, fake_generator):
    generate_set(fake_generator(), prompt_pool, GenerationPlan(total=6), tmp_path)
    with pytest.raises(ValueError, match="different generation plan"):
        generate_set(fake_generator(), prompt_pool, GenerationPlan(total=6, seed=3), tmp_path)


def test_prompt_files(tmp_path: Path):
    (tmp_path / "p.json").write_text(json.dumps({"cat": ["on a mat"], "dog": ["barking"]}))
    pool = pool_from_file(tmp_path / "p.json", ["cat", "dog"])
    assert pool.prompts == (("cat: on a mat",), ("dog: barking",))
    (tmp_path / "p.txt").write_text("cat\ton a mat\ndog\tbarking\ndog\trunning\n")
    assert pool_from_file(tmp_path / "p.txt", ["cat", "dog"], "caption").prompts[1] == ("barking", "running")
    with pytest.raises(ValueError, match="no prompts for classes \\['eel'\\]"):
        pool_from_file(tmp_path / "p.txt", ["cat", "dog", "eel"])


def test_finishing_a_set_with_another_generator_is_refused(tmp_path: Path, prompt_pool, fake_generator):
    """Issue 10.1: a resumed set never mixes two generators' images."""
    from pipeline.generate import generator_identity

    first, second = tmp_path / "gen-a", tmp_path / "gen-b"
    for folder, weights in ((first, b"aaaa"), (second, b"bbbb")):
        (folder / "unet").mkdir(parents=True)
        (folder / "backend.json").write_text(json.dumps({"backend": "fake", "run": folder.name}))
        (folder / "unet" / "w.safetensors").write_bytes(weights)
    plan, out = GenerationPlan(total=12, batch_size=4), tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        generate_set(fake_generator(die_after_calls=1), prompt_pool, plan, out, generator_id=generator_identity(str(first)))
    with pytest.raises(ValueError, match=r"another generator \(gen-a, weights .*not gen-b.*mix two generators"):
        generate_set(fake_generator(), prompt_pool, plan, out, generator_id=generator_identity(str(second)))
    # other sampling options make other images too
    with pytest.raises(ValueError, match="mix two generators"):
        generate_set(fake_generator(), prompt_pool, plan, out,
                     generator_id=generator_identity(str(first), {"guidance_scale": 3.0}))
    # the same weights (a copied or retrained-identical generator) may finish it
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(first, copy)
    finisher = fake_generator()
    synthetic = generate_set(finisher, prompt_pool, plan, out, generator_id=generator_identity(str(copy)))
    assert len(synthetic) == 12 and len(finisher.generated) == 8
    recorded = json.loads((out / "plan.json").read_text())["generator_id"]
    assert recorded["run"] == "gen-a" and len(recorded["weights_sha256"]) == 64

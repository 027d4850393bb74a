"""Issue 10.7 and 10.8: oversized images are unreadable-with-a-reason, 16-bit scans are scaled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import write_image_folder
from PIL import Image

from pipeline.cli.main import main
from pipeline.data.datasets import load_dataset, parse_dataset_spec, to_rgb


def test_a_decompression_bomb_is_skipped_with_its_reason(tmp_path: Path, monkeypatch, capsys):
    root = write_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=6, size=8)
    Image.new("L", (100, 100)).save(root / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 10,000 px is over twice the limit: an error
    dataset = load_dataset(parse_dataset_spec(f"imagefolder:{root}"))
    kept = [r.id for r, _ in dataset.iter_images()]
    assert len(kept) == 12 and any("too large to decode safely" in why for why in dataset.skipped.values())
    assert main(["-q", "datasets", "inspect", "--dataset", f"imagefolder:{root}", "--check"]) == 0
    assert "too large to decode safely" in capsys.readouterr().out


def test_sixteen_bit_greys_are_scaled_not_clipped(tmp_path: Path):
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "scan.png")  # a 16-bit PNG, as scanners and X-ray exports write
    with Image.open(tmp_path / "scan.png") as image:
        assert image.mode.startswith("I")
        rgb = np.asarray(to_rgb(image))
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 120 <= rgb[4, 0, 0] <= 135  # a ramp, not white
    assert (rgb[..., 0] == rgb[..., 2]).all()
    # 8-bit data in a 32-bit container keeps its values; floats in [0, 1] are stretched to 0-255
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 200, np.int32))))[0, 0, 0] == 200
    assert np.asarray(to_rgb(Image.fromarray(np.full((2, 2), 0.5, np.float32))))[0, 0, 0] == 128


def test_an_unreadable_member_is_skipped_in_every_stage_and_listed_once(tmp_path: Path, caplog, tiny_config):
    """Issue 10.6: a member image nobody can read used to block `run` ("caption them first")."""
    import json
    import logging
    from dataclasses import replace

    from pipeline.core.project import Project
    from pipeline.experiment import run_experiment

    root = write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=20, size=8, splits=True)
    spec = parse_dataset_spec(f"imagefolder:{root}")
    dataset = load_dataset(spec)
    member = dataset.record(dataset.membership().members[0])
    nonmember = dataset.record(dataset.membership().nonmembers[0])
    for record in (member, nonmember):
        Path(dataset.describe_location(record)).write_bytes(b"not a png")  # truncated upload, disk error...
    caplog.set_level(logging.WARNING)
    result = run_experiment(replace(tiny_config, dataset=spec), Project.open(tmp_path / "project"))
    metrics = json.loads((tmp_path / "project" / "runs" / result.run_id / "metrics.json").read_text())
    assert metrics["dataset"]["unreadable"] == 2
    listed = json.loads((tmp_path / "project" / "runs" / result.run_id / "unreadable_images.json").read_text())
    assert set(listed) == {member.id, nonmember.id}
    for record in (member, nonmember):  # one warning per image, though every stage met it
        assert sum(f"cannot read image {record.id!r}" in m for m in caplog.messages) == 1, caplog.messages

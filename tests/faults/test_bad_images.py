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

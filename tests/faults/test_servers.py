"""Issue 23 item 11: the servers. ``demo --port <busy>`` (and ``studio``) is refused in one line before a server
starts, as the studio's own check does, instead of a Gradio traceback half a minute later; an uploaded image
(the demo) and a dataset image (what the studio shows) have their pixel count checked from the header, far
below Pillow's bomb limit, so a 10 KB PNG of 9400 x 9400 bilevel pixels is refused without being decoded."""

from __future__ import annotations

import socket
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import write_image_folder
from PIL import ImageFile

from pipeline.cli.main import main

SIDE = 9400  # the PNG: 88.4 million pixels, under Pillow's warning (89.5 M) and error (179 M) limits


def bilevel_png(path: Path, side: int = SIDE) -> Path:
    """An all-black 1-bit PNG of side x side pixels (about 11 KB), written without ever holding its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def no_huge_decode(monkeypatch):
    """Decoding an image of over 50 million pixels fails the test (and spares its memory)."""
    load = ImageFile.ImageFile.load

    def guarded(self):
        if self.size[0] * self.size[1] > 50_000_000:
            raise AssertionError(f"a {self.size} image was decoded")
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)


# -- a busy port -----------------------------------------------------------------------------------------------
@pytest.fixture
def busy_port():
    """A port another server listens on (with SO_REUSEADDR, as uvicorn and tornado set it)."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.fixture
def no_server(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("a server process was started")

    monkeypatch.setattr("pipeline.core.launch.subprocess.Popen", started)


def _one_line_error(capsys, code: int, expected: str) -> None:
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err and "pass a free --port" in err, err


def test_demo_on_a_busy_port_is_one_line_before_a_server_starts(project, add_finished_run, fake_metrics,
                                                               busy_port, no_server, capsys):
    run_id = add_finished_run(project, fake_metrics())
    code = main(["demo", "--project", str(project.root), "--run", run_id, "--port", str(busy_port)])
    _one_line_error(capsys, code, f"cannot start the demo on 127.0.0.1:{busy_port}: Address already in use")


def test_studio_on_a_busy_port_is_one_line_before_a_server_starts(project, busy_port, no_server, capsys):
    code = main(["studio", "--project", str(project.root), "--port", str(busy_port)])
    _one_line_error(capsys, code, f"cannot start the studio on 127.0.0.1:{busy_port}: Address already in use")


def test_the_demo_module_on_its_own_checks_the_port_before_loading_the_run(busy_port, monkeypatch, capsys):
    import studio.demo

    monkeypatch.setattr(studio.demo, "build_demo", lambda *a: pytest.fail("the run was loaded"))
    code = studio.demo.main(["--run", "experiment-x", "--port", str(busy_port)])
    _one_line_error(capsys, code, f"cannot start the demo on 127.0.0.1:{busy_port}")


def test_a_free_port_is_free():
    from pipeline.core.launch import port_taken

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert port_taken("127.0.0.1", port) is None


# -- an image with too many pixels -----------------------------------------------------------------------------
@pytest.fixture
def demo_page(monkeypatch):
    """The demo's Gradio page over a stand-in run (its models never called); returns (blocks, predictions)."""
    import studio.demo

    fake = SimpleNamespace(run_id="experiment-x", class_names=["cat", "dog"], metrics={}, samples=[])
    predictions: list = []
    monkeypatch.setattr(studio.demo, "load_demo", lambda project, run_id: fake)
    monkeypatch.setattr(studio.demo, "predict", lambda demo, image, k: predictions.append(image) or {
        "teacher": [], "student": []})
    return studio.demo.build_demo(None, "experiment-x"), predictions


def test_the_demo_refuses_a_huge_upload_in_one_line_without_decoding_it(tmp_path, demo_page, no_huge_decode):
    import gradio as gr
    from gradio.data_classes import ImageData

    blocks, predictions = demo_page
    upload = bilevel_png(tmp_path / "big.png")
    assert upload.stat().st_size < 20_000
    (image,) = [b for b in blocks.blocks.values() if isinstance(b, gr.Image)]
    value = image.preprocess(ImageData(path=str(upload), orig_name="big.png"))  # what Gradio hands classify
    (classify,) = [f.fn for f in blocks.fns.values() if f.name == "classify"][:1]
    with pytest.raises(gr.Error) as refused:
        classify(value, 2)
    message = refused.value.message
    assert message == ("the uploaded image is 9,400 x 9,400 = 88,360,000 pixels, more than the 25,000,000 an image "
                       "may have here; resize it (e.g. to at most 5000 x 5000)")
    assert not predictions

    small = bilevel_png(tmp_path / "small.png", side=16)  # an ordinary upload still gets its predictions
    classify(image.preprocess(ImageData(path=str(small), orig_name="small.png")), 2)
    assert [p.size for p in predictions] == [(16, 16)]


def test_a_huge_dataset_image_is_unreadable_with_its_size_not_decoded(tmp_path, no_huge_decode):
    from pipeline.data.datasets import load_dataset, parse_dataset_spec

    root = write_image_folder(tmp_path / "images")
    bilevel_png(root / "cat" / "huge.png")
    dataset = load_dataset(parse_dataset_spec(f"imagefolder:{root}"))
    assert len([r for r, _ in dataset.iter_images()]) == 12  # every other image
    (reason,) = dataset.skipped.values()
    assert "cat/huge.png" in reason and "9,400 x 9,400 = 88,360,000 pixels, more than the 25,000,000" in reason


def test_the_studio_shows_no_thumbnail_for_a_huge_dataset_image(tmp_path, no_huge_decode):
    from pipeline.data.datasets import parse_dataset_spec
    from studio import shared

    root = write_image_folder(tmp_path / "images")
    bilevel_png(root / "cat" / "huge.png")
    key = shared.dataset_key(parse_dataset_spec(f"imagefolder:{root}"))
    huge, fine = shared.thumbnails(key, ("cat/huge.png", "cat/000.png"))
    assert huge is None and fine.startswith("data:image/png;base64,")

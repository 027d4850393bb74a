"""Issue 23 item 10: `caption --captioner blip` without a network fails in one line within seconds (one short
probe of the Hub, not minutes of huggingface_hub's retries), saying to set HF_HUB_OFFLINE=1 or give a local
folder. No test here reaches the network: every connection attempt of the process is refused by a stand-in
for ``socket.create_connection``, which the probe and huggingface_hub's HTTP client both call."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from huggingface_hub import constants

from pipeline.cli.main import main
from pipeline.core.machine import hub_unreachable

UNCACHED = "nobody/uncached-blip"  # never in a local cache: the captioner has to ask the Hub


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails as on a machine without a network; returns who tried, in order: "probe"
    (the Hub probe, which runs in a thread of its own) or "client" (any other caller)."""
    tried: list[str] = []

    def refuse(address, *args, **kwargs):
        tried.append("client" if threading.current_thread() is threading.main_thread() else "probe")
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as without the variable, also where CI sets it
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    return tried


def _caption_blip(project, folder) -> int:
    return main(["-q", "caption", "--project", str(project.root), "--dataset", f"imagefolder:{folder}",
                 "--captioner", "blip", "--model", UNCACHED, "--device", "cpu"])


def test_blip_without_a_network_fails_fast_in_one_line(project, image_folder, no_network, capsys):
    started = time.monotonic()
    code = _caption_blip(project, image_folder)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "cannot reach the Hugging Face Hub (huggingface.co:443: [Errno 101] Network is unreachable)" in err
    assert f"BLIP model {UNCACHED!r}" in err and "set HF_HUB_OFFLINE=1" in err and "local folder" in err
    # detected once: one probe, and no download tried after it (huggingface_hub itself may ask for its user-agent
    # registry once while it looks in the local cache)
    assert no_network.count("probe") == 1 and no_network[-1] == "probe", no_network
    assert time.monotonic() - started < 60  # seconds, not huggingface_hub's minutes of retries


def test_with_hf_hub_offline_the_hub_is_not_probed(project, image_folder, no_network, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code = _caption_blip(project, image_folder)
    err = capsys.readouterr().err
    assert code == 2 and "not in the local cache and HF_HUB_OFFLINE is set" in err and "local folder" in err, err
    assert "probe" not in no_network


def test_a_name_lookup_that_hangs_is_bounded_by_the_probe_timeout(no_network, monkeypatch):
    release = threading.Event()

    def hang(address, *args, **kwargs):  # a resolver that never answers (create_connection's timeout
        release.wait(30)                 # does not cover the name lookup)
        raise OSError("gave up")

    monkeypatch.setattr(socket, "create_connection", hang)
    started = time.monotonic()
    try:
        assert hub_unreachable(timeout=0.2) == "huggingface.co:443: no answer in 0.2 s"
        assert time.monotonic() - started < 5
    finally:
        release.set()

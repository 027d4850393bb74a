"""Issue 25 item 10, README truth: the set-up is two commands; the CPU-only install it describes pins the
torch and torchvision of requirements.txt; it says what the image exports need and what happens without it."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.views.stakeholder import CHROMIUM_HINT

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    return README.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def test_the_set_up_is_two_commands():
    setup = _section("Set up and run")
    block = setup.split("```bash\n", 1)[1].split("```", 1)[0]
    assert block.splitlines() == ["pip install -r requirements.txt && python -m pipeline quickstart --studio",
                                  "pip install -r requirements-dev.txt && python -m pytest"]


def test_the_cpu_only_install_pins_the_torch_of_requirements():
    pins = dict(re.findall(r"^(torch|torchvision)==(\S+)", (ROOT / "requirements.txt").read_text(), re.M))
    setup = _section("Set up and run")
    assert (f"pip install torch=={pins['torch']} torchvision=={pins['torchvision']} "
            "--index-url https://download.pytorch.org/whl/cpu") in setup


def test_it_says_what_image_exports_need_and_what_happens_without():
    setup = " ".join(_section("Set up and run").split())
    for needed in ("`apt install chromium`", "`plotly_get_chrome`", "BROWSER_PATH"):
        assert needed in setup and needed.strip("`") in CHROMIUM_HINT  # the README and the app say the same
    assert "report.html" in setup and "no plot" in setup

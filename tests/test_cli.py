"""CLI: --help everywhere, one-line errors with a non-zero exit, the main commands on tiny data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipeline.cli.main import build_parser, main


def _all_command_paths(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _all_command_paths(sub, (*prefix, name))


def test_every_subcommand_has_help(capsys):
    paths = list(_all_command_paths(build_parser()))
    assert ("captions", "export") in paths and ("runs", "show") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys):
    assert main(["caption", "--project", str(tmp_path), "--captioner", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown captioner 'nope'; valid names: blip, blip2, classname"
    assert main(["datasets", "inspect", "--dataset", "imagefolder:" + str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_caption_export_history_and_runs(tmp_path, capsys):
    project = ["--project", str(tmp_path)]
    assert main(["-q", "caption", *project, "--limit", "30"]) == 0
    assert "captioned 30 images" in capsys.readouterr().out
    out = tmp_path / "c.jsonl"
    assert main(["captions", "export", *project, "digits", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30 and rows[0]["caption"].startswith("a photo of a ")
    rows[0]["caption"] = "changed"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["captions", "import", *project, "--limit", "30", "digits", str(out)]) == 0
    capsys.readouterr()
    assert main(["captions", "diff", *project, "digits", "1"]) == 0
    assert "1 captions differ" in capsys.readouterr().out
    assert main(["captions", "rollback", *project, "digits", "1"]) == 0
    assert main(["runs", "list", *project]) == 0
    listing = capsys.readouterr().out
    assert "caption-" in listing and "done" in listing
    run_id = listing.split("\n")[-2].split()[0]
    assert main(["runs", "show", *project, run_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "done" and shown["lineage"][0]["kind"] in ("dataset", "captions")


def test_finetune_then_generate_then_resume(tmp_path, capsys):
    project = ["--project", str(tmp_path)]
    data = ["--limit", "60"]
    assert main(["-q", "caption", *project, *data]) == 0
    assert main(["-q", "finetune", *project, *data, "--store", "digits", "--steps", "4",
                 "--option", "block_out_channels=[16, 32]", "--option", "checkpoint_every=2"]) == 0
    out = capsys.readouterr().out
    generator = out.split("generator saved to ")[1].split(" [run")[0]
    target = tmp_path / "synthetic"
    args = ["-q", "generate", *project, *data, "--generator", generator, "--prompts", "digits",
            "--num", "20", "--steps", "3", "--out", str(target)]
    assert main(args) == 0
    assert "20 images" in capsys.readouterr().out
    manifest = (target / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 20 and json.loads(manifest[0])["prompt"].startswith("0: a photo of a 0")
    assert main(args) == 0  # a rerun into the same folder finds everything done
    assert len((target / "manifest.jsonl").read_text().splitlines()) == 20
    assert main(["-q", "finetune", *project, "--generator", "scratch", "--option", "nope=1"]) == 2
    assert "generator 'scratch' has no option 'nope'; valid: " in capsys.readouterr().err


def test_import_is_light_and_public_names_resolve():
    import subprocess
    import sys

    code = ("import sys, pipeline; heavy = [m for m in ('torch', 'streamlit', 'gradio', 'diffusers') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pipeline.nope  # noqa: B018


def test_the_library_never_imports_the_ui_toolkits():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "pipeline"
    offenders = [str(p) for p in root.rglob("*.py")
                 if re.search(r"^\s*(import|from)\s+(streamlit|gradio)\b", p.read_text(), re.M)]
    assert offenders == []


def test_benchmark_scripts_are_this_repository_s():
    """opacus installs a top-level ``benchmarks`` package; ours must still be the one ``-m`` finds."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    for name in ("datasets", "methods", "audit"):
        assert Path(importlib.util.find_spec(f"benchmarks.{name}").origin).is_relative_to(root / "benchmarks")

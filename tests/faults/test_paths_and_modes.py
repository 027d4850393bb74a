"""Issue item 13: the Runs page's "More options (JSON)" keeps model paths inside the project like
every other path field, and atomically written files get the mode a plain ``open()`` would give."""

from __future__ import annotations

import os
import stat

from pipeline.core.common import atomic_write_bytes, atomic_write_text


def _sd_lora_options(at, options: str):
    at.selectbox(key="run_backend").set_value("sd-lora").run()
    at.text_input(key="run_extra_sd-lora").input(options).run()
    return at


def test_more_options_paths_outside_the_project_are_refused(env, open_page):
    at = open_page("runs")
    for options in ('{"base": "/etc"}', '{"lora_path": "../outside.safetensors"}',
                    '{"base": "models/../../outside"}', f'{{"lora_path": "{env.root.parent}"}}'):
        _sd_lora_options(at, options)
        assert any("outside the project" in e.value for e in at.error), options
        assert at.button(key="run_start").disabled, options


def test_more_options_hub_ids_and_project_paths_are_accepted(env, monkeypatch, open_page):
    started = []
    monkeypatch.setattr("pipeline.core.jobs.start_experiment",
                        lambda project, config: started.append(config) or
                        project.registry().create("experiment", config).id)
    (env.root / "loras").mkdir()
    (env.root / "loras" / "style.safetensors").write_bytes(b"")
    at = _sd_lora_options(open_page("runs"), '{"base": "stabilityai/stable-diffusion-2-1", '
                                             '"lora_path": "loras/style.safetensors"}')
    assert not at.error, [e.value for e in at.error]
    at.button(key="run_start").click().run()
    [config] = started
    options = dict(config.generator_options)
    assert options["base"] == "stabilityai/stable-diffusion-2-1"  # a hub id is not a path
    assert options["lora_path"] == str(env.root.resolve() / "loras" / "style.safetensors")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_create_files_like_open_and_keep_an_existing_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
        assert _mode(tmp_path / "new.json") == 0o640  # 0o666 & ~umask, not mkstemp's 0o600
    finally:
        os.umask(old)
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    os.chmod(kept, 0o604)
    atomic_write_bytes(kept, b"new")
    assert kept.read_bytes() == b"new" and _mode(kept) == 0o604

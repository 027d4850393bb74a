"""Issue 23, items 3 and 5: every config (a file, the CLI's arguments, the studio's form) is checked against
one typed schema before anything runs; a bad one is refused in one line naming the field, the value and
what is allowed (exit code 2), and a plan estimated beyond a limit the user can raise is refused too."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli.main import main
from pipeline.core.common import to_jsonable
from pipeline.presets import quickstart_config

NAN = float("nan")


def refused(capsys, argv: list[str], message: str, project: Path) -> None:
    """``argv`` exits with 2 and one line matching ``message``, and no run was created."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert not (project / "runs").exists() or not any((project / "runs").iterdir())


@pytest.mark.parametrize("path, value, message", [
    (("teacher", "epochs"), "two", r'teacher\.epochs must be an integer, got "two"'),
    (("teacher", "epochs"), True, r"teacher\.epochs must be an integer, got true"),  # not one epoch
    (("teacher", "epochs"), 2.7, r"teacher\.epochs must be an integer, got 2\.7"),
    (("rounds",), "3", r'rounds must be an integer, got "3"'),
    (("teacher",), None, r"teacher must be an object of TrainConfig fields, got null"),
    (("audit", "attacks"), "rmia", r'audit\.attacks must be a list, got "rmia"'),  # not the letters a, i, m, r
    (("teacher", "weight_decay"), NAN, r"teacher\.weight_decay must be a finite number, got NaN"),
    (("cardinality",), NAN, r"cardinality must be a finite number, got NaN"),
    (("seed",), -1, r"seed must be >= 0, got -1"),
    (("dataset", "seed"), -1, r"dataset\.seed must be >= 0, got -1"),
    (("distill", "student", "seed"), -1, r"distill\.student\.seed must be >= 0, got -1"),
    (("generator_options",), {"guidance_scale": NAN},
     r"generator_options\.guidance_scale must be a finite number, got NaN"),
    (("generator_options",), {"guidance_scale": "abc"}, r'generator_options\.guidance_scale must be a number, got "abc"'),
    (("generator_options",), {"sampling_steps": 0}, r"generator_options\.sampling_steps must be at least 1, got 0"),
])
def test_a_config_file_of_the_wrong_type_or_range_is_refused_before_anything_runs(tmp_path, capsys, path, value,
                                                                                  message):
    config = to_jsonable(quickstart_config())
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    file = tmp_path / "config.json"
    file.write_text(json.dumps(config))  # NaN is written as the bare NaN that Python's json reads back
    project = tmp_path / "project"
    refused(capsys, ["-q", "run", "--project", str(project), str(file)], f"^error: {re.escape(str(file))}: {message}",
            project)


def test_the_printed_config_is_the_schemas_with_generator_options_as_an_object(tmp_path, capsys):
    assert main(["-q", "run", "--project", str(tmp_path), "--dataset", "digits", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert isinstance(printed["generator_options"], dict)
    file = tmp_path / "c.json"
    file.write_text(json.dumps(printed))
    from pipeline.experiment import ExperimentConfig

    assert to_jsonable(ExperimentConfig.from_file(file)) == printed  # what is printed reads back as itself
    # a config saved before the schema (options as [name, value] pairs) still reads, as an object
    printed["generator_options"] = [["guidance_scale", 2.0]]
    file.write_text(json.dumps(printed))
    assert ExperimentConfig.from_file(file).generator_options == {"guidance_scale": 2.0}


def test_an_absurd_plan_is_refused_before_it_starts_and_the_limit_can_be_raised(tmp_path, capsys):
    from pipeline.presets import StageEstimate, check_plan

    config = to_jsonable(quickstart_config())
    config["rounds"] = 1_000_000_000_000
    file = tmp_path / "config.json"
    file.write_text(json.dumps(config))
    project = tmp_path / "project"
    assert main(["-q", "run", "--project", str(project), str(file)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"the plan would take about [\d,]+ h, beyond the limit of 72 h .*--max-hours", err)
    assert err.count("\n") == 1 and not (project / "runs").exists()
    week = [StageEstimate("generate", 7 * 24 * 3600.0, "a long round")]
    with pytest.raises(ValueError, match="beyond the limit of 72 h"):
        check_plan(week)
    check_plan(week, max_hours=200)  # raised by the user: it goes ahead
    refused(capsys, ["-q", "run", "--project", str(project), str(file), "--max-hours", "nan"],
            "--max-hours must be a positive number of hours, got nan", project)


# -- the CLI's own arguments --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_generator(tmp_path_factory) -> Path:
    """A scratch generator trained for 2 steps on 8 tiny images and saved as `finetune` saves it."""
    from pipeline.core.common import write_json
    from pipeline.generators.scratch import ScratchConfig, ScratchGenerator

    directory = tmp_path_factory.mktemp("generator")
    images = [Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)) for i in range(8)]
    config = ScratchConfig(block_out_channels=(8, 16), norm_groups=4, train_steps=2, batch_size=8, warmup_steps=1,
                           checkpoint_every=0, threads=1)
    generator = ScratchGenerator(config)
    generator.fit(images, [""] * 8, [i % 2 for i in range(8)], directory / "checkpoints")
    generator.save(directory / "generator")
    write_json(directory / "generator" / "backend.json", {"backend": "scratch", "run": "test"})
    return directory / "generator"


@pytest.mark.parametrize("args, message", [
    (["--guidance", "nan"], r"options\.guidance_scale must be a finite number, got NaN"),
    (["--guidance", "inf"], r"options\.guidance_scale must be a finite number, got Infinity"),
    (["--option", "guidance_scale=abc"], r'options\.guidance_scale must be a number, got "abc"'),
    (["--num", "0"], r"num_images must be at least 1 \(one per class\) or null, got 0"),  # not the default number
    (["--batch-size", "0"], r"batch_size must be at least 1, got 0"),
    (["--cardinality", "nan"], r"cardinality must be a positive finite number, got nan"),
    (["--round", "-1"], r"round must be >= 0, got -1"),
    (["--gen-seed", "-1"], r"seed must be >= 0, got -1"),
    (["--seed", "-1"], r"seed must be >= 0, got -1"),
    (["--val-fraction", "nan"], r"val_fraction must be in \[0, 1\), got nan"),
])
def test_bad_generate_arguments_are_refused_in_one_line_before_any_image(tmp_path, capsys, saved_generator, args,
                                                                         message):
    project, out = tmp_path / "project", tmp_path / "out"
    refused(capsys, ["-q", "generate", "--project", str(project), "--limit", "40", "--generator",
                     str(saved_generator), "--out", str(out), *args], message, project)
    assert not out.exists()


def test_a_base_models_options_are_checked_before_it_loads(tmp_path, capsys):
    project = tmp_path / "project"
    refused(capsys, ["-q", "generate", "--project", str(project), "--base", str(tmp_path / "no-model"),
                     "--guidance", "nan"], r"options\.guidance_scale must be a finite number, got NaN", project)


@pytest.mark.parametrize("argv, message", [
    (["finetune", "--option", "guidance_scale=abc"], r'options\.guidance_scale must be a number, got "abc"'),
    (["finetune", "--option", "learning_rate=nan"], r"options\.learning_rate must be a finite number, got NaN"),
])
def test_bad_stage_arguments_are_refused_in_one_line(tmp_path, capsys, argv, message):
    project = tmp_path / "project"
    code = main(["-q", argv[0], "--project", str(project), "--limit", "40", *argv[1:]])
    err = capsys.readouterr().err
    assert code == 2 and re.search(message, err), err
    assert not (project / "runs").exists() or not any((project / "runs").iterdir())


# -- labels that are no class index -------------------------------------------------------------------------
def test_a_fractional_label_is_refused_naming_file_column_and_row(tmp_path, capsys):
    cells = []
    for i in range(6):
        buffer = __import__("io").BytesIO()
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": f"{i}.png"})
    pq.write_table(pa.table({"image": cells, "label": [0, 1, 0, 1.5, 0, 1]}), tmp_path / "train.parquet")
    code = main(["datasets", "inspect", "--dataset", f"parquet:{tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'train.parquet'} column 'label' row 3: label 1.5 is not a class number" in err


# -- the studio's form ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ('{"guidance_scale": NaN}', "generator_options.guidance_scale must be a finite number, got NaN"),
    ('{"guidance_scale": "abc"}', 'generator_options.guidance_scale must be a number, got "abc"'),
    ('{"train_steps": 2.5}', "generator_options.train_steps must be an integer, got 2.5"),
])
def test_the_studio_form_is_checked_by_the_same_schema(env, open_page, options, message):
    at = open_page("runs")
    at.text_input(key="run_extra_scratch").input(options).run()
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="run_start").disabled

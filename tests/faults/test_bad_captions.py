"""Issue items 10, 11, 14: hostile caption files end as a one-line error naming file and line, or as a
skip that is reported; an import never mixes captions between images, and only member captions reach
a generator."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pytest
from conftest import SHARED
from PIL import Image

from pipeline.captions.formats import MAX_CAPTION_CHARS, export_captions, import_captions, read_prompt_pool
from pipeline.captions.prompts import pool_from_file
from pipeline.captions.store import caption_store
from pipeline.cli.main import build_parser, main
from pipeline.data.datasets import DatasetConfig, load_dataset
from pipeline.generators import Generator

LIMIT = 40  # digits images per split: small and fast


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(DatasetConfig(limit=LIMIT))


@pytest.fixture
def store(project):
    return caption_store(project, "s", create=True)


def _train_ids(dataset) -> list[str]:
    return sorted(r.id for r in dataset.split("train"))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _import_cli(project_dir: Path, file: Path, fmt: str, *extra: str) -> int:
    return main(["captions", "import", "--project", str(project_dir), "--limit", str(LIMIT), "s", str(file),
                 "--format", fmt, *extra])


def _one_line_error(capsys, code: int, *expected: str) -> str:
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


# -- item 10: caption import ----------------------------------------------------------------------------
def test_a_megabyte_csv_caption_is_a_clear_error_and_a_long_one_is_accepted(project, store, dataset, tmp_path,
                                                                          capsys):
    first, second = _train_ids(dataset)[:2]
    path = tmp_path / "huge.csv"
    path.write_text(f"id,caption\n{first},a short one\n{second},{'x' * 1_000_000}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:3: .*{MAX_CAPTION_CHARS:,} characters"):
        import_captions(store, path, "csv", dataset)
    _one_line_error(capsys, _import_cli(project.root, path, "csv"), f"{path}:3")
    path.write_text(f"id,caption\n{first},{'y' * 5_000}\n", encoding="utf-8")  # long, but a caption
    assert import_captions(store, path, "csv", dataset).imported == 1
    assert store.get(first).caption == "y" * 5_000
    jsonl = _write_jsonl(tmp_path / "huge.jsonl", [{"id": first, "caption": "z" * (MAX_CAPTION_CHARS + 1)}])
    with pytest.raises(ValueError, match=f"{jsonl}:1: .*{MAX_CAPTION_CHARS:,}"):
        import_captions(store, jsonl, "jsonl", dataset)


def test_short_and_long_csv_rows_name_file_and_line(project, store, dataset, tmp_path, capsys):
    first, second = _train_ids(dataset)[:2]
    path = tmp_path / "short.csv"
    path.write_text(f"id,caption,label\n{first},a caption,{dataset.class_name(dataset.record(first).label)}\n"
                    f"{second},only two\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:3: 2 fields"):
        import_captions(store, path, "csv", dataset)
    _one_line_error(capsys, _import_cli(project.root, path, "csv"), f"{path}:3", "2 fields")
    # an unquoted comma would silently cut the caption at the comma: refused, not truncated
    path.write_text(f"id,caption\n{first},a cat, sitting\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:2: 3 fields.*quote"):
        import_captions(store, path, "csv", dataset)
    assert store.head() == 0  # nothing was written


def test_null_and_empty_captions_are_skipped_and_reported(project, store, dataset, tmp_path, capsys):
    ids = _train_ids(dataset)
    store.bind(dataset.name, dataset.fingerprint, dataset.class_names)
    kept = import_captions(store, _write_jsonl(tmp_path / "v1.jsonl", [{"id": ids[0], "caption": "before"}]),
                           "jsonl", dataset)
    assert kept.imported == 1
    path = _write_jsonl(tmp_path / "nulls.jsonl", [
        {"id": ids[0], "caption": None}, {"id": ids[1], "caption": ""}, {"id": ids[2], "caption": "   "},
        {"id": ids[3], "caption": "a good one"}])
    report = import_captions(store, path, "jsonl", dataset)
    assert report.imported == 1 and len(report.skipped) == 3
    assert [s.split(": ")[0] for s in report.skipped] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    records = store.records()
    assert records[ids[0]].caption == "before"  # nothing lost: the image keeps its caption
    assert ids[1] not in records and ids[2] not in records
    assert all(r.caption not in ("None", "") for r in records.values())
    assert main(["captions", "import", "--project", str(project.root), "--limit", str(LIMIT), "s", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 rows skipped" in out and f"{path}:1" in out
    csv_path = tmp_path / "empty.csv"
    csv_path.write_text(f"id,caption\n{ids[4]},\n{ids[5]},fine\n", encoding="utf-8")
    report = import_captions(store, csv_path, "csv", dataset)
    assert report.imported == 1 and report.skipped[0].startswith(f"{csv_path}:2: ")
    with pytest.raises(ValueError, match="no captions"):  # a file of nothing but empty captions
        import_captions(store, _write_jsonl(tmp_path / "none.jsonl", [{"id": ids[0], "caption": None}]),
                        "jsonl", dataset)
    with pytest.raises(ValueError, match=f"{tmp_path / 'num.jsonl'}:1: .*caption must be text"):
        import_captions(store, _write_jsonl(tmp_path / "num.jsonl", [{"id": ids[0], "caption": 7}]),
                        "jsonl", dataset)


def test_duplicate_ids_are_an_error_naming_both_lines(project, store, dataset, tmp_path, capsys):
    a, b = _train_ids(dataset)[:2]
    path = _write_jsonl(tmp_path / "dup.jsonl", [{"id": a, "caption": "one"}, {"id": b, "caption": "two"},
                                                 {"id": a, "caption": "three"}])
    with pytest.raises(ValueError, match=f"{path}:3: image id '{a}' is also on line 1"):
        import_captions(store, path, "jsonl", dataset)
    _one_line_error(capsys, _import_cli(project.root, path, "jsonl"), f"{path}:3", "line 1")
    csv_path = tmp_path / "dup.csv"
    csv_path.write_text(f"id,caption\n{a},one\n{a},one\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{csv_path}:3: .*also on line 2"):
        import_captions(store, csv_path, "csv", dataset)
    assert store.head() == 0


def test_an_excel_bom_is_read(store, dataset, tmp_path):
    a, b = _train_ids(dataset)[:2]
    path = tmp_path / "excel.csv"
    path.write_bytes(f"\ufeffid,caption\r\n{a},from excel\r\n{b},\"with, comma\"\r\n".encode())
    assert import_captions(store, path, "csv", dataset).imported == 2
    assert store.get(a).caption == "from excel" and store.get(b).caption == "with, comma"
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(("\ufeff" + json.dumps({"id": a, "caption": "bom jsonl"}) + "\n").encode())
    assert import_captions(store, jsonl, "jsonl", dataset).imported == 1
    pool = tmp_path / "bom.json"
    pool.write_bytes(("\ufeff" + json.dumps({"0": ["zero"], "1": ["one"]})).encode())
    assert read_prompt_pool(pool) == {"0": ["zero"], "1": ["one"]}


def test_non_utf8_and_malformed_files_name_the_file_and_line(project, store, dataset, tmp_path, capsys):
    a, b = _train_ids(dataset)[:2]
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(f"id,caption\n{a},fine\n{b},caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{latin}:3: .*UTF-8"):
        import_captions(store, latin, "csv", dataset)
    _one_line_error(capsys, _import_cli(project.root, latin, "csv"), f"{latin}:3", "UTF-8")
    broken = tmp_path / "broken.json"
    broken.write_text('{\n "0": ["zero",\n "1": ["one"]\n}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=f"{broken}:3: not valid JSON"):
        read_prompt_pool(broken)
    _one_line_error(capsys, _import_cli(project.root, broken, "tckr-json", "--assign-in-order"), f"{broken}:3")
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({"0": ["zero"], "1": "one"}), encoding="utf-8")
    with pytest.raises(ValueError, match=f"{shape}: class '1'"):
        read_prompt_pool(shape)
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps({"id": a, "caption": "ok"}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{bad_line}:2: not valid JSON"):
        import_captions(store, bad_line, "jsonl", dataset)
    latin_txt = tmp_path / "latin1.txt"
    latin_txt.write_bytes("0: z\u00e9ro\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"{latin_txt}:1: .*UTF-8"):
        pool_from_file(latin_txt, dataset.class_names)


FORMULAS = ["=1+1", "+a plus", "-a minus", "@SUM(A1)", "'=already quoted", "''=twice", "'plain quote",
            "a = b, harmless", "normal caption"]


def test_csv_export_neutralises_formulas_and_round_trips(project, dataset, tmp_path):
    ids = _train_ids(dataset)[:len(FORMULAS)]
    source = caption_store(project, "src", create=True)
    import_captions(source, _write_jsonl(tmp_path / "in.jsonl", [{"id": i, "caption": c} for i, c in zip(ids, FORMULAS)]),
                    "jsonl", dataset)
    out = tmp_path / "out.csv"
    export_captions(source, out, "csv")
    cells = {row["id"]: row["caption"] for row in csv.DictReader(io.StringIO(out.read_text(encoding="utf-8")))}
    for image_id, caption in zip(ids, FORMULAS):
        dangerous = caption.lstrip("'")[:1] in ("=", "+", "-", "@")
        assert cells[image_id] == ("'" + caption if dangerous else caption), caption
        assert cells[image_id][:1] not in ("=", "+", "-", "@", "\t", "\r")
    again = caption_store(project, "again", create=True)
    import_captions(again, out, "csv", dataset)
    assert {i: r.caption for i, r in again.records().items()} == dict(zip(ids, FORMULAS))
    # tab and CR lead a formula too (OWASP CSV injection)
    from pipeline.captions.formats import WRITERS
    from pipeline.captions.store import CaptionRecord

    record = CaptionRecord("x", "=label", "\tcmd", {"captioner": "-c"}, "")
    row = next(csv.reader(io.StringIO(WRITERS.get("csv")({"x": record}, []).splitlines()[1])))
    assert row == ["x", "'=label", "'\tcmd", "'-c"]


# -- item 11: TCKR's own files --------------------------------------------------------------------------
def test_generate_reads_tckr_class_colon_caption_lines(dataset, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("0: a zero: round\n1: a one\n1\ta tabbed one\n\n" +
                    "".join(f"{c}: digit {c}\n" for c in dataset.class_names[2:]), encoding="utf-8")
    pool = pool_from_file(path, dataset.class_names, "caption")
    assert pool.prompts[0] == ("a zero: round",) and pool.prompts[1] == ("a one", "a tabbed one")
    path.write_text("0 zero without a separator\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}:1: expected 'class: caption'"):
        pool_from_file(path, dataset.class_names)


def _original_order_lines(dataset_config: DatasetConfig) -> tuple[list[str], list[str]]:
    """TCKR original_order lines for every training image of the unlimited source, in source order."""
    full = load_dataset(dataset_config)
    train = [r for r in full.records if r.split == "train"]
    return [r.id for r in train], [f"{full.class_name(r.label)}: caption of {r.id}" for r in train]


def test_tckr_original_order_file_imports_per_image(project, store, dataset, tmp_path, capsys):
    order, lines = _original_order_lines(DatasetConfig())
    path = tmp_path / "digits_blip2_finetuning.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = import_captions(store, path, "tckr-txt", dataset)  # dataset is --limit 40 of the same source
    assert report.imported == len(dataset.split("train")) and report.unused == len(order) - report.imported
    for image_id, record in store.records().items():
        assert record.caption == f"caption of {image_id}"
    # a line out of place: refused at that line, nothing imported
    swapped = lines[:]
    k = next(i for i in range(1, len(lines)) if lines[i].split(":")[0] != lines[0].split(":")[0])
    swapped[0], swapped[k] = swapped[k], swapped[0]
    path.write_text("\n".join(swapped) + "\n", encoding="utf-8")
    fresh = caption_store(project, "fresh", create=True)
    with pytest.raises(ValueError, match=f"{path}:1: .*not in this dataset's image order"):
        import_captions(fresh, path, "tckr-txt", dataset)
    path.write_text("\n".join(lines[:-3]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path}: {len(lines) - 3} lines.*{len(order)} training images"):
        import_captions(fresh, path, "tckr-txt", dataset)
    assert fresh.head() == 0
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert _import_cli(project.root, path, "tckr-txt") == 0


def test_importing_a_grouped_pool_needs_an_explicit_flag(project, store, dataset, tmp_path, capsys):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps({c: [f"{c} caption {k}" for k in range(10)] for c in dataset.class_names}))
    with pytest.raises(ValueError, match="not tied to images"):
        import_captions(store, path, "tckr-json", dataset)
    _one_line_error(capsys, _import_cli(project.root, path, "tckr-json"), "--assign-in-order", "prompt pool")
    assert store.head() == 0
    assert _import_cli(project.root, path, "tckr-json", "--assign-in-order") == 0
    assert len(store.records()) == len(dataset.split("train"))


CIFAR_POOL = SHARED / "cifar10" / "blip2_captions_by_class.json"


@pytest.mark.skipif(not CIFAR_POOL.exists(), reason="../shared/datasets is absent")
def test_the_real_tckr_blip2_file_is_a_prompt_pool():
    import pyarrow.parquet as pq

    classes = pq.read_schema(SHARED / "cifar10" / "train.parquet").metadata[b"classes"].decode().split(",")
    pool = pool_from_file(CIFAR_POOL, classes)
    assert pool.class_names == tuple(classes) and all(len(p) == 5000 for p in pool.prompts)
    assert pool.prompts[0][0].startswith("airplane: ")
    with pytest.raises(ValueError, match="--allow-nonmember-prompts"):  # no ids: cannot be limited to members
        pool_from_file(CIFAR_POOL, classes, ids={"train/000000"})


# -- item 14: only member captions reach a generator ----------------------------------------------------
def test_per_image_prompt_files_are_filtered_to_members(project, dataset, tmp_path):
    members = set(dataset.membership().members)
    ids = _train_ids(dataset)
    assert members and set(ids) - members  # both members and non-members have captions
    path = _write_jsonl(tmp_path / "all.jsonl", [{"id": i, "caption": f"caption of {i}"} for i in ids])
    store = caption_store(project, "all", create=True)
    import_captions(store, path, "jsonl", dataset)
    export_captions(store, tmp_path / "all.csv", "csv")
    for file in (path, tmp_path / "all.csv"):
        pool = pool_from_file(file, dataset.class_names, "caption", dataset=dataset, ids=members)
        assert {p for prompts in pool.prompts for p in prompts} == {f"caption of {i}" for i in members}, file


def test_a_grouped_pool_is_refused_unless_acknowledged(dataset, tmp_path, caplog):
    members = set(dataset.membership().members)
    path = tmp_path / "pool.txt"
    path.write_text("".join(f"{c}: digit {c}\n" for c in dataset.class_names), encoding="utf-8")
    with pytest.raises(ValueError, match="no image ids.*non-members.*--allow-nonmember-prompts"):
        pool_from_file(path, dataset.class_names, dataset=dataset, ids=members)
    with caplog.at_level(logging.WARNING):
        pool = pool_from_file(path, dataset.class_names, dataset=dataset, ids=members, allow_nonmembers=True)
    assert pool.prompts[3] == ("3: digit 3",) and "non-members" in caplog.text


class _Fake(Generator):
    name, config_class = "fake", dict

    def __init__(self) -> None:
        super().__init__({})

    def fit(self, images, prompts, labels, out_dir, progress=None):
        return {}

    def generate(self, prompts, labels, seeds, progress=None):
        # pictures (a grey ramp, brighter with the seed): neither one flat colour nor one picture repeated
        ramp = Image.linear_gradient("L").resize((4, 4))
        return [ramp.point(lambda v, s=seed: (v + 37 * s) % 256).convert("RGB") for seed in seeds]

    def save(self, directory):
        pass

    @classmethod
    def load(cls, directory, **overrides):
        return cls()


def test_the_generate_stage_uses_member_captions_only(project, dataset, tmp_path, capsys):
    from pipeline.generate import GenerateConfig, synthesize

    members = set(dataset.membership().members)
    path = _write_jsonl(tmp_path / "all.jsonl", [{"id": i, "caption": f"caption of {i}"} for i in _train_ids(dataset)])
    (tmp_path / "gen").mkdir()
    config = GenerateConfig(generator=str(tmp_path / "gen"), prompts=str(path), template="caption",
                            dataset=DatasetConfig(limit=LIMIT), num_images=30)
    result = synthesize(config, project, generator=_Fake())
    used = {item.prompt for item in result.synthetic.items}
    assert used and used <= {f"caption of {i}" for i in members}
    # the CLI: a grouped file without ids is refused up front, and --help names the flag and the risk
    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({c: [f"digit {c}"] for c in dataset.class_names}))
    code = main(["generate", "--project", str(project.root), "--limit", str(LIMIT), "--generator",
                 str(tmp_path / "gen"), "--prompts", str(pool)])
    _one_line_error(capsys, code, "--allow-nonmember-prompts")
    code = main(["generate", "--project", str(project.root), "--generator", str(tmp_path / "gen"),
                 "--prompts", str(tmp_path / "missing.jsonl")])
    _one_line_error(capsys, code, "missing.jsonl: no such file")  # not taken for a caption store's name
    generate_help = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    assert "--allow-nonmember-prompts" in generate_help and "non-member" in generate_help

"""Command line: ``python -m pipeline <command> ...`` (also installed as ``tckr``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..captions.store import CaptionStoreDamaged, caption_store, caption_stores
from ..captions.templates import DEFAULT_CLASS_TEMPLATE
from ..core.common import Progress
from ..core.disk import full_disk
from ..core.registry import UnknownNameError
from ..core.runs import RunCancelled, RunInterrupted
from .common import (
    ProgressBars,
    _short,
    add_column_args,
    add_dataset_args,
    add_project_arg,
    dataset_config,
    print_json,
    print_table,
    project_of,
    registered_datasets,
)
from .stages import add_stage_commands

logger = logging.getLogger(__name__)


# -- datasets ------------------------------------------------------------------------------------------
def cmd_datasets_list(args: argparse.Namespace) -> int:
    from ..data.datasets import SOURCES

    print_table(list(SOURCES.describe().items()), ["source", "description"])
    known = registered_datasets(args)
    print(f"\nregistered with this project ({len(known)}; add one with `datasets add NAME SPEC`)")
    if known:
        print_table([(name, c.source, c.path) for name, c in known.items()], ["name", "source", "path"])
    return 0


def cmd_datasets_add(args: argparse.Namespace) -> int:
    """Register a dataset (anywhere on disk) with the project by name, after a confirmation naming it."""
    from dataclasses import replace

    from ..data.catalog import check_name, register, resolved
    from ..data.datasets import load_dataset, parse_dataset_spec

    check_name(args.name)
    if args.name in registered_datasets(args) and not args.replace:
        raise ValueError(f"a dataset called {args.name!r} is already registered; pass --replace or pick another name")
    config = resolved(parse_dataset_spec(args.spec, image_column=args.image_column, label_column=args.label_column))
    dataset = load_dataset(replace(config, limit=None))  # it must load: classes, splits, readable images
    splits = ", ".join(f"{split} {sum(n.values()):,}" for split, n in dataset.summary()["per_split"].items())
    where = config.path or "(built in)"
    print(f"{args.name}: {config.source} data at {where}\n  {len(dataset):,} images ({splits}), "
          f"{len(dataset.class_names)} classes ({', '.join(map(str, dataset.class_names[:8]))}"
          f"{', ...' if len(dataset.class_names) > 8 else ''})\n"
          f"Runs and the studio of this project will read images from {where}; nothing there is changed.")
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("confirm with --yes (no terminal to ask on)")
        if input("Register it? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not registered")
            return 1
    register(project_of(args).root, args.name, config, replace_existing=args.replace)
    print(f"registered {args.name!r}: use it with --dataset {args.name} or pick it in the studio")
    return 0


def cmd_datasets_remove(args: argparse.Namespace) -> int:
    from ..data.catalog import unregister

    unregister(project_of(args).root, args.name)
    print(f"forgot {args.name!r} (its files are untouched; runs made with it keep their records)")
    return 0


def cmd_datasets_inspect(args: argparse.Namespace) -> int:
    from ..data.datasets import load_dataset

    dataset = load_dataset(dataset_config(args))
    summary = dataset.summary()
    summary["fingerprint"] = dataset.fingerprint
    split = dataset.membership()
    summary["membership"] = {"members": len(split.members), "nonmembers": len(split.nonmembers),
                             "validation": len(split.validation),
                             "nonmember_source": split.nonmember_source, "seed": split.seed}
    if args.check:
        bars = ProgressBars(not args.quiet)
        ok = 0
        for n, _ in enumerate(dataset.iter_images(), 1):
            ok = n
            if n % 100 == 0:
                bars(Progress("check", n, len(dataset)))
        bars.close()
        summary["readable"] = ok
        summary["corrupt"] = dataset.skipped
    print_json(summary)
    return 0


# -- captioning ---------------------------------------------------------------------------------------
def cmd_caption(args: argparse.Namespace) -> int:
    from ..caption import CaptionConfig, caption
    from ..captions.captioners import CaptionerConfig
    from ..core.schema import checked

    captioner = CaptionerConfig(name=args.captioner, model=args.model, batch_size=args.batch_size,
                                device=args.device, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                                num_beams=args.num_beams, prompt=args.prompt,
                                class_template=args.class_template)
    config = checked(CaptionConfig(dataset=dataset_config(args), captioner=captioner, store=args.store,
                                   subset=args.subset, overwrite=args.overwrite,
                                   overwrite_reviewed=args.overwrite_reviewed))
    with ProgressBars(not args.quiet) as bars:
        result = caption(config, project_of(args), progress=bars)
    curated = ""
    if result.curated_kept:
        curated = (f"; kept {result.curated_kept} edited or reviewed captions "
                   "(--overwrite-reviewed replaces them)")
    if result.curated_replaced:
        curated = f"; replaced {result.curated_replaced} edited or reviewed captions"
    print(f"captioned {result.captioned} images ({result.already_done} already had captions, "
          f"{len(result.corrupt)} unreadable{curated}) -> store {result.store} version {result.version} "
          f"[run {result.run_id}, {result.seconds:.1f} s]")
    return 0


def cmd_captions_list(args: argparse.Namespace) -> int:
    project = project_of(args)
    rows = []
    for name in caption_stores(project):
        store = caption_store(project, name)
        try:
            rows.append([name, store.head(), len(store.records()), store.meta().get("dataset", "")])
        except CaptionStoreDamaged as err:  # one damaged store does not hide the others
            rows.append([name, "?", "?", store.meta().get("dataset", "")])
            print(f"warning: {err}", file=sys.stderr)
    print_table(rows, ["store", "version", "captions", "dataset"])
    return 0


def cmd_captions_show(args: argparse.Namespace) -> int:
    store = caption_store(project_of(args), args.store)
    records = store.records(args.version)
    rows = [[r.id, r.label, r.source.get("captioner", ""), r.caption] for _, r in sorted(records.items())]
    print_table(rows[: args.limit], ["id", "label", "source", "caption"])
    if len(rows) > args.limit:
        print(f"... {len(rows) - args.limit} more (use --limit)")
    return 0


def cmd_captions_export(args: argparse.Namespace) -> int:
    from ..captions.formats import export_captions

    store = caption_store(project_of(args), args.store)
    n = export_captions(store, Path(args.out), args.format, args.version)
    print(f"wrote {n} captions of {store.name} version {args.version or store.head()} to {args.out}")
    return 0


def cmd_captions_import(args: argparse.Namespace) -> int:
    from ..captions.formats import import_captions
    from ..data.datasets import load_dataset

    dataset = load_dataset(dataset_config(args))
    store = caption_store(project_of(args), args.store, create=True)
    report = import_captions(store, Path(args.file), args.format, dataset, assign_in_order=args.assign_in_order)
    print(f"imported {report.imported} captions into {store.name} version {report.version}"
          + (f" ({report.unused} unused captions in the file)" if report.unused else ""))
    if report.skipped:
        print(f"{len(report.skipped)} rows skipped (empty captions; those images keep their caption):")
        for line in report.skipped[:10]:
            print(f"  {line}")
        if len(report.skipped) > 10:
            print(f"  ... {len(report.skipped) - 10} more")
    return 0


def cmd_captions_history(args: argparse.Namespace) -> int:
    store = caption_store(project_of(args), args.store)
    rows = [[v.version, v.created_at, v.author, v.changed, v.message] for v in store.history()]
    print_table(rows, ["version", "created", "author", "changed", "message"])
    return 0


def cmd_captions_diff(args: argparse.Namespace) -> int:
    store = caption_store(project_of(args), args.store)
    changes = store.diff(args.a, args.b if args.b is not None else store.head())
    for change in changes:
        print(f"{change.id}\n  - {change.before}\n  + {change.after}")
    print(f"{len(changes)} captions differ")
    return 0


def cmd_captions_rollback(args: argparse.Namespace) -> int:
    store = caption_store(project_of(args), args.store)
    version = store.rollback(args.version)
    print(f"{store.name}: version {version} restores the captions of version {args.version}")
    return 0


# -- runs ----------------------------------------------------------------------------------------------
def _reconciled(args: argparse.Namespace) -> Any:
    """The project's registry after marking runs whose process died as failed (as the studio does)."""
    from ..core.jobs import reconcile

    project = project_of(args)
    for run_id in reconcile(project):
        print(f"note: {run_id} had stopped without a result (its process is gone); marked failed",
              file=sys.stderr)
    return project.registry()


def cmd_runs_list(args: argparse.Namespace) -> int:
    runs = _reconciled(args).list(kind=args.kind, status=args.status, limit=args.limit,
                                  archived=None if args.archived else False)
    rows = [[r.id, r.kind, r.status, r.created_at[:19], _metric_summary(r.metrics)] for r in runs]
    print_table(rows, ["id", "kind", "status", "created", "metrics"])
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    registry = _reconciled(args)
    record = registry.get(args.run_id)
    print_json({**record.__dict__, "lineage": [
        {"depth": d, "role": link.role, "kind": link.ref_kind, "ref": link.ref,
         "status": parent.status if parent else None} for d, parent, link in registry.lineage(record.id)]})
    _print_ledger(project_of(args).root, record)
    return 0


def _print_ledger(root: Any, record: Any) -> None:
    """The privacy ledger of the run's dataset: ε spent across runs, the budget, a warning past it."""
    from ..privacy.accounting import budget_warning, ledger_summary

    fingerprint = next((link.ref for link in record.links if link.role == "data"), None)
    summary = ledger_summary(root, fingerprint) if fingerprint else None
    if summary is None:
        return
    budget = f" of budget {summary['budget']:g}" if summary["budget"] is not None else " (no budget set)"
    print(f"privacy ledger of dataset {summary['dataset'] or fingerprint[:12]}: ε spent {summary['total_epsilon']:.3g}"
          f"{budget} over {len(summary['runs'])} run(s) (ε and δ summed across runs: δ {summary['total_delta']:.2g})")
    for spend in summary["spends"]:
        print(f"  {spend['run']}  {spend['part']:<9}  ε={spend['epsilon']:.3g}  δ={spend['delta']:.2g}  "
              f"σ={spend['noise_multiplier']:.3g}  q={spend['sample_rate']:.3g}  steps={spend['steps']}  "
              f"{spend['accountant']}")
    if summary["over_budget"]:
        print(f"warning: {budget_warning(summary)}", file=sys.stderr)


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    registry = project_of(args).registry()
    status = registry.get(args.run_id).status
    if status in ("done", "failed", "cancelled"):
        raise ValueError(f"run {args.run_id} is already {status}; there is nothing to cancel")
    registry.cancel(args.run_id)
    print(f"cancel requested for {args.run_id} (it was {status}; a running job stops at its next progress report)")
    return 0


def cmd_runs_archive(args: argparse.Namespace) -> int:
    registry = _reconciled(args)
    ids = registry.archive(args.run_id) if args.archive else registry.unarchive(args.run_id)
    print(f"{'archived' if args.archive else 'unarchived'} {', '.join(ids)}")
    return 0


def cmd_runs_delete(args: argparse.Namespace) -> int:
    registry = _reconciled(args)
    ids = registry.deletable(args.run_id)  # a refusal says why before anything is asked
    if not args.yes:
        raise ValueError(f"this deletes {len(ids)} run(s) and their folders for good ({', '.join(ids)}); "
                         "add --yes to do it")
    print(f"deleted {', '.join(registry.delete(args.run_id))}")
    return 0


def cmd_runs_rebuild(args: argparse.Namespace) -> int:
    from ..core.rebuild import rebuild_registry

    done = rebuild_registry(project_of(args).root, force=args.force)
    print(f"rebuilt {done.path} from {done.runs} run folders (their run.json and config.json)")
    if done.guessed:
        print(f"{len(done.guessed)} of them had no run.json (made before it was kept): status taken as done where "
              f"they wrote metrics.json, else failed ({', '.join(done.guessed[:5])}"
              f"{', ...' if len(done.guessed) > 5 else ''})")
    for skipped in done.skipped:
        print(f"skipped {skipped}")
    if done.kept:
        print(f"the previous file is kept as {done.kept}")
    return 0


def _metric_summary(metrics: dict[str, Any]) -> str:
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    return ", ".join(f"{k}={_short(v)}" for k, v in list(flat.items())[:4])


# -- parser --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Private synthetic training sets: caption, fine-tune a generator, generate, "
                    "distil and audit (TCKR).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--run-log", action="store_true",
                        help="log for a run's log file: timestamped stage messages, warnings and the full "
                             "traceback of a failure (the studio starts background runs with it)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_datasets(sub)
    _add_caption(sub)
    _add_captions(sub)
    _add_runs(sub)
    add_stage_commands(sub)
    return parser


def _add_datasets(sub: Any) -> None:
    ds = sub.add_parser("datasets", help="list dataset sources, register your own data by name, inspect a dataset")
    ds_sub = ds.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = ds_sub.add_parser("list", help="list dataset sources and the datasets registered with the project")
    add_project_arg(p)
    p.set_defaults(func=cmd_datasets_list)
    p = ds_sub.add_parser("add", help="register a dataset anywhere on disk with the project by name",
                          description="Register a dataset once, then pick it by name (--dataset NAME, the studio's "
                                      "dataset list). The data is checked (it must load) and stays where it is.")
    add_project_arg(p)
    p.add_argument("name", help="the name to pick it by (letters, digits, '.', '_', '-')")
    p.add_argument("spec", help="imagefolder:DIR, parquet:FILE_OR_DIR or hf:HUB_ID_OR_DIR")
    add_column_args(p)
    p.add_argument("--yes", action="store_true", help="register without asking")
    p.add_argument("--replace", action="store_true", help="replace a dataset registered under the same name")
    p.set_defaults(func=cmd_datasets_add)
    p = ds_sub.add_parser("remove", help="forget a registered dataset (its files are not touched)")
    add_project_arg(p)
    p.add_argument("name")
    p.set_defaults(func=cmd_datasets_remove)
    p = ds_sub.add_parser("inspect", help="classes, counts, fingerprint and MIA split of a dataset")
    add_project_arg(p)
    add_dataset_args(p)
    p.add_argument("--check", action="store_true", help="decode every image and report unreadable ones")
    p.set_defaults(func=cmd_datasets_inspect)


def _add_caption(sub: Any) -> None:
    p = sub.add_parser("caption", help="caption training images into a caption store (resumable)")
    add_project_arg(p)
    add_dataset_args(p)
    p.add_argument("--captioner", default="classname", help="classname | blip | blip2 (default classname)")
    p.add_argument("--model", default=None, help="hub id or local folder of the BLIP / BLIP-2 model")
    p.add_argument("--store", default=None, help="caption store name (default: the dataset's name)")
    p.add_argument("--subset", default="train", choices=["train", "members", "all"],
                   help="which images to caption (default train)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", help="auto | float32 | float16 | bfloat16")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--num-beams", type=int, default=1)
    p.add_argument("--prompt", default=None, help="conditional text prompt for BLIP / BLIP-2")
    p.add_argument("--class-template", default=DEFAULT_CLASS_TEMPLATE,
                   help="classname captioner: caption made from the class name")
    p.add_argument("--overwrite", action="store_true",
                   help="re-caption images that already have machine captions (edited and reviewed "
                        "captions are kept)")
    p.add_argument("--overwrite-reviewed", action="store_true",
                   help="re-caption every image, replacing edited and reviewed captions too (says how many "
                        "before it starts)")
    p.set_defaults(func=cmd_caption)


def _add_captions(sub: Any) -> None:
    cap = sub.add_parser("captions", help="list, show, export, import, diff and roll back caption stores")
    cap_sub = cap.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = cap_sub.add_parser("list", help="caption stores of the project")
    add_project_arg(p)
    p.set_defaults(func=cmd_captions_list)
    p = cap_sub.add_parser("show", help="print the captions of a store")
    add_project_arg(p)
    p.add_argument("store")
    p.add_argument("--version", type=int, default=None, help="store version (default: newest)")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_captions_show)
    p = cap_sub.add_parser("export", help="write captions to jsonl, csv or a TCKR prompt file")
    add_project_arg(p)
    p.add_argument("store")
    p.add_argument("--format", default="jsonl", choices=["jsonl", "csv", "tckr-json"])
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--version", type=int, default=None, help="store version (default: newest)")
    p.set_defaults(func=cmd_captions_export)
    p = cap_sub.add_parser("import", help="read captions from jsonl, csv or TCKR's caption files")
    add_project_arg(p)
    add_dataset_args(p)
    p.add_argument("store")
    p.add_argument("file")
    p.add_argument("--format", default="jsonl", choices=["jsonl", "csv", "tckr-txt", "tckr-json"],
                   help="jsonl | csv (id, caption[, label]) | tckr-txt (TCKR's original_order/*_finetuning.txt: "
                        "a 'class: caption' line per training image, in the source's order) | tckr-json "
                        "(a per-class prompt pool {class: [captions]}: needs --assign-in-order)")
    p.add_argument("--assign-in-order", action="store_true",
                   help="tckr-json: store the k-th caption of a class for the k-th training image of the "
                        "class, although the pool's captions are not tied to those images")
    p.set_defaults(func=cmd_captions_import)
    p = cap_sub.add_parser("history", help="versions of a store")
    add_project_arg(p)
    p.add_argument("store")
    p.set_defaults(func=cmd_captions_history)
    p = cap_sub.add_parser("diff", help="captions that differ between two versions")
    add_project_arg(p)
    p.add_argument("store")
    p.add_argument("a", type=int, help="old version")
    p.add_argument("b", type=int, nargs="?", default=None, help="new version (default: newest)")
    p.set_defaults(func=cmd_captions_diff)
    p = cap_sub.add_parser("rollback", help="restore the captions of an older version (as a new version)")
    add_project_arg(p)
    p.add_argument("store")
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_captions_rollback)


def _add_runs(sub: Any) -> None:
    runs = sub.add_parser("runs", help="list, show, cancel, archive, delete or rebuild runs")
    runs_sub = runs.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = runs_sub.add_parser("list", help="runs, newest first")
    add_project_arg(p)
    p.add_argument("--kind", default=None)
    p.add_argument("--status", default=None)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--archived", action="store_true", help="list archived runs too")
    p.set_defaults(func=cmd_runs_list)
    p = runs_sub.add_parser("show", help="one run with config, metrics and lineage")
    add_project_arg(p)
    p.add_argument("run_id")
    p.set_defaults(func=cmd_runs_show)
    p = runs_sub.add_parser("cancel", help="ask a running run to stop")
    add_project_arg(p)
    p.add_argument("run_id")
    p.set_defaults(func=cmd_runs_cancel)
    for action, archive in (("archive", True), ("unarchive", False)):
        p = runs_sub.add_parser(action, help=f"{'hide a run (and the stage runs it made) from' if archive else 'bring an archived run back to'} `runs list`")
        add_project_arg(p)
        p.add_argument("run_id")
        p.set_defaults(func=cmd_runs_archive, archive=archive)
    p = runs_sub.add_parser("delete", help="delete a finished run, its stage runs and their folders (refused for a "
                                           "live run or one other runs were made from)")
    add_project_arg(p)
    p.add_argument("run_id")
    p.add_argument("--yes", action="store_true", help="confirm: the files are gone for good")
    p.set_defaults(func=cmd_runs_delete)
    p = runs_sub.add_parser("rebuild", help="build a damaged or lost registry.sqlite again from the run folders "
                                            "(each one's run.json and config.json)")
    add_project_arg(p)
    p.add_argument("--force", action="store_true", help="rebuild a registry that reads whole too (kept as .bak)")
    p.set_defaults(func=cmd_runs_rebuild)


@contextmanager
def run_log() -> Iterator[None]:
    """Logging for a run's log file (``--run-log``; the studio sends a background run's stderr to
    runs/<id>/log.txt): the pipeline's INFO messages and every library's warnings (``warnings.warn``
    included), with timestamps, on stderr. Undone on exit, so an in-process caller keeps its logging."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, package = logging.getLogger(), logging.getLogger("pipeline")
    level = package.level
    root.addHandler(handler)
    package.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        package.setLevel(level)
        root.removeHandler(handler)


@contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """SIGTERM (a service manager, `kill`, a shutdown) and SIGHUP (a closed terminal) raise
    :class:`RunInterrupted` in the main thread, as Ctrl-C raises KeyboardInterrupt: the run on its way out
    records itself interrupted (resumable) and stops its worker processes, instead of dying as "running"
    with orphans. A second signal while it does so kills at once. A signal the process was started to
    ignore (``nohup``) stays ignored. Undone on exit, so an in-process caller keeps its own handling."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        for sig in previous:
            signal.signal(sig, signal.SIG_DFL)
        raise RunInterrupted(signum)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous = {sig: handler for sig, handler in previous.items() if handler is not signal.SIG_IGN}
    for sig in previous:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


def main(argv: Sequence[str] | None = None) -> int:
    from ..core import cluster as processes

    parser = build_parser()
    args = parser.parse_args(argv)
    if processes.launched():  # `accelerate launch -m pipeline ...`: the main process leads, the others serve
        cluster = processes.current()
        if not cluster.is_main:
            processes.exit_process(_serve(cluster))
    if args.run_log:
        with run_log(), interrupted_by_signals():
            code = _dispatch(args)
            logger.info("exit status %d%s", code, " (cancelled)" if code in (129, 130, 143) else "")
    else:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        with interrupted_by_signals():
            code = _dispatch(args)
    if code == 0:  # on a failure the main process exits and the launcher stops the serving ones
        processes.current().release()
    if processes.launched():
        processes.exit_process(code)
    return code


def _serve(cluster: Any) -> int:
    """A process other than the main one under ``accelerate launch``: make its share of each generation
    and shadow set the main process's command reaches, quietly, until the command ends."""
    from ..experiment import audit_share
    from ..generate import generation_share

    logging.basicConfig(level=logging.WARNING, format=f"%(levelname)s [process {cluster.rank}] %(name)s: %(message)s")
    cluster.serve({"generate": generation_share, "audit-shadows": audit_share})
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command. The CLI boundary: an error is one line for the user (a run log gets its full
    traceback); a cancel is one line (a run log has said where the run stopped)."""
    try:
        return args.func(args)
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours, and nothing left to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as err:
        how = f"interrupted by {err}" if isinstance(err, RunInterrupted) else "interrupted"
        if args.run_log:
            logger.warning("%s", how)
        else:
            print(how, file=sys.stderr)
        return 128 + err.signum if isinstance(err, RunInterrupted) else 130
    except RunCancelled as err:  # the run noticed a cancel request before (or instead of) the SIGINT
        if not args.run_log:
            print(f"cancelled{f': {err}' if str(err) else ''}", file=sys.stderr)
        return 130
    except Exception as err:
        # the CLI boundary: one line for the user, the traceback only with --verbose or in a run log; a full
        # disk, however it surfaced (OSError, SafetensorError, sqlite's "disk I/O error"), says where
        full = full_disk(err, _project_folder(args))
        if full is not None:
            return _one_line(args, full, traceback=False)
        if isinstance(err, (UnknownNameError, ValueError, KeyError, FileNotFoundError, RuntimeError, OSError)):
            return _one_line(args, err.args[0] if isinstance(err, KeyError) and err.args else err)
        if not args.run_log:
            raise  # an unexpected error: Python's own traceback
        logger.error("%s: %s", type(err).__name__, err, exc_info=True)
        return 1


def _project_folder(args: argparse.Namespace) -> Path | None:
    """The command's project folder (without creating it), or None for a command without one."""
    from ..core.project import default_project_dir

    if not hasattr(args, "project"):
        return None
    return Path(args.project) if args.project else default_project_dir()


def _one_line(args: argparse.Namespace, message: Any, traceback: bool = True) -> int:
    """An error as one line: on stderr (the traceback with --verbose), or in a run log as an ERROR line
    (with the traceback, unless it adds nothing to the line)."""
    if args.run_log:
        logger.error("%s: %s", type(message).__name__, message, exc_info=traceback)
    else:
        logger.debug("command failed", exc_info=True)
        print(f"error: {message}", file=sys.stderr)
    return 2

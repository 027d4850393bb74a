"""Pieces every CLI module shares: progress bars, dataset / project options, tables."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..core.common import Progress, to_jsonable

logger = logging.getLogger(__name__)


class ProgressBars:
    """Turns library progress events into one tqdm bar per stage."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}
        self.finished: set[tuple[str, int | None]] = set()  # a late "done" event must not reopen a bar

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(event.stage)
        if bar is None and (event.stage, event.total) in self.finished and \
                event.total is not None and event.done >= event.total:
            return
        if bar is None or (event.total is not None and bar.total != event.total):
            if bar is not None:
                bar.close()
            bar = self.bars[event.stage] = tqdm(total=event.total, desc=event.stage, dynamic_ncols=True,
                                                leave=True, file=sys.stderr)
        if event.info:
            bar.set_postfix({k: _short(v) for k, v in event.info.items()}, refresh=False)
        bar.update(event.done - bar.n)  # tqdm rate-limits redraws and computes rate / ETA
        if event.total is not None and event.done >= event.total:
            bar.close()
            self.bars.pop(event.stage, None)
            self.finished.add((event.stage, event.total))

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


class StageLog:
    """Turns progress events into log lines (INFO): a stage starting, its epochs with their figures,
    its progress at most every ``every_s`` seconds and its end; then hands each event to ``forward``.
    ``where()`` names the stage and step the run is at, for a cancel or failure message."""

    def __init__(self, forward: Callable[[Progress], None] | None = None, every_s: float = 30.0) -> None:
        self.forward, self.every_s = forward, every_s
        self.last: Progress | None = None
        self.active: set[str] = set()
        self.ended: dict[str, tuple[int, int | None]] = {}  # stage -> the (done, total) it ended at
        self.logged_at = 0.0

    def __call__(self, event: Progress) -> None:
        if self.forward is not None:
            self.forward(event)
        now = time.monotonic()
        finished = event.total is not None and event.done >= event.total
        if event.stage not in self.active:
            if self.ended.get(event.stage) == (event.done, event.total):
                return  # a late repeat of the event that ended the stage
            self.active.add(event.stage)
            logger.info("%s: started%s", event.stage, f" ({event.total} in all)" if event.total else "")
            self.logged_at = now
        figures = ", ".join(f"{k} {_short(v)}" for k, v in event.info.items()
                            if k not in ("epoch_end", "epoch") and isinstance(v, (int, float)))
        figures = f" ({figures})" if figures else ""
        if event.info.get("epoch_end"):
            logger.info("%s: epoch %s%s", event.stage, event.info.get("epoch", _step(event)), figures)
            self.logged_at = now
        elif finished:
            logger.info("%s: done %s%s", event.stage, _step(event), figures)
        elif now - self.logged_at >= self.every_s:
            logger.info("%s: %s%s", event.stage, _step(event), figures)
            self.logged_at = now
        if finished:
            self.active.discard(event.stage)
            self.ended[event.stage] = (event.done, event.total)
        self.last = event

    def where(self) -> str:
        """'during the finetune stage (3/100)', or 'after the caption stage' between stages."""
        if self.last is None:
            return "before the first stage"
        if self.last.stage not in self.active:
            return f"after the {self.last.stage} stage"
        return f"during the {self.last.stage} stage ({_step(self.last)})"


def _step(event: Progress) -> str:
    return f"{event.done}/{event.total}" if event.total is not None else str(event.done)


def _short(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


# -- shared options -----------------------------------------------------------------------------------
def add_project_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=None,
                   help="project folder holding runs, captions and the registry "
                        "(default: $TCKR_PROJECT or ./workspace)")


def add_column_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-column", default=None, help="image column of parquet / HF data (default: detect)")
    p.add_argument("--label-column", default=None, help="label column of parquet / HF data (default: detect)")


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits",
                   help="dataset spec: digits (built-in), imagefolder:DIR, parquet:FILE_OR_DIR, "
                        "hf:HUB_ID_OR_DIR, or the NAME of a dataset registered with `datasets add` "
                        "(default: digits)")
    add_column_args(p)
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of training images held out for validation (default 0.1)")
    p.add_argument("--member-fraction", type=float, default=0.5,
                   help="share of the other training images that are MIA members (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the member / non-member split")
    p.add_argument("--limit", type=int, default=None, help="use at most N images per split")


def dataset_config(args: argparse.Namespace):
    """The dataset options as a DatasetConfig, checked against its schema (``--val-fraction nan`` is refused).
    A spec without a source (``--dataset NAME``) names a dataset registered with the project."""
    from dataclasses import replace

    from ..core.schema import checked
    from ..data.datasets import SOURCES, parse_dataset_spec

    split = {"val_fraction": args.val_fraction, "member_fraction": args.member_fraction, "seed": args.seed,
             "limit": args.limit}
    if ":" not in args.dataset and args.dataset not in SOURCES:
        known = registered_datasets(args)
        if args.dataset not in known:
            raise ValueError(f"unknown dataset {args.dataset!r}: not a source ({', '.join(SOURCES.names())}) nor a "
                             f"dataset registered with this project ({', '.join(known) or 'none yet'}; "
                             "add one with `datasets add NAME SPEC`)")
        columns = {k: v for k, v in (("image_column", args.image_column), ("label_column", args.label_column)) if v}
        return checked(replace(known[args.dataset], **columns, **split))
    return checked(parse_dataset_spec(args.dataset, image_column=args.image_column, label_column=args.label_column,
                                      **split))


def registered_datasets(args: argparse.Namespace) -> dict:
    """The datasets registered with the project of ``args`` (its folder is not created to find out)."""
    from pathlib import Path

    from ..core.project import default_project_dir
    from ..data.catalog import registered

    project = getattr(args, "project", None)
    return registered(Path(project) if project is not None else default_project_dir())


def project_of(args: argparse.Namespace):
    from ..core.project import Project

    return Project.open(args.project)


def print_json(obj: Any) -> None:
    print(json.dumps(to_jsonable(obj), indent=2, sort_keys=True))


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))

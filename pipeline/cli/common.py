"""Pieces every CLI module shares: progress bars, dataset / project options, tables."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from ..core.common import Progress, to_jsonable


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


def _short(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


# -- shared options -----------------------------------------------------------------------------------
def add_project_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", default=None,
                   help="project folder holding runs, captions and the registry "
                        "(default: $TCKR_PROJECT or ./workspace)")


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="digits",
                   help="dataset spec: digits (built-in), imagefolder:DIR, parquet:FILE_OR_DIR, "
                        "hf:HUB_ID_OR_DIR (default: digits)")
    p.add_argument("--image-column", default=None, help="image column of parquet / HF data (default: detect)")
    p.add_argument("--label-column", default=None, help="label column of parquet / HF data (default: detect)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of training images held out for validation (default 0.1)")
    p.add_argument("--member-fraction", type=float, default=0.5,
                   help="share of the other training images that are MIA members (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the member / non-member split")
    p.add_argument("--limit", type=int, default=None, help="use at most N images per split")


def dataset_config(args: argparse.Namespace):
    from ..data.datasets import parse_dataset_spec

    return parse_dataset_spec(args.dataset, image_column=args.image_column, label_column=args.label_column,
                              val_fraction=args.val_fraction, member_fraction=args.member_fraction,
                              seed=args.seed, limit=args.limit)


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

"""Caption curation helpers for people fixing captions by hand: filter, search, bulk find & replace
with a preview, per-class statistics and review progress, re-captioning a selection. Pure functions
over store records, plus :func:`recaption` and :func:`approve_class`, which write a new store version."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..data.datasets import ImageDataset
from .captioners import Captioner, CaptionerConfig, create_captioner
from .store import CaptionChange, CaptionRecord, CaptionStore

STOPWORDS = frozenset("a an the of on in at with and is are to for by from its it this that".split())
# status filters: a caption's review status (machine | edited | reviewed), "not reviewed" (machine or
# edited) and "needs review" (machine captions that look wrong, see needs_review)
FILTERS = ("all", "edited", "machine", "needs review", "reviewed", "not reviewed")


@dataclass(frozen=True)
class ClassStats:
    """Statistics of one class's captions."""

    label: str
    count: int
    mean_words: float
    top_words: tuple[tuple[str, int], ...]  # most frequent non-stopwords with counts
    missing_class_name: int  # captions that do not mention the class name


@dataclass(frozen=True)
class ReviewProgress:
    """How far the review of one class has come."""

    label: str
    total: int  # captions of the class
    reviewed: int  # of them with status "reviewed"
    edited: int  # of them edited by hand and waiting for review

    @property
    def fraction(self) -> float:
        return self.reviewed / self.total if self.total else 1.0


def needs_review(record: CaptionRecord) -> bool:
    """A machine caption (not yet edited or reviewed) that is empty, very short, repeats a word 3+
    times or lacks the class name."""
    if record.status != "machine":
        return False
    words = record.caption.lower().split()
    repeated = any(n >= 3 for n in Counter(words).values())
    return len(words) < 3 or repeated or not mentions_class(record.caption, record.label)


def mentions_class(caption: str, label: str) -> bool:
    return re.search(rf"\b{re.escape(label.lower().replace('_', ' '))}s?\b", caption.lower()) is not None


_STATUS_TESTS = {
    "all": lambda r: True,
    "edited": lambda r: r.status == "edited",
    "machine": lambda r: r.status == "machine",
    "needs review": needs_review,
    "reviewed": lambda r: r.status == "reviewed",
    "not reviewed": lambda r: r.status != "reviewed",
}


def filter_records(records: Mapping[str, CaptionRecord], classes: Iterable[str] | None = None, text: str = "",
                   status: str = "all", curator: str | None = None) -> list[CaptionRecord]:
    """Records (sorted by id) of the given classes whose caption or id contains ``text``
    (case-insensitive), whose status matches ``status`` (one of :data:`FILTERS`) and, if given, whose
    last editor or reviewer is ``curator``."""
    if status not in FILTERS:
        raise ValueError(f"unknown filter {status!r}; valid: {', '.join(FILTERS)}")
    wanted = set(classes) if classes else None
    needle = text.lower().strip()
    keep = _STATUS_TESTS[status]
    out = []
    for image_id in sorted(records):
        r = records[image_id]
        if wanted is not None and r.label not in wanted or curator is not None and r.curator != curator:
            continue
        if needle and needle not in r.caption.lower() and needle not in r.id.lower():
            continue
        if keep(r):
            out.append(r)
    return out


def curators(records: Mapping[str, CaptionRecord]) -> list[str]:
    """Everyone who last edited or reviewed some caption, sorted."""
    return sorted({r.curator for r in records.values() if r.curator})


def review_progress(records: Mapping[str, CaptionRecord], class_names: Iterable[str]) -> list[ReviewProgress]:
    """Per class (in ``class_names`` order, then any other label): captions, reviewed, edited."""
    counts: dict[str, Counter] = {c: Counter() for c in class_names}
    for r in records.values():
        counts.setdefault(r.label, Counter())[r.status] += 1
    return [ReviewProgress(label, sum(c.values()), c["reviewed"], c["edited"]) for label, c in counts.items()]


def approve_class(store: CaptionStore, label: str, base_version: int, reviewer: str) -> int:
    """Mark every caption of class ``label`` at ``base_version`` reviewed, as one version (refused
    like an edit if one of them changed since)."""
    ids = sorted(i for i, r in store.records(base_version).items() if r.label == label and not r.reviewed)
    if not ids:
        raise ValueError(f"every caption of class {label!r} is already reviewed")
    return store.review(ids, base_version=base_version, reviewer=reviewer, message=f"approve class {label}")


def store_template(meta: Mapping[str, Any], records: Mapping[str, CaptionRecord]) -> str | None:
    """The class template the store's captions were made with: ``class_template`` in the store's meta,
    else the most common one among its ``classname`` captions' sources; None if neither has one."""
    if meta.get("class_template"):
        return str(meta["class_template"])
    used = Counter(r.source.get("params", {}).get("class_template") for r in records.values()
                   if r.source.get("captioner") == "classname")
    used.pop(None, None)
    return used.most_common(1)[0][0] if used else None


def find_replace(records: Iterable[CaptionRecord], find: str, replace: str, regex: bool = False,
                 case_sensitive: bool = False) -> list[CaptionChange]:
    """The changes a bulk find & replace would make (preview); nothing is written."""
    if not find:
        raise ValueError("nothing to find: the search text is empty")
    flags = 0 if case_sensitive else re.IGNORECASE
    try:
        pattern = re.compile(find if regex else re.escape(find), flags)
    except re.error as err:
        raise ValueError(f"invalid regular expression {find!r}: {err}") from None
    changes = []
    for r in records:
        new = pattern.sub(replace, r.caption)
        if new != r.caption:
            changes.append(CaptionChange(r.id, r.caption, new))
    return changes


def apply_changes(store: CaptionStore, changes: Iterable[CaptionChange], base_version: int,
                  author: str = "", message: str = "find and replace") -> int:
    """Save previewed changes as one hand edit (refused on conflict, like any edit)."""
    return store.edit({c.id: c.after or "" for c in changes}, base_version=base_version, author=author,
                      message=message)


def class_stats(records: Mapping[str, CaptionRecord], class_names: Iterable[str], top: int = 8) -> list[ClassStats]:
    """Per-class count, mean caption length, most frequent words and captions missing the class name."""
    by_class: dict[str, list[CaptionRecord]] = {c: [] for c in class_names}
    for r in records.values():
        by_class.setdefault(r.label, []).append(r)
    out = []
    for label, items in by_class.items():
        words = Counter(w for r in items for w in re.findall(r"[a-z']+", r.caption.lower()) if w not in STOPWORDS)
        lengths = [len(r.caption.split()) for r in items]
        out.append(ClassStats(label, len(items), sum(lengths) / len(lengths) if lengths else 0.0,
                              tuple(words.most_common(top)),
                              sum(not mentions_class(r.caption, r.label) for r in items)))
    return out


def curated_among(store: CaptionStore, ids: Iterable[str], version: int) -> list[str]:
    """The ids whose caption at ``version`` a person edited or reviewed (a re-caption asks before replacing them)."""
    records = store.records(version)
    return [i for i in ids if i in records and records[i].curated]


def recaption(store: CaptionStore, dataset: ImageDataset, ids: list[str], config: CaptionerConfig,
              base_version: int, captioner: Captioner | None = None, author: str = "",
              replace_curated: bool = False) -> int:
    """Re-caption the selected images with a captioner; one new version (conflict-checked).

    Edited and reviewed captions among them are kept unless ``replace_curated`` (the user confirmed it)."""
    if not ids:
        raise ValueError("select at least one image to re-caption")
    if not replace_curated:
        curated = set(curated_among(store, ids, base_version))
        ids = [i for i in ids if i not in curated]
        if not ids:
            raise ValueError(f"the {len(curated)} selected caption(s) were all edited or reviewed by hand; "
                             "confirm replacing them to re-caption them")
    captioner = captioner or create_captioner(config)
    source = captioner.source()
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    records: list[CaptionRecord] = []
    pairs = list(dataset.iter_images([dataset.record(i) for i in ids]))
    for start in range(0, len(pairs), config.batch_size):
        chunk = pairs[start:start + config.batch_size]
        labels = [dataset.class_name(r.label) for r, _ in chunk]
        texts = captioner.caption([img for _, img in chunk], labels)
        records += [CaptionRecord(r.id, label, text.strip(), source, stamp)
                    for (r, _), label, text in zip(chunk, labels, texts)]
    return store.save(records, base_version=base_version, author=author,
                      message=f"re-caption {len(records)} images with {source['captioner']}")


def stats_table(stats: list[ClassStats]) -> list[dict[str, Any]]:
    """Rows for a table widget."""
    return [{"class": s.label, "captions": s.count, "mean words": round(s.mean_words, 1),
             "missing class name": s.missing_class_name,
             "top words": ", ".join(f"{w} ({n})" for w, n in s.top_words)} for s in stats]

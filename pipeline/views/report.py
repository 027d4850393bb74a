"""Read-side queries over a project, for the studio and for slides: the accuracy / privacy points of
every audited model, their Pareto front and AOP iso-curves, live-run curves from ``events.jsonl``, and
which dataset a caption store was made from.

The maths (Pareto front, iso-AOP curves, epoch rows) are pure functions over plain lists and arrays,
tested against hand-computed values; the rest only reads files and the run registry.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.common import from_dict
from ..core.project import Project
from ..core.runs import RunRecord
from ..data.datasets import DatasetConfig

logger = logging.getLogger(__name__)

ROLES = ("teacher", "student")


@dataclass(frozen=True)
class ModelPoint:
    """One audited model (the teacher or the student of a finished experiment run)."""

    run_id: str
    role: str  # teacher | student
    accuracy: float  # real test-set accuracy
    auc: float  # membership-inference AUC of the headline attack in the headline mode
    auc_ci95: tuple[float, float] | None  # bootstrap 95% interval of the AUC
    tpr_at_01pct: float  # attack TPR at 0.1% FPR
    tpr_at_1pct: float  # attack TPR at 1% FPR
    aop: float  # accuracy / (2 AUC)^2
    dataset: str  # dataset name
    generator: str  # generator backend
    cardinality: float  # synthetic images per round, x members
    rounds: int  # synthetic rounds
    roc_fpr: tuple[float, ...]  # attack ROC curve
    roc_tpr: tuple[float, ...]
    per_class_accuracy: tuple[float, ...]
    created_at: str = ""
    audit: str = "transfer · lira"  # audit mode and attack of ``auc`` (older runs: transfer-mode LiRA)

    @property
    def label(self) -> str:
        return f"{self.run_id} {self.role}"


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def points_from_metrics(run_id: str, metrics: dict[str, Any], created_at: str = "") -> list[ModelPoint]:
    """The teacher and student points of one run's ``metrics.json`` (format of ``experiment.py``), then
    one per other transfer method (role = the method's label, e.g. ``am`` or ``dp-sgd ε=8``)."""
    from ..privacy.metrics import aop  # imports scipy.stats (~1.5 s): only for metrics without "aop"

    points = []
    synthetic = metrics.get("synthetic", {})
    models = [(role, metrics[role]) for role in ROLES] + list(metrics.get("methods", {}).items())
    for role, m in models:
        mia = m["mia"]
        roc = mia.get("roc") or {}
        ci = mia.get("auc_ci95")
        points.append(ModelPoint(
            run_id=run_id, role=role, accuracy=float(m["accuracy"]), auc=float(mia["auc"]),
            auc_ci95=(float(ci[0]), float(ci[1])) if ci else None,
            tpr_at_01pct=_number(mia.get("tpr_at_0.1pct_fpr")),  # None: below the FPR floor, not measurable
            tpr_at_1pct=_number(mia.get("tpr_at_1pct_fpr")),
            aop=float(m.get("aop", aop(float(m["accuracy"]), float(mia["auc"])))),
            dataset=str(metrics.get("dataset", {}).get("name", "")),
            generator=str(metrics.get("generator", {}).get("backend", "")),
            cardinality=float(synthetic.get("cardinality", float("nan"))),
            rounds=int(synthetic.get("rounds", 0)),
            roc_fpr=tuple(float(v) for v in roc.get("fpr", ())),
            roc_tpr=tuple(float(v) for v in roc.get("tpr", ())),
            per_class_accuracy=tuple(float(v) for v in m.get("per_class_accuracy", ())),
            created_at=created_at,
            audit=f"{mia.get('mia_mode', 'transfer')} · {mia.get('attack', 'lira')}",
        ))
    return points


def collect_points(project: Project) -> list[ModelPoint]:
    """Points of every finished experiment run that wrote a ``metrics.json`` (newest run first)."""
    points: list[ModelPoint] = []
    for run in project.registry().list(kind="experiment", status="done", limit=10_000):
        path = run.run_dir / "metrics.json"
        if not path.exists():
            continue
        try:
            points += points_from_metrics(run.id, json.loads(path.read_text(encoding="utf-8")), run.created_at)
        except (KeyError, TypeError, ValueError) as err:
            logger.warning("skipping %s: unreadable metrics (%s)", path, err)
    return points


def filter_points(points: Iterable[ModelPoint], datasets: Iterable[str] | None = None,
                  generators: Iterable[str] | None = None,
                  cardinalities: Iterable[float] | None = None) -> list[ModelPoint]:
    """Points whose dataset, generator and cardinality are among the given ones (None or empty: any)."""
    keep = [set(v) if v else None for v in (datasets, generators, cardinalities)]
    return [p for p in points
            if (keep[0] is None or p.dataset in keep[0]) and (keep[1] is None or p.generator in keep[1])
            and (keep[2] is None or p.cardinality in keep[2])]


def pareto_front(accuracy: Sequence[float], auc: Sequence[float]) -> np.ndarray:
    """Which points are Pareto-optimal for higher accuracy and lower AUC.

    A point is dominated when another has accuracy >= and AUC <= with at least one strict. Points
    tied on both count as optimal together. (n,), (n,) -> (n,) bool.
    """
    acc, risk = np.asarray(accuracy, dtype=np.float64), np.asarray(auc, dtype=np.float64)
    if acc.shape != risk.shape or acc.ndim != 1:
        raise ValueError(f"accuracy and auc must be 1-D of equal length; got {acc.shape}, {risk.shape}")
    no_worse = (acc[None, :] >= acc[:, None]) & (risk[None, :] <= risk[:, None])  # [i, j]: j vs i
    better = (acc[None, :] > acc[:, None]) | (risk[None, :] < risk[:, None])
    return ~(no_worse & better).any(axis=1)


def front_line(points: Sequence[ModelPoint]) -> list[ModelPoint]:
    """The Pareto-optimal points sorted by AUC (to draw the front as a line)."""
    if not points:
        return []
    mask = pareto_front([p.accuracy for p in points], [p.auc for p in points])
    return sorted((p for p, keep in zip(points, mask) if keep), key=lambda p: (p.auc, p.accuracy))


def aop_iso_curve(level: float, auc: Sequence[float]) -> np.ndarray:
    """Accuracy at which AOP = ``level`` for each AUC: level * (2 AUC)^2 (NaN where above 1).

    AOP = accuracy / (2 AUC)^2 (TCKR), so the iso-curve is a parabola in AUC. (n,) -> (n,).
    """
    auc = np.asarray(auc, dtype=np.float64)
    acc = level * (2.0 * auc) ** 2
    return np.where(acc <= 1.0, acc, np.nan)


def run_pairs(points: Sequence[ModelPoint]) -> list[tuple[ModelPoint, ModelPoint]]:
    """(teacher, student) of each run that has both, in the order of ``points``."""
    by_run: dict[str, dict[str, ModelPoint]] = {}
    for p in points:
        by_run.setdefault(p.run_id, {})[p.role] = p
    return [(roles["teacher"], roles["student"]) for roles in by_run.values()
            if "teacher" in roles and "student" in roles]


def points_table(points: Sequence[ModelPoint]) -> list[dict[str, Any]]:
    """Rows for a table widget or a CSV."""
    optimal = pareto_front([p.accuracy for p in points], [p.auc for p in points]) if points else []
    return [{"run": p.run_id, "model": p.role, "dataset": p.dataset, "generator": p.generator,
             "cardinality": p.cardinality, "accuracy": round(p.accuracy, 4), "MIA AUC": round(p.auc, 4),
             "audit": p.audit,
             "TPR@0.1%FPR": round(p.tpr_at_01pct, 4), "AOP": round(p.aop, 4), "Pareto": bool(on_front)}
            for p, on_front in zip(points, optimal)]


# -- live runs ----------------------------------------------------------------------------------------
def epoch_rows(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per-epoch rows of each training stage from a run's events (``epoch_end`` events only).

    Returns {stage: [{"epoch", "loss", "val_accuracy", ...}, ...]}, later duplicates of an epoch
    (a resumed run) replacing earlier ones.
    """
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for event in events:
        if not event.get("epoch_end"):
            continue
        rows = out.setdefault(event["stage"], {})
        row = {k: v for k, v in event.items() if k not in ("t", "stage", "done", "total", "epoch_end")}
        rows[int(event.get("epoch", len(rows) + 1))] = row
    return {stage: [rows[e] for e in sorted(rows)] for stage, rows in out.items()}


def throughput(events: Iterable[dict[str, Any]], stage: str = "generate") -> float | None:
    """The latest images/s a stage reported (``images_per_s`` or ``images/s``), or None."""
    rate = None
    for event in events:
        if event.get("stage") == stage:
            value = event.get("images_per_s", event.get("images/s"))
            if value is not None:
                rate = float(value)
    return rate


def generation_rate(project: Project, record: RunRecord, events: Iterable[dict[str, Any]] = ()) -> float | None:
    """Images/s of a run's generation: the latest live figure, else the mean of its finished
    generation runs (short rounds can end between two throttled progress events)."""
    rate = throughput(events)
    if rate is not None:
        return rate
    registry = project.registry()
    rates = [registry.get(link.ref).metrics.get("images_per_s") for link in record.links
             if link.ref_kind == "run" and link.role.startswith("synthetic")]
    rates = [float(r) for r in rates if r]
    return sum(rates) / len(rates) if rates else None


def run_summary(record: RunRecord) -> dict[str, Any]:
    """One row of the runs table: id, status, stage and progress, headline metrics."""
    progress = record.progress or {}
    done, total = progress.get("done"), progress.get("total")
    metrics = record.metrics
    return {
        "run": record.id, "kind": record.kind, "status": record.status,
        "stage": progress.get("stage", ""),
        "progress": f"{done}/{total}" if done is not None and total else "",
        "created": record.created_at[:19].replace("T", " "),
        "teacher acc": metrics.get("teacher_accuracy"), "student acc": metrics.get("student_accuracy"),
        "teacher AUC": metrics.get("teacher_auc"), "student AUC": metrics.get("student_auc"),
        "error": record.error or "",
    }


# -- datasets of caption stores and runs ------------------------------------------------------------------
def dataset_config_for_store(project: Project, store: str) -> DatasetConfig | None:
    """The dataset a caption store was made from: the newest run that wrote or read the store and
    whose dataset fingerprint is the store's records its ``DatasetConfig``. None when no run did
    (e.g. captions imported from a file)."""
    try:
        fingerprint = project.caption_store(store).meta().get("fingerprint")
    except FileNotFoundError:
        return None
    for run in project.registry().list(limit=10_000):  # newest first
        uses = any(link.ref_kind == "captions" and link.ref.split("@")[0] == store for link in run.links)
        data = {link.ref for link in run.links if link.ref_kind == "dataset"}
        if not (uses or run.config.get("store") == store) or not isinstance(run.config.get("dataset"), dict):
            continue
        if fingerprint and data and fingerprint not in data:
            continue  # the run read other data under the same store name
        try:
            return from_dict(DatasetConfig, run.config["dataset"])
        except (TypeError, ValueError):
            continue
    return None


def known_datasets(project: Project) -> list[DatasetConfig]:
    """Distinct dataset configs found in the project's runs, newest first (for a picker)."""
    seen: list[DatasetConfig] = []
    for run in project.registry().list(limit=10_000):
        data = run.config.get("dataset")
        if isinstance(data, dict):
            try:
                config = from_dict(DatasetConfig, data)
            except (TypeError, ValueError):
                continue
            if config not in seen:
                seen.append(config)
    return seen


def run_class_names(project: Project, record: RunRecord, n_classes: int) -> list[str]:
    """Class names of a run: from the caption store it used, else "0", "1", ..."""
    for link in record.links:
        if link.ref_kind == "captions":
            try:
                classes = project.caption_store(link.ref.split("@")[0]).meta().get("classes")
            except (FileNotFoundError, ValueError):
                continue
            if classes and len(classes) == n_classes:
                return [str(c) for c in classes]
    return [str(i) for i in range(n_classes)]


def memorisation_runs(project: Project) -> list[RunRecord]:
    """Finished experiments whose synthetic rounds have a memorisation audit (newest first)."""
    return [r for r in project.registry().list(kind="experiment", status="done")
            if (r.run_dir / "synthetic" / "round-0" / "neighbours.jsonl").exists()]


def synthetic_neighbours(record: RunRecord, round_k: int, space: str = "features",
                         limit: int = 24) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The synthetic images of one round closest to a real member first (copies lead), each with its
    nearest member and non-member in ``space`` (features | pixels); and the round's summary."""
    folder = record.run_dir / "synthetic" / f"round-{round_k}"
    summary = json.loads((folder / "memorisation.json").read_text(encoding="utf-8"))
    if space not in summary:
        raise ValueError(f"round {round_k} has no {space!r} audit; spaces: {', '.join(summary)}")
    rows = []
    with open(folder / "neighbours.jsonl", encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            rows.append({"file": str(folder / entry["file"]), "label": entry["label"], **entry[space]})
    rows.sort(key=lambda r: (not r["copy"], r["member_distance"]))
    return rows[:limit], summary[space]

"""Read-side queries over a project, for the studio and for slides: the accuracy / privacy points of
every audited model, their Pareto front and AOP iso-curves, live-run curves from ``events.jsonl``, and
which dataset a caption store was made from.

The maths (Pareto front, iso-AOP curves, epoch rows) are pure functions over plain lists and arrays,
tested against hand-computed values; the rest only reads files and the run registry.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..captions.store import caption_store
from ..core.common import from_dict
from ..core.project import Project
from ..core.runs import RunRecord
from ..data.datasets import DatasetConfig
from .legend import model_name

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
    mia_mode: str = "transfer"  # audit mode of ``auc``: transfer | pipeline
    attack: str = "lira"  # attack of ``auc``: lira | rmia | loss
    n_members: int = 0  # audited members (0: not recorded); the smallest measurable TPR is 1 / n_members
    n_nonmembers: int = 0  # audited non-members; the smallest measurable FPR is 1 / n_nonmembers
    epsilon: float | None = None  # formal ε: the DP guarantee's spent ε (None: no guarantee)
    empirical_epsilon: float | None = None  # the headline attack's lower bound on ε (None: not recorded); never
    # a guarantee
    reads_real: bool = True  # whether training read real training images (the GKD student does not)
    dp_generator: float | None = None  # a DP run's student: its generator's target ε (None: not a DP run's)

    @property
    def label(self) -> str:
        return f"{self.run_id} {self.role}"

    @property
    def series(self) -> str:
        """Which family of points it is drawn with: its role, or ``dp-generator ε=E`` for a DP run's student."""
        if self.role == "student" and self.dp_generator is not None:
            return f"dp-generator ε={self.dp_generator:g}"
        return self.role

    @property
    def name(self) -> str:
        """The model in words (:mod:`.legend`): "student on synthetic data (GKD)", not "student"."""
        return model_name(self.series)

    @property
    def fpr_floor(self) -> float:
        """The smallest non-zero FPR this audit can measure (0 when the count is not recorded)."""
        return 1.0 / self.n_nonmembers if self.n_nonmembers else 0.0


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def formal_epsilon_text(p: ModelPoint) -> str:
    """The guarantee: its ε, or "none" for a model trained without differential privacy."""
    return "none" if p.epsilon is None else f"{p.epsilon:.2f}"


def empirical_epsilon_text(p: ModelPoint) -> str:
    """The attack's lower bound on ε (n/a: an audit from before it was recorded)."""
    return "n/a" if p.empirical_epsilon is None else f"{p.empirical_epsilon:.2f}"


def points_from_metrics(run_id: str, metrics: dict[str, Any], created_at: str = "") -> list[ModelPoint]:
    """The teacher and student points of one run's ``metrics.json`` (format of ``experiment.py``), then
    one per other transfer method (role = the method's label, e.g. ``am`` or ``dp-sgd ε=8``)."""
    from ..privacy.metrics import aop  # imports scipy.stats (~1.5 s): only for metrics without "aop"

    points = []
    synthetic = metrics.get("synthetic", {})
    guarantee = dp_run_guarantee(metrics)
    models = [(role, metrics[role]) for role in ROLES] + list(metrics.get("methods", {}).items())
    for role, m in models:
        mia = m["mia"]
        roc = mia.get("roc") or {}
        ci = mia.get("auc_ci95")
        formal = m.get("formal_epsilon", m.get("epsilon"))
        if formal is None and role == "student" and guarantee:  # a DP run audited before the student carried it
            formal = guarantee[0]
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
            mia_mode=str(mia.get("mia_mode", "transfer")), attack=str(mia.get("attack", "lira")),
            n_members=int(mia.get("n_members") or 0), n_nonmembers=int(mia.get("n_nonmembers") or 0),
            epsilon=_optional(formal),
            empirical_epsilon=_optional(mia.get("empirical_epsilon")),
            reads_real=bool(m.get("reads_real_training_images", role == "teacher")),
            dp_generator=guarantee[1] if guarantee and role == "student" else None,
        ))
    return points


def dp_run_guarantee(metrics: dict[str, Any]) -> tuple[float, float] | None:
    """A DP run's (student ε, the generator's target ε) from ``metrics["privacy"]``; None for a run without DP."""
    privacy = metrics.get("privacy") or {}
    student = privacy.get("student") or {}
    if student.get("epsilon") is None:
        return None
    generator = (privacy.get("parts") or {}).get("generator") or {}
    target = generator.get("target_epsilon", generator.get("epsilon", student["epsilon"]))
    return float(student["epsilon"]), float(target if target is not None else student["epsilon"])


def collect_points(project: Project, archived: bool = False) -> list[ModelPoint]:
    """Points of every finished experiment run that wrote a ``metrics.json`` (newest run first);
    archived runs only with ``archived``."""
    points: list[ModelPoint] = []
    for run in project.registry().list(kind="experiment", status="done", limit=10_000,
                                       archived=None if archived else False):
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


def tpr_text(tpr: float, fpr: float, floor: float) -> str:
    """TPR at ``fpr`` as text: "n/a" when ``fpr`` is below the audit's FPR floor (1 / non-members) or
    the value was not measured, since one false positive already exceeds that rate."""
    return "n/a" if (floor and fpr < floor) or not math.isfinite(tpr) else f"{tpr:.4f}"


def ci_text(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a"


def points_table(points: Sequence[ModelPoint]) -> list[dict[str, Any]]:
    """Rows for a table widget, a CSV or the stakeholder report: per model its accuracy, the audit
    (mode and attack) its AUC comes from, the AUC with its 95% interval, TPR at 1% FPR, AOP, its formal ε
    (the DP guarantee, "none" without one) and its empirical ε (the attack's lower bound, not a guarantee).
    Columns that can say "n/a" are text (a table column holds one type)."""
    optimal = pareto_front([p.accuracy for p in points], [p.auc for p in points]) if points else []
    return [{"run": p.run_id, "model": p.name, "dataset": p.dataset, "generator": p.generator,
             "cardinality": p.cardinality, "accuracy": round(p.accuracy, 4), "audit mode": p.mia_mode,
             "attack": p.attack, "MIA AUC": round(p.auc, 4), "AUC 95% CI": ci_text(p.auc_ci95),
             "TPR@1%FPR": tpr_text(p.tpr_at_1pct, 0.01, p.fpr_floor),
             "TPR@0.1%FPR": tpr_text(p.tpr_at_01pct, 0.001, p.fpr_floor), "AOP": round(p.aop, 4),
             "formal ε": formal_epsilon_text(p), "empirical ε": empirical_epsilon_text(p), "Pareto": bool(on_front)}
            for p, on_front in zip(points, optimal)]


PAGE_SPLITS = ("run", "dataset", "generator", "cardinality")  # page columns shown only when the rows differ


def page_table(points: Sequence[ModelPoint]) -> list[dict[str, str]]:
    """The models as the Trade-offs page lists them, every cell text (a table that wraps to fit the page):
    the columns of :func:`points_table` that compare models; the run, dataset, generator and cardinality
    only when the rows differ in them, the attack beside the audit mode only when it differs. The CSV keeps
    every column of :func:`points_table`."""
    rows = points_table(points)
    split = [c for c in PAGE_SPLITS if len({str(r[c]) for r in rows}) > 1]
    attacks = len({r["attack"] for r in rows}) > 1
    return [{"model": r["model"],
             **{c: f"×{r[c]:g}" if c == "cardinality" else str(r[c]) for c in split},
             "accuracy": f"{r['accuracy']:.4f}", "MIA AUC": f"{r['MIA AUC']:.4f}", "AUC 95% CI": r["AUC 95% CI"],
             "audit": r["audit mode"] + (f" · {r['attack']}" if attacks else ""), "TPR@1%FPR": r["TPR@1%FPR"],
             "AOP": f"{r['AOP']:.4f}", "formal ε": r["formal ε"], "empirical ε": r["empirical ε"],
             "Pareto front": "yes" if r["Pareto"] else ""} for r in rows]


# -- plot axes ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisRanges:
    """Ranges of the trade-off plot's axes."""

    auc: tuple[float, float]  # x: membership-inference AUC
    accuracy: tuple[float, float]  # y: test accuracy


FIXED_RANGES = AxisRanges(auc=(0.0, 1.0), accuracy=(0.0, 1.02))  # the whole square (1.02: a marker at 1 shows)


def axis_ranges(points: Sequence[ModelPoint], zoom: bool = True, padding: float = 0.15,
                min_span: float = 0.02) -> AxisRanges:
    """The trade-off plot's axes: zoomed to the data (AUC intervals included) with ``padding`` x the
    data's span on each side, at least ``min_span`` wide, kept inside the fixed ranges; or, with
    ``zoom`` off or no points, the fixed 0–1 ranges."""
    if not zoom or not points:
        return FIXED_RANGES
    aucs = [v for p in points for v in (p.auc, *(p.auc_ci95 or ()))]
    accuracies = [p.accuracy for p in points]
    return AxisRanges(_padded(aucs, padding, min_span, FIXED_RANGES.auc),
                      _padded(accuracies, padding, min_span, FIXED_RANGES.accuracy))


def _padded(values: Sequence[float], padding: float, min_span: float,
            bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    grow = max(hi - lo, min_span) * padding + max(0.0, min_span - (hi - lo)) / 2
    return max(lo - grow, bounds[0]), min(hi + grow, bounds[1])


def roc_resolution(points: Sequence[ModelPoint], default: float = 1e-3) -> tuple[float, float]:
    """(FPR, TPR) resolution of the audits: 1 / non-members and 1 / members of the largest audit shown
    (where a log-scale ROC axis should start: nothing below it is measurable). Runs that did not record
    the counts fall back to the smallest non-zero rate on their curves, then to ``default``."""
    def finest(counts: list[int], rates: list[float]) -> float:
        if any(counts):
            return 1.0 / max(counts)
        positive = [r for r in rates if r > 0]
        return min(positive) if positive else default

    return (finest([p.n_nonmembers for p in points], [v for p in points for v in p.roc_fpr]),
            finest([p.n_members for p in points], [v for p in points for v in p.roc_tpr]))


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
        fingerprint = caption_store(project, store).meta().get("fingerprint")
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
                classes = caption_store(project, link.ref.split("@")[0]).meta().get("classes")
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

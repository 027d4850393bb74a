"""Read-side helpers for the Runs page: the runs of a project with the status ``runs list`` gives,
one display row per run (live stage and elapsed time, "–" for what a run has not measured), two runs
side by side (config differences and metrics per model), and what deleting a run would take with it
or why it is refused. Archiving and deleting themselves are ``RunRegistry`` methods; the wrappers here
reconcile first, so a run whose process died counts as failed, not live.

    rows = [run_row(r) for r in list_runs(project, kind="experiment")]
    comparison = compare_runs(project, run_a, run_b)
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..core.jobs import reconcile
from ..core.project import Project
from ..core.runs import LIVE, RunInUse, RunRecord, config_changes
from .report import ModelPoint, empirical_epsilon_text, formal_epsilon_text, points_from_metrics

logger = logging.getLogger(__name__)

MISSING = "–"  # shown for a value a run does not have (yet)
SUMMARY_METRICS = {"teacher acc": "teacher_accuracy", "student acc": "student_accuracy",
                   "teacher AUC": "teacher_auc", "student AUC": "student_auc"}


# -- the runs table ------------------------------------------------------------------------------------
def list_runs(project: Project, kind: str | None = None, archived: bool = False,
              limit: int = 200) -> list[RunRecord]:
    """Runs newest first, judged like ``runs list``: runs whose process died are marked failed first.
    ``archived``: include archived runs (hidden by default)."""
    reconcile(project)
    return project.registry().list(kind=kind, limit=limit, archived=None if archived else False)


def elapsed(record: RunRecord, now: datetime | None = None) -> float | None:
    """Seconds a running run has run so far, or a finished one ran; None before it started."""
    if record.started_at is None or record.status == "queued":
        return None
    end = _time(record.finished_at) if record.status not in LIVE and record.finished_at else None
    return max(0.0, ((end or now or datetime.now(timezone.utc)) - _time(record.started_at)).total_seconds())


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``; "–" for None."""
    if seconds is None:
        return MISSING
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def stage_text(record: RunRecord) -> str:
    """The stage a running run is in (or a failed / cancelled one stopped in), with its progress."""
    if record.status == "queued":
        return "waiting for its process"
    progress = record.progress or {}
    if record.status == "done" or not progress.get("stage"):
        return "starting" if record.status == "running" else ""
    done, total = progress.get("done"), progress.get("total")
    return progress["stage"] + (f" {done}/{total}" if done is not None and total else "")


def run_row(record: RunRecord, now: datetime | None = None) -> dict[str, Any]:
    """One row of the runs table, all text: no None cells."""
    row = {"run": record.id, "kind": record.kind, "status": record.status, "stage": stage_text(record),
           "elapsed": format_duration(elapsed(record, now)), "created": record.created_at[:19].replace("T", " ")}
    row.update({label: number_text(record.metrics.get(key)) for label, key in SUMMARY_METRICS.items()})
    return {**row, "archived": "yes" if record.archived else "", "error": record.error or ""}


def _time(text: str) -> datetime:
    stamp = datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)


def formal_text(value: Any) -> str:
    """A recorded formal ε: "none" (no DP guarantee) as it is, a number formatted, "–" when not recorded."""
    return value if isinstance(value, str) else number_text(value, 2)


def number_text(value: Any, digits: int = 4) -> str:
    """A metric with ``digits`` decimals; "–" for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.{digits}f}"


# -- archive and delete ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeletePlan:
    """What deleting a run would do."""

    run_id: str
    runs: tuple[str, ...]  # the run, then the stage runs it owns: deleted together, folders included
    users: tuple[tuple[str, str], ...]  # (run id, role) of other runs made from one of them
    refusal: str | None  # why deleting is refused now (None: it can be deleted)


def delete_plan(project: Project, run_id: str) -> DeletePlan:
    reconcile(project)
    registry = project.registry()
    ids = registry.owned(run_id)
    users = [(user, role if rid == run_id else f"{role} of {rid}")
             for rid in ids for user, role in registry.users(rid) if user not in ids]
    try:
        registry.deletable(run_id)
        refusal = None
    except RunInUse as err:
        refusal = str(err)
    return DeletePlan(run_id, tuple(ids), tuple(users), refusal)


def delete_run(project: Project, run_id: str) -> list[str]:
    """``RunRegistry.delete`` after reconciling; returns the deleted run ids."""
    reconcile(project)
    return project.registry().delete(run_id)


def archive_run(project: Project, run_id: str, archived: bool = True) -> list[str]:
    """Archive (or unarchive) a run and the stage runs it owns, after reconciling; returns their ids."""
    reconcile(project)
    registry = project.registry()
    return registry.archive(run_id) if archived else registry.unarchive(run_id)


# -- two runs side by side ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunComparison:
    a: str  # run A's id
    b: str  # run B's id
    config: list[dict[str, str]]  # {"field", "run A", "run B"} for each config field that differs
    metrics: list[dict[str, str]]  # {"model", "metric", "run A", "run B", "B − A"} per model and metric


def compare_runs(project: Project, a: str, b: str) -> RunComparison:
    """Config differences and the audited models' metrics (teacher, student and every other method)
    of two runs; a run without metrics (not finished) shows "–"."""
    if a == b:
        raise ValueError("pick two different runs to compare")
    registry = project.registry()
    run_a, run_b = registry.get(a), registry.get(b)
    config = [{"field": name, "run A": _show(x), "run B": _show(y)}
              for name, x, y in config_changes(run_a.config, run_b.config)]
    return RunComparison(a, b, config, metric_rows(_points(run_a), _points(run_b)))


def metric_rows(a: list[ModelPoint], b: list[ModelPoint]) -> list[dict[str, str]]:
    """Rows model × metric: accuracy, MIA AUC with its 95% interval, TPR at 1% FPR, AOP, and the audit
    the AUC comes from (AUCs of different attacks do not compare)."""
    by_a, by_b = {p.role: p for p in a}, {p.role: p for p in b}
    rows = []
    for model in dict.fromkeys([*by_a, *by_b]):
        pa, pb = by_a.get(model), by_b.get(model)
        for metric, value, text in _METRICS:
            va, vb = (value(p) if p else None for p in (pa, pb))
            delta = f"{vb - va:+.4f}" if _finite(va) and _finite(vb) else ""
            rows.append({"model": model, "metric": metric, "run A": text(pa) if pa else MISSING,
                         "run B": text(pb) if pb else MISSING, "B − A": delta})
    return rows


def _auc_text(p: ModelPoint) -> str:
    ci = f" [{p.auc_ci95[0]:.3f}, {p.auc_ci95[1]:.3f}]" if p.auc_ci95 else ""
    return f"{p.auc:.3f}{ci}"


_METRICS = (  # (label, number for the difference, text)
    ("accuracy", lambda p: p.accuracy, lambda p: number_text(p.accuracy)),
    ("MIA AUC [95% CI]", lambda p: p.auc, _auc_text),
    ("TPR @ 1% FPR", lambda p: p.tpr_at_1pct, lambda p: number_text(p.tpr_at_1pct)),
    ("AOP", lambda p: p.aop, lambda p: number_text(p.aop)),
    ("formal ε (guarantee)", lambda p: p.epsilon, formal_epsilon_text),
    ("empirical ε (an attack's lower bound)", lambda p: p.empirical_epsilon, empirical_epsilon_text),
    ("audit", lambda p: None, lambda p: p.audit),
)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _points(record: RunRecord) -> list[ModelPoint]:
    path = record.run_dir / "metrics.json"
    if not path.exists():
        return []
    try:
        return points_from_metrics(record.id, json.loads(path.read_text(encoding="utf-8")), record.created_at)
    except (KeyError, TypeError, ValueError) as err:
        logger.warning("%s: unreadable metrics (%s)", path, err)
        return []


def _show(value: Any) -> str:
    """A config value as text (a table column holds one type)."""
    if value is None:
        return MISSING
    return value if isinstance(value, str) else json.dumps(value)

"""Trade-offs for stakeholders: one self-contained HTML page (plotly.js inlined: it opens offline) and a
PDF with the accuracy / privacy plot, the table of audited models, the setup, plain-language conclusions
computed from the numbers, and a few synthetic example images — never a real one.

    built = build_report(ReportConfig(run_ids=("experiment-...",)), project)
    built.html, built.pdf

The trade-off figure is drawn here rather than in the studio because the report, which the CLI writes
too (``python -m pipeline report --run ID``), embeds it; the studio's Trade-offs page shows this figure.
The conclusions are pure functions of the models' numbers.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from ..core.common import (
    Progress,
    ProgressFn,
    atomic_write_bytes,
    atomic_write_text,
    no_progress,
    to_jsonable,
)
from ..core.project import Project
from ..core.runs import RunRecord
from .legend import glossary_lines, listing, look
from .report import (
    ModelPoint,
    aop_iso_curve,
    axis_ranges,
    empirical_epsilon_text,
    formal_epsilon_text,
    front_line,
    points_from_metrics,
    points_table,
    run_pairs,
    tpr_text,
)

logger = logging.getLogger(__name__)

AOP_LEVELS = (0.25, 0.5, 0.75, 1.0)
COIN_FLIP = "AUC 0.5 = coin flip"  # where an attack does no better than guessing, on every plot that shows it
CHROMIUM_HINT = ("Rendering a plot as an image needs a Chromium or Chrome that kaleido can find: `apt install "
                 "chromium` (Debian, Ubuntu; the Docker image has it), `plotly_get_chrome` (downloads one), or "
                 "BROWSER_PATH=/path/to/chrome.")
REPORT_COLUMNS = ("model", "accuracy", "audit mode", "attack", "MIA AUC", "AUC 95% CI", "TPR@1%FPR", "AOP", "formal ε",
                  "empirical ε")
IMAGE_SIDE = 256  # synthetic examples larger than this are embedded as thumbnails of this side
# a Unicode TrueType font for the PDF (ε, ×, –); without one the PDF falls back to Helvetica and Latin-1
FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                   "/usr/share/fonts/TTF/DejaVuSans.ttf", "/Library/Fonts/Arial Unicode.ttf",
                   "C:/Windows/Fonts/arial.ttf")


# -- the trade-off figure ------------------------------------------------------------------------------------
def epsilon_label(p: ModelPoint) -> str:
    """The ε text beside a point on the plane: the guarantee first, then the attack's lower bound."""
    return f"ε {formal_epsilon_text(p)} · emp. {empirical_epsilon_text(p)}"


def _hover(p: ModelPoint) -> str:
    ci = f" [{p.auc_ci95[0]:.3f}, {p.auc_ci95[1]:.3f}]" if p.auc_ci95 else ""
    eps = f"<br>formal ε {formal_epsilon_text(p)} · empirical ε {empirical_epsilon_text(p)} (attack's lower bound)"
    return (f"<b>{p.run_id}</b> {p.name}<br>accuracy {p.accuracy:.4f}<br>MIA AUC {p.auc:.4f}{ci}"
            f"<br>audit {p.mia_mode} · {p.attack}<br>TPR@1%FPR {tpr_text(p.tpr_at_1pct, 0.01, p.fpr_floor)}"
            f"<br>AOP {p.aop:.4f}{eps}<br>{p.dataset} · {p.generator} · ×{p.cardinality:g}")


def tradeoff_figure(points: Sequence[ModelPoint], zoom: bool = True,
                    aop_levels: Sequence[float] = AOP_LEVELS, epsilon_labels: bool = True) -> go.Figure:
    """Test accuracy against MIA AUC with its 95% interval as error bars, a marker per method, teacher →
    student of a run linked, iso-AOP curves and the Pareto front; axes zoomed to the data or fixed 0–1.
    With ``epsilon_labels`` every point is labelled with its formal ε (or none) and empirical ε."""
    fig = go.Figure()
    ranges = axis_ranges(points, zoom)
    grid = np.linspace(*ranges.auc, 160)
    # 1. iso-AOP curves: accuracy = AOP (2 AUC)^2, labelled where they leave the plot
    for level in aop_levels:
        curve = aop_iso_curve(level, grid)
        fig.add_trace(go.Scatter(x=grid, y=curve, mode="lines", hoverinfo="skip",
                                 line={"dash": "dot", "width": 1, "color": "#999"}, name="iso-AOP curves",
                                 legendgroup="aop", showlegend=level == aop_levels[0]))
        inside = np.nonzero((curve >= ranges.accuracy[0]) & (curve <= ranges.accuracy[1]))[0]
        if inside.size:
            k = inside[-1]
            fig.add_annotation(x=grid[k], y=curve[k], text=f"AOP {level:g}", showarrow=False,
                               font={"size": 10, "color": "#777"}, xanchor="right", yanchor="bottom")
    if ranges.auc[0] < 0.5 < ranges.auc[1]:
        fig.add_vline(x=0.5, line={"dash": "dash", "color": "#bbb", "width": 1}, annotation_text=COIN_FLIP,
                      annotation_font={"size": 10, "color": "#999"})
    # 2. teacher → student of the same run
    for teacher, student in run_pairs(points):
        fig.add_trace(go.Scatter(x=[teacher.auc, student.auc], y=[teacher.accuracy, student.accuracy],
                                 mode="lines", line={"color": "#bbb", "width": 1.5}, hoverinfo="skip",
                                 showlegend=False))
    # 3. the models: one trace (legend entry, marker, colour: .legend's) per kind, the AUC's 95% interval as a
    # horizontal bar
    for role in dict.fromkeys(p.series for p in points):
        chosen, style = [p for p in points if p.series == role], look(role)
        fig.add_trace(go.Scatter(
            x=[p.auc for p in chosen], y=[p.accuracy for p in chosen], mode="markers", name=style.name,
            marker={"size": 11, "symbol": style.symbol, "color": style.color, "line": {"width": 1}},
            text=[_hover(p) for p in chosen], hovertemplate="%{text}<extra></extra>",
            error_x={"type": "data", "symmetric": False, "thickness": 1, "width": 3, "color": style.color,
                     "array": [p.auc_ci95[1] - p.auc if p.auc_ci95 else 0 for p in chosen],
                     "arrayminus": [p.auc - p.auc_ci95[0] if p.auc_ci95 else 0 for p in chosen]},
            customdata=[p.run_id for p in chosen]))
    # 4. ε beside every point: formal (the guarantee, or none) · empirical (an attack's lower bound)
    if epsilon_labels and points:
        fig.add_trace(go.Scatter(x=[p.auc for p in points], y=[p.accuracy for p in points], mode="text",
                                 text=[epsilon_label(p) for p in points], textposition="top center",
                                 textfont={"size": 9, "color": "#555"}, hoverinfo="skip",
                                 name="ε: formal · empirical"))
    # 5. the Pareto front (higher accuracy, lower AUC)
    front = front_line(points)
    if front:
        fig.add_trace(go.Scatter(x=[p.auc for p in front], y=[p.accuracy for p in front], mode="lines+markers",
                                 name="Pareto front", line={"color": "#2ca02c", "width": 2, "shape": "hv"},
                                 marker={"symbol": "circle-open", "size": 18, "color": "#2ca02c", "line": {"width": 2}},
                                 hoverinfo="skip"))
    fig.update_layout(title="Accuracy vs membership-inference AUC",
                      xaxis_title="MIA AUC (0.5 = a coin flip; bars: 95% interval) — lower is more private",
                      yaxis_title="test accuracy", template="plotly_white", height=520,
                      legend={"orientation": "h", "y": -0.18},
                      margin={"t": 50, "b": 40})
    fig.update_xaxes(range=list(ranges.auc))
    fig.update_yaxes(range=list(ranges.accuracy))
    return fig


def plot_png(figure: go.Figure, width: int = 1000, height: int = 540, scale: float = 2.0) -> bytes:
    """PNG bytes of a figure via kaleido (needs a Chrome / Chromium it can find)."""
    return figure.to_image(format="png", width=width, height=height, scale=scale)


def _render_errors() -> tuple[type[BaseException], ...]:
    """What kaleido raises when it cannot render (no browser, a browser crash, a JavaScript error)."""
    errors: list[type[BaseException]] = [RuntimeError, OSError, ValueError, ImportError]
    try:
        from kaleido.errors import KaleidoError

        errors.append(KaleidoError)
    except ImportError:
        pass
    return tuple(errors)


# -- what the report says ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSetup:
    """How one experiment run was set up, in words."""

    run_id: str
    created_at: str
    dataset: str  # name, members / non-members / test counts
    models: str  # the audited models, and which read real training images
    generator: str  # backend and training
    synthetic: str  # rounds x images per round
    audit: str  # headline attack and the mode of each model
    shadows: str  # shadow models per audit mode

    def rows(self) -> list[tuple[str, str]]:
        return [("run", f"{self.run_id} ({self.created_at[:16].replace('T', ' ')})" if self.created_at else self.run_id),
                ("data", self.dataset), ("models", self.models), ("generator", self.generator),
                ("synthetic set", self.synthetic), ("audit", self.audit), ("shadow models", self.shadows)]


@dataclass(frozen=True)
class SyntheticExample:
    """One generated image shown in the report."""

    run_id: str
    round: int  # generation round k (synthetic/round-k)
    class_name: str  # the class it was generated for
    prompt: str
    path: Path  # the image file inside the run's synthetic folder


@dataclass(frozen=True)
class ReportContent:
    """What the report says, before it is laid out as HTML or PDF."""

    title: str
    created_at: str  # when the report was made (UTC)
    points: tuple[ModelPoint, ...]  # every audited model of the runs
    table: tuple[dict[str, Any], ...]  # rows with REPORT_COLUMNS (and "run" for several runs)
    setups: tuple[RunSetup, ...]
    conclusions: tuple[tuple[str, tuple[str, ...]], ...]  # (run id, findings)
    examples: tuple[SyntheticExample, ...]
    notes: tuple[str, ...] = ()  # what the report had to leave out, and why


def run_setup(run_id: str, metrics: dict[str, Any], points: Sequence[ModelPoint], created_at: str = "") -> RunSetup:
    """The setup of one run from its ``metrics.json`` and its models' points."""
    data, synthetic, generator = metrics.get("dataset", {}), metrics.get("synthetic", {}), metrics.get("generator", {})
    audit = metrics.get("audit", {})
    modes: dict[str, list[str]] = {}
    for p in points:
        modes.setdefault(p.mia_mode, []).append(p.name)
    headline = str(audit.get("headline_attack") or (points[0].attack if points else "?")).upper()
    others = sorted({p.attack.upper() for p in points} - {headline})
    shadows = audit.get("shadows") or metrics.get("shadows") or {}
    if "n" in shadows:  # older runs: one transfer-shadow count
        shadow_text = f"{shadows['n']} (transfer)"
    else:
        shadow_text = ", ".join(f"{mode}: {shadows[mode].get('n', '?')}" for mode in sorted(
            shadows, key=lambda m: (m != "transfer", m)) if isinstance(shadows[mode], dict))
    real = [p.name for p in points if p.reads_real]
    steps = f", {generator['steps']} training steps" if generator.get("steps") else ""
    part = ((metrics.get("privacy") or {}).get("parts") or {}).get("generator") or {}
    if part.get("epsilon") is not None:  # a DP run: what the generator's training is guaranteed
        steps += (f", with differential privacy (DP-SGD, ε = {part['epsilon']:.2f}, δ = {part.get('delta', 0):.2g}; "
                  "prompted with class names only)")
    return RunSetup(
        run_id=run_id, created_at=created_at,
        dataset=f"{data.get('name', '?')}: {data.get('members', '?')} members (training images), "
                f"{data.get('nonmembers', '?')} non-members, {data.get('test', '?')} test images",
        models=", ".join(p.name for p in points) + (f"; read real training images: {listing(real)}" if real else ""),
        generator=f"{generator.get('backend', '?')}{steps}, trained on the members only",
        synthetic=f"{synthetic.get('rounds', '?')} round(s) × {synthetic.get('images_per_round', '?')} images "
                  f"(×{float(synthetic.get('cardinality', float('nan'))):g} the members)",
        audit=f"{headline} attack" + (f" ({', '.join(others)} for some models)" if others else "") + "; "
              + "; ".join(f"{mode} mode: {', '.join(names)}" for mode, names in modes.items()),
        shadows=shadow_text or "not recorded")


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def _attack_auc(a: ModelPoint, b: ModelPoint) -> str:
    if a.attack == b.attack:
        return f"{a.attack.upper()} AUC"
    return f"membership-inference AUC ({a.attack.upper()} for the {a.name}, {b.attack.upper()} for the {b.name})"


def student_finding(teacher: ModelPoint, student: ModelPoint) -> str:
    """What distillation on synthetic data did: accuracy kept, AUC moved, and whether the move is beyond
    the audit's uncertainty (the two 95% intervals do not overlap)."""
    share = 100.0 * student.accuracy / max(teacher.accuracy, 1e-12)
    kept = f"keeps {share:.1f} % of" if share <= 100 else f"exceeds ({share:.1f} %)"
    moved = ("lowers" if student.auc < teacher.auc - 5e-4 else "raises" if student.auc > teacher.auc + 5e-4
             else "leaves unchanged")
    text = (f"The {student.name}, which never saw a real training image, {kept} the teacher's accuracy "
            f"({student.accuracy:.3f} against {teacher.accuracy:.3f}) and {moved} the {_attack_auc(teacher, student)} "
            f"from {teacher.auc:.3f} to {student.auc:.3f}")
    if not (teacher.auc_ci95 and student.auc_ci95):
        return text + " (no confidence intervals were recorded)."
    if _overlap(teacher.auc_ci95, student.auc_ci95):
        return text + " — the 95% intervals overlap, so the difference is within the audit's uncertainty."
    return text + " — the 95% intervals do not overlap, so the difference is beyond the audit's uncertainty."


def dp_finding(dp: ModelPoint, reference: ModelPoint) -> str:
    """DP-SGD against the GKD student (or the teacher): does it give up more accuracy, for what AUC."""
    if dp.accuracy < reference.accuracy:
        verdict = f"gives up more accuracy than the {reference.name}"
    elif dp.accuracy > reference.accuracy:
        verdict = f"gives up less accuracy than the {reference.name}"
    else:
        verdict = f"is as accurate as the {reference.name}"
    return (f"The {dp.name} {verdict}: accuracy {dp.accuracy:.3f} against {reference.accuracy:.3f}, "
            f"{_attack_auc(dp, reference)} {dp.auc:.3f} against {reference.auc:.3f}.")


def dp_generator_finding(student: ModelPoint, teacher: ModelPoint | None = None) -> str:
    """What the guarantee of a DP run's student covers, and what it does not."""
    text = (f"The {student.name} learned only from images of a generator trained with differential privacy "
            f"(DP-SGD) on the training images and prompted with class names: its formal ε = "
            f"{formal_epsilon_text(student)} is a guarantee for everything that reached it.")
    if teacher is not None and teacher.epsilon is not None:  # dp-teacher labels: composed into the student's ε
        return text + (f" Its labels came from a teacher trained with DP-SGD (formal ε = {formal_epsilon_text(teacher)}"
                       "), composed into that guarantee by the accountant.")
    return text + (" The run's teacher, trained on the real images, is shown for reference; it is not covered by "
                   "that guarantee.")


def epsilon_findings(points: Sequence[ModelPoint]) -> list[str]:
    """Which models carry a guarantee (formal ε) and what the attack's lower bounds (empirical ε) say; a DP
    model whose empirical ε exceeds its formal ε is named: its training or its accounting is broken."""
    measured = [p for p in points if p.empirical_epsilon is not None]
    if not measured:
        return []
    guaranteed = [p for p in points if p.epsilon is not None]
    unguaranteed = [p.name for p in points if p.epsilon is None]
    if guaranteed:
        found = ["Formal ε, a guarantee proven by differential privacy: "
                 + listing([f"{p.name} has ε = {formal_epsilon_text(p)}" for p in guaranteed])
                 + (f". No guarantee for {listing(unguaranteed)}." if unguaranteed else ".")]
    else:
        found = ["No model here has a privacy guarantee (formal ε: none for every model)."]
    found.append("Empirical ε is an attack's lower bound, not a guarantee: the attack proves at least this much "
                 "privacy lost — " + listing([f"{empirical_epsilon_text(p)} for the {p.name}" for p in measured], "")
                 + "; a stronger attack could prove more.")
    broken = [p for p in measured if p.epsilon is not None and p.empirical_epsilon > p.epsilon + 1e-9]
    if broken:
        found.append("The attack's lower bound exceeds the claimed guarantee of "
                     + listing([f"{p.name} ({empirical_epsilon_text(p)} > {formal_epsilon_text(p)})" for p in broken])
                     + ": " + ("its" if len(broken) == 1 else "their") + " DP training or privacy accounting is "
                     "wrong; do not rely on " + ("its" if len(broken) == 1 else "their") + " ε.")
    return found


def chance_finding(points: Sequence[ModelPoint]) -> str | None:
    """Which models the attack cannot tell from a coin flip (their AUC's 95% interval includes 0.5), in one
    sentence whether they are one or several; None when no interval was recorded."""
    chance = [p.name for p in points if p.auc_ci95 and p.auc_ci95[0] <= 0.5 <= p.auc_ci95[1]]
    if len(chance) == 1:
        return (f"Against the {chance[0]}, the attack does no better than a coin flip: its AUC's 95% interval "
                "includes 0.5.")
    if chance:
        return (f"Against {listing(chance)}, the attack does no better than a coin flip: each AUC's 95% interval "
                "includes 0.5.")
    if points and all(p.auc_ci95 for p in points):
        return "The attack beats a coin flip on every model: no AUC interval includes 0.5."
    return None


def conclusions(points: Sequence[ModelPoint], memorisation: dict[str, Any] | None = None) -> list[str]:
    """Plain-language findings of one run's models, computed from their numbers."""
    if not points:
        return []
    by_role = {p.role: p for p in points}
    teacher, student = by_role.get("teacher"), by_role.get("student")
    found = []
    # 1. what the GKD student keeps and what it hides
    if teacher and student:
        found.append(student_finding(teacher, student))
    # 2. attacks no better than chance
    chance = chance_finding(points)
    if chance:
        found.append(chance)
    # 3. the best trade-off
    best = max(points, key=lambda p: p.aop)
    if best.role == "teacher":
        found.append(f"The teacher itself has the best accuracy–privacy trade-off (AOP {best.aop:.3f}): no other "
                     "model improved on it in this run.")
    else:
        found.append(f"The {best.name} has the best accuracy–privacy trade-off (AOP {best.aop:.3f}"
                     + (f"; the teacher's is {teacher.aop:.3f})." if teacher else ")."))
    # 4. differential privacy: what a DP run's student is guaranteed; DP-SGD against the (GKD or DP-generator)
    # student of the same run
    if student and student.dp_generator is not None:
        found.append(dp_generator_finding(student, teacher))
    reference = student or teacher
    for p in points:
        if reference and p is not reference and p.role.startswith("dp-sgd"):
            found.append(dp_finding(p, reference))
    # 5. who saw real training images
    real = [p.name for p in points if p.reads_real and p.role != "teacher"]
    if real:
        free = [p.name for p in points if not p.reads_real]
        found.append(f"Like the teacher, {listing(real)} read the real training images"
                     + (f"; {listing(free)} never saw one." if free else "."))
    # 6. which figure is a guarantee and which an attack's lower bound
    found += epsilon_findings(points)
    # 7. memorisation of the synthetic set
    if memorisation and memorisation.get("copies") is not None:
        copies = int(memorisation["copies"])
        rate = f"{100 * float(memorisation.get('copy_rate', 0)):.1f} %"
        found.append("No synthetic image was flagged as a near-copy of a training image." if not copies else
                     f"1 synthetic image ({rate}) was flagged as a near-copy of a training image; it is not shown "
                     "in this report." if copies == 1 else
                     f"{copies} synthetic images ({rate}) were flagged as near-copies of training images; none of "
                     "them is shown in this report.")
    return found


def synthetic_examples(run_id: str, run_dir: Path, n: int) -> list[SyntheticExample]:
    """Up to ``n`` generated images of a run, one class after another across its rounds. Only files of
    the rounds' manifests inside ``synthetic/round-k`` are taken (never a dataset image), and an image
    the memorisation audit flagged as a near-copy of a member is skipped: it would show a real image."""
    folders = sorted((run_dir / "synthetic").glob("round-*"), key=lambda p: int(p.name.split("-")[1]))
    by_class: dict[int, list[SyntheticExample]] = {}
    for folder in folders:
        if not (folder / "manifest.jsonl").exists():
            continue
        names = json.loads((folder / "plan.json").read_text(encoding="utf-8")).get("class_names", []) \
            if (folder / "plan.json").exists() else []
        copied = _copied(folder / "neighbours.jsonl")
        for entry in _jsonl(folder / "manifest.jsonl"):
            path = (folder / entry["file"]).resolve()
            if entry.get("index") in copied or folder.resolve() not in path.parents or not path.is_file():
                continue
            label = int(entry.get("label", 0))
            name = str(entry.get("class", names[label] if label < len(names) else label))
            by_class.setdefault(label, []).append(
                SyntheticExample(run_id, int(folder.name.split("-")[1]), name, str(entry.get("prompt", "")), path))
    picked: list[SyntheticExample] = []
    for depth in range(max((len(v) for v in by_class.values()), default=0)):
        picked += [by_class[label][depth] for label in sorted(by_class) if depth < len(by_class[label])]
        if len(picked) >= n:
            break
    return picked[:n]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _copied(path: Path) -> set[int]:
    """Indices the memorisation audit flagged as near-copies of a member in any space."""
    if not path.exists():
        return set()
    return {int(e["index"]) for e in _jsonl(path)
            if any(isinstance(v, dict) and v.get("copy") for v in e.values())}


def run_folder(project: Project, record: RunRecord) -> Path:
    """The run's folder: where the registry says, else under this project's ``runs/`` (the registry keeps
    the absolute path of the folder it made, which a project moved or copied elsewhere no longer has)."""
    for folder in (record.run_dir, project.runs_dir / record.id):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"the folder of run {record.id} is gone ({project.runs_dir / record.id}, registered as "
                            f"{record.run_dir}): it was deleted, or the project moved without it; restore the folder, "
                            f"or remove the run with `runs delete {record.id} --yes`")


def report_content(project: Project, run_ids: Sequence[str], title: str, examples: int = 6) -> ReportContent:
    """Read the runs' metrics and synthetic rounds into what the report says."""
    registry = project.registry()
    points: list[ModelPoint] = []
    setups, findings, shown = [], [], []
    for run_id in run_ids:
        record = registry.get(run_id)
        if record.kind != "experiment" or record.status != "done":
            raise ValueError(f"run {run_id} is a {record.status} {record.kind} run: a report needs finished "
                             "experiment runs (see `runs list --kind experiment --status done`)")
        run_dir = run_folder(project, record)
        path = run_dir / "metrics.json"
        if not path.exists():
            raise FileNotFoundError(f"run {run_id} finished but {path} is missing: restore it from a backup of the "
                                    "run folder, or run the experiment again")
        metrics = json.loads(path.read_text(encoding="utf-8"))
        run_points = points_from_metrics(run_id, metrics, record.created_at)
        points += run_points
        setups.append(run_setup(run_id, metrics, run_points, record.created_at))
        findings.append((run_id, tuple(conclusions(run_points, metrics.get("memorisation")))))
        shown += synthetic_examples(run_id, run_dir, examples)
    columns = (("run",) if len(run_ids) > 1 else ()) + REPORT_COLUMNS
    table = tuple({c: row[c] for c in columns} for row in points_table(points))
    return ReportContent(title, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), tuple(points), table,
                         tuple(setups), tuple(findings), tuple(shown))


# -- layout: HTML ---------------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f4f4f4}.meta,.note,.small{color:#666;font-size:.9em}.note{background:#fff6e0;padding:.5em}
.examples{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;text-align:center;font-size:.8em;color:#555}
figure img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;border:1px solid #ddd}"""


def image_bytes(path: Path, side: int = IMAGE_SIDE) -> tuple[bytes, str]:
    """(bytes, MIME type) of an image to embed: the file as it is when small, else a PNG thumbnail."""
    with Image.open(path) as image:
        if max(image.size) <= side and image.format in ("PNG", "JPEG"):
            return path.read_bytes(), f"image/{image.format.lower()}"
        thumb = image.convert("RGB")
        thumb.thumbnail((side, side))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def _table_html(header: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    head = "<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr></thead>" \
        if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def render_html(content: ReportContent, figure: go.Figure) -> str:
    """The report as one HTML page that opens offline: plotly.js and the images are inline."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(content.title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(content.title)}</h1>",
             f"<p class='meta'>Runs {esc(', '.join(s.run_id for s in content.setups))} · made {esc(content.created_at)}"
             " · this page is self-contained and opens offline.</p>"]
    parts += [f"<p class='note'>{esc(n)}</p>" for n in content.notes]
    parts.append("<h2>What the numbers say</h2>")
    for run_id, found in content.conclusions:
        if len(content.conclusions) > 1:
            parts.append(f"<h3>{esc(run_id)}</h3>")
        parts.append("<ul>" + "".join(f"<li>{esc(f)}</li>" for f in found) + "</ul>")
    parts += ["<h2>Accuracy and privacy</h2>",
              figure.to_html(full_html=False, include_plotlyjs=True, config={"displaylogo": False}),
              "<h2>Models</h2>", _table_html(list(content.table[0]), [list(r.values()) for r in content.table]),
              "<ul class='small'>" + "".join(f"<li>{esc(g)}</li>" for g in glossary_lines()) + "</ul>", "<h2>Setup</h2>"]
    for setup in content.setups:
        parts.append(_table_html(None, setup.rows()))
    parts.append("<h2>Synthetic examples</h2><p>Images the generator made and the student learned from. "
                 "No real image appears in this report.</p><div class='examples'>")
    for ex in content.examples:
        data, mime = image_bytes(ex.path)
        parts.append(f"<figure><img src='data:{mime};base64,{base64.b64encode(data).decode()}' "
                     f"alt='synthetic image, class {esc(ex.class_name)}' title='{esc(ex.prompt)}'>"
                     f"<figcaption>{esc(ex.class_name)} · round {ex.round}</figcaption></figure>")
    parts.append("</div></body></html>")
    return "\n".join(parts)


# -- layout: PDF ---------------------------------------------------------------------------------------------
def unicode_font() -> Path | None:
    """A Unicode TrueType font on this machine, or None (then Helvetica and Latin-1 text)."""
    return next((Path(p) for p in FONT_CANDIDATES if Path(p).is_file()), None)


_LATIN1 = str.maketrans({"ε": "eps", "–": "-", "—": "-", "≥": ">=", "≤": "<=", "→": "->", "…": "...", "²": "^2"})


def render_pdf(content: ReportContent, plot: bytes | None) -> bytes:
    """The report as a PDF (fpdf2): conclusions, the plot (when rendered), the table, setup, examples."""
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    font = unicode_font()
    family, clean = ("Helvetica", lambda t: str(t).translate(_LATIN1).encode("latin-1", "replace").decode("latin-1"))
    if font:
        family, clean = "Report", str
        pdf.add_font(family, "", str(font))
        bold = font.with_name(font.stem + "-Bold" + font.suffix)
        pdf.add_font(family, "B", str(bold if bold.is_file() else font))
    pdf.set_title(clean(content.title))
    pdf.add_page()

    def text(value: str, size: float = 10, style: str = "", height: float = 5) -> None:
        if size >= 13 and pdf.get_y() > pdf.h - 60:  # a section heading starts a page rather than end one
            pdf.add_page()
        pdf.set_font(family, style, size)
        pdf.multi_cell(0, height, clean(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    text(content.title, 16, "B", 8)
    text(f"Runs {', '.join(s.run_id for s in content.setups)} · made {content.created_at}", 8)
    for note in content.notes:
        text(note, 9)
    text("What the numbers say", 13, "B", 9)
    for run_id, found in content.conclusions:
        if len(content.conclusions) > 1:
            text(run_id, 10, "B")
        for finding in found:
            text(f"- {finding}", 10)
    text("Accuracy and privacy", 13, "B", 9)
    if plot:
        pdf.image(io.BytesIO(plot), w=pdf.epw)
    else:
        text("(The plot is not in this PDF: it could not be rendered here. The HTML report has it.)", 9)
    text("Models", 13, "B", 9)
    _pdf_table(pdf, family, clean, list(content.table[0]), [list(r.values()) for r in content.table], 7)
    for line in glossary_lines():
        text(line, 7, height=3.5)
    text("Setup", 13, "B", 9)
    for setup in content.setups:
        _pdf_table(pdf, family, clean, None, setup.rows(), 8, (1, 4))
    text("Synthetic examples", 13, "B", 9)
    text("Images the generator made and the student learned from. No real image appears in this report.", 9)
    _pdf_examples(pdf, family, clean, content.examples)
    return bytes(pdf.output())


def _pdf_table(pdf: Any, family: str, clean: Any, header: Sequence[str] | None, rows: Sequence[Sequence[Any]],
               size: float, widths: tuple[int, ...] | None = None) -> None:
    pdf.set_font(family, "", size)
    with pdf.table(col_widths=widths, text_align="LEFT", line_height=size * 0.55,
                   first_row_as_headings=header is not None) as table:
        for row in ([header] if header else []) + list(rows):
            cells = table.row()
            for value in row:
                cells.cell(clean(value))
    pdf.ln(2)


def _pdf_examples(pdf: Any, family: str, clean: Any, examples: Sequence[SyntheticExample], side: float = 24) -> None:
    pdf.set_font(family, "", 7)
    per_row = int(pdf.epw // (side + 6))
    for i, ex in enumerate(examples):
        if i % per_row == 0:
            if pdf.get_y() + side + 8 > pdf.h - pdf.b_margin:
                pdf.add_page()
            top = pdf.get_y()
        x = pdf.l_margin + (i % per_row) * (side + 6)
        with Image.open(ex.path) as image:
            shown = image.convert("RGB")
        scale = max(1, 96 // max(shown.size))  # tiny images enlarged pixel by pixel, not blurred
        shown = shown.resize((shown.width * scale, shown.height * scale), Image.Resampling.NEAREST)
        pdf.image(shown, x=x, y=top, w=side, h=side, keep_aspect_ratio=True)
        pdf.set_xy(x, top + side + 0.5)
        pdf.cell(side, 3, clean(f"{ex.class_name} · round {ex.round}"), align="C")
        if i % per_row == per_row - 1 or i == len(examples) - 1:
            pdf.set_xy(pdf.l_margin, top + side + 5)


# -- the entry function ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportConfig:
    """A stakeholder report of finished experiment runs."""

    run_ids: tuple[str, ...]  # finished experiment runs to report (their teacher, student and other methods)
    out_dir: Path | None = None  # where report.html / .pdf go (default: <project>/reports/<time>-<first run>)
    title: str = "Accuracy and privacy of the trained models"  # the report's heading
    zoom: bool = True  # plot axes zoomed to the data (False: fixed 0–1)
    examples: int = 6  # synthetic example images per run (never a real one; near-copies of members skipped)
    pdf_plot: bool = True  # render the plot into the PDF with kaleido (needs Chrome / Chromium; else said so)


@dataclass(frozen=True)
class StakeholderReport:
    """The files of a report and what it had to leave out."""

    html: Path  # self-contained page (opens offline)
    pdf: Path | None  # None: fpdf2 is not installed (see notes)
    run_ids: tuple[str, ...]
    plot_in_pdf: bool  # False: the plot could not be rendered; the PDF has the table and the text
    notes: tuple[str, ...]  # what was left out, and why
    examples: tuple[SyntheticExample, ...]  # the synthetic images shown


def build_report(config: ReportConfig, project: Project, progress: ProgressFn = no_progress) -> StakeholderReport:
    """Write ``report.html``, ``report.pdf`` and ``report.json`` (what made them) for the runs."""
    # 1. check inputs
    if not config.run_ids:
        raise ValueError("a report needs at least one finished experiment run")
    out_dir = Path(config.out_dir) if config.out_dir else \
        project.root / "reports" / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{config.run_ids[0]}"
    progress(Progress("report", 0, 3))
    # 2. the numbers, setup, conclusions and synthetic examples
    content = report_content(project, config.run_ids, config.title, config.examples)
    figure = tradeoff_figure(content.points, zoom=config.zoom)
    progress(Progress("report", 1, 3))
    # 3. the plot as a PNG for the PDF; without kaleido's browser the PDF has the table and text only
    png, notes = None, []
    if config.pdf_plot:
        try:
            png = plot_png(figure)
        except _render_errors() as err:
            logger.warning("the report's PDF has no plot: %s", err)
            notes.append(f"The PDF has no plot; the HTML report has it, interactive. {CHROMIUM_HINT} "
                         f"({type(err).__name__}: {str(err)[:200]})")
    else:
        notes.append("The PDF has no plot (plot rendering was turned off). The HTML report has the interactive plot.")
    progress(Progress("report", 2, 3))
    # 4. write the files
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, pdf_path = out_dir / "report.html", out_dir / "report.pdf"
    atomic_write_text(html_path, render_html(content, figure))
    try:
        atomic_write_bytes(pdf_path, render_pdf(replace(content, notes=tuple(notes)), png))
    except ImportError as err:  # an environment installed before fpdf2 joined requirements.txt
        notes.append(f"No PDF: it needs fpdf2 ({err}); `pip install -r requirements.txt` installs it.")
        pdf_path = None
    atomic_write_text(out_dir / "report.json", json.dumps(to_jsonable({
        "config": config, "created_at": content.created_at, "runs": list(config.run_ids), "notes": notes,
        "pdf": pdf_path is not None, "plot_in_pdf": png is not None and pdf_path is not None,
        "examples": [str(e.path) for e in content.examples]}), indent=2))
    progress(Progress("report", 3, 3))
    return StakeholderReport(html_path, pdf_path, tuple(config.run_ids), png is not None and pdf_path is not None,
                             tuple(notes), content.examples)

"""The leak explorer's data: which real training (member) images a membership-inference attack finds
most easily, and which synthetic training images sit next to them.

The audit run (``kind == "audit"``, linked "audited" to the experiment) saved every population example's
score under every attack (``vulnerability/<model>-<mode>.npz``: higher = "more likely a member") and its
labels (``targets.npz``). The experiment's memorisation audit saved each synthetic image's nearest member
(``neighbours.jsonl``). A vulnerable member is shown with the synthetic images whose nearest member it is,
or, when none is, with the synthetic images closest to it in the same space.

    report = explore_leaks(LeakConfig(experiment=run_id, model="student", mode="pipeline"), project)
    report.members[0].matches[0].image.prompt
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.common import from_dict, read_json, safe_filename
from ..core.project import Project
from ..core.runs import RunRecord
from ..data.datasets import DatasetConfig, ImageDataset, load_dataset
from ..data.tensors import images_to_tensor
from .synthetic_set import SPACES, SyntheticImage, SyntheticSetView, load_synthetic_set, teacher_outputs

logger = logging.getLogger(__name__)

MODEL_ORDER = ("teacher", "student")  # then the other transfer methods, as the audit lists them


@dataclass(frozen=True)
class AuditedExperiment:
    """A finished experiment and its newest finished audit."""

    experiment: RunRecord
    audit: RunRecord
    targets: dict[str, dict[str, str]]  # model -> mode -> headline attack (from vulnerable.json)


@dataclass(frozen=True)
class LeakConfig:
    """What the leak explorer shows."""

    experiment: str  # an audited experiment run id
    model: str = "student"  # teacher | student | another transfer method's label (e.g. "am")
    mode: str = "transfer"  # audit mode: transfer | pipeline (the teacher has transfer only)
    attack: str | None = None  # attack whose scores rank the members (None: the audit's headline)
    top: int = 6  # most vulnerable members shown
    per_member: int = 3  # synthetic images shown beside each member
    space: str = "features"  # the memorisation audit's space: features (teacher penultimate) | pixels
    fpr: float = 0.01  # per-class attack TPR at this false-positive rate

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise ValueError(f"unknown space {self.space!r}; valid: {', '.join(SPACES)}")
        if self.top < 1 or self.per_member < 1:
            raise ValueError(f"top and per_member must be at least 1; got {self.top}, {self.per_member}")
        if not 0.0 < self.fpr < 1.0:
            raise ValueError(f"fpr must be in (0, 1), got {self.fpr}")


@dataclass(frozen=True)
class SyntheticMatch:
    """A synthetic training image beside a member."""

    image: SyntheticImage
    distance: float  # to the member, in the chosen space
    copy: bool  # a near-copy: at or below the round's copy threshold
    nearest: bool  # True: the memorisation audit lists the member as this image's nearest member


@dataclass(frozen=True)
class LeakyMember:
    """One real member image the attack finds, most vulnerable first."""

    id: str
    label: int
    class_name: str
    score: float  # the attack's membership score
    rank: int  # 1 = highest score among members
    matches: tuple[SyntheticMatch, ...]


@dataclass(frozen=True)
class ClassVulnerability:
    """How exposed one class's members are."""

    class_name: str
    members: int
    member_mean: float  # mean attack score of the class's members
    nonmember_mean: float  # and of its non-members (NaN: none)
    tpr: float  # share of the class's members the attack catches at the config's FPR (NaN: no members)


@dataclass
class LeakReport:
    """Everything the leak explorer page draws."""

    config: LeakConfig
    audit_id: str
    attack: str  # the attack actually used
    attacks: tuple[str, ...]  # attacks with scores for this model and mode
    class_names: list[str]
    members: list[LeakyMember]
    member_scores: np.ndarray  # (m,) every member's score
    nonmember_scores: np.ndarray  # (n,) every non-member's score
    threshold: float  # score above which the attack says "member" at the config's FPR
    per_class: list[ClassVulnerability]


# -- which experiments were audited ------------------------------------------------------------------------------
def audited_experiments(project: Project) -> list[AuditedExperiment]:
    """Experiments with a finished audit that saved per-example scores (newest experiment first)."""
    registry = project.registry()
    audits: dict[str, RunRecord] = {}
    for run in registry.list(kind="audit", status="done", limit=10_000):  # newest first: keep the first
        target = next((link.ref for link in run.links if link.role == "audited" and link.ref_kind == "run"), None)
        if target and target not in audits and (run.run_dir / "vulnerable.json").exists():
            audits[target] = run
    out = []
    for run in registry.list(kind="experiment", limit=10_000):
        if run.id in audits and (run.run_dir / "synthetic").is_dir():
            vulnerable = read_json(audits[run.id].run_dir / "vulnerable.json")
            targets = {model: {mode: entry["attack"] for mode, entry in modes.items()}
                       for model, modes in vulnerable.items()}
            out.append(AuditedExperiment(run, audits[run.id], _ordered(targets)))
    return out


def _ordered(targets: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Teacher, student, then the methods; transfer before pipeline."""
    names = [m for m in MODEL_ORDER if m in targets] + [m for m in targets if m not in MODEL_ORDER]
    return {m: dict(sorted(targets[m].items(), key=lambda kv: kv[0] != "transfer")) for m in names}


def load_scores(audit_dir: Path, model: str, mode: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(population ids (p,), is_member (p,), attack -> scores (p,)) of one audited model and mode."""
    path = Path(audit_dir) / "vulnerability" / f"{safe_filename(model)}-{mode}.npz"
    if not path.exists():
        found = sorted(p.stem for p in path.parent.glob("*.npz"))
        raise FileNotFoundError(f"the audit has no scores for {model} in {mode} mode; it has: {', '.join(found)}")
    with np.load(path) as data:
        scores = {k: data[k].astype(np.float64) for k in data.files if k not in ("ids", "is_member")}
        return data["ids"].astype(str), data["is_member"].astype(bool), scores


# -- pure maths ----------------------------------------------------------------------------------------------------
def rank_members(ids: Sequence[str], scores: np.ndarray, is_member: np.ndarray, top: int) -> list[tuple[str, float]]:
    """The ``top`` members with the highest score, highest first (ties: population order, as the audit).

    (p,), (p,), (p,) -> [(id, score)]. NaN scores rank last.
    """
    idx = np.flatnonzero(is_member)
    key = np.where(np.isnan(scores[idx]), -np.inf, scores[idx])
    order = idx[np.argsort(-key, kind="stable")[:top]]
    return [(str(ids[i]), float(scores[i])) for i in order]


def threshold_at_fpr(nonmember_scores: np.ndarray, fpr: float) -> float:
    """The smallest score threshold t with share(non-member score > t) <= ``fpr``.

    (n,) -> float: the ``ceil((1 - fpr) n)``-th smallest non-member score (the largest one at fpr -> 0).
    """
    s = np.sort(np.asarray(nonmember_scores, np.float64))
    if not len(s):
        raise ValueError("no non-member scores: the attack's threshold needs non-members")
    k = int(np.ceil((1.0 - fpr) * len(s) - 1e-9))  # at most floor(fpr n) non-members may lie above
    return float(s[max(k, 1) - 1])


def per_class_vulnerability(scores: np.ndarray, is_member: np.ndarray, labels: np.ndarray,
                            class_names: Sequence[str], fpr: float) -> tuple[list[ClassVulnerability], float]:
    """Per class: mean member and non-member score, TPR at one global threshold set at ``fpr`` on all
    non-members (so classes are compared at the same attack operating point).

    (p,), (p,) bool, (p,) int -> (one entry per class, the threshold).
    """
    scores, is_member, labels = np.asarray(scores, np.float64), np.asarray(is_member, bool), np.asarray(labels)
    threshold = threshold_at_fpr(scores[~is_member], fpr)
    out = []
    for c, name in enumerate(class_names):
        mem, non = scores[is_member & (labels == c)], scores[~is_member & (labels == c)]
        out.append(ClassVulnerability(str(name), len(mem), _mean(mem), _mean(non),
                                      float((mem > threshold).mean()) if len(mem) else float("nan")))
    return out, threshold


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def audit_matches(member_id: str, images: Sequence[SyntheticImage], space: str, k: int) -> list[SyntheticMatch]:
    """The synthetic images whose nearest member (in ``space``) is ``member_id``, closest first."""
    found = [im for im in images if space in im.neighbours and im.neighbours[space].member == member_id]
    found.sort(key=lambda im: im.neighbours[space].member_distance)
    return [SyntheticMatch(im, im.neighbours[space].member_distance, im.neighbours[space].copy, True)
            for im in found[:k]]


def closest_matches(member_vector: np.ndarray, synthetic: np.ndarray, images: Sequence[SyntheticImage],
                    thresholds: dict[tuple[int, str], float], space: str, k: int) -> list[SyntheticMatch]:
    """The ``k`` synthetic images closest to a member (Euclidean, (d,) vs (n, d)); a copy is a distance
    at or below the image's round's copy threshold."""
    distance = np.linalg.norm(synthetic - member_vector[None, :], axis=1)
    order = np.argsort(distance, kind="stable")[:k]
    return [SyntheticMatch(images[j], float(distance[j]),
                           bool(distance[j] <= thresholds.get((images[j].round, space), -np.inf)), False)
            for j in order]


# -- the entry -------------------------------------------------------------------------------------------------------
def explore_leaks(config: LeakConfig, project: Project, dataset: ImageDataset | None = None,
                  synthetic: SyntheticSetView | None = None) -> LeakReport:
    """The most vulnerable members of one audited model with their synthetic neighbours, the score
    distributions and per-class vulnerability.

    ``dataset`` and ``synthetic`` (see :func:`load_synthetic_set`) are passed when already loaded.
    """
    # 1. the experiment and its audit
    audited = {a.experiment.id: a for a in audited_experiments(project)}
    if config.experiment not in audited:
        raise ValueError(f"run {config.experiment} has no finished audit with per-example scores; "
                         f"audited experiments: {', '.join(audited) or 'none'}")
    entry = audited[config.experiment]
    if config.mode not in entry.targets.get(config.model, {}):
        raise ValueError(f"the audit has no {config.model!r} in {config.mode!r} mode; it has: "
                         + ", ".join(f"{m} ({'/'.join(modes)})" for m, modes in entry.targets.items()))
    dataset = dataset or load_dataset(from_dict(DatasetConfig, entry.experiment.config["dataset"]))
    synthetic = synthetic or load_synthetic_set(project, config.experiment, dataset)
    # 2. per-example scores of the chosen attack, and each example's class
    ids, is_member, scores = load_scores(entry.audit.run_dir, config.model, config.mode)
    attack = config.attack or entry.targets[config.model][config.mode]
    if attack not in scores:
        raise ValueError(f"no {attack!r} scores for {config.model} ({config.mode}); attacks: {', '.join(scores)}")
    labels = _labels(entry.audit.run_dir, ids, dataset)
    per_class, threshold = per_class_vulnerability(scores[attack], is_member, labels, synthetic.class_names,
                                                   config.fpr)
    # 3. the most vulnerable members, each with its synthetic neighbours
    members = []
    for rank, (member_id, score) in enumerate(rank_members(ids, scores[attack], is_member, config.top), start=1):
        matches = audit_matches(member_id, synthetic.images, config.space, config.per_member) \
            or _closest(member_id, dataset, synthetic, config)
        label = int(dataset.record(member_id).label)
        members.append(LeakyMember(member_id, label, synthetic.class_names[label], score, rank, tuple(matches)))
    return LeakReport(config, entry.audit.id, attack, tuple(scores), synthetic.class_names, members,
                      scores[attack][is_member], scores[attack][~is_member], threshold, per_class)


def _labels(audit_dir: Path, ids: np.ndarray, dataset: ImageDataset) -> np.ndarray:
    """Each population example's class: the audit's ``targets.npz``, else the dataset's records."""
    path = audit_dir / "targets.npz"
    if path.exists():
        with np.load(path) as targets:
            if np.array_equal(targets["ids"].astype(str), ids):
                return targets["labels"]
    return np.array([dataset.record(i).label for i in ids])


def _closest(member_id: str, dataset: ImageDataset, synthetic: SyntheticSetView,
             config: LeakConfig) -> list[SyntheticMatch]:
    """The synthetic images closest to a member that no synthetic image names as its nearest member,
    in the space the memorisation audit used (the teacher's features, or pixels at its input size)."""
    x = images_to_tensor([dataset.load_image(member_id)], synthetic.recipe.image_size)
    if config.space == "features":
        vector, reference = teacher_outputs(synthetic.teacher, x)[0][0], synthetic.features
    elif synthetic.pixels is not None:
        vector, reference = x.flatten(1).numpy()[0], synthetic.pixels
    else:
        return []  # images too large for the pixel audit
    return closest_matches(vector, reference, synthetic.images, synthetic.copy_thresholds, config.space,
                           config.per_member)

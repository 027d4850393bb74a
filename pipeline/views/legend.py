"""How a reader meets each model: its name in words, its one colour and marker, and the glossary of the
terms that the Trade-offs page and the stakeholder report show. Every plot (the trade-off plane, the ROC
curves, per-class accuracy), table and sentence takes a model's name and colour from here, so that the
teacher is the same blue everywhere and no reader has to know what ``am`` means.

A model's key is its role in ``metrics.json`` as :attr:`~.report.ModelPoint.series` gives it: ``teacher``,
``student`` (the GKD student), a transfer method's label (``am``, ``gkd+bss``, ``bss``, ``dp-sgd ε=8``) or
``dp-generator ε=4`` (the student of a run whose generator was trained with DP-SGD).

    look("am").name    # 'data-free student (activation maximisation)'
    look("teacher").color
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Look:
    """How one model is shown."""

    name: str  # in words: what it learned from, then the method's short name
    color: str  # its colour in every plot
    symbol: str  # its marker on the trade-off plane


@dataclass(frozen=True)
class Family:
    """The models of one method; a method run at several ε is one family with a shade per ε."""

    name: str  # in words; a key's ε is added as " (ε=E)"
    colors: tuple[str, ...]  # the family's colour, or one shade per doubling of ε (darkest: ε ≤ 1)
    symbol: str


FAMILIES = {
    "teacher": Family("teacher (real data)", ("#1f77b4",), "circle"),
    "student": Family("student on synthetic data (GKD)", ("#d62728",), "diamond"),
    "am": Family("data-free student (activation maximisation)", ("#ff7f0e",), "square"),
    "gkd+bss": Family("student on synthetic data + boundary samples (GKD+BSS)", ("#9467bd",), "star"),
    "bss": Family("student on real data + boundary samples (BSS)", ("#7f7f7f",), "triangle-up"),
    "dp-sgd": Family("DP-SGD classifier on real data",
                     ("#084c55", "#0f7782", "#17a2b0", "#3cc3d0", "#7fd6df"), "x"),
    "dp-generator": Family("student of a DP generator",
                           ("#6b1d55", "#99287a", "#c2399c", "#e377c2", "#efa6d8"), "diamond-open"),
}
OTHER_COLORS = ("#8c564b", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39")  # a method not listed above


def look(key: str) -> Look:
    """The name, colour and marker of a model key; the same key looks the same in every plot, whatever
    else is drawn. A method this module does not know keeps its label as its name."""
    family_key, _, rest = key.partition(" ")
    epsilon = _epsilon(rest)
    family = FAMILIES.get(family_key)
    if family is None:  # a stable colour from the label, so two plots still agree
        return Look(key, OTHER_COLORS[zlib.crc32(family_key.encode()) % len(OTHER_COLORS)], "hexagon")
    name = family.name + (f" (ε={epsilon:g})" if epsilon is not None else f" ({rest})" if rest else "")
    shade = 0 if epsilon is None else min(max(math.ceil(math.log2(epsilon) - 1e-9), 0), len(family.colors) - 1)
    return Look(name, family.colors[shade], family.symbol)


def model_name(key: str) -> str:
    """A model key in words (see :func:`look`)."""
    return look(key).name


def _epsilon(text: str) -> float | None:
    """ε of a key's tail such as ``ε=8`` (None: no ε, or not a number)."""
    if not text.startswith("ε="):
        return None
    try:
        value = float(text[2:])
    except ValueError:
        return None
    return value if value > 0 else None


def listing(names: Sequence[str], article: str = "the ") -> str:
    """Names as a sentence lists them: "the A", "the A and the B", "the A, the B and the C"."""
    items = [article + n for n in names]
    if len(items) < 2:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# -- the glossary: every term the Trade-offs page and the report show, in the order a reader meets them ------
GLOSSARY = (
    ("Teacher", "the classifier trained on the real training images (the members)."),
    ("Student", "a classifier trained from the teacher; which data it saw is in its name."),
    ("GKD", "generative knowledge distillation: the student learns the teacher's soft answers on synthetic images "
            "from a generator trained on the members; it never sees a real image."),
    ("Activation maximisation", "images synthesised from the teacher alone, by nudging noise until the teacher "
                                "recognises a class: data-free, no generator, no real image."),
    ("BSS", "boundary-supporting samples: extra training images near the teacher's decision boundaries."),
    ("DP-SGD", "training with differential privacy: each image's influence is clipped and noised, which gives a "
               "proven guarantee (formal ε)."),
    ("DP generator", "a generator trained with DP-SGD and prompted with class names only; its student inherits "
                     "the guarantee. The run's teacher is not covered by it."),
    ("Accuracy", "the share of real test images the model classifies correctly."),
    ("MIA AUC", "how well a membership-inference attack tells the training images (members) from others "
                "(non-members): 0.5 = a coin flip, the attacker cannot tell them apart; 1.0 = it always can. Lower "
                "is more private. Bars and brackets: the 95% interval."),
    ("Attack", "RMIA (the headline), LiRA or loss threshold: ways to guess membership from the model's answers."),
    ("Shadow models", "models the attacker trains the same way on data it knows, to learn how members and "
                      "non-members look to such a model."),
    ("Audit mode", "transfer: the attacker's shadow models are trained like the teacher, on real data; pipeline: "
                   "every shadow model reruns the whole synthetic-data pipeline, the honest audit of a student."),
    ("TPR@1%FPR", "the share of members the attack finds while wrongly flagging 1% of non-members; n/a when the "
                  "audit has under 100 non-members."),
    ("ROC curve", "the share of members the attack finds against the share of non-members it wrongly flags, as "
                  "its threshold moves; the diagonal is a coin flip. Log-log axes show the low false-positive rates "
                  "that matter; nothing below 1 / non-members can be measured."),
    ("AOP", "accuracy / (2·AUC)²: one number for the trade-off, higher is better; the dotted curves join points "
            "of equal AOP."),
    ("Pareto front", "the models no other model beats on both accuracy and AUC."),
    ("Formal ε", "the guarantee a model trained with differential privacy is proven to have (smaller is "
                 "stronger); none: no guarantee."),
    ("Empirical ε", "an attack's lower bound on ε, not a guarantee: how much privacy the attack proves lost. A "
                    "weak attack gives a small figure whatever the model leaks; for a DP model it must stay at "
                    "or below the formal ε."),
    ("Cardinality", "synthetic images per real member in each round (×2: twice as many synthetic images as "
                    "members)."),
    ("Generator", "scratch: a small diffusion model trained from scratch on the members; sd-lora: Stable "
                  "Diffusion fine-tuned on them with LoRA."),
)


def glossary_lines() -> list[str]:
    """The glossary as "Term: explanation." lines."""
    return [f"{term}: {text}" for term, text in GLOSSARY]

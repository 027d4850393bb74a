"""Membership-inference attacks by name (``lira``, ``rmia``, ``loss``).

Every attack is a function ``attack(inputs: AttackInputs, **options) -> scores (n,)`` registered in
:data:`ATTACKS`; higher scores mean "more likely a member". Attacks read only raw logits (of the
audited model and of its shadow / reference models, on every query view), which the shadow cache
keeps, so any attack re-scores a finished audit without training anything. Adding an attack is one
file in this folder with one ``@ATTACKS.register`` function, plus its name in ``_BUILT_IN``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...core.registry import Registry

_BUILT_IN = ("lira", "loss", "rmia")


@dataclass(frozen=True)
class AttackInputs:
    """Raw logits an attack may use. ``n`` challenge examples (the audited population), ``nz``
    reference-population samples that no model trained on, ``m`` shadow models, ``a`` query views,
    ``k`` classes."""

    labels: np.ndarray  # (n,) true class of each challenge example
    target: np.ndarray  # (a, n, k) the audited model's logits on each view
    shadows: np.ndarray  # (m, a, n, k) the same from each shadow model
    shadow_in: np.ndarray  # (m, n) bool: example j was in shadow i's training set
    z_labels: np.ndarray  # (nz,) labels of the reference population
    target_z: np.ndarray  # (a, nz, k) the audited model on the reference population
    shadows_z: np.ndarray  # (m, a, nz, k) the shadows on the reference population
    online: bool = True  # attacks may use in-shadows (False: only shadows that never saw an example)

    def __post_init__(self) -> None:
        a, n, k = self.target.shape
        m = self.shadows.shape[0]
        expected = {"shadows": (m, a, n, k), "shadow_in": (m, n), "labels": (n,),
                    "target_z": (a, len(self.z_labels), k), "shadows_z": (m, a, len(self.z_labels), k)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected {shape}")


AttackFn = Callable[..., np.ndarray]
ATTACKS: Registry[AttackFn] = Registry("attack")


def _load_built_ins() -> None:
    for name in _BUILT_IN:
        importlib.import_module(f".{name}", __name__)


def attack_names() -> list[str]:
    _load_built_ins()
    return ATTACKS.names()


def get_attack(name: str) -> AttackFn:
    """The attack registered as ``name``; an unknown name lists the valid ones."""
    _load_built_ins()
    return ATTACKS.get(name)


def attack_options(name: str) -> dict[str, Any]:
    """The options an attack takes, with their defaults."""
    params = list(inspect.signature(get_attack(name)).parameters.values())[1:]
    return {p.name: p.default for p in params}


def run_attack(name: str, inputs: AttackInputs, options: dict[str, Any] | None = None) -> np.ndarray:
    """Scores (n,) of attack ``name``; unknown options are an error that lists the valid ones."""
    fn = get_attack(name)
    options = dict(options or {})
    valid = attack_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"attack {name!r} has no option(s) {unknown}; valid: {', '.join(valid) or 'none'}")
    return fn(inputs, **options)


def softmax_true_class(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax probability of the true class at ``temperature``, in float64.

    Args:
        logits: (..., n, k).
        labels: (n,) ints.

    Returns:
        (..., n) probabilities.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    idx = np.broadcast_to(np.asarray(labels)[:, None], log_p.shape[:-1] + (1,))
    return np.exp(np.take_along_axis(log_p, idx, axis=-1)[..., 0])

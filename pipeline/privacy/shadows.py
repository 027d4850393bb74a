"""Shadow (reference) models for membership inference: who trains on what, with which recipe, and a
cache of their raw logits.

The *population* is every audited real training image: the members (which the audited model saw)
and the non-members (which nothing saw). A shadow imitates the audited model's training: the same
resolved recipe (architecture, pretrained weights, input size, augmentation, epochs, early stopping,
optimiser, device) on a training set of the same size as the target's member set, drawn from the
population. When the target early-stops on a validation set, each shadow early-stops on a carve-out
of the same size from the population examples it does not train on.

Each shadow's logits on every query view of every population example, and on reference-population
samples ``z`` that no model trained on (RMIA's), are cached as ``shadow-NNNN.npz`` under a folder
keyed by everything that determines them; any attack re-scores from the cache, and asking for more
shadows trains only the missing ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..classifiers.models import ClassifierSpec, build_classifier, create_classifier, vmap_compatible
from ..classifiers.objectives import HardLabels
from ..classifiers.stacked import predict_stacked, train_stacked
from ..classifiers.train import TrainConfig, fit, predict_logits
from ..core import checkpoints
from ..core.cluster import SINGLE, Cluster
from ..core.common import (
    ProgressFn,
    config_hash,
    no_progress,
    read_json,
    resolve_device,
    to_jsonable,
    write_json,
)
from ..data.tensors import TensorData

logger = logging.getLogger(__name__)

VIEWS = ("orig", "flip", "shift")
# Recipe fields a shadow may differ in from its target: only the seed (its own initial weights and order)
_FREE_RECIPE_FIELDS = frozenset({"seed"})


class ShadowMismatchError(ValueError):
    """Shadows were (or would be) made for other data, another recipe or another split than the
    audited model; the message names the differing fields."""



@dataclass(frozen=True)
class ShadowLogits:
    """Raw logits of m shadows; what every attack reads."""

    logits: np.ndarray  # (m, a, n, k) float32: shadow i, view v, population example j
    z_logits: np.ndarray  # (m, a, nz, k) float32: the same on the reference population
    shadow_in: np.ndarray  # (m, n) bool: example j in shadow i's training set
    directory: Path  # the cache folder
    trained: int  # shadows trained by this call (0: all from the cache)
    seconds: float  # time spent training them

    @property
    def n(self) -> int:
        return self.shadow_in.shape[0]


# -- who trains on what ---------------------------------------------------------------------------------
def assign_shadows(n_examples: int, n_shadows: int, size: int | None = None, seed: int = 0) -> np.ndarray:
    """(m, n) bool: shadow i trains on ``size`` examples (default: half the population).

    Shadow i takes the ``size`` examples that are in the fewest earlier shadows, ties broken at
    random, so every prefix of shadows is balanced (each example is in the floor or ceiling of
    ``i · size / n`` of the first i shadows) and asking for more shadows keeps the first ones. With
    ``size = n / 2`` shadows come in complementary pairs: each example is in exactly half of an
    even number of shadows.
    """
    size = n_examples // 2 if size is None else size
    if not 0 < size < n_examples:
        raise ValueError(f"a shadow's training set must hold between 1 and {n_examples - 1} examples; got {size}")
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_examples)
    out = np.zeros((n_shadows, n_examples), dtype=bool)
    for i in range(n_shadows):
        chosen = np.argsort(counts + rng.random(n_examples), kind="stable")[:size]  # noise < 1: ties only
        out[i, chosen] = True
        counts[chosen] += 1
    return out


def carve_validation(shadow_in: np.ndarray, n_val: int, seed: int) -> np.ndarray:
    """(m, n) bool: ``n_val`` examples per shadow, drawn from those it does not train on (its early
    stopping set, the size of the target's validation set)."""
    out = np.zeros_like(shadow_in)
    for i in range(shadow_in.shape[0]):
        rng = np.random.default_rng([seed, i])
        outside = np.flatnonzero(~shadow_in[i])
        out[i, rng.choice(outside, size=min(n_val, outside.size), replace=False)] = True
    return out


def shadow_seed(recipe: TrainConfig, audit_seed: int, index: int) -> int:
    """Shadow ``index``'s training seed: apart from the target's and from every other shadow's."""
    return recipe.seed + 1000 * (audit_seed + 1) + index


# -- recipes -------------------------------------------------------------------------------------------
def recipe_differences(target: Any, shadow: Any, free: frozenset[str] = _FREE_RECIPE_FIELDS,
                       prefix: str = "") -> list[str]:
    """Dotted names of the fields in which two configs (dataclasses or JSON dicts) differ, ignoring
    the ``free`` ones (by default those a shadow may change: its seed)."""
    a, b = to_jsonable(target), to_jsonable(shadow)
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in free:
                out += recipe_differences(a.get(key), b.get(key), free, f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def check_shadow_recipe(target: Any, shadow: Any, what: str = "shadow recipe") -> None:
    """Raise :class:`ShadowMismatchError` naming every field in which the shadows' recipe differs."""
    diff = recipe_differences(target, shadow)
    if diff:
        raise ShadowMismatchError(f"the {what} differs from the audited model's in {', '.join(diff)}; "
                                  "shadows must be trained like the model they imitate")


# -- query views -------------------------------------------------------------------------------------------
def query_views(x: torch.Tensor, views: tuple[str, ...]) -> list[torch.Tensor]:
    """The audited images under each query augmentation, (N, C, H, W) each."""
    out = []
    for view in views:
        if view == "orig":
            out.append(x)
        elif view == "flip":
            out.append(x.flip(-1))
        elif view == "shift":  # one pixel right, zero-filled (like the crop augmentation's shift)
            shifted = torch.zeros_like(x)
            shifted[..., 1:] = x[..., :-1]
            out.append(shifted)
        else:
            raise ValueError(f"unknown view {view!r}; valid: {', '.join(VIEWS)}")
    return out


def view_logits(model: nn.Module, x: torch.Tensor, views: tuple[str, ...], device: str = "auto") -> np.ndarray:
    """(a, N, k) float32 logits of one model on every view."""
    return np.stack([predict_logits(model, v, device=device).numpy() for v in query_views(x, views)]).astype(np.float32)


# -- the cache ---------------------------------------------------------------------------------------------
# indices -> {i: (logits, z_logits)} or {i: (logits, z_logits, the model's state dict)}
ShadowTrainer = Callable[[list[int]], dict[int, tuple[Any, ...]]]


def load_or_train_shadows(cache_root: Path, manifest: dict[str, Any], shadow_in: np.ndarray, train: ShadowTrainer,
                          cache_dir: Path | None = None, group: int | None = 16,
                          cluster: Cluster = SINGLE) -> ShadowLogits:
    """The logits of shadows ``0 .. m-1`` (m = ``len(shadow_in)``): cached ones are read, missing
    ones trained by ``train(indices) -> {i: (logits (a, n, k), z_logits (a, nz, k)[, state dict])}`` and
    saved one file per shadow (a crash loses at most the shadows in training); a returned state dict is
    kept as ``shadow-NNNN.pt`` (a pipeline shadow reuses it as its teacher: the same model on the same half).

    The folder is ``cache_root/<hash of manifest>``, or ``cache_dir`` when pinned; a folder made
    for another manifest is a :class:`ShadowMismatchError` naming the differing fields. Missing
    shadows are trained ``group`` at a time (None: all at once): stacked training is fastest per
    model at around 16 on a CPU, and each finished group is saved before the next starts.

    With a distributed ``cluster`` every process calls this with the same arguments: the groups are
    formed as in one process and shared out whole (a shadow's logits do not depend on how many
    processes ran), each process saves its shadows' files, and every process then reads them all.
    """
    directory = Path(cache_dir) if cache_dir else Path(cache_root) / config_hash(manifest, 16)
    if cluster.is_main:
        _check_or_start_cache(directory, manifest, cache_dir is not None)
    cluster.wait()

    m = shadow_in.shape[0]
    found = {i: np.load(directory / f"shadow-{i:04d}.npz") for i in range(m)
             if (directory / f"shadow-{i:04d}.npz").exists()}
    for i, arrays in found.items():
        if not np.array_equal(arrays["shadow_in"], shadow_in[i]):
            raise ShadowMismatchError(f"{directory}/shadow-{i:04d}.npz trained on another subset of the population")
    missing = [i for i in range(m) if i not in found]
    started = time.monotonic()
    if missing:
        if cluster.is_main:
            logger.info("training %d shadow(s) (%d cached) into %s%s", len(missing), len(found), directory,
                        f" with {cluster.size} processes" if cluster.distributed else "")
        step = group or len(missing)
        groups = [missing[start:start + step] for start in range(0, len(missing), step)]
        for indices in cluster.share(groups):
            for i, (logits, z_logits, *weights) in train(indices).items():
                if weights:  # the shadow model itself, for whoever trains the same model on the same half
                    checkpoints.save(directory / f"shadow-{i:04d}.pt", weights[0])
                _save_npz(directory / f"shadow-{i:04d}.npz", logits=logits.astype(np.float32),
                          z_logits=z_logits.astype(np.float32), shadow_in=shadow_in[i])
        cluster.wait()
    elif cluster.is_main:
        logger.info("reusing %d cached shadows from %s", m, directory)
    found.update({i: np.load(directory / f"shadow-{i:04d}.npz") for i in missing})
    return ShadowLogits(np.stack([found[i]["logits"] for i in range(m)]),
                        np.stack([found[i]["z_logits"] for i in range(m)]), shadow_in.copy(), directory,
                        len(missing), time.monotonic() - started)


def _check_or_start_cache(directory: Path, manifest: dict[str, Any], pinned: bool) -> None:
    manifest_file = directory / "manifest.json"
    if manifest_file.exists():
        cached = read_json(manifest_file)
        diff = recipe_differences(cached, manifest, free=frozenset())
        if diff:
            raise ShadowMismatchError(f"shadow cache {directory} was made for different {', '.join(diff)}; "
                                      "delete it or use another cache folder")
    elif pinned and directory.exists() and any(directory.iterdir()):
        raise ShadowMismatchError(f"{directory} is not a shadow cache (no manifest.json)")
    else:
        write_json(manifest_file, manifest)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # written whole or not at all


# -- transfer shadows: real data, the audited model's recipe ------------------------------------------------
def train_classifier_shadows(indices: list[int], population: TensorData, z: TensorData, shadow_in: np.ndarray,
                             val_in: np.ndarray | None, recipe: TrainConfig, views: tuple[str, ...],
                             num_classes: int, audit_seed: int, batched: bool = True,
                             progress: ProgressFn = no_progress) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Train shadows ``indices`` on real population images with ``recipe`` (stacked with vmap when the
    model and recipe allow it, else one by one through the same loop as the target), on the
    recipe's device; return each one's logits on every view of the population and of ``z``."""
    def factory() -> nn.Module:
        return create_classifier(ClassifierSpec(recipe.model, num_classes, 3, recipe.pretrained))

    if stackable(recipe, batched, num_classes) and indices == list(range(indices[0], indices[-1] + 1)):
        return _train_stacked_shadows(indices, population, z, shadow_in, val_in, recipe, views, factory, audit_seed,
                                      progress)
    out = {}
    for i in indices:
        subset = population.rows(np.flatnonzero(shadow_in[i]))
        early = val_in is not None and val_in[i].any() and recipe.early_stopping
        val = population.rows(np.flatnonzero(val_in[i])) if early else None
        shadow_recipe = replace(recipe, seed=shadow_seed(recipe, audit_seed, i))
        model = build_classifier(shadow_recipe, num_classes)
        fit(model, subset, HardLabels(recipe.label_smoothing, mixup="mixup" in recipe.augment), shadow_recipe,
            val=val, progress=progress, stage=f"shadow {i + 1}")
        out[i] = (view_logits(model, population.x, views, recipe.device), view_logits(model, z.x, views, recipe.device),
                  model.state_dict())
    return out


def stackable(recipe: TrainConfig, batched: bool, num_classes: int) -> bool:
    """Whether shadows of ``recipe`` train stacked: on a GPU (where one stacked step replaces many small
    kernel launches), with a vmap-able model, no pretrained weights (each copy would be loaded) and no
    augmentation that mixes or draws from the global stream (MixUp, AugMix). Early stopping stacks: each
    model stops on its own carve-out. On a CPU one model at a time is faster (``benchmarks/throughput.py``:
    small-resnet at 28 px, 906 images/s alone vs 478 per model in a stack of 4, bf16; tiny-cnn at 8 px,
    9,829 vs 7,498), so shadows train one after another there."""
    if not batched or not resolve_device(recipe.device).startswith("cuda"):
        return False
    if recipe.pretrained or {"augmix", "mixup"} & set(recipe.augment):
        return False
    return vmap_compatible(create_classifier(ClassifierSpec(recipe.model, num_classes, 3, False)))


def _train_stacked_shadows(indices: list[int], population: TensorData, z: TensorData, shadow_in: np.ndarray,
                           val_in: np.ndarray | None, recipe: TrainConfig, views: tuple[str, ...],
                           factory: Callable[[], nn.Module], audit_seed: int, progress: ProgressFn
                           ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    device = torch.device(resolve_device(recipe.device))
    masks = torch.from_numpy(shadow_in[indices])
    val_masks = torch.from_numpy(val_in[indices]) if val_in is not None and recipe.early_stopping else None
    first = replace(recipe, seed=shadow_seed(recipe, audit_seed, indices[0]))  # model j gets seed + j
    state = train_stacked(factory, population.x.to(device), population.y.to(device), masks, first, progress,
                          val_masks=val_masks)
    pop = np.stack([predict_stacked(factory, state, v.to(device)).cpu().numpy()
                    for v in query_views(population.x, views)], 1)  # (g, a, n, k)
    zs = np.stack([predict_stacked(factory, state, v.to(device)).cpu().numpy() for v in query_views(z.x, views)], 1)
    return {i: (pop[j], zs[j], {name: t[j].clone() for name, t in state.items()}) for j, i in enumerate(indices)}

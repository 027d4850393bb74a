"""Memorisation audit of a synthetic set: did the generator copy its training (member) images?

For every synthetic image: its nearest real member and nearest non-member (same feature space), the
distance ratio ``d(member) / d(non-member)`` and a **copy flag** — a distance to the nearest member
below the ``copy_quantile`` of the members' own nearest-other-member distances (a synthetic image
closer to a member than almost any member is to another one is a near-duplicate). The same threshold
applied to the non-members (who were never trained on) gives the flag rate of a fresh real image,
the figure to read the synthetic rate against.

The set as a whole gets the data-copying test of Meehan, Chaudhuri & Dasgupta (AISTATS 2020,
"A Non-Parametric Test to Detect Data-Copying in Generative Models"): the space is cut into k-means
cells of the training (member) features; in each cell a Mann-Whitney U test compares the synthetic
images' distances to the nearest member with the non-members' distances; ``C_T`` is the Z-scores'
average weighted by the non-members' share of each cell, over the cells holding more than ``tau`` of
the synthetic images. ``C_T`` well below 0 (e.g. < -3) means the synthetic images sit closer to the
training images than fresh data does: copying. Near 0: no evidence. Above 0: under-fitting.
Follows the authors' reference code (github.com/casey-meehan/data-copying, ``data_copying_tests.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.schema import schema


@schema
@dataclass(frozen=True)
class MemorisationConfig:
    """How the memorisation audit judges a synthetic set."""

    copy_quantile: float = 0.01  # copy threshold: this quantile of member-to-nearest-other-member distances
    cells: int = 5  # k-means cells of the data-copying test (fewer when a cell would lack non-members)
    tau: float | None = None  # a cell counts if it holds more than this share of synthetic images (None: 20/m)
    pixel_max_side: int = 32  # also audit in pixel space for images up to this side
    seed: int = 0  # k-means initialisation

    def __post_init__(self) -> None:
        if not 0.0 < self.copy_quantile < 1.0:
            raise ValueError(f"copy_quantile must be in (0, 1), got {self.copy_quantile}")
        if self.cells < 1:
            raise ValueError(f"cells must be at least 1, got {self.cells}")
        if self.seed < 0:  # k-means' random state takes no negative seed
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def nearest(query: np.ndarray, reference: np.ndarray, exclude_self: bool = False,
            chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean nearest neighbour of each query row among the reference rows.

    Args:
        query: (n, d); reference: (m, d); ``exclude_self``: query is reference (n == m) and a row may not
            be its own neighbour.

    Returns:
        (distances (n,), indices (n,)) into ``reference``.
    """
    q = torch.as_tensor(np.asarray(query, np.float32))
    r = torch.as_tensor(np.asarray(reference, np.float32))
    if q.ndim != 2 or r.ndim != 2 or q.shape[1] != r.shape[1] or len(r) < (2 if exclude_self else 1):
        raise ValueError(f"need (n, d) query and (m, d) reference with the same d; got {tuple(q.shape)}, "
                         f"{tuple(r.shape)}")
    dist, idx = [], []
    for start in range(0, len(q), chunk):
        d = torch.cdist(q[start:start + chunk], r)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + start] = float("inf")
        best = d.min(dim=1)
        dist.append(best.values)
        idx.append(best.indices)
    return torch.cat(dist).numpy().astype(np.float64), torch.cat(idx).numpy()


def zu_statistic(test_distances: np.ndarray, generated_distances: np.ndarray) -> float:
    """Z-scored Mann-Whitney U of the generated vs the test samples' distances to the training set
    (Meehan et al. 2020, eq. 3; the reference code's continuity correction of 0.5).

    U counts the (generated, test) pairs where the generated sample is farther (ties count ½).
    """
    from scipy.stats import mannwhitneyu

    m, n = len(generated_distances), len(test_distances)
    u = float(mannwhitneyu(generated_distances, test_distances, alternative="less").statistic)
    return (u - (n * m / 2 - 0.5)) / np.sqrt(n * m * (n + m + 1) / 12)


def data_copying_test(train: np.ndarray, test: np.ndarray, generated: np.ndarray, cells: int = 5,
                      tau: float | None = None, seed: int = 0) -> dict[str, Any]:
    """The C_T statistic of Meehan et al. 2020 for three (·, d) samples.

    Cells are k-means cells of ``train``; k shrinks until every cell holds a test sample (the test
    needs one per cell). Returns {"ct", "cells", "cells_used", "zu": [per cell or None]}.
    """
    from sklearn.cluster import KMeans

    train, test, generated = (np.asarray(a, np.float64) for a in (train, test, generated))
    tau = 20.0 / len(generated) if tau is None else tau
    for k in range(min(cells, len(train)), 0, -1):
        kmeans = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(train)
        test_cells = kmeans.predict(test)
        if len(np.unique(test_cells)) == k:
            break
    train_cells, generated_cells = kmeans.labels_, kmeans.predict(generated)
    test_share = np.bincount(test_cells, minlength=k) / len(test)
    generated_share = np.bincount(generated_cells, minlength=k) / len(generated)
    zu: list[float | None] = []
    for cell in range(k):
        in_train = train[train_cells == cell]
        if generated_share[cell] <= tau or len(in_train) == 0:
            zu.append(None)
            continue
        test_d, _ = nearest(test[test_cells == cell], in_train)
        generated_d, _ = nearest(generated[generated_cells == cell], in_train)
        zu.append(zu_statistic(test_d, generated_d))
    used = [c for c in range(k) if zu[c] is not None]
    ct = float(np.dot(test_share[used], [zu[c] for c in used]) / test_share[used].sum()) if used else None
    return {"ct": ct, "cells": k, "cells_used": len(used), "zu": zu}


def copy_flags(synthetic: np.ndarray, members: np.ndarray, quantile: float,
               member_distance: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(copy flag per synthetic row, threshold): a distance to the nearest member at or below the
    ``quantile`` of the members' own nearest-other-member distances. ``member_distance``: the synthetic
    rows' nearest-member distances when already known."""
    own_d, _ = nearest(members, members, exclude_self=True)
    threshold = float(np.quantile(own_d, quantile))
    if member_distance is None:
        member_distance, _ = nearest(synthetic, members)
    return member_distance <= threshold, threshold


def memorisation_audit(synthetic: np.ndarray, members: np.ndarray, nonmembers: np.ndarray,
                       member_ids: list[str], nonmember_ids: list[str],
                       config: MemorisationConfig = MemorisationConfig()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Nearest member / non-member of every synthetic image, copy flags and the data-copying test.

    Args:
        synthetic: (s, d), members: (m, d), nonmembers: (n, d) features in one space (m >= 2).

    Returns:
        (one dict per synthetic image, in order: nearest member id and distance, nearest non-member id
        and distance, ratio, copy flag; a summary of the set).
    """
    member_d, member_i = nearest(synthetic, members)
    nonmember_d, nonmember_i = nearest(synthetic, nonmembers)
    copies, threshold = copy_flags(synthetic, members, config.copy_quantile, member_d)
    fresh_d, _ = nearest(nonmembers, members)
    ratio = member_d / np.maximum(nonmember_d, 1e-12)
    per_image = [{"member": member_ids[member_i[j]], "member_distance": round(float(member_d[j]), 6),
                  "nonmember": nonmember_ids[nonmember_i[j]], "nonmember_distance": round(float(nonmember_d[j]), 6),
                  "ratio": round(float(ratio[j]), 6), "copy": bool(copies[j])} for j in range(len(synthetic))]
    test = data_copying_test(members, nonmembers, synthetic, config.cells, config.tau, config.seed)
    summary = {
        "images": len(synthetic), "copies": int(copies.sum()), "copy_rate": float(copies.mean()),
        "copy_threshold": threshold, "copy_quantile": config.copy_quantile,
        # the same threshold on fresh real images: what the copy rate is to be read against
        "nonmember_flag_rate": float((fresh_d <= threshold).mean()),
        "median_ratio": float(np.median(ratio)), "closer_to_members": float((ratio < 1.0).mean()),
        "ct": test["ct"], "ct_cells": test["cells"], "ct_cells_used": test["cells_used"],
    }
    return per_image, summary

"""Train many small classifiers at once (LiRA shadow models) with ``torch.func`` + ``vmap``.

M copies of one ``nn.Module`` are stacked into tensors with a leading model axis
(``torch.func.stack_module_state``, as in PyTorch's "model ensembling" tutorial) and run with
``vmap(functional_call)``, so one step trains all M models: the convolutions become one grouped
convolution instead of M small ones, which is what makes it fast on a CPU.

Independence of the models: the loss is the SUM over models of each model's mean minibatch loss,
so the gradient reaching model i's slice of a stacked tensor is exactly the gradient of model i's
own loss; AdamW and weight decay act elementwise, so each slice is updated as if alone. Hence
model i of a stacked run equals ``train_single(..., model_index=i)`` up to float rounding
(tested in ``tests/test_batched.py``). Do not add a global-norm gradient clip here: it would
couple the models.

Data order: model i has its own generator seeded with ``recipe.seed + i`` (also used, through a
forked global RNG, for its initial weights). Every epoch each model walks through a fresh
permutation of its own subset. Subsets may differ in size; all models then take the same number
of steps per epoch, ``ceil(n_epoch / batch_size)`` with ``n_epoch`` = the largest subset size,
and a model with a smaller subset tops its epoch up with the head of another fresh permutation
of its own subset (so it sees a few of its examples twice in that epoch; never an example
outside its subset). The last batch of an epoch is partial and of equal size for all models.

Models must be deterministic in training mode with no running statistics: BatchNorm and
dropout are refused (use GroupNorm / no norm). Buffers are carried along unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from pipeline.core.common import Progress, ProgressFn, no_progress

logger = logging.getLogger(__name__)

ModelFactory = Callable[[], nn.Module]


@dataclass(frozen=True)
class TrainRecipe:
    """One training recipe, shared by stacked and single-model training."""

    epochs: int = 10  # passes over each model's subset (see module docstring for unequal sizes)
    batch_size: int = 128  # examples per model per optimiser step
    lr: float = 2e-3  # peak AdamW learning rate, cosine-annealed to 0 over all steps
    weight_decay: float = 5e-4  # AdamW decoupled weight decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    augment_flip: bool = False  # random horizontal flip, p = 0.5 (off for digits / text-like images)
    crop_padding: int = 0  # random crop: zero-pad this many pixels and crop back (a random shift); 0 = off
    seed: int = 0  # model i uses seed + i for its initial weights, data order and flips


# ---------------------------------------------------------------------------------------------
# Shared pieces (identical for both training paths, so their results agree)
# ---------------------------------------------------------------------------------------------


def _check_model(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"module {name!r} is a BatchNorm: stacked training keeps no running "
                             "statistics; use GroupNorm or no normalisation")
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise ValueError(f"module {name!r} is a dropout layer (p={module.p}): training must be "
                             "deterministic to match single-model training; remove it")


def _check_data(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, recipe: TrainRecipe) -> None:
    if x.ndim < 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (N, ...); got {tuple(x.shape)} {x.dtype}")
    if y.shape != x.shape[:1] or y.dtype != torch.long:
        raise ValueError(f"y must be a long tensor of shape ({x.shape[0]},); got {tuple(y.shape)} {y.dtype}")
    if masks.ndim != 2 or masks.shape[1] != x.shape[0] or masks.dtype != torch.bool:
        raise ValueError(f"masks must be a bool tensor of shape (M, {x.shape[0]}); "
                         f"got {tuple(masks.shape)} {masks.dtype}")
    empty = torch.nonzero(masks.sum(1) == 0).flatten().tolist()
    if empty:
        raise ValueError(f"model(s) {empty} have no training examples in masks")
    if recipe.epochs < 1 or recipe.batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1; got {recipe.epochs}, {recipe.batch_size}")


def _seeded_model(model_factory: ModelFactory, seed: int, device: torch.device) -> nn.Module:
    """Build one model with its initial weights drawn from ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory()
    _check_model(model)
    return model.to(device).train()


def _epoch_order(gen: torch.Generator, idx: torch.Tensor, n_epoch: int, augment_flip: bool,
                 crop_padding: int = 0) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One model's example order for one epoch.

    Args:
        idx: (n,) indices of the model's subset.
        n_epoch: examples per epoch (>= n), topped up from further permutations of ``idx``.

    Returns:
        order (n_epoch,) indices into x, flip (n_epoch,) bool or None, shift (n_epoch, 2) crop
        offsets in [0, 2·crop_padding] or None.
    """
    n = idx.numel()
    perms = [idx[torch.randperm(n, generator=gen)] for _ in range(math.ceil(n_epoch / n))]
    order = torch.cat(perms)[:n_epoch]
    flip = torch.rand(n_epoch, generator=gen) < 0.5 if augment_flip else None
    shift = torch.randint(0, 2 * crop_padding + 1, (n_epoch, 2), generator=gen) if crop_padding > 0 else None
    return order, flip, shift


def _gather(x: torch.Tensor, order: torch.Tensor, flip: torch.Tensor | None,
            shift: torch.Tensor | None = None, crop_padding: int = 0) -> torch.Tensor:
    """Batch ``x[order]`` (..., C, H, W): randomly shifted (zero-padded crop, the same as
    ``pipeline.classifiers.train.augment_batch``'s "crop"), then the flagged images mirrored left-right."""
    xb = x[order]
    if shift is not None:
        lead, (c, h, w) = xb.shape[:-3], xb.shape[-3:]
        flat = F.pad(xb.reshape(-1, c, h, w), (crop_padding,) * 4)
        offsets = shift.to(x.device).reshape(-1, 2)
        rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (n, h)
        cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (n, w)
        n = flat.shape[0]
        flat = flat[torch.arange(n, device=x.device)[:, None, None, None],
                    torch.arange(c, device=x.device)[None, :, None, None],
                    rows[:, None, :, None], cols[:, None, None, :]]
        xb = flat.reshape(*lead, c, h, w)
    if flip is not None:
        mask = flip.to(x.device).reshape(flip.shape + (1,) * (xb.ndim - flip.ndim))
        xb = torch.where(mask, xb.flip(-1), xb)
    return xb


def _cosine(total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier: cosine from 1 at step 0 towards 0 at ``total_steps``."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def _report_every(total_steps: int) -> int:
    return max(1, total_steps // 200)  # at most ~200 progress events per run


# ---------------------------------------------------------------------------------------------
# Stacked training
# ---------------------------------------------------------------------------------------------


def _per_model_losses(base: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                      xb: torch.Tensor, yb: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Each stacked model's mean cross-entropy on its own minibatch.

    Args:
        base: a (meta-device) copy of the model, for its forward code only.
        params, buffers: name -> (M, *shape) stacked tensors.
        xb: (M, B, C, H, W) one minibatch per model.
        yb: (M, B) labels.

    Returns:
        (M,) losses; backpropagate their SUM so that model i's gradient is that of its own loss.
    """
    def forward_one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    logits = vmap(forward_one, in_dims=(0, 0, 0))(params, buffers, xb)  # (M, B, k)
    losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none",
                             label_smoothing=label_smoothing)
    return losses.view(yb.shape).mean(1)


def train_stacked(model_factory: ModelFactory, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor,
                  recipe: TrainRecipe, progress: ProgressFn = no_progress) -> dict[str, torch.Tensor]:
    """Train M independent copies of ``model_factory()``, model i on the examples ``masks[i]``.

    Args:
        model_factory: builds one fresh model (no BatchNorm, no dropout); called M times.
        x: (N, C, H, W) float images, on the device to train on.
        y: (N,) long labels.
        masks: (M, N) bool, which examples each model trains on.
        recipe: shared training recipe; model i is seeded with ``recipe.seed + i``.
        progress: called with ``Progress("shadows", step, total_steps, {...})``.

    Returns:
        stacked state: name -> (M, *shape) detached tensor, for every parameter and buffer;
        pass it to :func:`predict_stacked` or :func:`unstack_models`.
    """
    # 1. check inputs
    masks = masks.to(x.device)
    _check_data(x, y, masks, recipe)
    n_models = masks.shape[0]
    subsets = [torch.nonzero(masks[i]).flatten() for i in range(n_models)]
    n_epoch = max(s.numel() for s in subsets)
    steps_per_epoch = math.ceil(n_epoch / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch

    # 2. build and stack the models, each from its own seed
    models = [_seeded_model(model_factory, recipe.seed + i, x.device) for i in range(n_models)]
    params, buffers = stack_module_state(models)
    with torch.device("meta"):
        base = model_factory()
    base.train()

    # 3. optimiser over the stacked leaves (elementwise, so per-model independent)
    optimiser = torch.optim.AdamW(list(params.values()), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _cosine(total_steps))
    gens = [torch.Generator().manual_seed(recipe.seed + i) for i in range(n_models)]
    logger.info("training %d stacked models: %d examples/epoch, %d steps", n_models, n_epoch, total_steps)

    # 4. train
    step, every = 0, _report_every(total_steps)
    for epoch in range(recipe.epochs):
        plans = [_epoch_order(g, s.cpu(), n_epoch, recipe.augment_flip, recipe.crop_padding)
                 for g, s in zip(gens, subsets)]
        order = torch.stack([p[0] for p in plans]).to(x.device)  # (M, n_epoch)
        flip = torch.stack([p[1] for p in plans]) if recipe.augment_flip else None
        shift = torch.stack([p[2] for p in plans]) if recipe.crop_padding > 0 else None  # (M, n_epoch, 2)
        for start in range(0, n_epoch, recipe.batch_size):
            cols = slice(start, start + recipe.batch_size)
            xb = _gather(x, order[:, cols], None if flip is None else flip[:, cols],
                         None if shift is None else shift[:, cols], recipe.crop_padding)  # (M, B, C, H, W)
            yb = y[order[:, cols]]  # (M, B)
            per_model = _per_model_losses(base, params, buffers, xb, yb, recipe.label_smoothing)
            optimiser.zero_grad(set_to_none=True)
            per_model.sum().backward()  # sum of per-model means: independent gradients
            optimiser.step()
            schedule.step()
            step += 1
            if step % every == 0 or step == total_steps:
                progress(Progress("shadows", step, total_steps,
                                  {"epoch": epoch, "loss": float(per_model.detach().mean()),
                                   "models": n_models}))

    # 5. hand back plain stacked tensors
    state = {name: t.detach() for name, t in params.items()}
    state.update({name: t.detach() for name, t in buffers.items()})
    return state


def predict_stacked(model_factory: ModelFactory, state: dict[str, torch.Tensor], x: torch.Tensor,
                    batch_size: int = 512) -> torch.Tensor:
    """Logits of every stacked model on every example.

    Args:
        model_factory: the factory the models were trained from.
        state: name -> (M, *shape) tensors from :func:`train_stacked`.
        x: (N, C, H, W) float images.
        batch_size: examples per forward pass (all M models at once).

    Returns:
        (M, N, k) float logits.
    """
    with torch.device("meta"):
        base = model_factory()
    base.eval()
    expected = {n for n, _ in base.named_parameters()} | {n for n, _ in base.named_buffers()}
    if set(state) != expected:
        raise ValueError(f"state does not fit the model: missing {sorted(expected - set(state))}, "
                         f"unexpected {sorted(set(state) - expected)}")

    def forward_one(s: dict, xb: torch.Tensor) -> torch.Tensor:
        return functional_call(base, s, (xb,))

    forward_all = vmap(forward_one, in_dims=(0, None))
    with torch.no_grad():
        chunks = [forward_all(state, x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(chunks, dim=1)


def unstack_models(model_factory: ModelFactory, state: dict[str, torch.Tensor]) -> list[nn.Module]:
    """Split a stacked state into M ordinary models (e.g. to save or inspect one shadow).

    Args:
        state: name -> (M, *shape) tensors from :func:`train_stacked`.
    """
    n_models = next(iter(state.values())).shape[0]
    models = []
    for i in range(n_models):
        model = model_factory()
        model.load_state_dict({name: t[i] for name, t in state.items()})
        models.append(model.eval())
    return models


# ---------------------------------------------------------------------------------------------
# One model, the ordinary way
# ---------------------------------------------------------------------------------------------


def train_single(model_factory: ModelFactory, x: torch.Tensor, y: torch.Tensor, recipe: TrainRecipe,
                 mask: torch.Tensor | None = None, model_index: int = 0,
                 examples_per_epoch: int | None = None, progress: ProgressFn = no_progress) -> nn.Module:
    """Train one model with an ordinary loop and the same recipe as :func:`train_stacked`.

    With ``mask = masks[i]``, ``model_index = i`` and ``examples_per_epoch`` = the largest subset
    size in ``masks``, this reproduces model i of ``train_stacked(..., masks, recipe)``.

    Args:
        model_factory: builds one fresh model.
        x: (N, C, H, W) float images.
        y: (N,) long labels.
        recipe: training recipe; the seed used is ``recipe.seed + model_index``.
        mask: (N,) bool examples to train on; None = all.
        model_index: which model of a stacked run to reproduce (offsets the seed).
        examples_per_epoch: examples per epoch; None = the subset size.
        progress: called with ``Progress("train", step, total_steps, {...})``.

    Returns:
        the trained model, in eval mode.
    """
    # 1. check inputs
    mask = torch.ones(x.shape[0], dtype=torch.bool) if mask is None else mask
    mask = mask.to(x.device)
    _check_data(x, y, mask[None], recipe)
    subset = torch.nonzero(mask).flatten().cpu()
    n_epoch = subset.numel() if examples_per_epoch is None else examples_per_epoch
    if n_epoch < subset.numel():
        raise ValueError(f"examples_per_epoch ({n_epoch}) must be >= the subset size ({subset.numel()})")
    total_steps = recipe.epochs * math.ceil(n_epoch / recipe.batch_size)

    # 2. model, optimiser, schedule, data order
    seed = recipe.seed + model_index
    model = _seeded_model(model_factory, seed, x.device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _cosine(total_steps))
    gen = torch.Generator().manual_seed(seed)

    # 3. train
    step, every = 0, _report_every(total_steps)
    for epoch in range(recipe.epochs):
        order, flip, shift = _epoch_order(gen, subset, n_epoch, recipe.augment_flip, recipe.crop_padding)
        order = order.to(x.device)
        for start in range(0, n_epoch, recipe.batch_size):
            cols = slice(start, start + recipe.batch_size)
            xb = _gather(x, order[cols], None if flip is None else flip[cols],
                         None if shift is None else shift[cols], recipe.crop_padding)
            loss = F.cross_entropy(model(xb), y[order[cols]], label_smoothing=recipe.label_smoothing)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            step += 1
            if step % every == 0 or step == total_steps:
                progress(Progress("train", step, total_steps, {"epoch": epoch, "loss": float(loss.detach())}))
    return model.eval()

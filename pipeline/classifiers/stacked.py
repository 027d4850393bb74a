"""Many small classifiers trained at once (LiRA shadow models) with ``torch.func`` + ``vmap``.

M copies of one ``nn.Module`` are stacked into tensors with a leading model axis
(``torch.func.stack_module_state``, as in PyTorch's "model ensembling" tutorial) and run with
``vmap(functional_call)``, so one step trains all M models: the convolutions become one grouped
convolution instead of M small ones, which is what makes it fast on a CPU. :class:`StackedModels`
is an ordinary ``nn.Module`` over those stacked parameters, so it trains through the one loop
(:func:`~.train.fit`) with a stacked :class:`~.batches.Sampler` and the :class:`~.objectives.HardLabels`
objective.

Independence of the models: the loss is the SUM over models of each model's mean minibatch loss,
so the gradient reaching model i's slice of a stacked tensor is exactly the gradient of model i's
own loss; AdamW and weight decay act elementwise, so each slice is updated as if alone. Model i is
seeded with ``seed + i`` (weights, data order, augmentation), so it equals model i trained alone with
that seed up to float rounding (``tests/test_batched.py``). Do not add a global-norm gradient clip:
it would couple the models.

Models must be deterministic in training mode with no running statistics: BatchNorm and dropout are
refused (use GroupNorm / no norm). Buffers are carried along unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..core.common import ProgressFn, no_progress
from ..data.tensors import TensorData
from .batches import Sampler
from .models import ModelFactory, seeded_model
from .objectives import HardLabels
from .train import StackedValidation, TrainConfig, fit

logger = logging.getLogger(__name__)


def _escape(name: str) -> str:
    return name.replace(".", "__")


class StackedModels(nn.Module):
    """M copies of ``factory()``, model i initialised from ``seeds[i]``: forward takes (M, B, C, H, W)
    and returns (M, B, K) logits."""

    def __init__(self, factory: ModelFactory, seeds: list[int], device: str | torch.device = "cpu") -> None:
        super().__init__()
        models = [_checked(seeded_model(factory, seed)).to(device) for seed in seeds]
        params, buffers = stack_module_state(models)
        self.names = list(params)
        self.buffer_names = list(buffers)
        self.stacked = nn.ParameterDict({_escape(n): nn.Parameter(t.detach().clone()) for n, t in params.items()})
        for name, tensor in buffers.items():
            self.register_buffer(_escape(name), tensor.clone())
        with torch.device("meta"):
            self.base = [factory()]  # in a list: its forward code only, not a submodule with parameters
        self.n_models = len(seeds)

    def stacked_state(self) -> dict[str, torch.Tensor]:
        """name -> (M, *shape) tensors, the parameters' and buffers' own names."""
        state = {n: self.stacked[_escape(n)].detach() for n in self.names}
        state.update({n: getattr(self, _escape(n)) for n in self.buffer_names})
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {n: self.stacked[_escape(n)] for n in self.names}
        buffers = {n: getattr(self, _escape(n)) for n in self.buffer_names}
        base = self.base[0].train(self.training)

        def forward_one(p: dict, b: dict, xb: torch.Tensor) -> torch.Tensor:
            return functional_call(base, (p, b), (xb,))

        return vmap(forward_one, in_dims=(0, 0, 0))(params, buffers, x)


def _checked(model: nn.Module) -> nn.Module:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"module {name!r} is a BatchNorm: stacked training keeps no running "
                             "statistics; use GroupNorm or no normalisation")
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise ValueError(f"module {name!r} is a dropout layer (p={module.p}): training must be "
                             "deterministic to match single-model training; remove it")
    return model


def train_stacked(factory: ModelFactory, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor,
                  config: TrainConfig, progress: ProgressFn = no_progress, stage: str = "shadows",
                  val_masks: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Train M independent copies of ``factory()``, model i on the examples ``masks[i]`` with the
    recipe ``config`` and seed ``config.seed + i``; the one loop does the training. With ``val_masks``
    (M, N) and ``config.patience``, model i early-stops on its own rows ``val_masks[i]``, as alone.

    Args:
        x: (N, C, H, W) float images, on the device to train on.
        y: (N,) long labels.
        masks: (M, N) bool, which examples each model trains on.

    Returns:
        stacked state: name -> (M, *shape) detached tensor, for every parameter and buffer;
        pass it to :func:`predict_stacked` or :func:`unstack_models`.
    """
    if x.ndim < 2 or not x.is_floating_point() or y.shape != x.shape[:1] or y.dtype != torch.long:
        raise ValueError(f"x must be float (N, ...) and y long (N,); got {tuple(x.shape)} {x.dtype}, "
                         f"{tuple(y.shape)} {y.dtype}")
    if masks.ndim != 2 or masks.shape[1] != x.shape[0]:
        raise ValueError(f"masks must be (M, {x.shape[0]}); got {tuple(masks.shape)}")
    seeds = [config.seed + i for i in range(len(masks))]
    model = StackedModels(factory, seeds, x.device)
    sampler = Sampler(seeds, config.batch_size, masks.cpu(), stacked=True)
    logger.info("training %d stacked models: %d steps", len(seeds), config.epochs * sampler.steps(len(x)))
    data = TensorData(x, y)
    val = StackedValidation(data, val_masks.cpu()) if val_masks is not None else None
    fit(model, data, HardLabels(config.label_smoothing), config, val=val, progress=progress, stage=stage,
        sampler=sampler)
    return model.stacked_state()


def train_single(factory: ModelFactory, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
                 mask: torch.Tensor | None = None, model_index: int = 0, examples_per_epoch: int | None = None,
                 progress: ProgressFn = no_progress, val_mask: torch.Tensor | None = None) -> nn.Module:
    """Model ``model_index`` of a stacked run trained alone: with ``mask = masks[i]`` and
    ``examples_per_epoch`` = the largest subset of ``masks`` it equals model i of
    ``train_stacked(..., masks, config)`` up to float rounding."""
    seed = config.seed + model_index
    mask = torch.ones(len(x), dtype=torch.bool) if mask is None else mask.cpu()
    model = _checked(seeded_model(factory, seed)).to(x.device)
    sampler = Sampler([seed], config.batch_size, mask[None], epoch_size=examples_per_epoch)
    val = TensorData(x[val_mask], y[val_mask]) if val_mask is not None else None
    fit(model, TensorData(x, y), HardLabels(config.label_smoothing), config, val=val, progress=progress,
        sampler=sampler)
    return model.eval()


def predict_stacked(factory: ModelFactory, state: dict[str, torch.Tensor], x: torch.Tensor,
                    batch_size: int = 512) -> torch.Tensor:
    """Logits (M, N, k) of every stacked model (``state``: name -> (M, *shape)) on every image of x (N, C, H, W)."""
    with torch.device("meta"):
        base = factory()
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


def unstack_models(factory: ModelFactory, state: dict[str, torch.Tensor]) -> list[nn.Module]:
    """Split a stacked state (name -> (M, *shape)) into M ordinary models in eval mode."""
    n_models = next(iter(state.values())).shape[0]
    models = []
    for i in range(n_models):
        model = factory()
        model.load_state_dict({name: t[i] for name, t in state.items()})
        models.append(model.eval())
    return models

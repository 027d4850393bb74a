"""Stacked (vmap) training must equal separate ordinary trainings, model by model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.classifiers.objectives import Batch, HardLabels
from pipeline.classifiers.stacked import (
    StackedModels,
    predict_stacked,
    train_single,
    train_stacked,
    unstack_models,
)
from pipeline.classifiers.train import TrainConfig
from pipeline.core.common import Progress
from pipeline.data.tensors import TensorData


def recipe(augment: tuple[str, ...] = (), crop_padding: int = 0, **fields) -> TrainConfig:
    """A training recipe; no augmentation unless asked for; float32 (bf16 rounds a grouped convolution and
    separate ones differently: the comparisons below are at float32 rounding)."""
    return TrainConfig(**{"batch_size": 128, "lr": 2e-3, "epochs": 10, "amp": False, **fields}, augment=augment,
                       crop_padding=crop_padding)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3),
    )


def toy_data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def assert_same_weights(stacked: dict[str, torch.Tensor], i: int, model: nn.Module) -> None:
    state = model.state_dict()
    assert set(state) == set(stacked)
    for name, value in state.items():
        torch.testing.assert_close(stacked[name][i], value, rtol=1e-4, atol=1e-5, msg=name)


def test_stacked_equals_separate_trainings_equal_subsets():
    # 2 models, 12 examples each, batch 4, 1 epoch -> 3 optimiser steps per model
    x, y = toy_data()
    masks = torch.zeros(2, 24, dtype=torch.bool)
    masks[0, :12] = True
    masks[1, 6:18] = True
    recipe_ = recipe(epochs=1, batch_size=4, lr=1e-2, weight_decay=0.1, seed=3)
    stacked = train_stacked(tiny_cnn, x, y, masks, recipe_)
    singles = [train_single(tiny_cnn, x, y, recipe_, mask=masks[i], model_index=i) for i in range(2)]
    for i, model in enumerate(singles):
        assert_same_weights(stacked, i, model)
    # the two models really differ (own seeds, own data), so the comparison above can fail
    assert not torch.allclose(stacked["0.weight"][0], stacked["0.weight"][1])
    # and training moved model 0 away from its initial weights (drawn from seed 3 + 0)
    torch.manual_seed(3)
    initial = tiny_cnn()
    assert not torch.allclose(stacked["0.weight"][0], initial[0].weight, atol=1e-3)


def test_stacked_equals_separate_unequal_subsets_flip_smoothing():
    # 3 models with 7, 9 and 5 examples: 9 examples per epoch for everyone (smaller subsets
    # topped up from a fresh permutation), batch 4 -> steps of 4, 4, 1; 2 epochs = 6 steps.
    x, y = toy_data()
    masks = torch.zeros(3, 24, dtype=torch.bool)
    masks[0, :7] = True
    masks[1, 10:19] = True
    masks[2, ::5] = True
    recipe_ = recipe(epochs=2, batch_size=4, lr=5e-3, label_smoothing=0.1, augment=("crop", "flip"), crop_padding=1,
                     seed=11)
    stacked = train_stacked(tiny_cnn, x, y, masks, recipe_)
    for i in range(3):
        single = train_single(tiny_cnn, x, y, recipe_, mask=masks[i], model_index=i, examples_per_epoch=9)
        assert_same_weights(stacked, i, single)
        torch.testing.assert_close(predict_stacked(tiny_cnn, stacked, x, batch_size=5)[i],
                                   single(x).detach(), rtol=1e-4, atol=1e-5)


def test_predict_stacked_matches_unstacked_models_and_shape():
    x, y = toy_data(n=10)
    masks = torch.ones(4, 10, dtype=torch.bool)
    stacked = train_stacked(tiny_cnn, x, y, masks, recipe(epochs=1, batch_size=5))
    logits = predict_stacked(tiny_cnn, stacked, x, batch_size=3)
    assert logits.shape == (4, 10, 3)
    for i, model in enumerate(unstack_models(tiny_cnn, stacked)):
        torch.testing.assert_close(logits[i], model(x).detach(), rtol=1e-5, atol=1e-6)


def test_stacked_models_learn_an_easy_task():
    # class 0: bright left half, class 1: bright right half, plus noise
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=g)
    x = 0.3 * torch.randn(64, 1, 6, 6, generator=g)
    x[y == 0, :, :, :3] += 1.0
    x[y == 1, :, :, 3:] += 1.0
    masks = torch.rand(3, 64, generator=g) < 0.6
    events: list[Progress] = []
    stacked = train_stacked(tiny_cnn, x, y, masks, recipe(epochs=15, batch_size=16, lr=2e-2),
                            progress=events.append)
    accuracy = (predict_stacked(tiny_cnn, stacked, x).argmax(-1) == y).float().mean(1)
    assert (accuracy > 0.9).all(), accuracy
    assert events[-1].done == events[-1].total and events[-1].stage == "shadows"


def test_rejects_batchnorm_and_empty_masks():
    x, y = toy_data(n=8)
    with pytest.raises(ValueError, match="BatchNorm"):
        train_stacked(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                                            nn.Linear(32, 3)),
                      x, y, torch.ones(2, 8, dtype=torch.bool), recipe(epochs=1))
    masks = torch.ones(2, 8, dtype=torch.bool)
    masks[1] = False
    with pytest.raises(ValueError, match=r"model\(s\) \[1\] have no training examples"):
        train_stacked(tiny_cnn, x, y, masks, recipe(epochs=1))
    with pytest.raises(ValueError, match="epoch_size"):
        train_single(tiny_cnn, x, y, recipe(epochs=1), examples_per_epoch=3)


def test_stacked_gradient_is_each_models_own_mean_loss_gradient():
    # Adam is nearly blind to a constant gradient scale, so check the gradients themselves:
    # d(sum_i L_i)/d(theta_i) must equal dL_i/d(theta_i) of model i alone, L_i = mean over its batch.
    x, y = toy_data(n=10)
    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        models.append(tiny_cnn())
    stack = StackedModels(tiny_cnn, [0, 1, 2])
    xb = torch.stack([x[:4], x[3:7], x[6:10]])  # (3, 4, 1, 6, 6): a different batch per model
    yb = torch.stack([y[:4], y[3:7], y[6:10]])
    rows = torch.zeros_like(yb)
    HardLabels(0.1)(stack, Batch(xb, yb, rows, TensorData(x, y), torch.Generator()))["loss"].backward()
    params = dict(stack.named_parameters())
    for i, model in enumerate(models):
        loss = nn.functional.cross_entropy(model(xb[i]), yb[i], label_smoothing=0.1)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for (name, _), grad in zip(model.named_parameters(), grads):
            torch.testing.assert_close(params["stacked." + name.replace(".", "__")].grad[i], grad, rtol=1e-4,
                                       atol=1e-6, msg=name)


def test_crop_shift_moves_each_image_by_its_own_offset():
    from pipeline.classifiers.augment import shift

    x = torch.zeros(3, 1, 5, 5)
    x[:, :, 2, 2] = 1.0
    offsets = torch.tensor([[0, 0], [1, 1], [2, 1]])  # (row, column) offsets into the 1-pixel zero-padded image
    out = shift(x, offsets[:, 0], offsets[:, 1], padding=1)
    # offset (r, c) moves the centre pixel from (2, 2) to (2 + 1 - r, 2 + 1 - c)
    assert [tuple(torch.nonzero(img[0])[0].tolist()) for img in out] == [(3, 3), (2, 2), (1, 2)]


def test_small_resnet_is_stackable_and_shapes_fit():
    from pipeline.classifiers.models import ClassifierSpec, create_classifier, vmap_compatible

    model = create_classifier(ClassifierSpec("small-resnet", num_classes=7, in_chans=3))
    assert vmap_compatible(model)
    assert 2e5 < sum(p.numel() for p in model.parameters()) < 5e5
    for side in (28, 32, 64):
        assert model(torch.rand(2, 3, side, side)).shape == (2, 7)
    # stacked training (the shadows' path) runs on it
    x, y = torch.rand(16, 3, 28, 28), torch.arange(16) % 7
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, :8], masks[1, 8:] = True, True
    state = train_stacked(lambda: create_classifier(ClassifierSpec("small-resnet", num_classes=7)), x, y, masks,
                          recipe(epochs=1, batch_size=8))
    assert predict_stacked(lambda: create_classifier(ClassifierSpec("small-resnet", num_classes=7)), state, x).shape \
        == (2, 16, 7)


def test_stacked_models_stop_early_each_on_its_own_carve_out_as_alone():
    """Early stopping per model: a stack's models stop at their own epochs and keep their own best
    weights, exactly as each would trained alone (the transfer shadows of a recipe with patience)."""
    x, y = toy_data(n=40, seed=5)
    masks = torch.zeros(3, 40, dtype=torch.bool)
    masks[0, :14], masks[1, 10:24], masks[2, 20:34] = True, True, True
    val = torch.zeros(3, 40, dtype=torch.bool)
    val[0, 30:], val[1, :8], val[2, :10] = True, True, True
    recipe_ = recipe(epochs=12, batch_size=4, lr=3e-2, patience=1, seed=2)
    stacked = train_stacked(tiny_cnn, x, y, masks, recipe_, val_masks=val)
    for i in range(3):
        single = train_single(tiny_cnn, x, y, recipe_, mask=masks[i], model_index=i, examples_per_epoch=14,
                              val_mask=val[i])
        assert_same_weights(stacked, i, single)


def test_a_floor_of_steps_lengthens_a_small_set_and_a_ceiling_shortens_a_large_one():
    small, large = recipe(epochs=10, batch_size=32, min_steps=100), recipe(epochs=10, batch_size=32, max_steps=50)
    assert small.planned_epochs(3) == 34 and "the floor" in small.plan(96)  # 10 epochs of 3 steps < 100
    assert large.planned_epochs(20) == 3 and "the ceiling" in large.plan(640)  # 200 steps > 50
    assert recipe(epochs=10, min_steps=30, max_steps=80).planned_epochs(5) == 10  # 50 steps: within both

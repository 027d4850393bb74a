"""KD loss against hand-computed values; the teacher / student stages; the student never sees real images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.captions.prompts import pool_from_class_names
from pipeline.classifiers.augment import Augment
from pipeline.classifiers.losses import classification_loss, kd_loss
from pipeline.classifiers.train import TrainConfig
from pipeline.data.context import DataContext
from pipeline.data.datasets import DatasetConfig, ImageDataset, load_dataset
from pipeline.distill import DistillConfig, train_student, train_teacher
from pipeline.generate import GenerationPlan, generate_set
from pipeline.generators import Generator


def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    # T=1: p_t = [3/4, 1/4], p_s = [1/2, 1/2]; KL = .75 ln 1.5 + .25 ln .5 = 0.1308120
    parts = kd_loss(student, teacher, temperature=1.0)
    assert parts["kd"].item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    assert parts["kd"].item() == pytest.approx(0.1308120, abs=1e-6)
    # T=2: p_t = [√3, 1]/(√3+1) = [0.6339746, 0.3660254];
    # KL = .6339746 ln(1.2679492) + .3660254 ln(0.7320508) = 0.0363408; times T² = 0.1453631
    pt = math.sqrt(3) / (math.sqrt(3) + 1)
    hand = 4 * (pt * math.log(2 * pt) + (1 - pt) * math.log(2 * (1 - pt)))
    parts = kd_loss(student, teacher, temperature=2.0)
    assert parts["kd"].item() == pytest.approx(hand, abs=1e-6)
    assert parts["kd"].item() == pytest.approx(0.1453631, abs=1e-6)
    # alpha mixes in cross-entropy with the hard label: CE(uniform, y=0) = ln 2
    parts = kd_loss(student, teacher, torch.tensor([0]), temperature=1.0, alpha=0.5)
    assert parts["ce"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert parts["loss"].item() == pytest.approx(0.5 * 0.1308120 + 0.5 * math.log(2), abs=1e-6)
    # a student equal to the teacher has zero KD loss
    assert kd_loss(teacher, teacher, temperature=3.0)["kd"].item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(student, teacher, temperature=0)


def test_mixup_loss_is_the_lambda_mix():
    logits = torch.tensor([[2.0, 0.0]])
    a = classification_loss(logits, torch.tensor([0]))["loss"].item()
    b = classification_loss(logits, torch.tensor([1]))["loss"].item()
    mixed = classification_loss(logits, torch.tensor([0]), mix_labels=torch.tensor([1]), mix_lambda=0.3)
    assert mixed["loss"].item() == pytest.approx(0.3 * a + 0.7 * b, abs=1e-6)


def test_crop_augmentation_shifts_by_at_most_the_padding():
    x = torch.zeros(64, 1, 5, 5)
    x[:, :, 2, 2] = 1.0
    out = Augment.of(("crop",), crop_padding=1)(x, [torch.Generator().manual_seed(0)])
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in out}
    assert positions <= {(r, c) for r in (1, 2, 3) for c in (1, 2, 3)} and len(positions) > 3
    assert torch.all(out.sum((1, 2, 3)) == 1)


class _ClassColourGenerator:
    """Synthetic 'digits': each class a fixed blob pattern plus noise (no real image involved)."""

    def generate(self, prompts, labels, seeds, progress=None):
        images = []
        for label, seed in zip(labels, seeds):
            rng = np.random.default_rng(seed)
            pixels = rng.integers(0, 40, (8, 8), dtype=np.uint8)
            pixels[label % 8, :] = 255
            pixels[:, (label * 3) % 8] = 200
            images.append(Image.fromarray(pixels).convert("RGB"))
        return images


def test_student_never_reads_a_real_image(tmp_path: Path, monkeypatch):
    data = DataContext.open(DatasetConfig(limit=300))
    recipe = TrainConfig(epochs=2, batch_size=32)
    teacher = train_teacher(data.tensors("members"), data.tensors("validation"), recipe, 10, tmp_path)
    assert teacher.checkpoint.exists() and teacher.metrics["train_images"] == len(data.split.members)
    dataset = data.dataset

    pool = pool_from_class_names(dataset.class_names)
    rounds = [generate_set(_ClassColourGenerator(), pool, GenerationPlan(total=60, round=k), tmp_path / f"r{k}")
              for k in range(2)]

    def forbidden(*args, **kwargs):
        raise AssertionError("the student stage touched a real image")

    # from here on, any read of real data fails the test
    monkeypatch.setattr(ImageDataset, "load_image", forbidden)
    monkeypatch.setattr(ImageDataset, "iter_images", forbidden)
    monkeypatch.setattr(ImageDataset, "record", forbidden)
    seen_rounds = []
    import pipeline.distill as distill

    original = distill.fit

    def spy(model, data_for_epoch, *args, **kwargs):
        seen_rounds.extend(id(data_for_epoch(e)) for e in range(4))
        return original(model, data_for_epoch, *args, **kwargs)

    monkeypatch.setattr(distill, "fit", spy)
    student = train_student(teacher.model, rounds, DistillConfig(student=TrainConfig(epochs=4, batch_size=32),
                                                                 regen_every=2), 10, tmp_path)
    assert student.metrics["synthetic_images"] == 120 and student.checkpoint.exists()
    # recycling: epochs 0-1 use round 0, epochs 2-3 round 1
    assert seen_rounds[0] == seen_rounds[1] != seen_rounds[2] == seen_rounds[3]


def test_train_student_signature_takes_no_real_data():
    import inspect

    params = inspect.signature(train_student).parameters
    assert list(params) == ["teacher", "rounds", "config", "num_classes", "out_dir", "progress", "teacher_recipe"]


def test_teacher_training_resumes_from_its_checkpoint(tmp_path: Path):
    data = DataContext.open(DatasetConfig(limit=200))
    members, val = data.tensors("members"), data.tensors("validation")
    first = train_teacher(members, val, TrainConfig(epochs=2, batch_size=32), 10, tmp_path)
    assert first.train.epochs_run == 2
    again = train_teacher(members, val, TrainConfig(epochs=3, batch_size=32), 10, tmp_path)
    assert again.train.epochs_run == 3 and len(again.train.history) == 3
    assert again.train.history[:2] == first.train.history


def test_timm_models_normalise_their_inputs_the_way_their_weights_expect():
    import timm

    from pipeline.classifiers.models import ClassifierSpec, Normalized, create_classifier

    model = create_classifier(ClassifierSpec("resnet10t", num_classes=3, in_chans=3, pretrained=False))
    assert isinstance(model, Normalized)
    expected = timm.data.resolve_model_data_config(model.model)
    assert model.mean.flatten().tolist() == pytest.approx(list(expected["mean"]))
    assert model.std.flatten().tolist() == pytest.approx(list(expected["std"]))
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    inner = (x - model.mean) / model.std
    torch.testing.assert_close(model(x), model.model(inner))
    # the structure does not depend on the weights: a checkpoint reloads into a fresh model
    again = create_classifier(ClassifierSpec("resnet10t", num_classes=3, in_chans=3, pretrained=False))
    again.load_state_dict(model.state_dict())


def test_the_teacher_labels_synthetic_images_at_its_own_size(tmp_path):
    """A 16 px student learns from a teacher that sees the same images at 8 px."""
    dataset = load_dataset(DatasetConfig(limit=60))
    pool = pool_from_class_names(dataset.class_names)

    class Fixed(Generator):
        name = "fixed"

        def fit(self, *a, **k):
            return {}

        def generate(self, prompts, labels, seeds):
            shade = np.add.outer(np.arange(8), np.arange(8))  # a picture, not one flat colour
            return [Image.fromarray((20 * int(label) + shade).astype(np.uint8)) for label in labels]

        def save(self, directory):
            pass

        @classmethod
        def load(cls, directory, **overrides):
            return cls(None)

    rounds = [generate_set(Fixed(None), pool, GenerationPlan(total=20, seed=0, round=0, batch_size=10), tmp_path / "r0")]
    sizes = []

    class SizeSpy(torch.nn.Module):
        def forward(self, x):
            sizes.append(x.shape[-1])
            return torch.zeros(len(x), 10)

    student = TrainConfig(epochs=1, batch_size=8, image_size=16, augment=())
    train_student(SizeSpy(), rounds, DistillConfig(student=student, val_fraction=0.0), 10, tmp_path,
                  teacher_recipe=TrainConfig(image_size=None))
    assert sizes and set(sizes) == {8}

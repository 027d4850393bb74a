"""Synthetic-set generation: N× the real training set, class-balanced, resumable, with a manifest.

Output folder::

    plan.json            what will be generated: items (index, label, prompt, seed), config, generator
    images/<class>/r<round>-<index>.png
    manifest.jsonl       one line per finished image: file, label, class, prompt, seed, round, generator

Every item's file name and seed are fixed by the plan, images are written with write-then-rename and
appended to the manifest only after their file is complete. A rerun after a kill reads the manifest,
keeps the items whose file exists, and generates only the rest: no duplicates, no half-written files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .captions.prompts import PromptPool
from .core.cluster import SINGLE, Cluster
from .core.common import (
    Progress,
    ProgressFn,
    atomic_write_bytes,
    no_progress,
    read_json,
    safe_filename,
    write_json,
)
from .core.schema import Options, schema
from .data.context import DataContext
from .data.datasets import DatasetConfig
from .data.tensors import TensorData, images_to_tensor
from .generators import Generator, SamplerDiverged, backend_config

logger = logging.getLogger(__name__)

# What makes a generated round no training set, in grey levels of 0-255 pixels (thresholds of
# check_round). A sampler that produced NaN writes all-black images, a diverged one a saturated colour:
# no variation inside an image. A standard deviation of 1 grey level is below what any picture keeps
# after PNG rounding and far below what even a barely trained generator makes (the tests' scratch
# model after 6 training steps makes noise of about 75).
FLAT_STD = 1.0  # an image whose pixels vary less than this is one flat colour
MAX_FLAT_SHARE = 0.5  # more flat images than this share of a round: the generator is broken, not a seed
SAME_STD = 1.0  # a round whose pixels vary less than this across its images is one picture repeated


class DegenerateRound(RuntimeError):
    """A synthetic round that holds no usable picture: the message names the round, its folder, the
    generator and what is wrong (flat images, one picture repeated, NaN in the sampler)."""


@dataclass(frozen=True)
class GenerationPlan:
    """Which images to make: class-balanced items with fixed prompts and seeds."""

    total: int  # number of images
    seed: int = 0  # base seed; item seeds derive from it, the round and the index
    round: int = 0  # regeneration round k (GKD recycling): a fresh set of seeds per round
    batch_size: int = 64  # images per generator call


@dataclass(frozen=True)
class SyntheticItem:
    index: int
    label: int
    prompt: str
    seed: int
    file: str  # path relative to the output folder


@dataclass(frozen=True)
class SyntheticSet:
    """A finished synthetic set read from its manifest."""

    root: Path
    class_names: tuple[str, ...]
    items: tuple[SyntheticItem, ...] = field(repr=False)
    generator: str = ""  # run id or folder of the generator that made it
    _tensors: dict[int | None, Any] = field(default_factory=dict, repr=False, compare=False)  # size -> TensorData

    @classmethod
    def load(cls, root: Path) -> SyntheticSet:
        root = Path(root)
        plan = read_json(root / "plan.json")
        done = _read_manifest(root / "manifest.jsonl")
        missing = len(plan["items"]) - len(done)
        if missing:
            raise ValueError(f"synthetic set {root} is incomplete ({missing} images missing); "
                             "rerun the generation to finish it")
        items = tuple(SyntheticItem(**{k: d[k] for k in ("index", "label", "prompt", "seed", "file")})
                      for d in sorted(done.values(), key=lambda d: d["index"]))
        return cls(root, tuple(plan["class_names"]), items, plan.get("generator", ""))

    def __len__(self) -> int:
        return len(self.items)

    def image(self, item: SyntheticItem) -> Image.Image:
        return Image.open(self.root / item.file).convert("RGB")

    def labels(self) -> np.ndarray:
        return np.array([i.label for i in self.items], dtype=np.int64)

    def tensors(self, size: int | None = None) -> TensorData:
        """The images (N, 3, H, W) in [0, 1] at ``size`` (None: as generated) with their intended labels,
        decoded once per size."""
        if size not in self._tensors:
            import torch

            images = [self.image(item) for item in self.items]
            self._tensors[size] = TensorData(images_to_tensor(images, size), torch.from_numpy(self.labels()))
        return self._tensors[size]


def plan_items(pool: PromptPool, plan: GenerationPlan) -> list[SyntheticItem]:
    """Class-balanced items: ``total`` split evenly over classes (the first classes get the
    remainder), prompts drawn from each class's pool in a seeded order, cycling when short."""
    n_classes = len(pool.class_names)
    if plan.total < n_classes:
        raise ValueError(f"asked for {plan.total} images but there are {n_classes} classes; "
                         "ask for at least one image per class")
    rng = np.random.default_rng([plan.seed, plan.round])
    items, index = [], 0
    for label, name in enumerate(pool.class_names):
        count = plan.total // n_classes + (1 if label < plan.total % n_classes else 0)
        prompts = pool.prompts[label]
        order = rng.permutation(len(prompts))
        for k in range(count):
            prompt = prompts[order[k % len(prompts)]]
            seed = int(np.random.SeedSequence([plan.seed, plan.round, index]).generate_state(1)[0])
            items.append(SyntheticItem(index, label, prompt, seed,
                                       f"images/{_safe(name)}/r{plan.round:02d}-{index:06d}.png"))
            index += 1
    return items


def generate_set(
    generator: Generator,
    pool: PromptPool,
    plan: GenerationPlan,
    out_dir: Path,
    generator_ref: str = "",
    progress: ProgressFn = no_progress,
    generator_id: dict[str, Any] | None = None,
    cluster: Cluster = SINGLE,
) -> SyntheticSet:
    """Generate (or finish generating) a synthetic set into ``out_dir``.

    ``generator_id`` (see :func:`generator_identity`) is recorded in ``plan.json``; finishing a set
    with another generator is refused, so one folder never mixes two generators' images.

    With a distributed ``cluster`` every process calls this with the same arguments: the batches left
    to make are shared out whole (each batch as a single process would form it, so every image is the
    same), each process lists its images in its own ``manifest.rank-N.jsonl``, and the main process
    merges those into ``manifest.jsonl`` at the end (or when a rerun finds them after a crash).
    """
    out_dir = Path(out_dir)
    generator_id = json.loads(json.dumps(generator_id)) if generator_id else None  # as plan.json reads back
    items = plan_items(pool, plan)
    if cluster.is_main:
        _prepare_folder(out_dir, pool, plan, items, generator_ref, generator_id)
    cluster.wait()
    manifest = out_dir / "manifest.jsonl"
    done = _read_manifest(manifest)
    todo = [item for item in items if item.index not in done]
    batches = [todo[start:start + plan.batch_size] for start in range(0, len(todo), plan.batch_size)]
    mine = cluster.share(batches)
    if cluster.is_main:
        logger.info("generating %d images (%d already done) into %s%s", len(todo), len(done), out_dir,
                    f" with {cluster.size} processes" if cluster.distributed else "")
    shard = manifest if not cluster.distributed else out_dir / f"manifest.rank-{cluster.rank}.jsonl"
    where = f"generate stage, round {plan.round} ({out_dir}, generator {generator_ref or type(generator).__name__})"
    try:
        _generate_batches(generator, pool, plan, out_dir, mine, shard, generator_ref, len(done), len(items),
                          progress if cluster.is_main else no_progress, cluster.size, where)
    except SamplerDiverged as err:
        raise DegenerateRound(f"{where}: {err}") from None
    cluster.wait()
    if cluster.distributed and cluster.is_main:
        _merge_manifests(out_dir)
    cluster.wait()
    synthetic = SyntheticSet.load(out_dir)
    if cluster.is_main:  # every round is checked before anything trains on it
        check_round(synthetic, where)
    return synthetic


def check_round(synthetic: SyntheticSet, where: str = "") -> None:
    """Raise :class:`DegenerateRound` when a finished round is no training set: more than
    ``MAX_FLAT_SHARE`` of its images one flat colour, or its images (nearly) one picture repeated.
    Reads each image once, keeping running sums only."""
    n, flat, sums, squares, one_size = len(synthetic), 0, 0.0, 0.0, True
    for item in synthetic.items:
        pixels = np.asarray(synthetic.image(item), dtype=np.float64)
        flat += bool(pixels.std() < FLAT_STD)
        one_size = one_size and np.shape(sums) in ((), pixels.shape)  # (a generator makes one size)
        if one_size:
            sums, squares = sums + pixels, squares + pixels ** 2
    where = where or f"synthetic set {synthetic.root}"
    if flat > MAX_FLAT_SHARE * n:
        raise DegenerateRound(f"{where}: {n:,} images of which {flat:,} are one flat colour: the generator "
                              "produced no picture (NaN in the sampler? guidance_scale?)")
    if one_size and n > 1:
        spread = np.sqrt(np.maximum(squares / n - (sums / n) ** 2, 0)).mean()  # per-pixel std across the round
        if spread < SAME_STD:
            raise DegenerateRound(f"{where}: its {n:,} images are nearly one picture repeated (they differ by "
                                  f"{spread:.2f} grey levels per pixel on average): the generator collapsed")


def _prepare_folder(out_dir: Path, pool: PromptPool, plan: GenerationPlan, items: list[SyntheticItem],
                    generator_ref: str, generator_id: dict[str, Any] | None) -> None:
    """Fix the plan (a rerun must ask for the same plan and generator), keep what a previous run
    finished (file present and listed, in any process's manifest) and remove half-written files."""
    plan_record = {"plan": plan.__dict__, "class_names": list(pool.class_names),
                   "prompt_source": pool.source, "generator": generator_ref,
                   "generator_id": generator_id, "items": [i.__dict__ for i in items]}
    plan_path = out_dir / "plan.json"
    if plan_path.exists():
        previous = read_json(plan_path)
        if previous["items"] != plan_record["items"]:
            raise ValueError(f"{out_dir} holds a different generation plan; use another output folder")
        if previous.get("generator_id") != generator_id:
            raise ValueError(
                f"{out_dir} was started by another generator ({_describe(previous.get('generator_id'))}), "
                f"not {_describe(generator_id)}; finishing it would mix two generators' images: "
                "use another output folder")
    else:
        write_json(plan_path, plan_record)

    _merge_manifests(out_dir)
    for partial in out_dir.glob("images/*/.*.tmp"):  # files a kill left half-written
        partial.unlink()


def _merge_manifests(out_dir: Path) -> None:
    """One ``manifest.jsonl`` (sorted by index) of the finished images in it and in the processes'
    shards (whose files exist); the shards are removed once merged."""
    manifest, shards = out_dir / "manifest.jsonl", sorted(out_dir.glob("manifest.rank-*.jsonl"))
    done: dict[int, dict[str, Any]] = {}
    for path in [manifest, *shards]:
        done.update({i: d for i, d in _read_manifest(path).items() if (out_dir / d["file"]).exists()})
    atomic_write_bytes(manifest, "".join(json.dumps(d) + "\n" for _, d in sorted(done.items())).encode())
    for shard in shards:
        shard.unlink()


def _generate_batches(generator: Generator, pool: PromptPool, plan: GenerationPlan, out_dir: Path,
                      batches: list[list[SyntheticItem]], manifest: Path, generator_ref: str, n_done: int,
                      n_items: int, progress: ProgressFn, processes: int, where: str) -> None:
    """Batch by batch: image files first, then their manifest lines (flushed to disk). The progress
    counts this process's images times the number of processes (the shares are equal). Stops as soon
    as the flat images made already condemn the round (see :func:`check_round`)."""
    started, made, todo, flat = time.monotonic(), 0, sum(len(b) for b in batches), 0
    progress(Progress("generate", n_done, n_items, {}))
    with open(manifest, "a", encoding="utf-8") as log:
        for batch in batches:
            images = generator.generate([i.prompt for i in batch], [i.label for i in batch],
                                        [i.seed for i in batch])
            flat += sum(bool(np.asarray(image, dtype=np.float32).std() < FLAT_STD) for image in images)
            if flat > MAX_FLAT_SHARE * n_items:
                raise DegenerateRound(f"{where}: {flat:,} of its {n_items:,} images are one flat colour already "
                                      "(stopped there): the generator produced no picture (NaN in the sampler? "
                                      "guidance_scale?)")
            for item, image in zip(batch, images):
                atomic_write_bytes(out_dir / item.file, _png_bytes(image))
            for item in batch:
                log.write(json.dumps({**item.__dict__, "class": pool.class_names[item.label],
                                      "round": plan.round, "generator": generator_ref}) + "\n")
            log.flush()
            os.fsync(log.fileno())
            made += len(batch)
            rate = made / max(time.monotonic() - started, 1e-9)
            progress(Progress("generate", min(n_items, n_done + made * processes), n_items,
                              {"images_per_s": round(rate * processes, 2),
                               "eta_s": round((todo - made) / max(rate, 1e-9), 1)}))


def regenerate(synthetic: SyntheticSet, indices: list[int], generator: Generator, attempt: int) -> SyntheticSet:
    """Replace the images at ``indices`` with fresh draws (same prompt and class, a new seed derived from
    the old one and ``attempt``): the copy gate's tool. Each new image goes to a new file listed by a
    new manifest line (the manifest keeps the last line per index), and only then is the old file
    removed, so a crash leaves every index pointing at an image that exists, with its true seed."""
    root, by_index = synthetic.root, {i.index: i for i in synthetic.items}
    batch = [by_index[i] for i in indices]
    if not batch:
        return synthetic
    seeds = [int(np.random.SeedSequence([item.seed, attempt]).generate_state(1)[0]) for item in batch]
    images = generator.generate([i.prompt for i in batch], [i.label for i in batch], seeds)
    with open(root / "manifest.jsonl", "a", encoding="utf-8") as log:
        for item, seed, image in zip(batch, seeds, images):
            stem = Path(item.file).stem.split("~")[0]  # r00-000123 (a redrawn image: r00-000123~SEED)
            file = str(Path(item.file).with_name(f"{stem}~{seed}.png"))
            atomic_write_bytes(root / file, _png_bytes(image))
            log.write(json.dumps({**item.__dict__, "seed": seed, "file": file,
                                  "class": synthetic.class_names[item.label], "generator": synthetic.generator,
                                  "replaces": item.file, "gate_attempt": attempt}) + "\n")
        log.flush()
        os.fsync(log.fileno())
    for item, seed in zip(batch, seeds):
        if not item.file.endswith(f"~{seed}.png"):
            (root / item.file).unlink(missing_ok=True)
    return SyntheticSet.load(root)


def generator_identity(source: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What makes a generator's images: a saved generator's run and a SHA-256 over its files, or a
    base model's id (a local base folder by its files' names, sizes and times: hashing gigabytes of
    Stable Diffusion on every call would be slow), plus the options that override it (a LoRA file
    by its SHA-256)."""
    options = dict(options or {})
    path = Path(source)
    identity: dict[str, Any] = {"options": sorted((k, str(v)) for k, v in options.items())}
    if (path / "backend.json").is_file():  # a saved generator: small, hash everything
        identity["run"] = read_json(path / "backend.json").get("run")
        identity["weights_sha256"] = _tree_digest(path, contents=True)
    elif path.is_dir():
        identity["source"], identity["files"] = str(path.resolve()), _tree_digest(path, contents=False)
    else:
        identity["source"] = str(source)
    lora = options.get("lora_path")
    if lora and Path(lora).exists():
        identity["lora_sha256"] = _tree_digest(Path(lora), contents=True)
    return identity


def _tree_digest(path: Path, contents: bool) -> str:
    import hashlib

    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        if contents:
            with open(file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        else:
            stat = file.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _describe(identity: dict[str, Any] | None) -> str:
    if not identity:
        return "an unrecorded generator"
    what = identity.get("run") or identity.get("source", "?")
    sha = identity.get("weights_sha256")
    return f"{what}" + (f", weights {sha[:12]}" if sha else "") + (f", options {dict(identity['options'])}"
                                                                    if identity.get("options") else "")


def _read_manifest(path: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                done[int(entry["index"])] = entry
            except (ValueError, KeyError):
                continue  # a line torn by a kill mid-write; its image is regenerated
    return done


def _png_bytes(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _safe(name: str) -> str:
    return safe_filename(name, "class")


def balanced_total(n_real: int, cardinality: float, n_classes: int) -> int:
    """N× the real set size (fractional allowed), at least one image per class."""
    if cardinality <= 0:
        raise ValueError(f"cardinality must be > 0, got {cardinality}")
    return max(n_classes, int(round(n_real * cardinality)))


# -- the stage entry: a registered generation run ------------------------------------------------------
@schema
@dataclass(frozen=True)
class GenerateConfig:
    """Which generator makes how many images from which prompts."""

    generator: str  # a saved generator folder (runs/<id>/generator), or a base model for `backend`
    backend: str | None = None  # backend name when `generator` is not a saved folder (e.g. sd-lora + hub id)
    options: Options = field(default_factory=dict)  # backend overrides: num_inference_steps, guidance_scale, ...
    prompts: str = "classnames"  # store:NAME[@VERSION] | a .jsonl / .csv / TCKR .json / .txt file | classnames
    allow_nonmember_prompts: bool = False  # accept a .json / .txt file: no ids, not limited to the members
    template: str = "class_caption"  # prompt template (see pipeline.caption.TEMPLATES)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # class names and real-set size
    cardinality: float = 1.0  # images = cardinality x number of member images (class-balanced)
    num_images: int | None = None  # exact number of images (overrides cardinality)
    round: int = 0  # regeneration round k (fresh seeds per round)
    seed: int = 0  # base seed
    batch_size: int = 64  # images per generator call
    out_dir: str | None = None  # output folder (default: the run folder); reuse it to resume

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options))  # (name, value) pairs given in code too
        if self.backend is not None:  # a base model's backend: its config is the options' schema (a saved
            # generator's options are checked against its saved config when it loads, before any image)
            backend_config(self.backend, {"base": self.generator, **self.options})
        if not 0 < self.cardinality < float("inf"):
            raise ValueError(f"cardinality must be a positive finite number, got {self.cardinality}")
        if self.num_images is not None and self.num_images < 1:  # (plan_items asks for one per class)
            raise ValueError(f"num_images must be at least 1 (one per class) or null, got {self.num_images}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        for name in ("round", "seed"):  # numpy's seed sequences take no negative number
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class GenerateResult:
    run_id: str
    synthetic: SyntheticSet
    images_per_s: float


def synthesize(config: GenerateConfig, project: Any, progress: ProgressFn = no_progress,
               generator: Generator | None = None, cluster: Cluster = SINGLE,
               data: DataContext | None = None) -> GenerateResult:
    """Generate a synthetic set as a registered run (resumable through ``out_dir``). With a
    distributed ``cluster`` (called in its main process) the other processes make their shares.
    ``data``: the experiment's loaded data (a stage run on its own loads it)."""
    from .core.runs import Link

    # 1. check inputs: data, prompts, size; the generator and its options (a saved one's on loading)
    pool, total, links = _prompt_pool(config, project, data)
    generator = generator or _generator(config)
    source = Path(config.generator)
    backend_file = source / "backend.json"
    if backend_file.exists():
        links.append(Link("generator", "run", read_json(backend_file)["run"]))

    # 2. register and generate
    registry = project.registry()
    run = registry.create("generate", config, links=links)
    out_dir = Path(config.out_dir) if config.out_dir else run.run_dir
    with registry.track(run.id):
        started = time.monotonic()
        cluster.assign("generate", config=config, out_dir=str(out_dir), project_root=str(project.root))
        synthetic = _generate(config, generator, pool, total, out_dir, progress, cluster)
        rate = len(synthetic) / max(time.monotonic() - started, 1e-9)
        registry.report(run.id, images=len(synthetic), images_per_s=round(rate, 2), out_dir=str(out_dir),
                        processes=cluster.size)
    return GenerateResult(run.id, synthetic, rate)


def generation_share(config: GenerateConfig, out_dir: str, project_root: str, cluster: Cluster) -> None:
    """A serving process's part of :func:`synthesize` (same prompts, generator and plan)."""
    from .core.project import Project

    pool, total, _ = _prompt_pool(config, Project.open(project_root))
    _generate(config, _generator(config), pool, total, Path(out_dir), no_progress, cluster)


def _generate(config: GenerateConfig, generator: Generator, pool: PromptPool, total: int, out_dir: Path,
              progress: ProgressFn, cluster: Cluster) -> SyntheticSet:
    plan = GenerationPlan(total=total, seed=config.seed, round=config.round, batch_size=config.batch_size)
    identity = generator_identity(config.generator, dict(config.options))
    if config.backend is not None:
        identity["backend"] = config.backend
    return generate_set(generator, pool, plan, out_dir, generator_ref=str(Path(config.generator)), progress=progress,
                        generator_id=identity, cluster=cluster)


def _prompt_pool(config: GenerateConfig, project: Any, data: DataContext | None = None
                 ) -> tuple[PromptPool, int, list[Any]]:
    """The prompts (only members' captions), the number of images, and the run's links."""
    from .core.runs import Link

    data = data or DataContext.open(config.dataset)
    members = data.split.members
    pool = prompt_pool(project, config.prompts, data, set(members), config.template, config.allow_nonmember_prompts)
    links = [Link("data", "dataset", data.fingerprint)]
    if pool.source.startswith("store:"):
        links.append(Link("captions", "captions", pool.source[len("store:"):]))
    total = config.num_images if config.num_images is not None else \
        balanced_total(len(members), config.cardinality, data.num_classes)
    return pool, total, links


def prompt_pool(project: Any, prompts: str, data: DataContext, members: set[str], template: str,
                allow_nonmember_prompts: bool = False) -> PromptPool:
    """The generation prompts of ``prompts`` (``store:NAME[@VERSION]``, ``classnames`` or a caption
    file), limited to the captions of ``members``: only they may condition the generator (a per-class
    file, which has no ids, is refused unless ``allow_nonmember_prompts``)."""
    from .captions.prompts import pool_from_class_names, pool_from_file, pool_from_store

    if prompts.startswith("store:"):
        name, _, version = prompts[len("store:"):].partition("@")
        return pool_from_store(project, name, data.dataset, members, int(version) if version else None, template)
    if prompts == "classnames":
        return pool_from_class_names(data.class_names)
    return pool_from_file(Path(prompts), data.class_names, template, dataset=data.dataset, ids=members,
                          allow_nonmembers=allow_nonmember_prompts)


def _generator(config: GenerateConfig) -> Generator:
    from .finetune import load_generator
    from .generators import create_generator

    if config.backend is None:
        return load_generator(Path(config.generator), **dict(config.options))
    return create_generator(config.backend, base=config.generator, **dict(config.options))

"""What every studio page shares: the project, cached loads (datasets, caption stores, generators),
thumbnails and one-shot messages. Loads are cached per server process, keyed by what identifies
their content (a store version never changes once written), so a rerun costs only the visible page.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image

from pipeline.captions.curation import ReviewProgress, curators, filter_records, review_progress
from pipeline.captions.store import CaptionRecord, CaptionStore, caption_store
from pipeline.core.common import from_dict
from pipeline.core.project import Project, default_project_dir
from pipeline.core.rebuild import rebuild_registry
from pipeline.core.registry_file import RegistryDamaged
from pipeline.data.datasets import DatasetConfig, ImageDataset, load_dataset

THUMB_SIZES = (64, 128, 256)  # grid thumbnail sides in pixels the Captions page offers
THUMB = 128  # default thumbnail side: a chest X-ray or a skin lesion still shows its structure
VIEW_SIDE = 768  # "fit to panel": the longer side of a viewer image, in pixels (a portrait X-ray fits a screen)
CURATOR = "curator"  # session-state key: the name of who curates in this browser session
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # `name` or `owner/name` on the Hub


# -- the project ---------------------------------------------------------------------------------------
def project_root_from_args(argv: list[str] | None = None) -> Path:
    """``--project DIR`` after ``streamlit run studio/app.py --``, else $TCKR_PROJECT, else ./workspace."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--project", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return Path(args.project) if args.project else default_project_dir()


@st.cache_resource(show_spinner=False)
def _open_project(root: str) -> Project:
    return Project.open(root)


def project() -> Project:
    return _open_project(str(project_root_from_args().resolve()))


# -- caption stores -------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def store(root: str, name: str) -> CaptionStore:
    """One store object per server: it keeps the newest state in memory and only reads new versions."""
    return caption_store(Project(Path(root)), name)


@st.cache_resource(show_spinner="Loading captions...", max_entries=8)
def records(root: str, name: str, version: int) -> dict[str, CaptionRecord]:
    """The captions of one store version (read-only; versions never change)."""
    return store(root, name).records(version)


@st.cache_resource(show_spinner=False, max_entries=32)
def filtered_ids(root: str, name: str, version: int, classes: tuple[str, ...], text: str,
                 status: str, curator: str = "") -> list[str]:
    """Ids matching the filters; ``curator`` "" = anyone."""
    return [r.id for r in filter_records(records(root, name, version), classes or None, text, status,
                                         curator or None)]


@st.cache_resource(show_spinner=False, max_entries=8)
def curator_names(root: str, name: str, version: int) -> list[str]:
    return curators(records(root, name, version))


@st.cache_resource(show_spinner=False, max_entries=8)
def progress(root: str, name: str, version: int, classes: tuple[str, ...]) -> list[ReviewProgress]:
    return review_progress(records(root, name, version), classes)


def curator() -> str:
    """The curator's name for this browser session ("" until they give it)."""
    return str(st.session_state.get(CURATOR, "")).strip()


# -- datasets ---------------------------------------------------------------------------------------------
def dataset_key(config: DatasetConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)


@st.cache_resource(show_spinner="Loading the dataset...", max_entries=4)
def _dataset(key: str) -> ImageDataset:
    return load_dataset(from_dict(DatasetConfig, json.loads(key)))


def dataset(config: DatasetConfig) -> ImageDataset:
    """The dataset, loaded once per server (images stay encoded; only shown ones are decoded)."""
    return _dataset(dataset_key(config))


@st.cache_resource(show_spinner=False, max_entries=4)
def _fingerprint(key: str) -> str:
    return _dataset(key).fingerprint


def dataset_fingerprint(config: DatasetConfig) -> str:
    return _fingerprint(dataset_key(config))


def fit(image: Image.Image, size: int) -> Image.Image:
    """``image`` fitted to ``size`` pixels: shrunk with a box pre-reduction (``reducing_gap``: a 3000 px
    X-ray in milliseconds), or enlarged by a whole factor with nearest neighbour (tiny images stay crisp,
    no blur or uneven pixels)."""
    scale = size / max(image.size)
    if scale >= 1:
        return scaled(image, size)
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # shown once, not stored: speed over size
    return buffer.getvalue()


def thumbnail_uri(image: Image.Image, size: int = THUMB) -> str:
    """A PNG data URI of ``image`` scaled to fit ``size``."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(fit(image.convert("RGB"), size))).decode()


@st.cache_data(show_spinner=False, max_entries=256)
def thumbnails(key: str, ids: tuple[str, ...], size: int = THUMB) -> list[str | None]:
    """Data URIs of the given images (None for unreadable ones); only these are decoded."""
    data = _dataset(key)
    out: list[str | None] = []
    for image_id in ids:
        try:
            out.append(thumbnail_uri(data.load_image(image_id), size))
        except (KeyError, ValueError):
            out.append(None)
    return out


@dataclass(frozen=True)
class ViewerImage:
    """One image as the viewer shows it."""

    png: bytes  # lossless: a caption may describe a detail JPEG would smear
    size: tuple[int, int]  # the original width and height
    width: int  # the width of ``png``


@st.cache_resource(show_spinner=False, max_entries=16)
def viewer_image(key: str, image_id: str, full: bool) -> ViewerImage | None:
    """One image for the viewer (None if unreadable): the original pixels when ``full``, else fitted to
    :data:`VIEW_SIDE` (small images enlarged, large ones shrunk)."""
    try:
        image = _dataset(key).load_image(image_id)
    except (KeyError, ValueError):
        return None
    shown = image if full else fit(image, VIEW_SIDE)
    return ViewerImage(png_bytes(shown), image.size, shown.width)


def scaled(image: Image.Image, size: int = 128) -> Image.Image:
    """Enlarge small images for display (nearest neighbour keeps pixels sharp)."""
    scale = max(1, size // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


def at_least(image: Image.Image, side: int = 128) -> Image.Image:
    """At least ``side`` pixels on the longer side, upscaled by a whole factor (pixels stay sharp)."""
    factor = -(-side // max(image.size))
    return image if factor <= 1 else \
        image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


@st.cache_resource(show_spinner="Labelling the synthetic set with the teacher...", max_entries=4)
def synthetic_view(root: str, run_id: str, stamp: float) -> Any:
    """A run's synthetic rounds with the teacher's outputs (``stamp``: teacher.pt's mtime, so a new teacher
    is labelled again); shared by the Leak explorer and Synthetic set pages."""
    from pipeline.views.synthetic_set import load_synthetic_set

    project_ = Project.open(root)
    record = project_.registry().get(run_id)
    return load_synthetic_set(project_, run_id, dataset(from_dict(DatasetConfig, record.config["dataset"])))


# -- messages that survive one rerun (set in a callback, shown by the next run) ---------------------------
def flash(kind: str, text: str) -> None:
    st.session_state.setdefault("_flash", []).append((kind, text))


def show_flash() -> None:
    for kind, text in st.session_state.pop("_flash", []):
        {"success": st.success, "error": st.error, "warning": st.warning}.get(kind, st.info)(text)


def registry_failure(err: Exception) -> None:
    """A page stopped by the run registry (damaged, locked) or a full disk: its one line, and for a damaged
    registry the way back, ``runs rebuild`` from the run folders, as a button."""
    st.error(str(err))
    if isinstance(err, RegistryDamaged):
        st.button("Rebuild the registry from the run folders", on_click=_rebuild, type="primary",
                  help="Each run folder's run.json and config.json hold its status, metrics, config and "
                       "lineage; the damaged file is kept beside the new one as registry.sqlite.<time>.bak")


def _rebuild() -> None:
    done = rebuild_registry(project().root)
    flash("success", f"Rebuilt the run registry from {done.runs} run folders"
                     + (f"; the damaged file is kept as {done.kept.name}" if done.kept else ""))


def confined_path(project: Project, text: str) -> Path | None:
    """A path typed by the user, resolved inside the project folder; an error is shown otherwise."""
    if not text.strip():
        return None
    try:
        return project.confine(text.strip())
    except ValueError as err:
        st.error(str(err))
        return None


def model_ref(project: Project, text: str) -> str | None:
    """A model typed by the user: a hub id as is; anything else is a local file or folder, resolved
    inside the project (an error is shown otherwise)."""
    text = text.strip()
    if not text:
        return None
    # a hub id is `name` or `owner/name` without '..'; one that exists on disk is a path (diffusers
    # and transformers would load the folder), so it is confined too
    if HUB_ID.fullmatch(text) and ".." not in text and not Path(text).exists() \
            and not (project.root / text).exists():
        return text
    path = confined_path(project, text)
    return str(path) if path else None


def describe(config: DatasetConfig) -> str:
    extra = f", limit {config.limit}" if config.limit else ""
    return f"{config.name}{extra}"


# -- generators -------------------------------------------------------------------------------------------
@st.cache_resource(show_spinner="Loading the generator...", max_entries=6)
def _variant(generator_dir: str, name: str, overrides: str) -> Any:
    from pipeline.views.compare import list_variants, load_variant

    variants = {v.name: v for v in list_variants(Path(generator_dir))}
    return load_variant(variants[name], **json.loads(overrides))


def cached_loader(variant: Any, **overrides: Any) -> Any:
    """A ``compare_generations`` loader that keeps loaded generator versions between reruns."""
    return _variant(str(variant.generator_dir), variant.name, json.dumps(overrides, sort_keys=True))

"""Generations: the real image a caption came from next to what each version of a trained generator
makes of the same prompt and seed (base vs fine-tuned for sd-lora; checkpoints vs final for scratch),
and a per-class grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from PIL import Image

from pipeline.captions.prompts import build_prompt
from pipeline.captions.store import caption_stores
from pipeline.core.common import from_dict, read_json
from pipeline.core.project import Project
from pipeline.core.runs import RunRecord
from pipeline.data.datasets import DatasetConfig
from pipeline.views import compare, report
from studio import shared

MAX_CAPTIONS = 8
OPTIONS_SHOWN = 300
GRID_SIDE = 64  # pixels: per-class grid thumbnails
GRID_COLUMNS = 8  # the most images per class the grid offers; fewer leave the other cells empty
GRID_GAP = "small"  # space between two thumbnails (1 rem)


@dataclass(frozen=True)
class Generator:
    """The trained generator picked, the versions to compare, how to sample them, and what it was
    trained from (recorded in the run's config)."""

    run_id: str
    record: RunRecord
    directory: Path  # the generator folder
    chosen: list[str]  # the versions to compare
    seed: int
    steps: int  # sampling steps
    guidance: float
    dataset: DatasetConfig | None  # the images it was trained from
    store: str | None  # the caption store it was trained from (None: class names only)
    template: str  # the prompt template of its training


# 1. which generator, which versions, how to sample --------------------------------------------------------------
def pick_generator(project: Project) -> Generator:
    """The generator and sampling widgets; stops the page when no generator has been trained yet."""
    runs = compare.generator_runs(project)
    if not runs:
        st.info("No trained generator yet. Start a run on the **Runs** page (step 2 trains the generator).")
        st.stop()
    by_id = {r.id: r for r in runs}
    run_id = st.selectbox("Generator (fine-tuning run)", list(by_id), key="gen_run",
                          format_func=lambda i: f"{i} · {by_id[i].config.get('generator')} · "
                                                f"{by_id[i].metrics.get('steps', '?')} steps")
    record = by_id[run_id]
    generator_dir = compare.resolve_generator(project, run_id)
    variants = compare.list_variants(generator_dir)
    names = [v.name for v in variants]
    # the final version says its step: the checkpoint of that step is the same weights, not listed again
    saved_at = {v.name: v.step for v in variants if v.checkpoint is None and v.step is not None}
    chosen = st.multiselect("Versions to compare", names, default=compare.default_variants(variants),
                            key=f"gen_v_{run_id}",
                            format_func=lambda n: f"{n} (step {saved_at[n]})" if n in saved_at else n)
    sampling = compare.sampling_defaults(generator_dir)
    cols = st.columns(3)
    seed = cols[0].number_input("Seed", min_value=0, value=0, key="gen_seed")
    steps = cols[1].number_input("Sampling steps", min_value=1, value=int(sampling["steps"]),
                                 key=f"gen_steps_{run_id}")
    guidance = cols[2].number_input("Guidance scale", min_value=1.0, value=float(sampling["guidance"]), step=0.5,
                                    key=f"gen_guidance_{run_id}")
    # the captions and images the generator was trained from (recorded in the run's config)
    config = record.config
    dataset_config = from_dict(DatasetConfig, config["dataset"]) if isinstance(config.get("dataset"), dict) \
        else None
    return Generator(run_id, record, generator_dir, chosen, seed, steps, guidance, dataset_config,
                     config.get("store"), config.get("template") or "class_caption")


def generate(generator: Generator, prompts: list[str], labels: list[int],
             seeds: list[int]) -> compare.Comparison | None:
    chosen = generator.chosen
    if not chosen:
        st.warning("Choose at least one version.")
        return None
    try:
        with st.spinner(f"Generating {len(prompts)} image(s) with {len(chosen)} version(s)..."):
            return compare.compare_generations(generator.directory, prompts, labels, seeds, chosen,
                                               steps=int(generator.steps), guidance=float(generator.guidance),
                                               loader=shared.cached_loader)
    except (OSError, ValueError, RuntimeError) as err:  # missing weights, bad settings: shown, not raised
        st.error(f"Generation failed: {err}")
        return None


def show_tabs(project: Project, generator: Generator) -> None:
    side, grid, nearest = st.tabs(["Captions side by side", "Per-class grid", "Nearest real images"])
    with side:
        side_by_side(project, generator)
    with grid:
        class_grid(generator)
    with nearest:
        nearest_real_images(project)


# 2. chosen captions: real image | version 1 | version 2 ... -----------------------------------------------------
def side_by_side(project: Project, generator: Generator) -> None:
    store_name, root, run_id = generator.store, str(project.root), generator.run_id
    if not store_name or store_name not in caption_stores(project):
        st.info("This generator was trained from class names only (no caption store): use the per-class grid.")
        return
    store = shared.store(root, store_name)
    version = generator.record.config.get("store_version") or store.head()
    records = shared.records(root, store_name, int(version))
    classes = store.meta().get("classes") or sorted({r.label for r in records.values()})
    cols = st.columns([1, 3])
    label = cols[0].selectbox("Class", classes, key="gen_class")
    ids = shared.filtered_ids(root, store_name, int(version), (label,), "", "all")[:OPTIONS_SHOWN]
    picked = cols[1].multiselect(f"Captions (store {store_name} v{version}, up to {MAX_CAPTIONS})", ids,
                                 default=ids[:3], max_selections=MAX_CAPTIONS, key=f"gen_ids_{label}",
                                 format_func=lambda i: f"{i}: {records[i].caption[:70]}")
    if st.button("Generate", type="primary", disabled=not picked, key="gen_side"):
        prompts = [build_prompt(records[i].label, records[i].caption, generator.template) for i in picked]
        result = generate(generator, prompts, [classes.index(records[i].label) for i in picked],
                          [int(generator.seed) + k for k in range(len(picked))])
        if result:
            st.session_state["gen_side_result"] = (run_id, picked, result)
    saved = st.session_state.get("gen_side_result")
    if saved and saved[0] == run_id:
        _, shown_ids, result = saved
        dataset = shared.dataset(generator.dataset) if generator.dataset else None
        header = st.columns(1 + len(result.variants))
        header[0].markdown("**real image**")
        for col, name in zip(header[1:], result.variants):
            col.markdown(f"**{name}**")
        for k, image_id in enumerate(shown_ids):
            row = st.columns(1 + len(result.variants))
            if dataset is not None:
                row[0].image(shared.scaled(dataset.load_image(image_id)), caption=image_id)
            for col, name in zip(row[1:], result.variants):
                col.image(shared.scaled(result.images[name][k]), caption=f"seed {result.seeds[k]}")
            st.caption(f"prompt: {result.prompts[k]}")


# 3. a grid: one row per class, one column per seed, for each version ---------------------------------------------
def class_grid(generator: Generator) -> None:
    prompts_file = generator.record.run_dir / "training_prompts.json"  # written by the fine-tuning run
    class_names = read_json(prompts_file)["class_names"] if prompts_file.exists() else None
    per_class = st.slider("Images per class", 1, GRID_COLUMNS, 4, key="gen_per_class")
    if st.button("Generate grid", type="primary", disabled=not class_names, key="gen_grid"):
        prompts, labels, seeds = compare.class_grid(class_names, per_class, int(generator.seed))
        result = generate(generator, prompts, labels, seeds)
        if result:
            st.session_state["gen_grid_result"] = (generator.run_id, result)
    saved = st.session_state.get("gen_grid_result")
    if saved and saved[0] == generator.run_id:
        result = saved[1]
        tabs = st.tabs(list(result.variants))
        for tab, name in zip(tabs, result.variants):
            with tab:
                for label, class_name in enumerate(class_names):
                    row = [(im, seed) for im, y, seed in zip(result.images[name], result.labels, result.seeds)
                           if y == label]
                    grid_row(class_name, row)


def grid_row(class_name: str, row: list[tuple[Image.Image, int]]) -> None:
    """One class: its name, then each image in a cell of its own (a list given to one ``st.image`` is
    drawn edge to edge, and neighbouring thumbnails read as one picture)."""
    cells = st.columns([1] + [1] * GRID_COLUMNS, gap=GRID_GAP, vertical_alignment="center")
    cells[0].markdown(f"**{class_name}**")
    for cell, (image, seed) in zip(cells[1:], row):
        cell.image(shared.scaled(image, GRID_SIDE), caption=f"seed {seed}")


# 4. memorisation: each synthetic image next to its nearest real member and non-member ------------------------------
def nearest_real_images(project: Project) -> None:
    audited = report.memorisation_runs(project)
    if not audited:
        st.info("No finished run with a memorisation audit yet (every run audits its synthetic rounds).")
        return
    cols = st.columns([3, 1, 1, 1])
    exp_id = cols[0].selectbox("Experiment run", [r.id for r in audited], key="mem_run")
    exp = next(r for r in audited if r.id == exp_id)
    round_k = cols[1].number_input("Round", 0, int(exp.config.get("rounds", 1)) - 1, 0, key="mem_round")
    space = cols[2].selectbox("Space", ["features", "pixels"], key="mem_space",
                              help="the teacher's penultimate features, or raw pixels (small images only)")
    shown = cols[3].number_input("Pairs", 4, 96, 12, step=4, key="mem_limit")
    try:
        rows, summary = report.synthetic_neighbours(exp, int(round_k), space, int(shown))
    except (OSError, ValueError) as err:
        st.warning(str(err))
        st.stop()
    ct = summary.get("ct")
    st.markdown(f"**{summary['copies']} of {summary['images']} synthetic images flagged as copies in {space}** "
                f"(a fresh real image is flagged {summary['nonmember_flag_rate']:.1%} of the time at this threshold; the "
                "run's copy count takes an image flagged in any space); data-copying test "
                + (f"C_T = {ct:.2f}" if ct is not None else "not run"))
    st.caption("Closest to a member first. A copy is closer to a member than "
               f"{1 - summary['copy_quantile']:.0%} of members are to another member. C_T well below 0 "
               "(e.g. < -3) means synthetic images sit closer to the training images than fresh data does "
               "(Meehan et al. 2020).")
    dataset = shared.dataset(from_dict(DatasetConfig, exp.config["dataset"]))
    for row in rows:
        cells = st.columns([1, 1, 1, 3])
        cells[0].image(shared.scaled(Image.open(row["file"]).convert("RGB")), caption="synthetic")
        cells[1].image(shared.scaled(dataset.load_image(row["member"])), caption=f"member {row['member']}")
        cells[2].image(shared.scaled(dataset.load_image(row["nonmember"])),
                       caption=f"non-member {row['nonmember']}")
        cells[3].markdown(("**copy** · " if row["copy"] else "") +
                          f"distance to member {row['member_distance']:.3g}, to non-member "
                          f"{row['nonmember_distance']:.3g}, ratio {row['ratio']:.2f}")


# the page, top to bottom (Streamlit reruns it on every interaction) ---------------------------------------------
st.title("Generations")
project = shared.project()
generator = pick_generator(project)
show_tabs(project, generator)

"""Captions: browse a caption store page by page with the real thumbnails, edit inline, find & replace,
re-caption a selection, per-class statistics, version history with diff and rollback.

Every save names the version this tab loaded (``base_version``): a save that would overwrite a caption
someone else changed since is refused with the store's conflict message, never lost silently.
"""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from pipeline.captions import curation
from pipeline.captions.captioners import CAPTIONERS, CaptionerConfig
from pipeline.captions.store import CaptionConflictError
from pipeline.data.datasets import SOURCES, DatasetConfig
from pipeline.views.report import dataset_config_for_store
from studio import shared

PAGE_SIZES = (24, 48, 96)
STATUS_LABELS = {"all": "all", "edited": "edited by hand", "machine": "machine-made", "needs review": "needs review"}
TOOLS = ("Find & replace", "Re-caption", "Statistics", "History")
AUTHOR = "studio"
PREVIEW_ROWS = 500
ROW_HEIGHT = 56  # pixels: room for a thumbnail

st.title("Captions")
shared.show_flash()
project = shared.project()
root = str(project.root)
names = project.caption_stores()
if not names:
    st.info("No caption stores in this project yet. Caption a dataset with `python -m pipeline caption` "
            "or start a run on the **Runs** page.")
    st.stop()

# 1. which store and version -----------------------------------------------------------------------------
top = st.columns([3, 2, 1], vertical_alignment="bottom")
name = top[0].selectbox("Caption store", names, key="cap_store")
store = shared.store(root, name)
head = store.head()
if head == 0:
    st.info(f"Caption store {name!r} is empty.")
    st.stop()
bases: dict[str, int] = st.session_state.setdefault("cap_base", {})
base = min(bases.setdefault(name, head), head)  # the version this tab loaded for editing
view = top[1].selectbox("Version", list(range(head, 0, -1)), index=head - base, key=f"cap_view_{name}_{base}",
                        format_func=lambda v: f"{v} (newest)" if v == head else str(v))
if top[2].button("Load newest", disabled=base == head, help="Reload the newest version (drops unsaved edits)"):
    bases[name] = head
    st.rerun()
editable = view == base
if head > base:
    st.warning(f"Version {head} was saved after version {base}, which this tab is editing (another tab or "
               f"person). Saves are checked against version {base}: edits to other captions are merged, edits "
               "to a caption changed since are refused. Press **Load newest** to see the newest captions.")
if not editable:
    st.info(f"Viewing version {view} (read-only). Roll back to it under **History**, or pick version {base} to edit.")


# 2. the dataset the captions describe (for thumbnails and re-captioning) ----------------------------------
def pick_dataset() -> tuple[DatasetConfig | None, bool]:
    """The store's dataset and whether it was chosen by hand (then its fingerprint is checked)."""
    chosen = st.session_state.get(f"cap_dataset_{name}")
    by_hand = chosen is not None
    if chosen is None:  # a run that used this store on data with the store's fingerprint
        chosen = dataset_config_for_store(project, name)
    with st.expander("Dataset of this store" + (f": {shared.describe(chosen)}" if chosen else " (not found)"),
                     expanded=chosen is None):
        st.caption("Taken from the newest run that used this store. Choose another if the images moved; "
                   "paths are relative to the project folder and must stay inside it.")
        cols = st.columns([1, 3, 1, 1], vertical_alignment="bottom")
        source = cols[0].selectbox("Source", SOURCES.names(), key=f"cap_src_{name}",
                                   index=SOURCES.names().index(chosen.source if chosen else "digits"))
        path_text = cols[1].text_input("Path (inside the project)", key=f"cap_path_{name}")
        limit = cols[2].number_input("Limit", min_value=0, value=(chosen.limit or 0) if chosen else 0,
                                     key=f"cap_limit_{name}", help="0: all images")
        if cols[3].button("Use", key=f"cap_use_{name}"):
            path = shared.confined_path(project, path_text)
            if source != "digits" and path is None:
                st.error("this source needs a path inside the project folder")
            else:
                chosen = DatasetConfig(source=source, path=str(path) if path else None, limit=int(limit) or None)
                st.session_state[f"cap_dataset_{name}"] = chosen
                by_hand = True
    return chosen, by_hand


def load_dataset(config: DatasetConfig | None, by_hand: bool):
    """The dataset for thumbnails (None when missing or not the store's, with a message)."""
    if config is None:
        return None
    try:
        dataset = shared.dataset(config)
        if by_hand and store.meta().get("fingerprint") not in (None, shared.dataset_fingerprint(config)):
            st.warning(f"Dataset {shared.describe(config)} is not the one these captions were made from "
                       "(fingerprints differ); thumbnails are hidden. Choose the right dataset above.")
            return None
        return dataset
    except (OSError, ValueError, KeyError) as err:
        st.error(f"Cannot load dataset {shared.describe(config)}: {err}")
        return None


config, by_hand = pick_dataset()

# 3. filters and the page of captions ------------------------------------------------------------------------
classes = store.meta().get("classes") or sorted({r.label for r in shared.records(root, name, view).values()})
cols = st.columns([2, 2, 3, 1])
chosen_classes = cols[0].multiselect("Classes", classes, key="cap_classes", placeholder="all classes")
text = cols[1].text_input("Search captions or ids", key="cap_text")
status = cols[2].radio("Status", curation.FILTERS, horizontal=True, key="cap_status",
                       format_func=STATUS_LABELS.get)
page_size = cols[3].selectbox("Per page", PAGE_SIZES, key="cap_page_size")
everything = shared.records(root, name, view)  # after the widgets: they paint while 50k captions load
ids = shared.filtered_ids(root, name, view, tuple(chosen_classes), text, status)
pages = max(1, -(-len(ids) // page_size))
signature = hashlib.sha1(repr((chosen_classes, text, status, page_size)).encode()).hexdigest()[:8]
cols = st.columns([1, 4], vertical_alignment="bottom")
page = cols[0].number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, value=1, key=f"cap_page_{signature}")
page_ids = ids[(page - 1) * page_size: page * page_size]
cols[1].caption(f"{len(ids):,} of {len(everything):,} captions match · version {view} of {head}")

dataset = load_dataset(config, by_hand)  # loaded once per server, after the widgets have painted
page_records = [everything[i] for i in page_ids]
thumbs = shared.thumbnails(shared.dataset_key(config), tuple(page_ids)) if dataset is not None else \
    [None] * len(page_ids)
table = pd.DataFrame({
    "image": thumbs,
    "id": page_ids,
    "class": [r.label for r in page_records],
    "caption": [r.caption for r in page_records],
    "status": ["edited by hand" if r.edited_by_hand else "needs review" if curation.needs_review(r)
               else r.source.get("captioner", "") for r in page_records],
    "select": [False] * len(page_ids),
})
editor_key = f"cap_editor_{name}_{view}_{signature}_{page}"
if not page_ids:  # an empty table cannot take the editor's column types (StreamlitAPIException)
    st.info("No captions match these filters. Clear the search or pick another status or class.")
else:
    st.data_editor(
        table, key=editor_key, hide_index=True, width="stretch", row_height=ROW_HEIGHT,
        height=min(38 + ROW_HEIGHT * len(table), 720),
        disabled=["image", "id", "class", "status"] + ([] if editable else ["caption", "select"]),
        column_config={
            "image": st.column_config.ImageColumn("image", width="small"),
            "id": st.column_config.TextColumn("id", width="small"),
            "class": st.column_config.TextColumn("class", width="small"),
            "caption": st.column_config.TextColumn("caption", width="large", required=True),
            "status": st.column_config.TextColumn("status", width="small"),
            "select": st.column_config.CheckboxColumn("select", help="select for re-captioning", width="small"),
        },
    )
edit_state = st.session_state.get(editor_key) or {}
edited = {page_ids[int(row)]: change["caption"] for row, change in edit_state.get("edited_rows", {}).items()
          if "caption" in change}
selected = [page_ids[int(row)] for row, change in edit_state.get("edited_rows", {}).items() if change.get("select")]
pending = {i: (t or "").strip() for i, t in edited.items() if (t or "").strip() != everything[i].caption}


def save_edits(store_name: str, base_version: int, changes: dict[str, str]) -> None:
    if any(not t for t in changes.values()):
        shared.flash("error", "A caption cannot be empty; type a caption or undo the change.")
        return
    try:
        version = shared.store(root, store_name).edit(changes, base_version=base_version, author=AUTHOR)
    except CaptionConflictError as err:
        shared.flash("error", f"Not saved: {err}")
        return
    st.session_state["cap_base"][store_name] = version
    shared.flash("success", f"Saved {len(changes)} caption(s) as version {version}.")


st.button(f"Save {len(pending)} edit(s)", type="primary", disabled=not pending or not editable,
          on_click=save_edits, args=(name, base, pending), key="cap_save")

# 4. tools ----------------------------------------------------------------------------------------------------
tool = st.segmented_control("Tools", TOOLS, key="cap_tool")


def apply_replace(store_name: str) -> None:
    preview = st.session_state.pop("cap_fr_preview", None)
    if not preview:
        return
    try:
        version = curation.apply_changes(shared.store(root, store_name), preview["changes"],
                                         base_version=preview["base"], author=AUTHOR,
                                         message=f"find {preview['find']!r} replace {preview['replace']!r}")
    except CaptionConflictError as err:
        shared.flash("error", f"Not applied: {err}")
        return
    st.session_state["cap_base"][store_name] = version
    shared.flash("success", f"Replaced in {len(preview['changes'])} caption(s): version {version}.")


if tool == "Find & replace":
    cols = st.columns([3, 3, 1, 1, 2], vertical_alignment="bottom")
    find = cols[0].text_input("Find", key="fr_find")
    replace = cols[1].text_input("Replace with", key="fr_replace")
    regex = cols[2].checkbox("Regex", key="fr_regex")
    case = cols[3].checkbox("Match case", key="fr_case")
    scope = cols[4].radio("In", ["filtered captions", "all captions"], key="fr_scope", horizontal=True)
    if st.button("Preview", key="fr_preview", disabled=not editable):
        pool = [everything[i] for i in ids] if scope == "filtered captions" else everything.values()
        try:
            changes = curation.find_replace(pool, find, replace, regex=regex, case_sensitive=case)
            st.session_state["cap_fr_preview"] = {"store": name, "base": base, "changes": changes,
                                                  "find": find, "replace": replace}
        except ValueError as err:
            st.error(str(err))
    preview = st.session_state.get("cap_fr_preview")
    if preview and preview["store"] == name and preview["base"] == base:
        changes = preview["changes"]
        st.write(f"**{len(changes):,}** caption(s) would change" +
                 (f" (first {PREVIEW_ROWS} shown)" if len(changes) > PREVIEW_ROWS else "") + ".")
        st.dataframe(pd.DataFrame([{"id": c.id, "before": c.before, "after": c.after}
                                   for c in changes[:PREVIEW_ROWS]]), hide_index=True, width="stretch")
        st.button(f"Apply {len(changes):,} change(s)", type="primary", disabled=not changes,
                  on_click=apply_replace, args=(name,), key="fr_apply")

elif tool == "Re-caption":
    st.caption("Re-caption the rows ticked in the **select** column, or every caption matching the filters.")
    cols = st.columns([2, 3, 3, 2], vertical_alignment="bottom")
    captioner = cols[0].selectbox("Captioner", CAPTIONERS.names(), key="rc_captioner",
                                  index=CAPTIONERS.names().index("classname"))
    model = cols[1].text_input("Model (hub id, or a folder inside the project)", key="rc_model",
                               disabled=captioner == "classname")
    template = cols[2].text_input("Class template", "a photo of a {label}", key="rc_template",
                                  disabled=captioner != "classname")
    which = cols[3].radio("Images", ["selected", "all filtered"], key="rc_which")
    targets = selected if which == "selected" else ids
    if st.button(f"Re-caption {len(targets):,} image(s)", disabled=not targets or dataset is None or not editable,
                 key="rc_run", help=None if dataset is not None else "needs the store's dataset (see above)"):
        model_ref = shared.model_ref(project, model) if captioner != "classname" else None
        try:
            with st.spinner(f"Captioning {len(targets):,} images with {captioner}..."):
                version = curation.recaption(store, dataset, list(targets), CaptionerConfig(
                    name=captioner, model=model_ref, class_template=template), base_version=base, author=AUTHOR)
            bases[name] = version
            shared.flash("success", f"Re-captioned {len(targets):,} image(s): version {version}.")
            st.rerun()
        except CaptionConflictError as err:
            st.error(f"Not saved: {err}")
        except (OSError, ValueError, KeyError) as err:
            st.error(f"Re-captioning failed: {err}")

elif tool == "Statistics":
    stats = curation.stats_table(curation.class_stats(everything, classes))
    st.dataframe(pd.DataFrame(stats), hide_index=True, width="stretch")
    st.bar_chart(pd.DataFrame(stats).set_index("class")[["captions", "missing class name"]], stack=False)

elif tool == "History":
    history = store.history()
    st.dataframe(pd.DataFrame([{"version": v.version, "created": v.created_at, "author": v.author,
                                "changed": v.changed, "message": v.message} for v in reversed(history)]),
                 hide_index=True, width="stretch")
    versions = [v.version for v in history]
    cols = st.columns(3, vertical_alignment="bottom")
    a = cols[0].selectbox("Diff from version", [0, *versions], index=max(0, len(versions) - 1), key="hist_a")
    b = cols[1].selectbox("to version", versions, index=len(versions) - 1, key="hist_b")
    if cols[2].button("Show diff", key="hist_diff"):
        changes = store.diff(a, b)
        st.write(f"**{len(changes):,}** caption(s) differ between versions {a} and {b}.")
        st.dataframe(pd.DataFrame([{"id": c.id, "before": c.before, "after": c.after}
                                   for c in changes[:PREVIEW_ROWS]]), hide_index=True, width="stretch")
    cols = st.columns(3, vertical_alignment="bottom")
    target = cols[0].selectbox("Roll back to version", versions, index=0, key="hist_target")
    sure = cols[1].checkbox("I want to restore it", key="hist_sure",
                            help="Writes the captions of that version as a new version; history is kept.")
    if cols[2].button("Roll back", disabled=not sure, key="hist_rollback"):
        version = store.rollback(target, author=AUTHOR)
        bases[name] = version
        shared.flash("success", f"Version {version} restores the captions of version {target}.")
        st.rerun()

"""Captions: browse a caption store page by page with real-size thumbnails and edit inline, or go through it
one image at a time in a viewer (keys: N next, P previous, E edit the caption, Ctrl+S save, A mark
reviewed); review captions (machine-made → edited → reviewed) with per-class progress and class approval;
find & replace, re-caption, per-class statistics, version history with diff and rollback.

Every save names the version this tab loaded (``base_version``): a save that would overwrite a caption
someone else changed since is refused with the store's conflict message, never lost silently. Every save
records the curator's name (asked once; the browser remembers it) as the author of the version it writes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import streamlit as st

from pipeline.captions import curation
from pipeline.captions.captioners import CAPTIONERS, CaptionerConfig
from pipeline.captions.store import (
    CaptionConflictError,
    CaptionRecord,
    CaptionStore,
    CaptionStoreDamaged,
    caption_stores,
)
from pipeline.core.project import Project
from pipeline.data import catalog
from pipeline.data.datasets import SOURCES, DatasetConfig
from pipeline.views.report import dataset_config_for_store
from studio import shared

PAGE_SIZES = (24, 48, 96)
STATUS_LABELS = {"all": "all", "edited": "edited by hand", "machine": "machine-made", "needs review": "needs review",
                 "reviewed": "reviewed", "not reviewed": "not reviewed"}
RECORD_STATUS = {"machine": "machine-made", "edited": "edited", "reviewed": "reviewed"}
MODES = ("Grid", "Viewer")
TOOLS = ("Review", "Find & replace", "Re-caption", "Statistics", "History")
KEYS = {"next": "N", "previous": "P", "save": "Ctrl+S", "review": "A"}  # "R" and "C" are Streamlit's own
ANYONE = ""  # curator filter: no filter
PREVIEW_ROWS = 500
PICK, FOLLOW = "cap_pick", "cap_follow"  # session keys: the viewer's image; "show the page it is on"
NEED_NAME = "Type your name under **Curator** (top of the page) before saving: it is recorded with every version."
# Streamlit's shortcuts skip plain keys while a text field has focus, and a text area only commits what was
# typed on blur: so Ctrl/Cmd+S first blurs the field (its text and the Save click reach the server in one
# message) and never opens the browser's "save page"; E puts the cursor in the viewer's caption. Runs in
# the page itself (capture phase: before Streamlit's own key handler), once per browser tab.
KEY_SCRIPT = """<script>
if (!window.tckrCaptionKeys) {
  window.tckrCaptionKeys = true;
  document.addEventListener("keydown", (event) => {
    const field = event.target.closest ? event.target.closest("textarea, input, [contenteditable=true]") : null;
    const mod = event.ctrlKey || event.metaKey;
    if (mod && !event.altKey && event.key.toLowerCase() === "s") {
      event.preventDefault();
      if (field) field.blur();
    } else if (!field && !mod && !event.altKey && event.key.toLowerCase() === "e") {
      const box = document.querySelector('[class*="st-key-cap_vtext_"] textarea');
      if (box) { event.preventDefault(); box.focus(); box.setSelectionRange(box.value.length, box.value.length); }
    }
  }, true);
}
</script>"""
# The viewer fits its column and the window (issue 25). Streamlit gives an image of a set pixel width
# (the PNG's own, see show_image) and its caption that width even in a narrower column, where the caption
# column drew over it; and a 768-px image under half a screen of filters ran below the fold. Here the image is
# at most as wide as its column and as tall as the window less Streamlit's header (4rem), the toggle above
# and the caption below, keeping its shape (width and height auto; not in Streamlit's fullscreen view, which
# sets object-fit); choosing the viewer scrolls it to the top of the window, and while it is shown the page
# has room below it for that scroll (a short page could not scroll the filters away: at 1,920 px the image
# stayed half a screen down).
VIEWER = "cap_viewer"  # the viewer's container key: Streamlit gives it the CSS class st-key-cap_viewer
TO_VIEWER = "cap_to_viewer"  # session key: the curator just chose the viewer (scroll it into view)
VIEWER_STYLE = """<style>
.st-key-cap_viewer { scroll-margin-top: 4rem; }
[data-testid="stMainBlockContainer"] { padding-bottom: 100vh; }
.st-key-cap_image [data-testid="stElementContainer"]:has([data-testid="stImage"]),
.st-key-cap_image [data-testid="stImage"], .st-key-cap_image [data-testid="stImageContainer"],
.st-key-cap_image [data-testid="stImageCaption"] { width: 100% !important; min-width: 0; }
.st-key-cap_image [data-testid="stImage"] img:not([style*="object-fit"]) {
  width: auto !important; height: auto; max-width: 100% !important; max-height: calc(100vh - 12rem);
}
</style>"""
# after the image has loaded (before that the page may be too short to scroll that far)
VIEWER_SCROLL = """<script>
(function toViewer(tries) {
  const viewer = document.querySelector(".st-key-cap_viewer");
  const image = viewer && viewer.querySelector("img");
  if (viewer && (!image || image.complete)) viewer.scrollIntoView({block: "start", behavior: "instant"});
  else if (tries > 0) setTimeout(() => toViewer(tries - 1), 50);
})(100);
</script>"""


@dataclass(frozen=True)
class Opened:
    """The caption store this tab works on, and which of its versions it shows and edits."""

    project: Project
    name: str
    store: CaptionStore
    head: int  # the newest version
    base: int  # the version this tab loaded for editing: every save is checked against it
    view: int  # the version shown; read-only unless it is ``base``
    meta: dict[str, Any]

    @property
    def root(self) -> str:
        return str(self.project.root)

    @property
    def editable(self) -> bool:
        return self.view == self.base


@dataclass(frozen=True)
class Shown:
    """The captions the filters let through, and the page of them on screen."""

    classes: list[str]
    everything: dict[str, CaptionRecord]  # every caption of the version shown, by id
    ids: list[str]  # those matching the filters, in order
    mode: str  # "Grid" or "Viewer"
    thumb: int  # thumbnail side in pixels
    page: int
    page_size: int
    page_ids: list[str]  # the ids on this page
    signature: str  # of the filters: a new filter starts a new page number and a new grid


def curator_now() -> str:
    """The name in the Curator box; inside a callback too, where the script has not stored it yet."""
    return str(st.session_state.get("cap_curator", shared.curator())).strip()


def author() -> str | None:
    """The curator's name for a save, or None with an error shown on the next run."""
    if not curator_now():
        shared.flash("error", NEED_NAME)
        return None
    return curator_now()


# 1. which store and version, and who curates -------------------------------------------------------------
def choose_store(project: Project) -> Opened:
    """The store, version and curator widgets; stops the page when there is no caption to show."""
    names = caption_stores(project)
    if not names:
        st.info("No caption stores in this project yet. Caption a dataset with `python -m pipeline caption` "
                "or start a run on the **Runs** page.")
        st.stop()
    top = st.columns([3, 2, 1, 2], vertical_alignment="bottom")
    name = top[0].selectbox("Caption store", names, key="cap_store")
    store = shared.store(str(project.root), name)
    try:
        store.records()  # reads the version files once (the store keeps the state in memory)
        head = store.head()
    except CaptionStoreDamaged as err:
        st.error(f"{err} (`python -m pipeline captions ... --project {project.root}`)")
        st.stop()
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
    # its own key, copied to the session's: a widget's state is dropped while another page is shown
    top[3].text_input("Curator", value=shared.curator(), key="cap_curator", placeholder="your name",
                      help="Recorded as the author of every version you save; this browser remembers it (a cookie).")
    st.session_state[shared.CURATOR] = curator_now()
    shared.remember_curator(curator_now())  # a reload (F5) or a new tab starts with it
    if not curator_now():
        st.info(NEED_NAME)
    if head > base:
        st.warning(f"Version {head} was saved after version {base}, which this tab is editing (another tab or "
                   f"person). Saves are checked against version {base}: edits to other captions are merged, edits "
                   "to a caption changed since are refused. Press **Load newest** to see the newest captions.")
    if view != base:
        st.info(f"Viewing version {view} (read-only). Roll back to it under **History**, or pick version {base} "
                "to edit.")
    return Opened(project, name, store, head, base, view, store.meta())


# 2. the dataset the captions describe (for thumbnails, the viewer and re-captioning) ----------------------
def pick_dataset(opened: Opened) -> tuple[DatasetConfig | None, bool]:
    """The store's dataset and whether it was chosen by hand (then its fingerprint is checked)."""
    name, project = opened.name, opened.project
    chosen = st.session_state.get(f"cap_dataset_{name}")
    by_hand = chosen is not None
    if chosen is None:  # a run that used this store on data with the store's fingerprint
        chosen = dataset_config_for_store(project, name)
    with st.expander("Dataset of this store" + (f": {shared.describe(chosen)}" if chosen else " (not found)"),
                     expanded=chosen is None):
        st.caption("Taken from the newest run that used this store. Choose another if the images moved: the name "
                   "of a dataset registered with the project (Runs → Start a run, or `datasets add`), or a path "
                   "relative to the project folder that stays inside it.")
        cols = st.columns([1, 3, 1, 1], vertical_alignment="bottom")
        source = cols[0].selectbox("Source", SOURCES.names(), key=f"cap_src_{name}",
                                   index=SOURCES.names().index(chosen.source if chosen else "digits"))
        path_text = cols[1].text_input("Registered name, or path inside the project", key=f"cap_path_{name}")
        limit = cols[2].number_input("Limit", min_value=0, value=(chosen.limit or 0) if chosen else 0,
                                     key=f"cap_limit_{name}", help="0: all images")
        if cols[3].button("Use", key=f"cap_use_{name}"):
            registered = catalog.registered(project.root).get(path_text.strip())
            path = None if registered is not None else shared.confined_path(project, path_text)
            if registered is None and source != "digits" and path is None:
                st.error("this source needs a registered dataset's name or a path inside the project folder")
            else:
                chosen = replace(registered, limit=int(limit) or None) if registered is not None else \
                    DatasetConfig(source=source, path=str(path) if path else None, limit=int(limit) or None)
                st.session_state[f"cap_dataset_{name}"] = chosen
                by_hand = True
    return chosen, by_hand


def load_dataset(config: DatasetConfig | None, by_hand: bool, meta: dict[str, Any]):
    """The dataset for thumbnails (None when missing or not the store's, with a message)."""
    if config is None:
        return None
    try:
        dataset = shared.dataset(config)
        if by_hand and meta.get("fingerprint") not in (None, shared.dataset_fingerprint(config)):
            st.warning(f"Dataset {shared.describe(config)} is not the one these captions were made from "
                       "(fingerprints differ); thumbnails are hidden. Choose the right dataset above.")
            return None
        return dataset
    except (OSError, ValueError, KeyError) as err:
        st.error(f"Cannot load dataset {shared.describe(config)}: {err}")
        return None


# 3. filters and the page of captions ------------------------------------------------------------------------
def chose_mode() -> None:
    st.session_state[TO_VIEWER] = st.session_state.get("cap_mode") == "Viewer"


def filter_captions(opened: Opened) -> Shown:
    """The filter and page widgets -> the captions on this page."""
    root, name, view = opened.root, opened.name, opened.view
    classes = opened.meta.get("classes") or sorted({r.label for r in shared.records(root, name, view).values()})
    cols = st.columns([3, 3, 2, 2], vertical_alignment="bottom")
    chosen_classes = cols[0].multiselect("Classes", classes, key="cap_classes", placeholder="all classes")
    text = cols[1].text_input("Search captions or ids", key="cap_text")
    who = cols[2].selectbox("Curator (last edit or review)", [ANYONE, *shared.curator_names(root, name, view)],
                            key="cap_who", format_func=lambda c: c or "anyone")
    mode = cols[3].segmented_control("Show", MODES, default="Grid", required=True, key="cap_mode",
                                     on_change=chose_mode,
                                     help="Grid: a page of captions to edit inline. Viewer: one image at full size.")
    cols = st.columns([6, 1, 1], vertical_alignment="bottom")
    status = cols[0].radio("Status", curation.FILTERS, horizontal=True, key="cap_status",
                           format_func=STATUS_LABELS.get)
    page_size = cols[1].selectbox("Per page", PAGE_SIZES, key="cap_page_size")
    thumb = cols[2].selectbox("Thumbnail size", shared.THUMB_SIZES, index=shared.THUMB_SIZES.index(shared.THUMB),
                              key="cap_thumb", format_func=lambda s: f"{s} px")
    everything = shared.records(root, name, view)  # after the widgets: they paint while 50k captions load
    ids = shared.filtered_ids(root, name, view, tuple(chosen_classes), text, status, who)
    pages = max(1, -(-len(ids) // page_size))
    signature = hashlib.sha1(repr((chosen_classes, text, status, who, page_size)).encode()).hexdigest()[:8]
    page_key = f"cap_page_{signature}"
    if st.session_state.pop(FOLLOW, False) and st.session_state.get(PICK) in everything:
        try:  # the viewer moved: show the page its image is on
            st.session_state[page_key] = ids.index(st.session_state[PICK]) // page_size + 1
        except ValueError:  # it left the filter (e.g. reviewed under "not reviewed")
            pass
    if st.session_state.get(page_key, 1) > pages:  # the filter shrank under it
        st.session_state[page_key] = pages
    cols = st.columns([1, 4], vertical_alignment="bottom")
    page = cols[0].number_input(f"Page (of {pages:,})", min_value=1, max_value=pages, key=page_key)
    page_ids = ids[(page - 1) * page_size: page * page_size]
    cols[1].caption(f"{len(ids):,} of {len(everything):,} captions match · version {view} of {opened.head}")
    return Shown(classes, everything, ids, mode, thumb, page, page_size, page_ids, signature)


# 4. the page of captions: an editable grid, or the viewer ---------------------------------------------------
def show_captions(opened: Opened, shown: Shown, config: DatasetConfig | None, dataset) -> list[str]:
    """The grid or the viewer, and the page's key handler; returns the ids ticked in the grid."""
    selected: list[str] = []
    if not shown.page_ids:  # an empty table cannot take the editor's column types (StreamlitAPIException)
        st.info("No captions match these filters. Clear the search or pick another status, class or curator.")
    elif shown.mode == "Viewer":
        show_viewer(opened, shown, config, dataset)
    else:
        selected = show_grid(opened, shown, config, dataset)
    st.html(KEY_SCRIPT, unsafe_allow_javascript=True)
    return selected


def status_label(record: CaptionRecord) -> str:
    if curation.needs_review(record):
        return "needs review"
    return RECORD_STATUS[record.status]


def save_edits(root: str, store_name: str, base_version: int, changes: dict[str, str]) -> None:
    if any(not t for t in changes.values()):
        shared.flash("error", "A caption cannot be empty; type a caption or undo the change.")
        return
    who = author()
    if who is None:
        return
    try:
        version = shared.store(root, store_name).edit(changes, base_version=base_version, author=who)
    except (CaptionConflictError, ValueError) as err:  # a conflict, a caption too long
        shared.flash("error", f"Not saved: {err}")
        return
    st.session_state["cap_base"][store_name] = version
    shared.flash("success", f"Saved {len(changes)} caption(s) as version {version}.")


def show_grid(opened: Opened, shown: Shown, config: DatasetConfig | None, dataset) -> list[str]:
    """The page of captions in an editable grid, with a Save button for what was typed into it; returns
    the ids ticked in its select column."""
    page_ids, everything, thumb = shown.page_ids, shown.everything, shown.thumb
    page_records = [everything[i] for i in page_ids]
    thumbs = shared.thumbnails(shared.dataset_key(config), tuple(page_ids), thumb) if dataset is not None \
        else [None] * len(page_ids)
    table = pd.DataFrame({
        "image": thumbs,
        "id": page_ids,
        "class": [r.label for r in page_records],
        "caption": [r.caption for r in page_records],
        "status": [status_label(r) for r in page_records],
        "curator": [r.curator for r in page_records],
        "select": [False] * len(page_ids),
    })
    row_height = thumb + 8
    editor_key = f"cap_editor_{opened.name}_{opened.view}_{shown.signature}_{shown.page}"
    st.data_editor(
        table, key=editor_key, hide_index=True, width="stretch", row_height=row_height,
        height=min(38 + row_height * len(table), 760),
        disabled=["image", "id", "class", "status", "curator"] + ([] if opened.editable else ["caption", "select"]),
        column_config={
            "image": st.column_config.ImageColumn("image", width=thumb + 8),
            "id": st.column_config.TextColumn("id", width="small"),
            "class": st.column_config.TextColumn("class", width="small"),
            "caption": st.column_config.TextColumn("caption", width="large", required=True),
            "status": st.column_config.TextColumn("status", width="small"),
            "curator": st.column_config.TextColumn("curator", width="small"),
            "select": st.column_config.CheckboxColumn("select", help="select for re-captioning", width="small"),
        },
    )
    edit_state = st.session_state.get(editor_key) or {}
    rows = edit_state.get("edited_rows", {})
    edited = {page_ids[int(row)]: change["caption"] for row, change in rows.items() if "caption" in change}
    pending = {i: (t or "").strip() for i, t in edited.items() if (t or "").strip() != everything[i].caption}
    st.button(f"Save {len(pending)} edit(s)", type="primary", disabled=not pending or not opened.editable,
              on_click=save_edits, args=(opened.root, opened.name, opened.base, pending), key="cap_save",
              shortcut=KEYS["save"])
    return [page_ids[int(row)] for row, change in rows.items() if change.get("select")]


# the viewer: one image beside its caption
def step(target: str, text_key: str, original: str) -> None:
    """Go to another image, unless the caption shown has an unsaved change (it would be lost)."""
    if (st.session_state.get(text_key) or original).strip() != original:
        shared.flash("warning", "Unsaved change: save it (Ctrl+S) or undo it before moving to another image.")
        return
    st.session_state[PICK] = target
    st.session_state[FOLLOW] = True


def save_one(root: str, store_name: str, base_version: int, image_id: str, text_key: str, original: str) -> None:
    text = (st.session_state.get(text_key) or "").strip()
    if not text:
        shared.flash("error", "A caption cannot be empty; type a caption or undo the change.")
        return
    if text == original:
        shared.flash("info", f"Nothing to save: the caption of {image_id} is unchanged.")
        return
    who = author()
    if who is None:
        return
    try:
        version = shared.store(root, store_name).edit({image_id: text}, base_version=base_version, author=who)
    except (CaptionConflictError, ValueError) as err:  # a conflict, a caption too long
        shared.flash("error", f"Not saved: {err}")
        return
    st.session_state["cap_base"][store_name] = version
    shared.flash("success", f"Saved the caption of {image_id} as version {version}.")


def review_one(root: str, store_name: str, base_version: int, image_id: str, text_key: str, original: str,
               next_id: str | None) -> None:
    """Approve the caption shown (with the curator's change, if any, saved first), then go to the next."""
    who = author()
    if who is None:
        return
    text = (st.session_state.get(text_key) or original).strip()
    target = shared.store(root, store_name)
    before = target.head()
    try:
        version = target.edit({image_id: text}, base_version=base_version, author=who) if text != original \
            else base_version
        version = target.review([image_id], base_version=version, reviewer=who)
    except (CaptionConflictError, ValueError) as err:  # a conflict, a caption too long
        shared.flash("error", f"Not saved: {err}")
        return
    if version == before:  # nothing written: it was reviewed already
        shared.flash("info", f"{image_id} was already reviewed.")
    else:
        st.session_state["cap_base"][store_name] = version
        shared.flash("success", f"Marked {image_id} reviewed by {who} (version {version}).")
    if next_id is not None:
        st.session_state[PICK] = next_id
        st.session_state[FOLLOW] = True


def show_image(image_id: str, config: DatasetConfig | None, dataset) -> None:
    if dataset is None:
        st.info("No image: this store's dataset was not found (choose it above).")
        return
    full = st.toggle("Full resolution", key="cap_full", help="Off: fitted to the panel (small images enlarged).")
    image = shared.viewer_image(shared.dataset_key(config), image_id, full)
    if image is None:
        st.warning(f"Image {image_id} cannot be read.")
        return
    w, h = image.size
    # width = the PNG's own width and PNG out, so that Streamlit sends these very pixels (otherwise it
    # shrinks images wider than 1,460 px and turns them into JPEG); a narrower panel scales it in the
    # browser, and the image's fullscreen button shows it whole
    st.image(image.png, width=image.width, output_format="PNG", caption=f"{image_id} · {w}×{h} px")


def show_viewer(opened: Opened, shown: Shown, config: DatasetConfig | None, dataset) -> None:
    page_ids, ids, everything = shown.page_ids, shown.ids, shown.everything
    if st.session_state.get(PICK) not in page_ids:
        st.session_state[PICK] = page_ids[0]
    image_id = st.session_state[PICK]
    position = (shown.page - 1) * shown.page_size + page_ids.index(image_id)
    previous_id = ids[position - 1] if position > 0 else None
    next_id = ids[position + 1] if position + 1 < len(ids) else None
    record = everything[image_id]
    name, base, editable = opened.name, opened.base, opened.editable
    st.html(VIEWER_STYLE)
    left, right = st.container(key=VIEWER).columns([3, 2])
    with left.container(key="cap_image"):
        show_image(image_id, config, dataset)
    with right:
        st.selectbox("Image", page_ids, key=PICK, format_func=lambda i: f"{i} · {everything[i].label}")
        curated = f" by {record.curator}" if record.curator else ""
        st.caption(f"Image {position + 1:,} of {len(ids):,} · class **{record.label}** · "
                   f"{status_label(record)}{curated}")
        text_key = f"cap_vtext_{name}_{base}_{image_id}"
        st.text_area("Caption", record.caption, key=text_key, height=140, disabled=not editable,
                     help="E puts the cursor here; Ctrl+S (Cmd+S) saves without leaving the box.")
        nav = st.columns(2)
        nav[0].button("Previous", key="view_prev", icon=":material/arrow_back:", disabled=previous_id is None,
                      on_click=step, args=(previous_id, text_key, record.caption), shortcut=KEYS["previous"],
                      width="stretch")
        nav[1].button("Next", key="view_next", icon=":material/arrow_forward:", disabled=next_id is None,
                      on_click=step, args=(next_id, text_key, record.caption), shortcut=KEYS["next"],
                      width="stretch")
        act = st.columns(2)
        act[0].button("Save", key="view_save", type="primary", disabled=not editable, on_click=save_one,
                      args=(opened.root, name, base, image_id, text_key, record.caption), shortcut=KEYS["save"],
                      width="stretch")
        act[1].button("Mark reviewed", key="view_review", disabled=not editable, on_click=review_one,
                      args=(opened.root, name, base, image_id, text_key, record.caption, next_id),
                      shortcut=KEYS["review"], width="stretch",
                      help="Approve this caption as it reads (saving your change first), then go to the next image.")
        st.caption("Keys: **N** next · **P** previous · **E** edit · **Ctrl+S** save · **A** mark reviewed")
    if st.session_state.pop(TO_VIEWER, False):  # below the viewer: its empty block shifts nothing above
        st.html(VIEWER_SCROLL, unsafe_allow_javascript=True)


# 5. tools ----------------------------------------------------------------------------------------------------
def show_tools(opened: Opened, shown: Shown, dataset, selected: list[str]) -> None:
    """The tool picked (none at first): review, find & replace, re-caption, statistics or history."""
    tool = st.segmented_control("Tools", TOOLS, key="cap_tool")
    if tool == "Review":
        review_tool(opened, shown)
    elif tool == "Find & replace":
        find_replace_tool(opened, shown)
    elif tool == "Re-caption":
        recaption_tool(opened, shown, dataset, selected)
    elif tool == "Statistics":
        statistics_tool(shown)
    elif tool == "History":
        history_tool(opened)


def approve(root: str, store_name: str, base_version: int, label: str, count: int) -> None:
    who = author()
    if who is None:
        return
    try:
        version = curation.approve_class(shared.store(root, store_name), label, base_version, who)
    except (CaptionConflictError, ValueError) as err:
        shared.flash("error", f"Not approved: {err}")
        return
    st.session_state["cap_base"][store_name] = version
    st.session_state["rv_sure"] = False
    shared.flash("success", f"Approved {count:,} caption(s) of class {label} as reviewed by {who}: version {version}.")


def review_tool(opened: Opened, shown: Shown) -> None:
    """Review progress per class, and approving a whole class at once."""
    progress = shared.progress(opened.root, opened.name, opened.view, tuple(shown.classes))
    reviewed, total = sum(p.reviewed for p in progress), sum(p.total for p in progress)
    st.progress(reviewed / total if total else 1.0, text=f"{reviewed:,} of {total:,} captions reviewed")
    st.dataframe(pd.DataFrame([{"class": p.label, "reviewed": p.fraction, "captions": p.total,
                                "reviewed captions": p.reviewed, "edited, waiting": p.edited} for p in progress]),
                 hide_index=True, width="stretch", column_config={
                     "reviewed": st.column_config.ProgressColumn("reviewed", min_value=0.0, max_value=1.0,
                                                                 format="percent")})
    by_label = {p.label: p for p in progress}
    cols = st.columns([2, 2, 3], vertical_alignment="bottom")
    label = cols[0].selectbox("Class to approve", list(by_label), key="rv_class")
    left = by_label[label].total - by_label[label].reviewed
    sure = cols[1].checkbox("I checked this class", key="rv_sure",
                            help="Marks every caption of the class reviewed by you, as they read now.")
    cols[2].button(f"Approve {left:,} caption(s) of class {label}", key="rv_approve", type="primary",
                   disabled=not (sure and left and opened.editable), on_click=approve,
                   args=(opened.root, opened.name, opened.base, label, left))


def apply_replace(root: str, store_name: str) -> None:
    preview = st.session_state.pop("cap_fr_preview", None)
    if not preview:
        return
    who = author()
    if who is None:
        return
    try:
        version = curation.apply_changes(shared.store(root, store_name), preview["changes"],
                                         base_version=preview["base"], author=who,
                                         message=f"find {preview['find']!r} replace {preview['replace']!r}")
    except (CaptionConflictError, ValueError) as err:  # a conflict, a caption too long
        shared.flash("error", f"Not applied: {err}")
        return
    st.session_state["cap_base"][store_name] = version
    shared.flash("success", f"Replaced in {len(preview['changes'])} caption(s): version {version}.")


def find_replace_tool(opened: Opened, shown: Shown) -> None:
    """Preview a find & replace over the filtered (or all) captions, then apply it as one version."""
    name, base = opened.name, opened.base
    cols = st.columns([3, 3, 1, 1, 2], vertical_alignment="bottom")
    find = cols[0].text_input("Find", key="fr_find")
    replace = cols[1].text_input("Replace with", key="fr_replace")
    regex = cols[2].checkbox("Regex", key="fr_regex")
    case = cols[3].checkbox("Match case", key="fr_case")
    scope = cols[4].radio("In", ["filtered captions", "all captions"], key="fr_scope", horizontal=True)
    if st.button("Preview", key="fr_preview", disabled=not opened.editable):
        everything = shown.everything
        pool = [everything[i] for i in shown.ids] if scope == "filtered captions" else everything.values()
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
                  on_click=apply_replace, args=(opened.root, name), key="fr_apply")


def recaption_tool(opened: Opened, shown: Shown, dataset, selected: list[str]) -> None:
    """Re-caption the ticked rows or every filtered caption with a captioner, as one new version."""
    st.caption("Re-caption the rows ticked in the **select** column of the grid, or every caption matching the "
               "filters. The class template starts as the one this store's captions were made with.")
    cols = st.columns([2, 3, 3, 2], vertical_alignment="bottom")
    captioner = cols[0].selectbox("Captioner", CAPTIONERS.names(), key="rc_captioner",
                                  index=CAPTIONERS.names().index("classname"))
    model = cols[1].text_input("Model (hub id, or a folder inside the project)", key="rc_model",
                               disabled=captioner == "classname")
    own_template = curation.store_template(opened.meta, shown.everything) or CaptionerConfig().class_template
    template = cols[2].text_input("Class template", own_template, key=f"rc_template_{opened.name}",
                                  disabled=captioner != "classname")
    which = cols[3].radio("Images", ["selected", "all filtered"], key="rc_which")
    targets = selected if which == "selected" else shown.ids
    # a person's edits and reviews are replaced only when the curator ticks that they should be
    curated = curation.curated_among(opened.store, targets, opened.base)
    replace = bool(curated) and st.checkbox(
        f"Also replace the {len(curated):,} edited or reviewed caption(s) among them", key="rc_replace_curated",
        help="Unticked, captions a person edited or reviewed keep their text and status.")
    count = len(targets) if replace else len(targets) - len(curated)
    if st.button(f"Re-caption {count:,} image(s)",
                 disabled=not count or dataset is None or not opened.editable, key="rc_run",
                 help=None if dataset is not None else "needs the store's dataset (see above)"):
        model_ref = shared.model_ref(opened.project, model) if captioner != "classname" else None
        try:
            if not curator_now():
                raise ValueError(NEED_NAME)
            with st.spinner(f"Captioning {count:,} images with {captioner}..."):
                version = curation.recaption(opened.store, dataset, list(targets), CaptionerConfig(
                    name=captioner, model=model_ref, class_template=template), base_version=opened.base,
                    author=curator_now(), replace_curated=replace)
            st.session_state["cap_base"][opened.name] = version
            shared.flash("success", f"Re-captioned {count:,} image(s): version {version}." +
                         (f" Kept {len(curated):,} edited or reviewed caption(s)." if curated and not replace else ""))
            st.rerun()
        except CaptionConflictError as err:
            st.error(f"Not saved: {err}")
        except (OSError, ValueError, KeyError) as err:
            st.error(f"Re-captioning failed: {err}")


def statistics_tool(shown: Shown) -> None:
    stats = curation.stats_table(curation.class_stats(shown.everything, shown.classes))
    st.dataframe(pd.DataFrame(stats), hide_index=True, width="stretch")
    st.bar_chart(pd.DataFrame(stats).set_index("class")[["captions", "missing class name"]], stack=False)


def history_tool(opened: Opened) -> None:
    """The store's versions, a diff between two, and rolling back to one (as a new version)."""
    store = opened.store
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
        if not curator_now():
            st.error(NEED_NAME)
        else:
            version = store.rollback(target, author=curator_now())
            st.session_state["cap_base"][opened.name] = version
            shared.flash("success", f"Version {version} restores the captions of version {target}.")
            st.rerun()


# the page, top to bottom (Streamlit reruns it on every interaction) ---------------------------------
st.title("Captions")
shared.show_flash()
opened = choose_store(shared.project())
dataset_config, by_hand = pick_dataset(opened)
shown = filter_captions(opened)
dataset = load_dataset(dataset_config, by_hand, opened.meta)  # once per server, after the widgets painted
selected = show_captions(opened, shown, dataset_config, dataset)
show_tools(opened, shown, dataset, selected)

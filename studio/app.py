"""Entry point of the studio: ``streamlit run studio/app.py -- --project DIR`` (or ``python -m pipeline
studio``). The project also comes from $TCKR_PROJECT, else ./workspace. Each page lives in ``views/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run` puts only studio/ on the path; pages import pipeline
    sys.path.insert(0, str(ROOT))

from pipeline.core.disk import full_disk  # noqa: E402
from pipeline.core.registry_file import RegistryError  # noqa: E402
from studio import shared  # noqa: E402

VIEWS = Path(__file__).resolve().parent / "views"
PAGES = [
    st.Page(VIEWS / "captions.py", title="Captions", icon=":material/edit_note:", url_path="captions", default=True),
    st.Page(VIEWS / "generations.py", title="Generations", icon=":material/image:", url_path="generations"),
    st.Page(VIEWS / "runs.py", title="Runs", icon=":material/play_circle:", url_path="runs"),
    st.Page(VIEWS / "tradeoffs.py", title="Trade-offs", icon=":material/scatter_plot:", url_path="tradeoffs"),
    st.Page(VIEWS / "leaks.py", title="Leak explorer", icon=":material/policy:", url_path="leaks"),
    st.Page(VIEWS / "synthetic.py", title="Synthetic set", icon=":material/photo_library:", url_path="synthetic"),
]

st.set_page_config(page_title="TCKR studio", page_icon=":material/shield:", layout="wide")
page = st.navigation(PAGES)
st.sidebar.caption(f"Project: `{shared.project().root}`")
if st.context.url and st.get_option("server.address") in (None, "", "0.0.0.0", "::"):
    st.sidebar.warning("This studio listens on every network interface. Start it with `python -m pipeline "
                       "studio` (localhost only) or `--server.address 127.0.0.1`.")
try:
    page.run()
except RegistryError as err:  # the UI boundary: a damaged or locked registry is one line
    shared.registry_failure(err)
except Exception as err:  # ... and so is a full disk, however it surfaced; anything else stays loud
    full = full_disk(err, shared.project().root)
    if full is None:
        raise
    shared.registry_failure(full)

"""Pneumo dashboard: `streamlit run app.py` (or `make run`).

Nobody signed in: the sign-in page is the only page, whatever the address asked for. Signed in:
the pages the role may open (pneumo_core.records.signin.PAGE_ACTIONS), and the pages check it again themselves.
"""
from pathlib import Path

import streamlit as st

import ui
from pneumo_core.files import keep_private
from pneumo_core.records.signin import may_open

# A local favicon: an icon name would make the browser fetch it from a font server (fails offline).
st.set_page_config(page_title="Pneumo", page_icon=str(Path(__file__).parent / "static" / "favicon.png"),
                   layout="wide")

HERE = Path(__file__).parent
# Before any page writes: the home holds patient data (files 0600, folders 0700; a loose home is tightened).
keep_private(ui.settings().home)
# (script, title, icon); who may open each page is the library's (may_open, by the script's name)
PAGES = [
    ("views/diagnose.py", "Diagnose", ":material/stethoscope:"),
    ("views/worklist.py", "Worklist", ":material/view_list:"),
    ("views/heatmaps.py", "Heatmaps", ":material/compare:"),
    ("views/metrics.py", "Metrics", ":material/monitoring:"),
    ("views/models.py", "Models", ":material/inventory_2:"),
    ("views/retrain.py", "Retrain", ":material/model_training:"),
    ("views/site.py", "Site", ":material/local_hospital:"),
    ("views/monitor.py", "Monitor", ":material/query_stats:"),
    ("views/audit.py", "Audit", ":material/history:"),
    ("views/users.py", "Users", ":material/group:"),
]

actor = ui.signed_in_actor()
if actor is None:
    # The sign-in page answers every page's address: a deep link shows it (not "page not found"), and
    # after sign-in the same address opens the page asked for, if the role allows it.
    pages = st.navigation([st.Page("views/signin.py", title="Sign in", icon=":material/login:", default=True)]
                          + [st.Page("views/signin.py", title="Sign in", url_path=Path(script).stem)
                             for script, *_ in PAGES], position="hidden")
else:
    allowed = [st.Page(script, title=title, icon=icon) for script, title, icon in PAGES
               if may_open(actor, Path(script).stem) and (HERE / script).is_file()]
    pages = st.navigation(allowed)
    st.sidebar.text(f"Signed in as {actor.name}\n({actor.role.replace('_', ' ')})")
    if st.sidebar.button("Sign out", icon=":material/logout:"):
        ui.sign_out()
        st.rerun()
st.sidebar.caption("Decision support, not a diagnosis.")
try:
    pages.run()
finally:  # also after st.stop / st.rerun: the page may have imported Keras, and the run's end would clear it
    ui.keep_keras_session()

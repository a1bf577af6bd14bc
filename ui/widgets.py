"""Widgets shared by the pages: the first-run message, version picker, job progress, promote button,
account form, the call's strength scale, and the worklist's film opening."""
from __future__ import annotations

import streamlit as st

from pneumo_core.errors import PneumoError
from pneumo_core.jobs.progress_lines import describe
from pneumo_core.jobs.queue import JobQueue
from pneumo_core.records import registry
from pneumo_core.records.signin import confirm_password
from pneumo_core.records.users import MIN_PASSWORD
from ui.loaders import audit_trail, settings, versions
from ui.session import actor, may
from ui.text import literal


def first_run() -> None:
    """The message of a server with no model yet: how to train the first."""
    st.info("No model has been trained yet. Start one on the **Retrain** page, or from a terminal (about five "
            "minutes on a laptop), then reload this page:")
    st.code(settings().train_command, language="bash")


def version_picker(label: str = "Model version", key: str | None = None, index_of_active: bool = True) -> str | None:
    """A select box over the registry; None (and the first-run message) when it is empty."""
    rows = versions()
    if not rows:
        first_run()
        return None
    ids = [r["id"] for r in rows]
    active = next((i for i, r in enumerate(rows) if r["active"]), 0)
    return st.selectbox(label, ids, index=active if index_of_active else min(1, len(ids) - 1), key=key,
                        format_func=lambda i: f"{i} (active)" if rows[ids.index(i)]["active"] else i)


@st.fragment(run_every=2)
def job_progress(queue: JobQueue, log_lines: int, follow_key: str, cancel_prefix: str) -> None:
    """The running (else the oldest queued) job: progress, log tail and Cancel, redrawn every 2 s without
    rerunning the page; when a job this page followed ends, the page reruns once (its results appear).

    Each poll reads one counter (`queue.changed_since`); the job row is read again only when it moved
    (measured with no job running, 500 finished ones: 0.18 ms against 0.43 ms for `current()`, medians of 300
    on the 2-core dev machine). The token and the row are kept in st.session_state; the log tail (a small
    file read) is read every time.

    Args:
        queue: the job queue.
        log_lines: how many of the job log's last lines are shown.
        follow_key: the session-state key that notes the job this page follows (its poll state sits beside it).
        cancel_prefix: the Cancel button's key is this prefix and the job id.
    """
    poll_key = f"{follow_key}_poll"
    token, job = st.session_state.get(poll_key, (None, None))
    changed, token = queue.changed_since(token)   # None on the first draw: always changed
    if changed:
        job = queue.current()
    st.session_state[poll_key] = (token, job)
    if job is None:
        if st.session_state.pop(follow_key, None):
            st.rerun()           # a job just ended: refresh what the page shows of its result
        st.caption("No job running.")
        return
    st.session_state[follow_key] = job["id"]
    st.progress(job["percent"] / 100, text=f"Job {job['id']}: {describe(job)} · {job['percent']:.0f}%")
    st.code("\n".join(queue.log_tail(job["id"], log_lines)) or "(starting…)", language=None)
    if may("cancel_job") and st.button("Cancel job", key=f"{cancel_prefix}{job['id']}", icon=":material/cancel:"):
        try:
            queue.cancel(job["id"], actor=actor())
        except PneumoError as error:
            st.error(literal(error))
        else:
            st.rerun()


def promote(version: str, active: str | None) -> None:
    """Make `version` the active model as the signed-in user, recorded in the audit trail, unless the active
    model is no longer `active` (someone else changed it meanwhile); shows the refusal, else a toast and reruns.

    Args:
        version: the version to make active (a candidate, or an older one for a rollback).
        active: the active version the page showed.
    """
    try:
        entry = registry.promote(settings().models_dir, version, actor=actor(), expected_active=active,
                                 trail=audit_trail())
    except PneumoError as error:
        st.error(literal(error))
    else:
        was = f" (was {entry['from']})" if entry["from"] else ""
        st.toast(f"{entry['action'].capitalize()}: {entry['to']} is now the active model{was}.")
        st.rerun()


def check_upload_count(uploads: list) -> None:
    """Stop the page with a message when one upload holds more files than the budget allows."""
    limit = settings().budget.files_per_upload
    if len(uploads) > limit:
        st.error(f"{len(uploads)} files in one upload; at most {limit} are scored at a time. "
                 f"Remove some and upload the rest as a second batch.")
        st.stop()


def new_account_form(key: str, submit: str, create, *, name_label: str, example: str, password_label: str,
                     extra, refused=None, clear_on_submit: bool = False):
    """A form for a new local account: its name, one more field (`extra`), the password typed twice.

    Args:
        key: the form's key.
        submit: the label of its (primary) submit button.
        create: `create(name, password, extra_value)` makes the account and returns it; raises PneumoError to refuse.
        name_label: the name field's label; `example` its placeholder ("e.g. j.smith").
        password_label: the first password field's label (the minimum length is added to it).
        extra: `extra(column)` draws the field that differs (setup code, role) beside the name; returns its value.
        refused: `refused(name, error)` is called once a refusal is shown (to record it).
        clear_on_submit: empty the fields after a submit.
    Returns:
        What `create` returned, once the account exists; else None (not submitted, or refused).
    """
    with st.form(key, clear_on_submit=clear_on_submit):
        left, right = st.columns(2)
        name = left.text_input(name_label, placeholder=f"e.g. {example}")
        value = extra(right)
        password = left.text_input(f"{password_label} (at least {MIN_PASSWORD} characters)", type="password")
        again = right.text_input("Password again", type="password")
        if not st.form_submit_button(submit, type="primary"):
            return None
        try:
            return create(name, confirm_password(password, again), value)
        except PneumoError as error:
            st.error(str(error).capitalize() + ".")   # the library's account messages: no film or archive text
            if refused:
                refused(name, error)
            return None


def strength_scale(position: float, words: str) -> None:
    """The call's strength on a scale: the threshold in the middle, far below at the left, far above at the right."""
    left = max(0.0, min(100.0, 100 * position))
    st.html(f"""<div style="margin:0.2rem 0 0.6rem 0" aria-label="strength of the call: {words}">
<div style="position:relative;height:14px;border-radius:7px;
 background:linear-gradient(90deg,#2d6a4f 0%,#a7c957 40%,#f2e8cf 50%,#f4a259 60%,#bc4749 100%)">
<div style="position:absolute;left:50%;top:-3px;height:20px;border-left:2px dashed #333"></div>
<div style="position:absolute;left:calc({left:.1f}% - 7px);top:-4px;width:14px;height:22px;border-radius:3px;
 background:#111;border:2px solid #fff"></div></div>
<div style="display:flex;justify-content:space-between;font-size:0.8rem;color:#555;flex-wrap:wrap">
<span>well below</span><span>threshold</span><span>well above</span></div></div>""")


# --- Diagnose: film identity and which film is open ---------------------------------------------------------

def film_key(d) -> str:
    """A film's identity on the pages: its content hash (two films both named image.jpeg stay two films)."""
    return d.sha256[:16]


def open_new_films(keys: list[str], state_key: str = "open_film") -> None:
    """A new upload opens itself: the first of `keys` (in worklist order) not shown before in this session.

    Call before the widget keyed `state_key` is drawn.
    """
    seen = st.session_state.setdefault("_films_seen", set())
    new = [k for k in keys if k not in seen]
    if new:
        st.session_state[state_key] = new[0]
    seen.update(keys)


def open_clicked_row(table_key: str = "worklist", order_key: str = "_worklist_keys",
                     state_key: str = "open_film") -> None:
    """Callback of the worklist table: open the film of the clicked row."""
    rows = st.session_state[table_key].selection.rows
    if rows:
        st.session_state[state_key] = st.session_state[order_key][rows[0]]

"""Streamlit glue shared by the pages: cached model loading, the first-run message, and who is signed in.

Everything here is about the screen; computing stays in pneumo_core.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import sys
import threading
import time

import cv2
import numpy as np
import pandas as pd
import streamlit as st

from pneumo_core.errors import AccountError, PneumoError, SignInError
from pneumo_core.imaging.films import DecodeBudget, read_film
from pneumo_core.jobs.argv import params_from_model
from pneumo_core.jobs.progress_lines import describe
from pneumo_core.jobs.queue import JobQueue
from pneumo_core.learn import store
from pneumo_core.lru import ByteLRU
from pneumo_core.records import registry
from pneumo_core.records.access import Actor
from pneumo_core.records.users import MIN_PASSWORD, UserStore, oidc_role
from pneumo_core.settings import load_settings

TRAIN_COMMAND = "python -m pneumo_core train --data DATA_DIR"
# The memory budget (README "Memory budget"). The cache sizes are read once, when this module is
# imported (decorators take them then); the per-request limits are read on each call.
BUDGET = load_settings().budget
IDLE_MINUTES = 30   # a session left alone this long is signed out (a shared ward workstation)
log = logging.getLogger("pneumo.dashboard")


def settings():
    return load_settings()


def versions() -> list[dict]:
    return registry.list_versions(settings().models_dir)


@st.cache_resource(show_spinner="Loading model…", max_entries=BUDGET.models_loaded)
def diagnoser_for(version_dir: str):
    """One loaded model per version for the whole server (shared by every session); at most
    `models_loaded` versions at once, the least recently used unloaded first."""
    from pneumo_core.learn.model import PneumoModel
    from pneumo_core.serve.diagnosis import Diagnoser
    return Diagnoser(PneumoModel.load(version_dir))


def diagnoser(version_id: str | None = None):
    """The model for `version_id` (default: the active one), or the first-run message and stop."""
    models_dir = settings().models_dir
    try:
        path = registry.resolve(models_dir, version_id)
    except registry.RegistryError:
        first_run()
        st.stop()
    return diagnoser_for(str(path))


def _keras_session_kept(*args, **kwargs) -> None:
    """Stands in for `keras.backend.clear_session` in the dashboard process (`keep_keras_session`)."""


def keep_keras_session() -> None:
    """Stop Streamlit clearing Keras's global session after every run; nothing to do before Keras is imported.

    Streamlit ends every script and fragment run with `keras.backend.clear_session()` (not configurable):
    a full garbage collection over TensorFlow's objects plus an emptied kernel cache, so the next diagnosis
    re-instantiates its TensorFlow functions, and one session's clear can race another's model build. Under
    bench/load.py (11 sessions, 70 films) py-spy put 23 % of the dashboard's busy time there (15 % the
    collection, 7 % re-instantiating). The dashboard's models live in `st.cache_resource` for the server's
    life: it keeps no per-run Keras state that would need clearing.
    """
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.backend.clear_session = _keras_session_kept


def first_run() -> None:
    st.info("No model has been trained yet. Start one on the **Retrain** page, or from a terminal (about five "
            "minutes on a laptop), then reload this page:")
    st.code(TRAIN_COMMAND, language="bash")


def job_queue() -> JobQueue:
    return JobQueue(settings())


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
            st.error(str(error))
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
        st.error(str(error))
    else:
        was = f" (was {entry['from']})" if entry["from"] else ""
        st.toast(f"{entry['action'].capitalize()}: {entry['to']} is now the active model{was}.")
        st.rerun()


def current_train_params():
    """TrainConfig for 'Retrain with current settings': the configured data dir and the active
    model's options (the library's defaults before the first model)."""
    s = settings()
    active = registry.active_version(s.models_dir)
    if active:
        return params_from_model(store.read_json(s.models_dir / active, "metadata.json"), str(s.data_dir))
    return params_from_model({"backbone": s.backbone, "image_size": s.image_size, "weights": "auto",
                              "training": {"seed": s.seed}}, str(s.data_dir))


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


def version_dir(version_id: str):
    return settings().models_dir / version_id


def thumbnail_uri(gray: np.ndarray, size: int = 96) -> str:
    """A small PNG data URI for tables."""
    scale = size / max(gray.shape)
    small = cv2.resize(gray, (max(1, int(gray.shape[1] * scale)), max(1, int(gray.shape[0] * scale))))
    return "data:image/png;base64," + base64.b64encode(cv2.imencode(".png", small)[1].tobytes()).decode()


def test_predictions(version_id: str) -> pd.DataFrame:
    return store.test_predictions(version_dir(version_id))


def decode_budget() -> DecodeBudget:
    """A fresh per-request pixel budget: one per page run, passed to every `diagnosis` of the run."""
    return DecodeBudget(settings().budget.request_pixels)


def check_upload_count(uploads: list) -> None:
    """Stop the page with a message when one upload holds more files than the budget allows."""
    limit = settings().budget.files_per_upload
    if len(uploads) > limit:
        st.error(f"{len(uploads)} files in one upload; at most {limit} are scored at a time. "
                 f"Remove some and upload the rest as a second batch.")
        st.stop()


def for_display(gray: np.ndarray, d, side: int = BUDGET.display_side):
    """(film, Diagnosis) shrunk for the screen: longest side <= `side`, a float heatmap resized with it
    and kept as float16 (a uint8 heatmap is already model-sized and kept as it is)."""
    scale = side / max(gray.shape)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                          interpolation=cv2.INTER_AREA)
    heat = d.heatmap
    if heat is not None and heat.dtype != np.uint8:
        if heat.shape != gray.shape:
            heat = cv2.resize(heat.astype(np.float32), (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_AREA)
        heat = heat.astype(np.float16)
    return gray, dataclasses.replace(d, heatmap=heat)


@st.cache_resource(show_spinner=False)
def _diagnosis_cache() -> ByteLRU:
    return ByteLRU(BUDGET.cache_bytes, ttl_s=BUDGET.cache_ttl_s)


def diagnosis(version_path: str, data: bytes, name: str, method: str = "gradcam",
              budget: DecodeBudget | None = None):
    """(grayscale film, Diagnosis) of raw file bytes, both display-sized (`for_display`), cached by
    content, name, model and method.

    The cache is one byte-bounded LRU for the server (`cache_bytes`, `cache_ttl_s`): each entry holds
    <= ~3 MB (1024 px film + float16 heatmap), never the full-size film or a full-size float map.

    Args:
        version_path, data, name, method: the model version's folder, the file's bytes and name, the CAM method.
        budget: the request's `DecodeBudget` (charged only when the film is decoded, not on a cache hit).
    Raises ImageError for files that are not usable films, or over a limit.
    """
    key = (version_path, hashlib.sha256(data).hexdigest(), name, method)
    cache = _diagnosis_cache()
    hit = cache.get(key)
    if hit is not None:
        return hit
    film = read_film(data, name, max_pixels=settings().budget.max_film_pixels, budget=budget)
    gray, d = for_display(film.gray, diagnoser_for(version_path).diagnose(film.gray, name, method, data, film.info))
    cache.put(key, (gray, d), gray.nbytes + (d.heatmap.nbytes if d.heatmap is not None else 0) + 4096)
    return gray, d


@st.cache_data(show_spinner=False, max_entries=BUDGET.browser_entries, ttl=BUDGET.cache_ttl_s)
def error_overlay(version_path: str, film_path: str, side: int = 384) -> np.ndarray:
    """The Metrics error browser's picture of a test film: its Grad-CAM overlay, <= `side` px (~0.4 MB).

    Its own small cache (`browser_entries`, a few pages' worth), so paging through the errors never
    fills the diagnosis cache.
    """
    from pneumo_core.explain.cam import overlay  # imports TensorFlow: only where a model is used
    film = read_film(film_path, max_pixels=settings().budget.max_film_pixels)
    gray, d = for_display(film.gray, diagnoser_for(version_path).diagnose(film.gray, film_path), side)
    return overlay(gray, d.heatmap, 0.4)


@st.cache_resource(show_spinner=False)
def _audit_trail_at(path: str):
    from pneumo_core.records.audit import AuditTrail
    return AuditTrail(path)


def audit_trail():
    """The audit database in PNEUMO_HOME, opened once per server."""
    return _audit_trail_at(str(settings().audit_path))


def diagnose_and_record(version_path: str, data: bytes, name: str, method: str = "gradcam",
                        budget: DecodeBudget | None = None):
    """`diagnosis`, plus one audit row the first time this session is shown that call.

    Reruns (a slider moved, another film picked) show the cached call again and add no row; the
    same film shown in another session, or with another heatmap method, is a new row.
    """
    gray, d = diagnosis(version_path, data, name, method, budget)
    key = (d.sha256, d.model_id, d.method)
    recorded = st.session_state.setdefault("_audit_recorded", set())
    if key not in recorded:
        # The time it is shown to this user, not the cached result's: the same film shown later or to
        # someone else is a new row with its own time. Never the file name (it often holds the patient's).
        audit_trail().record(dataclasses.replace(d, name=""), source="dashboard", who=who())   # `shown`: now
        recorded.add(key)
    return gray, d


# --- Diagnose and Heatmaps: film identity, the call's strength, faithfulness -------------------------------

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


DISPLAY_SIDE = 800   # px: a film column is at most ~600 px wide; more only costs encoding time on every rerun


def _session_cache(name: str, key: str, make):
    """A per-session memo (film key -> small display data), so a rerun re-encodes nothing it has shown."""
    memo = st.session_state.setdefault(name, {})
    if key not in memo:
        memo[key] = make()
    return memo[key]


def display_film(key: str, gray: np.ndarray) -> np.ndarray:
    """The film shrunk for the screen (longer side DISPLAY_SIDE), computed once per session."""
    from pneumo_core.explain.heatmap import for_display
    return _session_cache("_display_films", key, lambda: for_display(gray, DISPLAY_SIDE))


def film_jpeg(key: str, gray: np.ndarray) -> bytes:
    """The plain film for st.image, encoded once per session."""
    return _session_cache("_film_jpegs", key, lambda: jpeg(display_film(key, gray)))


def film_thumbnail(key: str, gray: np.ndarray) -> str:
    """`thumbnail_uri` of a film, made once per session."""
    return _session_cache("_thumbnails", key, lambda: thumbnail_uri(gray))


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Gray or RGB uint8 -> JPEG bytes (for the screen: ~5x faster to encode than PNG at 800 px)."""
    bgr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


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


@st.cache_data(show_spinner=False, max_entries=64)
def faithfulness(version_path: str, data: bytes, name: str, method: str = "gradcam"):
    """The deletion curve of the film's stored heatmap (cached like `diagnosis`)."""
    gray, d = diagnosis(version_path, data, name, method)
    return diagnoser_for(version_path).faithfulness(gray, d.heatmap, method)


def figures_that_apply(version_path: str):
    """The TrackRecord of a version (site figures where measured, else internal, labelled)."""
    from pneumo_core.evaluate.track_record import track_record
    return track_record(version_path)


# Who is signed in ------------------------------------------------------------------------------

def actor() -> Actor | None:
    """The signed-in user (`st.session_state["actor"]`, set only by the server), or None."""
    current = st.session_state.get("actor")
    return current if isinstance(current, Actor) else None


def who() -> str:
    """The signed-in user's name, for the records."""
    current = actor()
    return current.name if current else "nobody"


def may(action: str) -> bool:
    """True when the signed-in user's role allows `action` (a key of access.PERMISSIONS)."""
    current = actor()
    return bool(current and current.may(action))


def require_page(action: str) -> Actor:
    """The signed-in user if their role allows `action`; else a message and the page stops.

    app.py shows each role only its pages; this also guards a page script run on its own.
    """
    current = actor()
    if current is None:
        st.warning("Sign in first.")
        st.stop()
    if not current.may(action):
        st.error(f"{current.name} ({current.role}) may not use this page.")
        st.stop()
    return current


def users() -> UserStore:
    return _users_at(str(settings().home))


@st.cache_resource(show_spinner=False)
def _users_at(home: str) -> UserStore:
    return UserStore(home)


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
            if password != again:
                raise AccountError("the two passwords differ")
            return create(name, password, value)
        except PneumoError as error:
            st.error(str(error).capitalize() + ".")
            if refused:
                refused(name, error)
            return None


def client() -> str:
    """The browser's address for rate limiting ('local' on this machine or under AppTest)."""
    try:
        return st.context.ip_address or "local"
    except Exception:  # no client context (AppTest)
        return "local"


def audit_event(kind: str, who_: str, **details) -> None:
    """One event row (sign-in, sign-out, failed sign-in, user change, download) in the audit trail.

    Calls `AuditTrail.event` (the chained audit of this issue's store branch); until that exists,
    only the server log has it.
    """
    trail = audit_trail()
    if hasattr(trail, "event"):
        trail.event(kind, who_, source="dashboard", **details)
    else:
        log.info("%s by %s %s", kind, who_, details)


def sign_in(signed_in: Actor, source: str) -> None:
    """Make `signed_in` this session's user ('local' account or 'oidc') and record it."""
    st.session_state["actor"] = signed_in
    st.session_state["auth_source"] = source
    st.session_state["last_seen"] = time.time()
    audit_event("sign_in", signed_in.name, role=signed_in.role, method=source)


def sign_out(reason: str = "signed out") -> None:
    """End this session's sign-in (and the identity provider's cookie for OIDC users)."""
    current, source = actor(), st.session_state.get("auth_source")
    if current:
        audit_event("sign_out", current.name, reason=reason)
    for key in ("actor", "auth_source", "last_seen", "_audit_recorded"):
        st.session_state.pop(key, None)
    if source == "oidc" and oidc_configured():
        st.logout()


def oidc_configured() -> bool:
    """True when `.streamlit/secrets.toml` has an [auth] section (OpenID Connect sign-in)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def oidc_logged_in() -> bool:
    try:
        return bool(st.user.is_logged_in)
    except Exception:  # authentication not configured
        return False


def signed_in_actor() -> Actor | None:
    """This session's user after the checks of every run, or None (show the sign-in page).

    A local account disabled or given another role since sign-in takes effect on the next click;
    an OIDC user is mapped to a role from the provider's claims; an idle session is signed out.
    An actor put in the session by a test harness (no `auth_source`) is taken as it is: session
    state lives on the server and no browser message can set it.
    """
    current, source = actor(), st.session_state.get("auth_source")
    if current is None and oidc_logged_in():
        try:
            sign_in(Actor(str(st.user.get("email")).strip().lower(), oidc_role(st.user.to_dict(), settings().home)),
                    "oidc")
        except SignInError as error:
            st.session_state["oidc_refused"] = str(error)
            return None
        current, source = actor(), "oidc"
    if current is None or source is None:
        return current
    if time.time() - st.session_state.get("last_seen", 0) > IDLE_MINUTES * 60:
        sign_out(f"idle for more than {IDLE_MINUTES} minutes")
        st.session_state["signed_out_because"] = f"Signed out after {IDLE_MINUTES} minutes without activity."
        return None
    st.session_state["last_seen"] = time.time()
    if source == "oidc" and not oidc_logged_in():
        sign_out("identity provider session ended")
        return None
    if source == "local":
        try:
            account = users().get(current.name)
        except AccountError:  # the account is gone (a restored PNEUMO_HOME)
            account = None
        if account is None or account["disabled"]:
            sign_out("account disabled")
            return None
        if account["role"] != current.role:
            st.session_state["actor"] = current = Actor(current.name, account["role"])
    return current


_setup_lock = threading.Lock()


def setup_code_if_needed() -> bool:
    """True when no administrator exists yet; then makes sure a setup code is pending and printed.

    The code goes to the server's terminal only (whoever started `make run`), never to a page.
    """
    accounts = users()
    if accounts.has_admin():
        return False
    with _setup_lock:
        if not accounts.setup_code_pending():
            code = accounts.issue_setup_code()
            print(f"\nPneumo: no administrator yet. One-time setup code: {code}\n"
                  f"  Open the dashboard and enter it to create the first administrator (valid 60 minutes, "
                  f"single use),\n  or run: python -m pneumo_core users add NAME --role admin\n",
                  file=sys.stderr, flush=True)
    return True

"""What the pages load: settings, the registry's versions, models and stores, each opened once per server."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from pneumo_core.jobs.argv import params_from_model
from pneumo_core.jobs.queue import JobQueue
from pneumo_core.learn import store
from pneumo_core.records import registry
from pneumo_core.records.users import UserStore
from pneumo_core.settings import load_settings

# The memory budget (README "Memory budget"). The cache sizes are read once, when this module is
# imported (decorators take them then); the per-request limits are read on each call.
BUDGET = load_settings().budget


def settings():
    """The settings (environment and secrets), read again on every call."""
    return load_settings()


def versions() -> list[dict]:
    """The registry's versions, newest first, each with its `active` flag."""
    return registry.list_versions(settings().models_dir)


def version_dir(version_id: str):
    """The folder of a model version."""
    return settings().models_dir / version_id


def test_predictions(version_id: str) -> pd.DataFrame:
    """A version's predictions on its internal test split (path, label, probability)."""
    return store.test_predictions(version_dir(version_id))


@st.cache_resource(show_spinner="Loading model…", max_entries=BUDGET.models_loaded)
def diagnoser_for(version_dir: str):
    """One loaded model per version for the whole server (shared by every session); at most
    `models_loaded` versions at once, the least recently used unloaded first. Integrity checked on
    load (`serve.loading.load_version`): a swapped model is refused with a message naming integrity."""
    from pneumo_core.serve.diagnosis import Diagnoser
    from pneumo_core.serve.loading import load_version
    s = settings()
    return Diagnoser(load_version(s.models_dir, version_dir, s.verify_key))


def job_queue() -> JobQueue:
    """The job queue of PNEUMO_HOME."""
    return JobQueue(settings())


def current_train_params():
    """TrainConfig for 'Retrain with current settings': the configured data dir and the active
    model's options (the library's defaults before the first model)."""
    s = settings()
    active = registry.active_version(s.models_dir)
    if active:
        return params_from_model(store.read_json(s.models_dir / active, "metadata.json"), str(s.data_dir))
    return params_from_model({"backbone": s.backbone, "image_size": s.image_size, "weights": "auto",
                              "training": {"seed": s.seed}}, str(s.data_dir))


def figures_that_apply(version_path: str):
    """The TrackRecord of a version (site figures where measured, else internal, labelled)."""
    from pneumo_core.evaluation.track_record import track_record
    return track_record(version_path)


@st.cache_resource(show_spinner=False)
def _audit_trail_at(path: str):
    from pneumo_core.records.anchor import audit_trail as anchored_trail
    return anchored_trail(settings())   # anchored outside the database on promotions and at intervals


def audit_trail():
    """The audit database in PNEUMO_HOME, opened once per server."""
    return _audit_trail_at(str(settings().audit_path))


@st.cache_resource(show_spinner=False)
def _users_at(home: str) -> UserStore:
    return UserStore(home)


def users() -> UserStore:
    """The local accounts of PNEUMO_HOME, opened once per server."""
    return _users_at(str(settings().home))

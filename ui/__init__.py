"""The dashboard kit: what the pages (views/) share, as `ui.<name>`.

- loaders: settings, versions, models and stores, each opened once per server;
- diagnoses: calls cached for every session (`cache.ByteLRU`), recorded once per session;
- images: display-sized films, JPEG and thumbnail encodings;
- widgets: first-run message, version picker, job progress, promote, account form, strength scale;
- session: who is signed in, glue over the library's sign-in policy (`pneumo_core.records.signin`);
- keras_session: Keras's state kept across runs;
- text: `literal`, the one escape for untrusted text (headers, PACS, file and user names, errors) in Markdown.

Screen only: every decision is the library's (pneumo_core never imports this package or Streamlit).
"""
from ui.cache import ByteLRU
from ui.diagnoses import (
    active_card,
    decode_budget,
    diagnose_and_record,
    diagnoser,
    diagnosis,
    diagnosis_cache,
    error_overlay,
    faithfulness,
)
from ui.images import DISPLAY_SIDE, display_film, film_jpeg, film_thumbnail, for_display, jpeg, thumbnail_uri
from ui.keras_session import keep_keras_session
from ui.loaders import (
    BUDGET,
    audit_trail,
    current_train_params,
    diagnoser_for,
    figures_that_apply,
    job_queue,
    settings,
    test_predictions,
    users,
    version_dir,
    versions,
)
from ui.prior import prior_for_row, prior_for_upload
from ui.session import (
    actor,
    audit_event,
    client,
    may,
    oidc_configured,
    oidc_logged_in,
    record_refusal,
    require_page,
    setup_code_if_needed,
    sign_in,
    sign_out,
    signed_in_actor,
    who,
)
from ui.text import literal
from ui.widgets import (
    check_upload_count,
    film_key,
    first_run,
    job_progress,
    new_account_form,
    open_clicked_row,
    open_new_films,
    promote,
    strength_scale,
    version_picker,
)

__all__ = [
    "BUDGET", "DISPLAY_SIDE", "ByteLRU", "active_card", "actor", "audit_event", "audit_trail", "check_upload_count",
    "client", "current_train_params", "decode_budget", "diagnose_and_record", "diagnoser", "diagnoser_for",
    "diagnosis", "diagnosis_cache", "display_film", "error_overlay", "faithfulness", "figures_that_apply",
    "film_jpeg", "film_key", "film_thumbnail", "first_run", "for_display", "job_progress", "job_queue", "jpeg",
    "keep_keras_session", "literal", "may", "new_account_form", "oidc_configured", "oidc_logged_in", "open_clicked_row",
    "open_new_films", "promote", "record_refusal", "require_page", "settings", "setup_code_if_needed", "sign_in",
    "sign_out", "signed_in_actor", "strength_scale", "test_predictions", "thumbnail_uri", "users", "version_dir",
    "version_picker", "versions", "who",
]
__all__ += ["prior_for_row", "prior_for_upload"]   # the prior film panel (ui/prior.py)

"""The sign-in page shows the identity provider's words as text: an email is the provider's to choose."""
from conftest import REPO
from helpers import shown
from streamlit.testing.v1 import AppTest

EMAIL = "**dr_who**@example.org"


def test_an_oidc_refusal_naming_a_markdown_email_is_shown_as_typed(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(str(REPO / "views" / "signin.py"), default_timeout=60)
    at.session_state["oidc_refused"] = f"{EMAIL} has no role in Pneumo"
    at.run()
    (warning,) = at.warning
    assert shown(warning.value) == f"{EMAIL} has no role in Pneumo"
    assert "\\*\\*dr\\_who\\*\\*" in warning.value        # escaped, so not bold and not a link

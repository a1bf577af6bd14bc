"""The dashboard as `make run` starts it (`streamlit run app.py`, a subprocess): where it listens."""
from helpers import start_dashboard, stop


def test_the_dashboard_started_as_make_run_does_listens_on_this_machine_only(tmp_path):
    import psutil
    process, _ = start_dashboard(tmp_path / "home", tmp_path / "server.log", address=None)  # config.toml decides
    try:
        listening = {c.laddr.ip for c in psutil.Process(process.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
    finally:
        stop(process)
    assert listening == {"127.0.0.1"}

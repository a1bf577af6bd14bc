"""Fixtures of the integration tier: a PostgreSQL server, and the records' engine (SQLite or PostgreSQL)."""
from __future__ import annotations

import pytest
from postgres import PostgresServer, binaries


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test session (per xdist worker); skips when PostgreSQL is not installed."""
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; `make system-packages` does it)")
    server = PostgresServer(bin_dir).start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request, monkeypatch):
    """Each test twice: the SQLite files (PNEUMO_DATABASE_URL unset), and a fresh PostgreSQL database.

    Returns the URL set in PNEUMO_DATABASE_URL, or None for SQLite.
    """
    if request.param == "sqlite":
        monkeypatch.delenv("PNEUMO_DATABASE_URL", raising=False)
        return None
    url = request.getfixturevalue("postgres_server").new_database()
    monkeypatch.setenv("PNEUMO_DATABASE_URL", url)
    return url

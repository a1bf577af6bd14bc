"""Audit trail: WAL, rows, CSV, the hash chain and its tamper checks, roles and concurrent writers."""
import csv
import io
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest

from pneumo_core.errors import PermissionDenied
from pneumo_core.records.access import Actor
from pneumo_core.records.audit import COLUMNS, AuditTrail, to_csv
from pneumo_core.serve.diagnosis import Diagnosis

SQLITE = "/usr/bin/sqlite3"


def fake(i: int, flag=False, label="NORMAL", model="v1") -> Diagnosis:
    return Diagnosis(name=f"Doe_Jane_{i}.png", probability=0.01 * i, label=label, threshold=0.5,
                     certainty="clear", heatmap=None, method="gradcam", model_id=model, sha256=f"{i:064x}",
                     ood_score=1.5 if flag else 0.5, ood_flag=flag)


def test_wal_mode_rows_filters_and_csv(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite")
    assert trail.journal_mode() == "wal"
    trail.record(fake(1), source="cli", who="alice")
    trail.record(fake(2, flag=True, label="PNEUMONIA", model="v2"), source="dashboard")
    newest, oldest = trail.rows()
    assert newest["sha256"] == f"{2:064x}" and newest["ood_flag"] is True and newest["who"] is None
    assert oldest["who"] == "alice" and oldest["source"] == "cli" and oldest["probability"] == pytest.approx(0.01)
    assert [r["model"] for r in trail.rows(call="PNEUMONIA")] == ["v2"]
    assert [r["model"] for r in trail.rows(flagged_only=True)] == ["v2"]
    assert [r["model"] for r in trail.rows(model="v1")] == ["v1"] and len(trail.rows(limit=1)) == 1
    table = list(csv.DictReader(io.StringIO(to_csv(trail.rows()))))
    assert tuple(table[0]) == COLUMNS and len(table) == 2 and table[1]["call"] == "NORMAL"
    assert "Doe" not in to_csv(trail.rows())  # never the file name (it may name the patient)


def test_a_second_opening_keeps_the_rows(tmp_path):
    AuditTrail(tmp_path / "a.sqlite").record(fake(1))
    assert len(AuditTrail(tmp_path / "a.sqlite").rows()) == 1


def test_concurrent_writers_lose_nothing(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite")
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: trail.record(fake(i)), range(400)))
    assert len(set(ids)) == 400
    assert sorted(r["sha256"] for r in trail.rows()) == sorted(f"{i:064x}" for i in range(400))
    assert trail.verify()["ok"] and trail.verify()["rows"]["diagnoses"] == 400   # one chain, never forked


def _history(path):
    trail = AuditTrail(path)
    for i in range(6):
        trail.record(fake(i), source="dashboard", who=f"dr {i}")
    trail.event("job_submit", "lead", job=1, params={"trials": 2})
    trail.event("sign_in_failed", "mallory")
    return trail


def _shell(path, sql):
    return subprocess.run([SQLITE, str(path), sql], capture_output=True, text=True, timeout=30)


def test_a_normal_history_verifies_and_the_cli_says_intact(tmp_path, cli):
    trail = _history(tmp_path / "audit.sqlite")
    assert trail.verify() == {"ok": True, "problem": None, "rows": {"diagnoses": 6, "events": 2},
                              "last": trail.verify()["last"]}
    result = cli("audit", "verify", home=tmp_path)
    assert result.returncode == 0 and "intact: 6 diagnoses row(s)" in result.stdout, result.stderr


def test_the_database_itself_refuses_update_and_delete(tmp_path):
    _history(tmp_path / "audit.sqlite")
    for sql in ("UPDATE diagnoses SET call = 'NORMAL' WHERE id = 2", "DELETE FROM diagnoses WHERE id = 2",
                "UPDATE events SET who = 'x'", "DELETE FROM events"):
        result = _shell(tmp_path / "audit.sqlite", sql)
        assert result.returncode != 0 and "append-only" in result.stderr
    assert AuditTrail(tmp_path / "audit.sqlite").verify()["ok"]


def test_the_apps_own_connection_cannot_change_delete_or_unlock_rows(tmp_path):
    trail = _history(tmp_path / "audit.sqlite")
    with closing(trail.connection()) as db:
        for sql in ("UPDATE diagnoses SET who = 'x'", "DELETE FROM diagnoses", "DELETE FROM events",
                    "DROP TRIGGER diagnoses_no_update", "DROP TABLE events", "ALTER TABLE diagnoses RENAME TO d",
                    "PRAGMA writable_schema = 1"):
            with pytest.raises(sqlite3.DatabaseError):
                db.execute(sql)
    assert len(trail.rows()) == 6 and trail.verify()["ok"]


@pytest.mark.parametrize("attack, broken", [
    ("UPDATE diagnoses SET call = 'NORMAL', probability = 0.1 WHERE id = 3",
     "diagnoses row 3: its content does not match its hash"),
    ("DELETE FROM diagnoses WHERE id = 3", "diagnoses: rows 3..3 are missing"),
    ("DELETE FROM diagnoses WHERE id = 6", "diagnoses: the newest rows after row 5 are missing"),
    ("UPDATE events SET who = 'someone else' WHERE id = 2", "events row 2: its content does not match"),
])
def test_verify_names_the_first_link_an_attacker_broke_with_the_sqlite3_shell(tmp_path, attack, broken, cli):
    _history(tmp_path / "audit.sqlite")
    # An attacker with the file drops the triggers first, then edits.
    drop = "".join(f"DROP TRIGGER {t}_no_{v};" for t in ("diagnoses", "events") for v in ("update", "delete"))
    result = _shell(tmp_path / "audit.sqlite", drop + attack)
    assert result.returncode == 0, result.stderr
    assert broken in AuditTrail(tmp_path / "audit.sqlite").verify()["problem"]
    verified = cli("audit", "verify", home=tmp_path)
    assert verified.returncode == 1 and broken in verified.stdout


def test_a_rewritten_row_with_a_recomputed_hash_still_breaks_the_next_link(tmp_path):
    from pneumo_core.records.audit import chain_hash, hashed_content
    trail = _history(tmp_path / "audit.sqlite")
    with closing(sqlite3.connect(tmp_path / "audit.sqlite")) as db:
        db.row_factory = sqlite3.Row
        row = dict(db.execute("SELECT * FROM diagnoses WHERE id = 2").fetchone())
    row["call"] = "PNEUMONIA"
    new_hash = chain_hash(row["prev_hash"], hashed_content(row))
    _shell(tmp_path / "audit.sqlite", "DROP TRIGGER diagnoses_no_update; "
           f"UPDATE diagnoses SET call = 'PNEUMONIA', hash = '{new_hash}' WHERE id = 2")
    assert "diagnoses row 3: its link to the previous row is broken" in trail.verify()["problem"]


def test_an_audit_database_from_before_the_chain_is_sealed_and_kept(tmp_path):
    path = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(path)) as db:     # the schema of the previous release
        db.execute("CREATE TABLE diagnoses (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, sha256 TEXT "
                   "NOT NULL, model TEXT NOT NULL, probability REAL NOT NULL, threshold REAL NOT NULL, call TEXT "
                   "NOT NULL, ood_score REAL, ood_flag INTEGER, cam_method TEXT, source TEXT, who TEXT)")
        db.execute("INSERT INTO diagnoses (time, sha256, model, probability, threshold, call, source, who) "
                   "VALUES ('2025-01-01T00:00:00+00:00', 'ab', 'v1', 0.9, 0.5, 'PNEUMONIA', 'cli', 'root')")
        db.commit()
    trail = AuditTrail(path)
    trail.record(fake(1), source="cli", who="x")
    (new, old) = trail.rows()
    assert (old["who"], old["shown"], new["who"]) == ("root", "2025-01-01T00:00:00+00:00", "x")
    assert trail.verify()["ok"]
    assert _shell(path, "UPDATE diagnoses SET who = 'y' WHERE id = 1").returncode != 0


def test_each_showing_is_a_row_with_its_own_time_and_user(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite")
    d = fake(1)      # one computed (cached) call shown twice
    trail.record(d, source="dashboard", who="dr a", shown="2026-01-01T10:00:00.000+00:00")
    trail.record(d, source="dashboard", who="dr b")
    later, first = trail.rows()
    assert first["time"] == later["time"] == d.when
    assert first["shown"] == "2026-01-01T10:00:00.000+00:00" and later["shown"] > first["shown"]
    assert (first["who"], later["who"]) == ("dr a", "dr b")


def test_viewing_and_exporting_need_the_role_and_are_recorded(tmp_path):
    trail = _history(tmp_path / "audit.sqlite")
    for role in ("clinician", "ml_lead"):
        with pytest.raises(PermissionDenied, match="may not view audit"):
            trail.view(Actor("someone", role))
        with pytest.raises(PermissionDenied, match="may not export audit"):
            trail.export(Actor("someone", role))
    auditor = Actor("ann", "auditor")
    assert len(trail.view(auditor, call="NORMAL")) == 6
    exported = list(csv.DictReader(io.StringIO(trail.export(auditor))))
    assert len(exported) == 6 and "Doe" not in str(exported)
    kinds = [(e["kind"], e["who"]) for e in trail.events()]
    assert kinds[:2] == [("audit_export", "ann"), ("audit_view", "ann")]
    assert trail.events(kind="audit_view")[0]["details"] == {"filters": {"call": "NORMAL"}, "rows": 6}
    assert trail.verify()["ok"]


def test_audit_verify_also_checks_the_promotions_chain(tmp_path, cli):
    _history(tmp_path / "audit.sqlite")
    models = tmp_path / "models"
    models.mkdir()
    (models / "promotions.jsonl").write_text('{"when": "x", "who": "a", "action": "promote", "from": null, '
                                             '"to": "v1", "prev": "00", "hash": "11"}\n')
    (models / "ACTIVE").write_text("v1\n")
    result = cli("audit", "verify", home=tmp_path)
    assert result.returncode == 1 and "promotions.jsonl entry 1: its link to the previous entry is broken" in \
        result.stdout

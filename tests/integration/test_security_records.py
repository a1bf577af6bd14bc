"""Issue 23, the records' side: a swapped model is refused, a rewritten or rolled-back audit chain is
caught through its anchors, the anchors reach a syslog server, and `users unlock` ends a wait."""
import json
import socket
import sqlite3
from contextlib import closing

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import synthetic_film
from helpers import PASSWORD

from pneumo_core.cli.main import main
from pneumo_core.errors import IntegrityError
from pneumo_core.learn import store
from pneumo_core.records import registry
from pneumo_core.records.access import Actor
from pneumo_core.records.anchor import Anchors, audit_trail
from pneumo_core.records.audit import GENESIS, TABLES, AuditTrail, chain_hash, hashed_content
from pneumo_core.records.signing import generate_keys
from pneumo_core.records.users import MAX_FAILURES, SignInError, UserStore
from pneumo_core.serve.diagnosis import Diagnosis
from pneumo_core.settings import load_settings

LEAD = Actor("lead", "ml_lead")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """PNEUMO_HOME plus an anchor file and keys outside it, as the settings read them."""
    monkeypatch.setenv("PNEUMO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PNEUMO_ANCHOR_FILE", str(tmp_path / "outside" / "anchors.jsonl"))
    (tmp_path / "outside").mkdir()
    return tmp_path


def tiny_model(platt):
    from pneumo_core.learn.model import assemble, build_classifier, build_embedder, build_head
    backbone = build_embedder("mobilenet_v2", 32, None).get_layer("backbone")
    return assemble("mobilenet_v2", backbone, build_classifier(backbone.output_shape[1:], [build_head(1280, 4)], platt))


def save(models_dir, version_id, model, signing_key=None):
    meta = {"created": version_id, "backbone": "mobilenet_v2", "image_size": 32, "normalisation": "equalize",
            "threshold": 0.5}
    path = store.save_version(models_dir, version_id, model, meta, {"test": {"roc_auc": 0.9}},
                              pd.DataFrame({"path": ["a"], "label": [1], "probability": [0.7]}),
                              pd.DataFrame({"epoch": [0], "loss": [0.5]}), {"best": []})
    registry.register(models_dir, version_id, signing_key)
    return path


def swap_in(version_dir, other_dir):
    """The attack of finding 1: another valid model.keras, its SHA-256 written into the card."""
    (version_dir / "model.keras").write_bytes((other_dir / "model.keras").read_bytes())
    card = json.loads((version_dir / "metadata.json").read_text())
    card["model_sha256"] = store.file_sha256(version_dir / "model.keras")
    (version_dir / "metadata.json").write_text(json.dumps(card, indent=2))


@pytest.fixture(scope="module")
def models():
    return tiny_model((1.0, 8.0)), tiny_model((1.0, -8.0))   # says PNEUMONIA / says NORMAL, whatever the film


@pytest.fixture
def film(tmp_path):
    path = tmp_path / "film.png"
    cv2.imwrite(str(path), synthetic_film(1, np.random.default_rng(0)))
    return path


def test_a_swapped_model_with_its_hash_rewritten_is_refused_by_predict_and_the_dashboard(env, models, film,
                                                                                       capsys):
    settings = load_settings()
    active = save(settings.models_dir, "20260101-000000-a", models[0])
    save(env / "elsewhere", "20260101-000000-b", models[1])
    assert main(["predict", str(film), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]["label"] == "PNEUMONIA"

    swap_in(active, env / "elsewhere" / "20260101-000000-b")
    store.verify_model_file(active)     # the card agrees with the swapped file: only the record outside knows
    assert main(["predict", str(film), "--json"]) == 2
    assert "integrity check failed" in capsys.readouterr().err

    from ui import loaders
    loaders.diagnoser_for.clear()
    with pytest.raises(IntegrityError, match="integrity check failed.*the record of its promotion"):
        loaders.diagnoser_for(str(active))

    def page():   # what the Diagnose page asks for: the active model
        import streamlit as st

        import ui
        ui.diagnoser()
        st.write("scored")

    from streamlit.testing.v1 import AppTest
    at = AppTest.from_function(page, default_timeout=120).run()
    assert not at.exception and [m.value for m in at.markdown] == []
    assert [e.value.replace("\\", "") for e in at.error] == [
        f"model version {active.name} refused (integrity check failed): its model.keras does not match the SHA-256 "
        f"in the record of its promotion (file {store.file_sha256(active / 'model.keras')[:12]}…, recorded "
        f"{registry.recorded_sha256(active.parent, active.name)[:12]}…). Restore the folder from a backup or "
        f"activate another version"]


def test_with_a_public_key_only_signed_versions_load_even_when_the_promotions_record_is_rewritten(
        env, models, monkeypatch):
    keys = env / "outside"
    generate_keys(keys / "models.key", keys / "models.pub")
    monkeypatch.setenv("PNEUMO_VERIFY_KEY", str(keys / "models.pub"))
    settings = load_settings()
    from pneumo_core.serve.loading import load_version
    active = save(settings.models_dir, "20260101-000000-a", models[0], signing_key=keys / "models.key")
    assert load_version(settings.models_dir, None, settings.verify_key).id == "20260101-000000-a"

    save(env / "elsewhere", "20260101-000000-b", models[1])
    swap_in(active, env / "elsewhere" / "20260101-000000-b")
    # ... and the promotions chain rewritten to the new hash, every link recomputed
    log = settings.models_dir / registry.LOG_FILE
    entry = json.loads(log.read_text())
    entry["model_sha256"] = store.file_sha256(active / "model.keras")
    entry["hash"] = chain_hash(entry["prev"], {k: v for k, v in entry.items() if k != "hash"})
    log.write_text(json.dumps(entry) + "\n")
    assert registry.verify_promotions(settings.models_dir)["ok"]
    with pytest.raises(IntegrityError, match=r"integrity check failed\): model.keras is not the file that was signed"):
        load_version(settings.models_dir, None, settings.verify_key)

    unsigned = save(settings.models_dir, "20260102-000000-c", models[0])
    with pytest.raises(IntegrityError, match="it is not signed"):
        load_version(settings.models_dir, unsigned.name, settings.verify_key)


def test_model_keys_inside_pneumo_home_are_refused(tmp_path):
    from pneumo_core.errors import ConfigError
    with pytest.raises(ConfigError, match="inside PNEUMO_HOME"):
        load_settings({"PNEUMO_HOME": str(tmp_path), "PNEUMO_VERIFY_KEY": str(tmp_path / "keys" / "models.pub")})


def diagnosis(i: int, who_model="v1") -> Diagnosis:
    return Diagnosis(name="x.png", probability=0.9, label="PNEUMONIA", threshold=0.5, certainty="clear",
                     heatmap=None, method="gradcam", model_id=who_model, sha256=f"{i:064x}", ood_score=0.5,
                     ood_flag=False)


def history(settings):
    """Diagnoses, a failed sign-in and a promotion, anchored on the promotion."""
    trail = audit_trail(settings)
    for i in range(3):
        trail.record(diagnosis(i), source="dashboard", who="ana")
    trail.event("sign_in_failed", "unknown account", source="dashboard", reason="wrong account name or password")
    version = settings.models_dir / "v1"
    version.mkdir(parents=True)
    (version / "model.keras").write_bytes(b"weights")
    (version / "metadata.json").write_text(json.dumps({"created": "1",
                                                       "model_sha256": store.file_sha256(version / "model.keras")}))
    registry.promote(settings.models_dir, "v1", actor=LEAD, trail=trail)
    return trail


def rewrite_whole_chain(path):
    """The attack of finding 2: triggers dropped, a diagnosis edited, a failed sign-in deleted, rows
    renumbered, every hash recomputed, the counter and the triggers put back."""
    with closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        triggers = [r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger'")]
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            db.execute(f"DROP TRIGGER {name}")
        db.execute("UPDATE diagnoses SET who = 'bob', probability = 0.1, call = 'NORMAL' WHERE id = 2")
        db.execute("DELETE FROM events WHERE kind = 'sign_in_failed'")
        for table in TABLES:
            rows = [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY id")]
            db.execute(f"DELETE FROM {table}")
            previous = GENESIS
            for number, row in enumerate(rows, 1):
                row.update(id=number, prev_hash=previous)
                row["hash"] = previous = chain_hash(previous, hashed_content(row))
                db.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                           list(row.values()))
            db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = ?", (len(rows), table))
        for sql in triggers:
            db.execute(sql)
        db.commit()


def test_audit_verify_catches_the_whole_chain_rewritten(env, capsys):
    settings = load_settings()
    history(settings)
    assert main(["audit", "verify"]) == 0
    assert "anchored: the chains hold all 1 anchor(s)" in capsys.readouterr().out
    rewrite_whole_chain(settings.audit_path)
    assert AuditTrail(settings.audit_path).verify()["ok"]       # the chain alone checks out: only anchors know
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("BROKEN:") and "the chain was rewritten" in out


def test_audit_verify_catches_an_older_copy_put_back(env, capsys):
    settings = load_settings()
    trail = history(settings)
    older = settings.audit_path.read_bytes()     # a copy taken now (the WAL is checkpointed on close)
    assert not settings.audit_path.with_name("audit.sqlite-wal").exists() or \
        settings.audit_path.with_name("audit.sqlite-wal").stat().st_size == 0
    trail.record(diagnosis(9), source="dashboard", who="ana")
    assert main(["audit", "anchor"]) == 0
    settings.audit_path.write_bytes(older)
    assert AuditTrail(settings.audit_path).verify()["ok"]
    capsys.readouterr()
    assert main(["audit", "verify"]) == 1
    assert "rolled back" in capsys.readouterr().out


def test_audit_verify_catches_the_promotions_rolled_back(env, capsys):
    settings = load_settings()
    history(settings)
    (settings.models_dir / registry.LOG_FILE).write_text("")
    (settings.models_dir / registry.ACTIVE_FILE).unlink()
    assert registry.verify_promotions(settings.models_dir)["ok"]
    assert main(["audit", "verify"]) == 1
    assert "promotions: 0 row(s) now, but 1 were anchored" in capsys.readouterr().out


def test_anchors_reach_a_syslog_server(env, monkeypatch):
    with closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(10)
        monkeypatch.setenv("PNEUMO_ANCHOR_SYSLOG", f"127.0.0.1:{server.getsockname()[1]}")
        settings = load_settings()
        audit_trail(settings).event("promotion", "lead", to="v1")
        line = server.recv(65536).decode()
    sent = json.loads(line.split("pneumo-anchor: ", 1)[1].rstrip("\x00"))
    assert sent["reason"] == "promotion" and sent["chains"]["events"][0] == 1
    assert sent["chains"]["events"][1] == AuditTrail(settings.audit_path).verify()["last"]["events"]
    assert Anchors.from_settings(settings).read()[-1]["chains"] == sent["chains"]


def test_users_unlock_ends_the_wait_and_is_recorded(env, capsys):
    settings = load_settings()
    accounts = UserStore(settings.home)
    accounts.add("root", "admin", PASSWORD, by=Actor("it-admin", "admin"))
    for _ in range(MAX_FAILURES):
        with pytest.raises(SignInError):
            accounts.verify("root", "guess-guess-guess", client="203.0.113.9")
    assert accounts.failures("pair:root|203.0.113.9") == MAX_FAILURES
    assert main(["users", "unlock", "root"]) == 0
    assert accounts.failures("pair:root|203.0.113.9") == 0
    change = AuditTrail(settings.audit_path).events(kind="user_change")[0]["details"]
    assert change["action"] == "unlock" and change["account"] == "root" and change["cleared"] == 2


def test_the_key_holder_signs_a_version_from_the_command_line(env, monkeypatch, capsys):
    keys = env / "outside"
    assert main(["sign", "--new-key", str(keys / "models.key"), "--public", str(keys / "models.pub")]) == 0
    assert oct((keys / "models.key").stat().st_mode & 0o777) == "0o600"
    assert main(["sign", "--new-key", str(keys / "models.key"), "--public", str(keys / "again.pub")]) == 2
    monkeypatch.setenv("PNEUMO_VERIFY_KEY", str(keys / "models.pub"))
    settings = load_settings()
    history(settings)                                      # version v1, promoted
    version = settings.models_dir / "v1"
    with pytest.raises(IntegrityError, match="it is not signed"):
        registry.check_version(version, settings.models_dir, settings.verify_key)
    assert main(["sign", "v1", "--key", str(keys / "models.key")]) == 0
    assert registry.check_version(version, settings.models_dir, settings.verify_key)["sha256"] == \
        store.file_sha256(version / "model.keras")
    assert AuditTrail(settings.audit_path).events(kind="model_signed")[0]["details"]["version"] == "v1"


def test_anchors_written_while_many_threads_append_all_hold(env, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from pneumo_core.records import anchor
    monkeypatch.setattr(anchor, "ANCHOR_EVERY", 3)
    settings = load_settings()
    trail = audit_trail(settings)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: trail.record(diagnosis(i), source="dashboard", who="ana"), range(120)))
    checked = Anchors.from_settings(settings).check()
    assert checked["ok"], checked["problem"]
    assert checked["anchors"] >= 2      # written while others appended, and each names a state that existed

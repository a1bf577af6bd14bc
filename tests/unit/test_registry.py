import errno
import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumo_core.errors import PermissionDenied
from pneumo_core.learn import store
from pneumo_core.learn.model import PneumoModel, assemble, build_classifier, build_embedder, build_head
from pneumo_core.records import registry
from pneumo_core.records.access import Actor
from pneumo_core.records.audit import AuditTrail

LEAD = Actor("lead", "ml_lead")


class FileModel:
    """Stands in for a Keras model where only the registry's file handling is under test."""

    def save(self, path):
        Path(path).write_bytes(b"weights")


@pytest.fixture(scope="module")
def small_model():
    backbone = build_embedder("mobilenet_v2", 32, None).get_layer("backbone")
    return assemble("mobilenet_v2", backbone,
                    build_classifier(backbone.output_shape[1:], [build_head(1280, 4), build_head(1280, 4)], (0.5, 0.1)))


def _save(models_dir, version_id, model):
    meta = {"created": version_id, "backbone": "mobilenet_v2", "image_size": 32, "normalisation": "equalize",
            "threshold": 0.42}
    path = store.save_version(models_dir, version_id, model, meta, {"test": {"roc_auc": 0.9}},
                              pd.DataFrame({"path": ["a"], "label": [1], "probability": [0.7]}),
                              pd.DataFrame({"epoch": [0], "loss": [0.5]}), {"best": []})
    registry.register(models_dir, version_id)
    return path


def test_round_trip_gives_the_same_predictions(tmp_path, small_model):
    path = _save(tmp_path, "20260101-000000-mobilenet_v2", small_model)
    assert sorted(p.name for p in path.iterdir()) == ["history.csv", "metadata.json", "metrics.json",
                                                       "model.keras", "predictions.csv", "tuner.json"]
    assert store.read_json(path, "metadata.json")["model_sha256"] == store.file_sha256(path / "model.keras")
    loaded = PneumoModel.load(path)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict_inputs(x), np.asarray(small_model(x)).reshape(-1), rtol=1e-5)
    assert loaded.threshold == 0.42 and loaded.id == "20260101-000000-mobilenet_v2"
    assert loaded.label(0.42) == "PNEUMONIA" and loaded.label(0.41) == "NORMAL"


def test_failed_save_leaves_nothing_visible(tmp_path, small_model):
    class Broken:
        def save(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError):
        _save(tmp_path, "20260101-000000-x", Broken())
    assert list(tmp_path.iterdir()) == []
    assert registry.list_versions(tmp_path) == []


def test_a_full_disk_during_save_leaves_no_half_version_and_says_so(tmp_path):
    class FillsTheDisk:
        def save(self, path):
            with open(path, "wb") as f:
                f.write(b"half a model")
                raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(registry.RegistryError, match="no space left .* nothing was registered"):
        _save(tmp_path, "20260101-000000-x", FillsTheDisk())
    assert list(tmp_path.iterdir()) == [] and registry.list_versions(tmp_path) == []


def test_a_changed_model_file_is_refused_at_load(tmp_path, small_model):
    path = _save(tmp_path, "20260101-000000-a", small_model)
    PneumoModel.load(path)                           # as registered: loads
    with open(path / "model.keras", "r+b") as f:     # one byte changed on disk
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(registry.RegistryError, match=r"integrity check failed\): its model.keras does not match"):
        PneumoModel.load(path)


def test_version_ids_are_plain_names_and_never_collide(tmp_path):
    for bad in ("../evil", "a/b", "..", ".hidden", "", "x" * 200):
        with pytest.raises(registry.RegistryError, match="not a model version id"):
            _save(tmp_path, bad, FileModel())
    _save(tmp_path, "20260101-000000-a", FileModel())
    for bad in ("../20260101-000000-a", "..", "a/../20260101-000000-a"):
        with pytest.raises(registry.RegistryError):
            registry.promote(tmp_path, bad, actor=LEAD)
    with pytest.raises(registry.RegistryError, match="not a model version id"):
        registry.resolve(tmp_path, "../../etc")
    ids = [store.new_version_id("mobilenet_v2") for _ in range(2000)]   # same second, same backbone
    assert len(set(ids)) == 2000 and all(store.check_version_id(i) for i in ids)


def test_first_version_is_active_later_ones_are_candidates(tmp_path, small_model):
    with pytest.raises(registry.RegistryError, match="train"):
        registry.resolve(tmp_path)
    _save(tmp_path, "20260101-000000-a", small_model)
    _save(tmp_path, "20260102-000000-b", small_model)
    assert registry.active_version(tmp_path) == "20260101-000000-a"
    assert registry.candidates(tmp_path) == ["20260102-000000-b"]
    registry.promote(tmp_path, "20260102-000000-b", actor=LEAD)
    assert registry.resolve(tmp_path).name == "20260102-000000-b"
    assert [(v["active"], v["role"]) for v in registry.list_versions(tmp_path)] == [(True, "active"),
                                                                                   (False, "previous")]
    with pytest.raises(registry.RegistryError):
        registry.promote(tmp_path, "nope", actor=LEAD)
    with pytest.raises(registry.RegistryError, match="not a version"):
        registry.resolve(tmp_path, "nope")
    assert json.loads((tmp_path / "20260101-000000-a" / "metadata.json").read_text())["id"] == "20260101-000000-a"


def test_a_missing_or_dangling_pointer_stops_diagnosis_instead_of_guessing(tmp_path):
    _save(tmp_path, "20260101-000000-a", FileModel())
    _save(tmp_path, "20260102-000000-b", FileModel())
    (tmp_path / registry.ACTIVE_FILE).unlink()
    assert registry.active_version(tmp_path) is None          # the newest is not taken silently
    with pytest.raises(registry.RegistryError, match="no active model: .* no ACTIVE pointer. Choose one"):
        registry.resolve(tmp_path)
    _save(tmp_path, "20260103-000000-c", FileModel())          # not the first model: stays a candidate
    assert registry.active_version(tmp_path) is None
    (tmp_path / registry.ACTIVE_FILE).write_text("20250101-000000-gone\n")
    with pytest.raises(registry.RegistryError, match="names '20250101-000000-gone', which is not a model version"):
        registry.resolve(tmp_path)
    registry.promote(tmp_path, "20260102-000000-b", actor=LEAD)
    assert registry.resolve(tmp_path).name == "20260102-000000-b"


def test_roles_promote_only_the_allowed(tmp_path):
    _save(tmp_path, "20260101-000000-a", FileModel())
    _save(tmp_path, "20260102-000000-b", FileModel())
    for role in ("clinician", "auditor"):
        with pytest.raises(PermissionDenied, match=rf"\({role}\) may not promote"):
            registry.promote(tmp_path, "20260102-000000-b", actor=Actor("someone", role))
    assert registry.active_version(tmp_path) == "20260101-000000-a"
    trail = AuditTrail(tmp_path / "audit.sqlite")
    entry = registry.promote(tmp_path, "20260102-000000-b", actor=LEAD, trail=trail)
    assert entry["who"] == "lead"
    (event,) = trail.events()
    assert (event["kind"], event["who"], event["details"]["to"]) == ("promotion", "lead", "20260102-000000-b")
    back = registry.promote(tmp_path, "20260101-000000-a", actor=Actor("admin1", "admin"), trail=trail)
    assert back["action"] == "rollback" and trail.events()[0]["kind"] == "rollback"


def test_a_promotion_based_on_a_stale_view_is_refused(tmp_path):
    for v in ("20260101-000000-a", "20260102-000000-b", "20260103-000000-c"):
        _save(tmp_path, v, FileModel())
    seen = registry.active_version(tmp_path)
    registry.promote(tmp_path, "20260102-000000-b", actor=LEAD, expected_active=seen)
    with pytest.raises(registry.RegistryError, match="active model changed to 20260102-000000-b since you looked"):
        registry.promote(tmp_path, "20260103-000000-c", actor=LEAD, expected_active=seen)
    assert registry.active_version(tmp_path) == "20260102-000000-b"


def _chain_holds(models_dir):
    log = registry.promotions(models_dir)
    assert all(entry["from"] == previous["to"] for previous, entry in zip(log, log[1:]))
    assert registry.active_version(models_dir) == log[-1]["to"]
    assert registry.verify_promotions(models_dir)["ok"]
    return log


def _promote_together(models_dir, target, seen, checked, barrier, outcome):
    barrier.wait()   # both start together
    try:
        kwargs = {"expected_active": seen} if checked else {}
        outcome.append(registry.promote(models_dir, target, actor=LEAD, **kwargs)["to"])
    except registry.RegistryError as error:
        outcome.append(None if "since you looked" in str(error) else str(error))


@pytest.mark.parametrize("checked", [True, False])
def test_two_hundred_pairs_of_simultaneous_promotions_lose_nothing(tmp_path, checked):
    versions = [f"2026010{i}-000000-v" for i in range(1, 5)]
    for v in versions:
        _save(tmp_path, v, FileModel())
    winners = []
    for round_ in range(200):
        seen = registry.active_version(tmp_path)
        targets = [v for v in versions if v != seen][:2] if round_ % 2 else [v for v in versions if v != seen][1:]
        barrier, outcome = threading.Barrier(2), []
        threads = [threading.Thread(target=_promote_together, args=(tmp_path, t, seen, checked, barrier, outcome))
                   for t in targets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(o is None or o.startswith("2026") for o in outcome), outcome   # refusals say "since you looked"
        won = [o for o in outcome if o]
        assert len(won) == (1 if checked else 2)          # a stale view never wins; unchecked, both are logged
        winners.append(sorted(won))
        assert registry.active_version(tmp_path) == registry.promotions(tmp_path)[-1]["to"]
    log = _chain_holds(tmp_path)
    # Each round's changes are logged together; within an unchecked round the two threads report back in either
    # order (the lock is released before a thread records its outcome), so a round is compared as a set.
    logged, start = [e["to"] for e in log[1:]], 0
    for won in winners:
        assert sorted(logged[start:start + len(won)]) == won
        start += len(won)
    assert start == len(logged)


def test_a_changed_promotion_entry_or_pointer_breaks_the_chain(tmp_path):
    _save(tmp_path, "20260101-000000-a", FileModel())
    _save(tmp_path, "20260102-000000-b", FileModel())
    registry.promote(tmp_path, "20260102-000000-b", actor=LEAD)
    registry.promote(tmp_path, "20260101-000000-a", actor=LEAD)
    _chain_holds(tmp_path)
    log_file = tmp_path / registry.LOG_FILE
    good = log_file.read_text()
    log_file.write_text(good.replace('"who": "lead"', '"who": "someone else"', 1))
    result = registry.verify_promotions(tmp_path)
    assert not result["ok"] and "entry 2: its content does not match" in result["problem"]
    lines = good.splitlines(keepends=True)
    log_file.write_text(lines[0] + lines[2])                  # an entry deleted
    assert "entry 2: its link to the previous entry is broken" in registry.verify_promotions(tmp_path)["problem"]
    log_file.write_text(good)
    (tmp_path / registry.ACTIVE_FILE).write_text("20260102-000000-b\n")   # pointer moved by hand
    assert "pointer was changed outside Pneumo" in registry.verify_promotions(tmp_path)["problem"]


def test_an_old_unchained_log_stays_readable_and_is_chained_on(tmp_path):
    _save(tmp_path, "20260101-000000-a", FileModel())
    _save(tmp_path, "20260102-000000-b", FileModel())
    old = {"when": "2025-01-01T00:00:00+00:00", "who": "pneumo", "action": "first model", "from": None,
           "to": "20260101-000000-a"}
    (tmp_path / registry.LOG_FILE).write_text(json.dumps(old) + "\n")    # as written before the chain
    registry.promote(tmp_path, "20260102-000000-b", actor=LEAD)
    log = _chain_holds(tmp_path)
    assert log[0] == old and log[1]["prev"] != "0" * 64
    (tmp_path / registry.LOG_FILE).write_text(
        (tmp_path / registry.LOG_FILE).read_text().replace('"who": "pneumo"', '"who": "x"'))
    assert not registry.verify_promotions(tmp_path)["ok"]     # the old entry is covered by the first link


def test_going_back_to_an_older_version_is_a_rollback(tmp_path):
    for version in ("20260101-000000-a", "20260102-000000-b", "20260103-000000-c"):
        _save(tmp_path, version, FileModel())
    registry.promote(tmp_path, "20260102-000000-b", actor=LEAD)
    assert registry.change_kind(tmp_path, "20260101-000000-a") == "rollback"
    assert registry.change_kind(tmp_path, "20260103-000000-c") == "promote"
    assert registry.promote(tmp_path, "20260101-000000-a", actor=LEAD)["action"] == "rollback"
    history = store.read_history(tmp_path / "20260101-000000-a")
    assert list(history.columns) == ["epoch", "loss"] and history["loss"].tolist() == [0.5]


def test_a_promoted_version_is_compared_with_the_one_it_replaced(tmp_path):
    _save(tmp_path, "20260101-000000-a", FileModel())
    _save(tmp_path, "20260102-000000-b", FileModel())
    assert registry.replaced(tmp_path, "20260102-000000-b") is None          # never active yet
    registry.promote(tmp_path, "20260102-000000-b", actor=LEAD)
    assert registry.replaced(tmp_path, "20260102-000000-b") == "20260101-000000-a"

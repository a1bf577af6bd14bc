import json

import numpy as np
import pandas as pd
import pytest

from pneumo_core import registry
from pneumo_core.model import PneumoModel, assemble, build_classifier, build_embedder, build_head


@pytest.fixture(scope="module")
def small_model():
    backbone = build_embedder("mobilenet_v2", 32, None).get_layer("backbone")
    return assemble("mobilenet_v2", backbone,
                    build_classifier(backbone.output_shape[1:], [build_head(1280, 4), build_head(1280, 4)], (0.5, 0.1)))


def _save(models_dir, version_id, model):
    meta = {"created": version_id, "backbone": "mobilenet_v2", "image_size": 32, "normalisation": "equalize",
            "threshold": 0.42}
    return registry.save_version(models_dir, version_id, model, meta, {"test": {"roc_auc": 0.9}},
                                 pd.DataFrame({"path": ["a"], "label": [1], "probability": [0.7]}),
                                 pd.DataFrame({"epoch": [0], "loss": [0.5]}), {"best": []})


def test_round_trip_gives_the_same_predictions(tmp_path, small_model):
    path = _save(tmp_path, "20260101-000000-mobilenet_v2", small_model)
    assert sorted(p.name for p in path.iterdir()) == ["history.csv", "metadata.json", "metrics.json",
                                                       "model.keras", "predictions.csv", "tuner.json"]
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


def test_first_version_is_active_later_ones_are_candidates(tmp_path, small_model):
    with pytest.raises(registry.RegistryError, match="train"):
        registry.resolve(tmp_path)
    _save(tmp_path, "20260101-000000-a", small_model)
    _save(tmp_path, "20260102-000000-b", small_model)
    assert registry.active_version(tmp_path) == "20260101-000000-a"
    assert registry.candidates(tmp_path) == ["20260102-000000-b"]
    registry.promote(tmp_path, "20260102-000000-b", who="me")
    assert registry.resolve(tmp_path).name == "20260102-000000-b"
    assert [(v["active"], v["role"]) for v in registry.list_versions(tmp_path)] == [(True, "active"),
                                                                                   (False, "previous")]
    with pytest.raises(registry.RegistryError):
        registry.promote(tmp_path, "nope")
    with pytest.raises(registry.RegistryError, match="not a version"):
        registry.resolve(tmp_path, "nope")
    assert json.loads((tmp_path / "20260101-000000-a" / "metadata.json").read_text())["id"] == "20260101-000000-a"


def test_a_registry_without_pointer_keeps_its_active_model(tmp_path, small_model):
    _save(tmp_path, "20260101-000000-a", small_model)
    _save(tmp_path, "20260102-000000-b", small_model)
    for name in (registry.ACTIVE_FILE, registry.LOG_FILE):
        (tmp_path / name).unlink()               # as written before the pointer existed: newest is active
    assert registry.active_version(tmp_path) == "20260102-000000-b"
    _save(tmp_path, "20260103-000000-c", small_model)
    assert registry.active_version(tmp_path) == "20260102-000000-b"
    assert registry.candidates(tmp_path) == ["20260103-000000-c", "20260101-000000-a"]


def test_going_back_to_an_older_version_is_a_rollback(tmp_path, small_model):
    for version in ("20260101-000000-a", "20260102-000000-b", "20260103-000000-c"):
        _save(tmp_path, version, small_model)
    registry.promote(tmp_path, "20260102-000000-b")
    assert registry.change_kind(tmp_path, "20260101-000000-a") == "rollback"
    assert registry.change_kind(tmp_path, "20260103-000000-c") == "promote"
    assert registry.promote(tmp_path, "20260101-000000-a")["action"] == "rollback"
    history = registry.read_history(tmp_path / "20260101-000000-a")
    assert list(history.columns) == ["epoch", "loss"] and history["loss"].tolist() == [0.5]

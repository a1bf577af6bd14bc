"""Every command of the command line on synthetic data and the session's trained model: in this process
(the `cli` fixture), and as a subprocess where the process itself is the point (train's output, a
download that cannot happen)."""
import json

import cv2
import numpy as np
import pytest
from conftest import TINY_TRAIN, run_cli, synthetic_film

from pneumo_core.progress import parse_line
from pneumo_core.records.access import cli_actor

CONTRACT = {"n", "accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc", "threshold",
            "confusion_matrix", "ece"}


def test_train_registers_a_complete_version(trained_home):
    (version,) = [d for d in (trained_home / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert {"model.keras", "metadata.json", "metrics.json", "predictions.csv", "history.csv", "tuner.json",
            "ood.npz"} \
        <= {p.name for p in version.iterdir()}
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["backbone"] == "mobilenet_v2" and meta["image_size"] == 64 and 0 < meta["threshold"] < 1
    assert len(meta["ensemble"]) == 2 and "sensitivity is >= 0.95 with 95% confidence" in meta["threshold_rule"]
    assert 0 <= meta["ood"]["val_flagged"] <= 0.05 and meta["ood"]["val"] > 0 and meta["ood"]["quantile"] == 0.95


def test_the_version_scores_with_the_test_time_augmentation_its_predictions_were_made_with(trained_home):
    import pandas as pd

    from pneumo_core.learn.model import PneumoModel

    (version,) = [d for d in (trained_home / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    meta = json.loads((version / "metadata.json").read_text())
    assert meta["tta"]["views"] == int(TINY_TRAIN[TINY_TRAIN.index("--tta-views") + 1]) > 0
    stored = pd.read_csv(version / "predictions.csv").query("split == 'test'")
    served = PneumoModel.load(version).predict_files(stored["path"])
    assert np.allclose(served, stored["probability"], atol=1e-4)   # threshold and Platt fitted on what it serves


def test_train_prints_progress_a_summary_and_the_model_id_last(trained_run, cli):
    home, result = trained_run
    (row,) = json.loads(cli("models", "--json", home=home).stdout)
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == row["id"] and row["active"]          # the id, alone on the last line
    assert lines[-3].startswith("test: AUC ") and lines[-2].startswith(f"saved {home / 'models' / row['id']}")
    stages = [u.stage for u in map(parse_line, lines) if u]
    assert stages[0] == "caching train plain view" and stages[-1] == "evaluating"
    assert {"tuning trial", "training epoch"} <= set(stages)
    assert "backbone: mobilenet_v2" in result.stderr and "progress:" not in result.stderr   # notes apart


def test_evaluate_json_on_the_test_folder(trained_home, synthetic_data, cli):
    result = cli("evaluate", "--data", synthetic_data, "--split", "test", "--json", home=trained_home)
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    assert CONTRACT <= set(metrics)
    assert metrics["n"] == 40  # exactly the test/ folder
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    assert tn + fp == 20 and fn + tp == 20
    assert metrics["accuracy"] == pytest.approx((tn + tp) / 40)


def test_predict_json_scores_good_files_and_explains_bad_ones(trained_home, synthetic_data, tmp_path, cli):
    good = sorted((synthetic_data / "test" / "PNEUMONIA").iterdir())[0]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = cli("predict", good, bad, "--json", home=trained_home)
    assert result.returncode == 1  # one file failed
    scored, failed = json.loads(result.stdout)
    assert scored["path"] == str(good) and 0 <= scored["probability"] <= 1
    assert scored["label"] in ("NORMAL", "PNEUMONIA") and scored["threshold"] > 0
    assert failed["path"] == str(bad) and "not a supported image type" in failed["error"]
    assert "Traceback" not in result.stderr
    assert isinstance(scored["ood_score"], float) and isinstance(scored["ood_flag"], bool)


def test_predict_json_on_many_bad_files_scores_the_good_and_audits_only_them(trained_home, synthetic_data,
                                                                             tmp_path, cli):
    import shutil

    from helpers import CASES
    home = tmp_path / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))  # a fresh trail
    good = sorted((synthetic_data / "test" / "NORMAL").iterdir())[:2]
    bad = {}
    for case in ("zero-byte", "truncated JPEG", "PDF", "colour photo JPEG", "DICOM multi-frame", "DICOM lateral view"):
        bad[case] = tmp_path / f"{case.replace(' ', '_')}.dcm"
        bad[case].write_bytes(CASES[case][0])
    dicom_film = tmp_path / "film.dcm"
    dicom_film.write_bytes(CASES["DICOM MONOCHROME1 (inverted)"][0])
    paths = [good[0], *bad.values(), dicom_film, good[1]]
    result = cli("predict", *paths, "--json", home=home)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    out = json.loads(result.stdout)
    assert [o["path"] for o in out] == list(map(str, paths))  # one object per file, in order
    for o, (case, path) in zip(out[1:], bad.items()):
        assert set(o) == {"path", "error"}, case
        assert o["error"].startswith(path.name + ": ") and CASES[case][1] in o["error"], o["error"]
    scored = [out[0], out[-2], out[-1]]
    assert all(0 <= o["probability"] <= 1 and o["ood_flag"] in (True, False) and o["ood_score"] > 0 for o in scored)
    from pneumo_core.records.audit import AuditTrail
    rows = AuditTrail(home / "audit.sqlite").rows()
    assert sorted(r["sha256"] for r in rows) == sorted(o["sha256"] for o in scored)  # failures make no row
    assert {r["source"] for r in rows} == {"cli"} and all(r["who"] for r in rows)
    assert cli("predict", good[0], "--json", home=home).returncode == 0  # all good: exit 0


def test_cam_writes_an_overlay_of_the_original_size(trained_home, tmp_path, cli):
    film = tmp_path / "wide.png"
    cv2.imwrite(str(film), synthetic_film(1, np.random.default_rng(0), shape=(90, 160)))
    out = tmp_path / "cam" / "overlay.png"
    result = cli("cam", film, "--method", "gradcam++", "--out", out, home=trained_home)
    assert result.returncode == 0, result.stderr
    image = cv2.imread(str(out))
    assert image.shape == (90, 160, 3) and image.std() > 0


def test_without_a_model_commands_say_how_to_train(tmp_path, synthetic_data, cli):
    result = cli("predict", synthetic_data / "test" / "NORMAL" / "x.jpeg", home=tmp_path / "empty")
    assert result.returncode == 2       # a user error (PneumoError): one line, exit 2
    assert "no trained model" in result.stderr and "train" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_imagenet_weights_give_one_sentence(tmp_path, synthetic_data):
    result = run_cli("train", "--data", synthetic_data, "--weights", "imagenet", "--image-size", 64,
                     home=tmp_path, env_extra={"KERAS_HOME": str(tmp_path / "keras"),
                                               "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "could not be downloaded" in result.stderr and "--weights" in result.stderr
    assert "Traceback" not in result.stderr and "http" not in result.stderr.lower()


def test_missing_dataset_is_a_clear_error(tmp_path, cli):
    result = cli("train", "--data", tmp_path / "nowhere", home=tmp_path)
    assert result.returncode == 2 and "does not exist" in result.stderr



def test_promote_switches_the_active_model(trained_home, tmp_path, cli):
    import shutil
    home = tmp_path / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))   # other workers write it
    (first,) = [d.name for d in (home / "models").iterdir() if d.is_dir() and not d.name.startswith(".")]
    later = home / "models" / "29990101-000000-mobilenet_v2"
    shutil.copytree(home / "models" / first, later)
    meta = json.loads((later / "metadata.json").read_text())
    (later / "metadata.json").write_text(json.dumps({**meta, "created": "2999-01-01T00:00:00+00:00"}))
    def roles():
        return {r["id"]: r["role"] for r in json.loads(cli("models", "--json", home=home).stdout)}

    assert roles() == {first: "active", later.name: "candidate"}  # a newer version waits for promotion
    result = cli("promote", later.name, home=home)
    assert result.returncode == 0 and later.name in result.stdout and f"by {cli_actor().name}" in result.stdout
    assert roles() == {first: "previous", later.name: "active"}
    assert cli("promote", "no-such-version", home=home).returncode == 2




def test_promotion_and_rollback_change_the_active_model_and_are_recorded(trained_home, tmp_path, cli):
    import shutil

    from pneumo_core.records import registry
    from pneumo_core.records.access import Actor
    home = tmp_path / "home"
    shutil.copytree(trained_home, home, ignore=shutil.ignore_patterns("audit.sqlite*"))
    models = home / "models"
    first = registry.active_version(models)
    second = "29990101-000000-mobilenet_v2"     # a later version: a candidate until promoted
    shutil.copytree(models / first, models / second)
    promoted = cli("promote", second, home=home)
    assert promoted.returncode == 0 and "promote" in promoted.stdout
    assert registry.active_version(models) == second
    entry = registry.promote(models, first, actor=Actor("night shift", "ml_lead"))
    assert registry.active_version(models) == first
    log = registry.promotions(models)
    assert [(e["action"], e["from"], e["to"], e["who"]) for e in log] == [
        ("first model", None, first, registry.SYSTEM), ("promote", first, second, cli_actor().name),
        ("rollback", second, first, "night shift")]
    assert entry == log[-1] and all(e["when"] for e in log)
    assert {v["id"]: v["role"] for v in registry.list_versions(models)} == {first: "active", second: "previous"}

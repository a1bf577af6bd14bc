"""Go-live at a site: grouped folds, cross-fitting, CIs, zip uploads, the site folders offered."""
import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset

from pneumo_core.errors import DatasetError
from pneumo_core.evaluation.metrics import bootstrap_figures_ci, evaluate_with_ci
from pneumo_core.golive import adaptation
from pneumo_core.golive import sites as site
from pneumo_core.settings import load_settings

# -- invariants (fast) ------------------------------------------------------------------------------

def _patients(n_patients=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(p % 3 != 0)
        rows += [(f"patient{p}", label)] * int(rng.integers(1, 5))
    return pd.DataFrame(rows, columns=["patient", "label"])


def test_patient_folds_keep_every_patient_whole_and_spread_both_classes():
    films = _patients()
    folds = site.patient_folds(films["patient"], films["label"], k=5, seed=3)
    films["fold"] = folds
    assert films.groupby("patient")["fold"].nunique().max() == 1          # no patient in two folds
    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    per_fold = films.groupby(["fold", "label"]).size().unstack()
    assert (per_fold > 0).all().all()                                      # both classes in every fold
    assert per_fold.max().max() - per_fold.min().min() <= per_fold.max().max()  # sane spread
    assert (per_fold[1].max() - per_fold[1].min()) <= 4                     # at most one patient's films apart


def test_no_site_film_is_scored_by_a_head_that_trained_on_it(monkeypatch):
    rng = np.random.default_rng(0)
    films = _patients(40)
    x_site = rng.normal(size=(len(films), 4))
    x_site[:, 0] = np.arange(len(films))            # a film's id travels in its first feature
    y_site = films["label"].to_numpy()
    folds = site.patient_folds(films["patient"], y_site, k=4)
    seen = []

    class SpyHead:
        def __init__(self, trained_ids):
            self.trained = set(trained_ids)

        def logit(self, x):
            scored = set(x[:, 0].astype(int))
            seen.append((self.trained, scored))
            return np.zeros(len(x))

    monkeypatch.setattr(adaptation, "fit_site_head", lambda x_tr, y_tr, x_s, y_s, **_: SpyHead(x_s[:, 0].astype(int)))
    logits = adaptation.out_of_fold_logits(rng.normal(size=(10, 4)), np.arange(10) % 2, x_site, y_site, folds)
    assert np.isfinite(logits).all()                                        # every film scored once
    assert len(seen) == 4
    for trained, scored in seen:
        assert not trained & scored                                         # never by a head that trained on it
        trained_patients = set(films["patient"].iloc[sorted(trained)])
        assert not trained_patients & set(films["patient"].iloc[sorted(scored)])   # nor on the same patient
    assert set().union(*(s for _, s in seen)) == set(range(len(films)))


def test_cross_fitted_threshold_of_a_fold_ignores_that_folds_labels():
    rng = np.random.default_rng(1)
    films = _patients(80)
    y = films["label"].to_numpy()
    logits = rng.normal(size=len(y)) + 2 * y
    folds = site.patient_folds(films["patient"], y, k=5)
    p, t = adaptation.cross_fit(logits, y, folds)
    flipped = y.copy()
    flipped[folds == 0] = 1 - flipped[folds == 0]
    p2, t2 = adaptation.cross_fit(logits, flipped, folds)
    assert np.allclose(t[folds == 0], t2[folds == 0]) and np.allclose(p[folds == 0], p2[folds == 0])
    assert not np.allclose(t[folds != 0], t2[folds != 0])


def test_bootstrap_intervals_resample_patients_and_hold_the_estimate():
    films = _patients(80)
    y = films["label"].to_numpy()
    p = np.clip(0.5 + 0.3 * (y - 0.5) + np.random.default_rng(2).normal(0, 0.2, len(y)), 0, 1)
    result = evaluate_with_ci(y, p, 0.5, groups=films["patient"], n_boot=300)
    assert result["ci"]["resampled"] == "patients"
    for metric in ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "ece"):
        low, high = result["ci"][metric]
        assert low <= result[metric] <= high, metric
    per_film = bootstrap_figures_ci(y, p, np.full(len(y), 0.5), n_boot=300)
    assert per_film["resampled"] == "films" and per_film["sensitivity"][0] < per_film["sensitivity"][1]


def _zip(entries: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_zip_upload_is_unpacked_safely(tmp_path):
    data = make_dataset(tmp_path / "films", {"hospital": (20, 20)})
    entries = {f"hospital/{p.parent.name}/{p.name}": p.read_bytes() for p in (data / "hospital").rglob("*.jpeg")}
    folder = site.extract_zip(_zip({**entries, "hospital/notes.txt": b"x", "__MACOSX/._a.jpeg": b"x"}),
                              tmp_path / "home", "St Mary's")
    assert folder.is_relative_to(tmp_path / "home" / "sites") and folder.name == "hospital"
    assert site.load_site(folder, "St Mary's").name == "St-Mary-s"
    assert len(site.load_site(folder).frame) == 40
    for bad, why in (({"../evil.jpeg": b"x"}, "unsafe path"), ({"/abs/NORMAL/a.jpeg": b"x"}, "unsafe path"),
                     ({"NORMAL/a.jpeg": b"x"}, "no NORMAL/ and PNEUMONIA/")):
        with pytest.raises(DatasetError, match=why):
            site.extract_zip(_zip(bad), tmp_path / "home", "bad")
    with pytest.raises(DatasetError, match="not a zip"):
        site.extract_zip(b"plain text", tmp_path / "home", "bad")
    assert not (tmp_path / "evil.jpeg").exists() and not list((tmp_path / "home").glob(".site-upload-*"))


def _site_zip(tmp_path, compression=zipfile.ZIP_STORED) -> bytes:
    data = make_dataset(tmp_path / "films", {"hospital": (20, 20)})
    return _zip({f"hospital/{p.parent.name}/{p.name}": p.read_bytes() for p in (data / "hospital").rglob("*.jpeg")},
                compression)


def _lying_sizes(data: bytes, size: int) -> bytes:
    """`data` with every member's uncompressed size, in its local and central headers, replaced by `size`."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = out.find(signature)
        while start >= 0:
            out[start + offset:start + offset + 4] = size.to_bytes(4, "little")
            start = out.find(signature, start + 4)
    return bytes(out)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_member_whose_header_lies_about_its_size_is_a_clear_error(tmp_path, compression):
    # Under-stated: the reader stops at the stated size and the CRC fails. (Over-stated is harmless:
    # the data ends first, its CRC holds, and the bytes read are bounded by MAX_FILM_BYTES anyway.)
    data = _lying_sizes(_site_zip(tmp_path, compression), 10)
    with pytest.raises(DatasetError, match="header does not match its data"):
        site.extract_zip(data, tmp_path / "home", "liar")
    assert not list((tmp_path / "home").glob(".site-upload-*"))   # nothing half-unpacked is left


def test_every_member_counts_and_too_many_are_refused_before_the_list_is_read(tmp_path):
    many = _zip({f"empty/{i}": b"" for i in range(site.MAX_ZIP_MEMBERS + 1)})  # no film among them
    assert site.zip_member_count(many)[0] == site.MAX_ZIP_MEMBERS + 1
    with pytest.raises(DatasetError, match=f"{site.MAX_ZIP_MEMBERS + 1} members"):
        site.extract_zip(many, tmp_path / "home", "many")


def test_uploaded_sites_expire_after_their_age(tmp_path):
    import os
    import time
    home = tmp_path / "home"
    old = site.extract_zip(_site_zip(tmp_path), home, "old site").parent
    week_ago = time.time() - 8 * 86400
    os.utime(old, (week_ago, week_ago))
    fresh = site.extract_zip(_zip({**{f"b/NORMAL/{i}.jpeg": b"x" for i in range(2)}, "b/PNEUMONIA/0.jpeg": b"x"}),
                             home, "fresh site", keep_days=7)
    assert not old.exists() and fresh.is_dir()
    assert site.expire_uploads(home, days=7) == []
    assert site.expire_uploads(home, days=7, now=time.time() + 8 * 86400) == [fresh.parent]
    assert not fresh.exists()
    assert load_settings({"PNEUMO_SITE_UPLOAD_DAYS": "2"}).site_upload_days == 2


def test_site_page_offers_the_folders_under_pneumo_site_data_and_never_the_training_data(tmp_path):
    data = tmp_path / "data" / "chest_xray"
    for folder in (data / "train" / "NORMAL", data / "train" / "PNEUMONIA"):
        folder.mkdir(parents=True)
    sites = tmp_path / "hospital_sites"
    for folder in (sites / "north" / "NORMAL", sites / "north" / "PNEUMONIA", sites / "south" / "test" / "NORMAL",
                   sites / "south" / "test" / "PNEUMONIA", tmp_path / "elsewhere" / "NORMAL",
                   tmp_path / "elsewhere" / "PNEUMONIA"):
        folder.mkdir(parents=True)
    env = {"PNEUMO_DATA": str(data), "PNEUMO_HOME": str(tmp_path / "home")}
    assert site.site_folders(load_settings(env)) == []           # nothing beside the data, nothing uploaded
    offered = site.site_folders(load_settings({**env, "PNEUMO_SITE_DATA": str(sites)}))
    assert offered == [sites / "north", sites / "south"]        # south's films are in its test/ folder
    assert site.site_folders(load_settings({**env, "PNEUMO_SITE_DATA": str(sites / "north")})) == [sites / "north"]
    assert site.site_folders(load_settings({**env, "PNEUMO_SITE_DATA": str(data / "train")})) == []  # training films


def test_a_site_folder_with_too_few_films_is_refused_with_what_is_needed(tmp_path):
    make_dataset(tmp_path / "tiny", {"test": (4, 24)})
    with pytest.raises(DatasetError, match="at least 20 of each class"):
        site.load_site(tmp_path / "tiny")
    with pytest.raises(DatasetError, match="does not exist"):
        site.load_site(tmp_path / "nowhere")
    nested = site.load_site(make_dataset(tmp_path / "ok", {"test": (20, 20)}))
    flat = site.load_site(make_dataset(tmp_path / "flat", {".": (20, 20)}))
    assert nested.frame["label"].sum() == 20 and nested.name == "ok"
    assert nested.fingerprint == flat.fingerprint          # the same films, whichever layout holds them



# -- pages (AppTest) ----------------------------------------------------------------------------------



def _named_zip(members: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member in members:
            archive.writestr(member, b"x")
    return buffer.getvalue()


@pytest.mark.parametrize("members, file_name, name", [
    (["north/NORMAL/a.png", "north/PNEUMONIA/b.png"], "upload.zip", "north"),
    (["st marys/test/NORMAL/a.png", "st marys/test/PNEUMONIA/b.png"], "x.zip", "st-marys"),
    (["NORMAL/a.png", "PNEUMONIA/b.png"], "clinic films.zip", "clinic-films")])
def test_a_zip_without_a_typed_name_is_named_from_its_folder_or_its_file(members, file_name, name):
    assert site.zip_site_name(file_name, _named_zip(members)) == name


def test_a_zip_with_no_usable_name_asks_for_one():
    with pytest.raises(DatasetError, match="type the site's name"):
        site.zip_site_name("!!!.zip", _named_zip(["NORMAL/a.png", "PNEUMONIA/b.png"]))


def test_an_adapted_card_says_what_adaptation_did_in_plain_words():
    card = {"backbone": "mobilenet_v2", "weights": "imagenet", "image_size": 224, "normalisation": "imagenet",
            "data": {"dir": "/data", "fingerprint": "f", "split_seed": 42}, "threshold": 0.412,
            "threshold_rule": "highest threshold keeping out-of-fold site sensitivity >= 0.96",
            "calibration": {"method": "platt", "a": 1.1, "b": 0.2, "fitted_on": "site north out-of-fold"},
            "ensemble": [{"head": "logistic", "C": 0.005, "site_weight": 10.0}], "adapted_from": "base-1",
            "site": {"name": "north", "n": 198, "fingerprint": "g", "cross_validated": {"folds": 5}},
            "training": {"site_adapt_seconds": 61.0}}
    text = " ".join(f"{k}: {v}" for k, v in adaptation.card_lines(card))
    assert "Platt scaling on validation" not in text and "1 heads" not in text
    for words in ("counting 10 times as much", "re-calibrated to the site", "5-fold by patient",
                  "0.412, set for the site", "from version base-1", "61 s"):
        assert words in text, words
    base = {k: v for k, v in card.items() if k not in ("site", "adapted_from")}
    base_text = " ".join(v for _, v in adaptation.card_lines(base, {"algorithm": "hyperband", "trials_run": 20,
                                                                    "objective": "val_auc"}))
    assert "validation split" in base_text and "one head" in base_text and "20 trials" in base_text

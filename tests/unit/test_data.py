import numpy as np
import pandas as pd
import pytest
from conftest import make_dataset

from pneumo_core.learn.data import DatasetError, class_weights, load_dataset, patient_id, split_by_patient


@pytest.mark.parametrize("name, patient", [
    ("person1000_bacteria_2931.jpeg", "person1000"),
    ("person12_virus_44.jpeg", "person12"),
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("IM-0429-0001-0002.jpeg", "IM-0429"),
    ("NORMAL2-IM-1345-0001.jpeg", "NORMAL2-IM-1345"),
    ("scan_from_elsewhere.png", "scan_from_elsewhere"),
])
def test_patient_id_from_file_name(name, patient):
    assert patient_id(name) == patient


def test_missing_val_and_test_are_carved_by_patient(tmp_path):
    root = make_dataset(tmp_path, {"train": (80, 120)})
    ds = load_dataset(root, seed=3)
    sizes = ds.sizes()
    assert all(sizes[s]["NORMAL"] > 0 and sizes[s]["PNEUMONIA"] > 0 for s in ("train", "val", "test"))
    assert sum(v for s in sizes.values() for v in s.values()) == 200
    for split in ("val", "test"):  # about 15 % each, per class
        assert 0.10 <= len(ds.split(split)) / 200 <= 0.20
    assert any("no test/" in n for n in ds.notes) and any("val/" in n for n in ds.notes)


def test_no_patient_on_both_sides(tmp_path):
    root = make_dataset(tmp_path, {"train": (90, 150)}, images_per_patient=3)
    frame = load_dataset(root).frame
    owners = frame.groupby("patient")["split"].nunique()
    assert (owners == 1).all()
    assert frame.patient.nunique() < len(frame)  # the test is meaningful: patients have several images


def test_tiny_val_is_folded_into_train_and_replaced(tmp_path):
    root = make_dataset(tmp_path, {"train": (60, 60), "val": (8, 8), "test": (10, 10)})
    ds = load_dataset(root)
    assert len(ds.split("val")) >= 0.10 * 136  # carved from train + val/, not the 16 images of val/
    assert ds.frame.path.str.contains("/val/").sum() == 16  # the 16 images are kept (now train or val)
    assert any("val/ has 16 images" in n for n in ds.notes)
    assert set(ds.split("test").path) == set(ds.frame[ds.frame.path.str.contains("/test/")].path)


def test_large_val_is_used_as_is(tmp_path):
    root = make_dataset(tmp_path, {"train": (30, 30), "val": (50, 60), "test": (5, 5)})
    ds = load_dataset(root)
    assert len(ds.split("val")) == 110 and ds.split("val").path.str.contains("/val/").all()
    assert ds.notes == []


def test_case_insensitive_folders_and_flat_layout(tmp_path):
    root = make_dataset(tmp_path / "a", {"train": (6, 6)})
    (root / "train" / "NORMAL").rename(root / "train" / "normal")
    (root / "train").rename(root / "Train")
    assert load_dataset(root).sizes()["train"]["NORMAL"] > 0
    flat = root / "Train"  # class folders directly under the given folder
    assert len(load_dataset(flat).frame) == 12


def test_missing_class_and_folder_errors_say_what_is_expected(tmp_path):
    root = make_dataset(tmp_path, {"train": (10, 0)})
    with pytest.raises(DatasetError, match="PNEUMONIA"):
        load_dataset(root)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_split_by_patient_is_stratified_and_deterministic():
    frame = pd.DataFrame({"patient": [f"p{i // 2}" for i in range(400)],
                          "label": [int(i >= 100) for i in range(400)]})
    mask = split_by_patient(frame, 0.25, seed=1)
    assert np.array_equal(mask, split_by_patient(frame, 0.25, seed=1))
    assert abs(frame[mask].label.eq(0).sum() - 25) <= 2 and abs(frame[mask].label.eq(1).sum() - 75) <= 2


def test_class_weights_balance_the_loss():
    weights = class_weights([0] * 25 + [1] * 75)
    assert weights[0] == pytest.approx(2.0) and weights[1] == pytest.approx(2 / 3)
    assert 25 * weights[0] == pytest.approx(75 * weights[1])


def test_a_folder_with_only_test_is_enough_for_evaluation(tmp_path):
    root = make_dataset(tmp_path, {"test": (5, 7)})
    with pytest.raises(DatasetError, match="no train/"):
        load_dataset(root)
    ds = load_dataset(root, require_train=False)
    assert len(ds.split("test")) == 12 and ds.split("train").empty

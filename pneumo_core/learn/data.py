"""Dataset discovery, patient ids, patient-level splits and class weights (TensorFlow-free: the
job runner checks a dataset with it; the tf.data pipeline is `pipeline.py`).

A dataset folder has the layout `SPLIT/CLASS/file` with SPLIT in train, val, test (val and test
optional) and CLASS in NORMAL, PNEUMONIA (any case). A folder holding the class folders directly
is read as a train split.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_core.choices import CLASSES, SPLITS, label_name  # noqa: F401  (data.CLASSES / data.label_name: the label names)
from pneumo_core.errors import DatasetError
from pneumo_core.imaging.films import ImageError, read_image

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
MIN_VAL_IMAGES = 100
MIN_IMAGES_PER_CLASS = 20   # below this a patient-level val/test split leaves a handful of films per class

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),                 # person123_bacteria_456
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE),       # IM-0115-0001, NORMAL2-IM-1345-0001
)


def patient_id(filename: str) -> str:
    """Patient id from a Kermany-style file name; the file stem when the name has none."""
    stem = Path(filename).stem
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def _child(folder: Path, name: str) -> Path | None:
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.iterdir()) if p.is_dir() and p.name.lower() == name.lower()), None)


def _scan_split(folder: Path, split: str) -> list[dict]:
    rows = []
    for label, cls in enumerate(CLASSES):
        class_dir = _child(folder, cls)
        if class_dir is None:
            continue
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                rows.append({"path": str(path), "label": label, "patient": patient_id(path.name),
                             "split": split})
    return rows


def split_by_patient(frame: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing about `fraction` of the images of each class, whole patients only.

    Args:
        frame: N images with `patient` and `label` columns; fraction: 0..1; seed: of the draw.
    Returns:
        (N,) bool, True for the images of the chosen patients.

    A patient's class is their most severe label, so a patient is never on both sides of a split.
    """
    rng = np.random.default_rng(seed)
    patient_label = frame.groupby("patient")["label"].max()
    counts = frame.groupby("patient").size()
    chosen: set[str] = set()
    for label in sorted(patient_label.unique()):
        patients = np.array(sorted(patient_label.index[patient_label == label]))
        rng.shuffle(patients)
        target = fraction * counts[patients].sum()
        taken = 0
        for patient in patients:
            if taken >= target:
                break
            chosen.add(patient)
            taken += counts[patient]
    return frame["patient"].isin(chosen).to_numpy()


@dataclass
class Dataset:
    """All images of a dataset folder with their final split (train / val / test)."""
    root: Path
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)   # left out by skip_unreadable

    def split(self, name: str) -> pd.DataFrame:
        return self.frame[self.frame["split"] == name].reset_index(drop=True)

    def sizes(self) -> dict:
        return {s: {c: int(((self.frame.split == s) & (self.frame.label == i)).sum())
                    for i, c in enumerate(CLASSES)} for s in SPLITS}

    def fingerprint(self) -> str:
        """Hash of the file list with sizes: equal for the same data, different after any change."""
        digest = hashlib.sha256()
        for path in sorted(self.frame["path"]):
            p = Path(path)
            digest.update(f"{p.relative_to(self.root)}:{p.stat().st_size}\n".encode())
        return digest.hexdigest()[:16]


def unreadable_files(paths) -> dict[str, str]:
    """{path: reason} for every file that cannot be read as a film (about 1 ms per film)."""
    problems = {}
    for path in map(str, paths):
        try:
            read_image(path)
        except ImageError as error:
            problems[path] = str(error)
    return problems


def load_dataset(root: str | Path, val_fraction: float = 0.15, test_fraction: float = 0.15,
                 seed: int = 42, require_train: bool = True, skip_unreadable: bool = False) -> Dataset:
    """Discover a dataset folder and settle its splits.

    `val/` is used as it is when it has at least 100 images; a missing or tinier one (the Kaggle
    download ships 16 images, which makes model selection a coin toss) is folded into train and a
    validation split is carved from train by patient. A missing `test/` is carved the same way.
    With `require_train=False` (evaluation), a folder holding only `test/` (or `val/`) is accepted.
    With `skip_unreadable=True` every file is decoded first and the unreadable ones are left out
    (listed in `notes`), so one broken file never stops a training run.

    Returns:
        A Dataset: `frame` has one row per image (path, label 0/1, patient, split); `split(name)` one split.
    Raises:
        DatasetError: no such folder, no train images (when required), or a class missing from train.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist. Expected {root}/train/NORMAL "
                           f"and {root}/train/PNEUMONIA (set PNEUMO_DATA or pass --data).")
    found = {s: _scan_split(d, s) for s in SPLITS if (d := _child(root, s)) is not None}
    if "train" not in found:
        if any(_child(root, c) for c in CLASSES):
            found["train"] = _scan_split(root, "train")
        elif found and not require_train:
            frame = pd.DataFrame([r for rows in found.values() for r in rows],
                                 columns=["path", "label", "patient", "split"])
            return Dataset(root=root, frame=frame, notes=["no train/: splits used as found"])
        else:
            raise DatasetError(f"{root} has no train/ folder (nor NORMAL/ and PNEUMONIA/ folders). "
                               f"Expected the layout train/{{NORMAL,PNEUMONIA}}/, optional val/ and test/.")
    frame = pd.DataFrame([r for rows in found.values() for r in rows],
                         columns=["path", "label", "patient", "split"])
    notes, unreadable = [], {}
    if skip_unreadable:
        unreadable = unreadable_files(frame.path)
        if unreadable:
            frame = frame[~frame.path.isin(unreadable)].reset_index(drop=True)
            notes.append(f"skipped {len(unreadable)} unreadable file(s): " + "; ".join(
                list(unreadable.values())[:10]) + (" …" if len(unreadable) > 10 else ""))
    train = frame[frame.split == "train"]
    missing = [c for i, c in enumerate(CLASSES) if not (train.label == i).any()]
    if missing:
        raise DatasetError(f"{root}: the train split has no {' and no '.join(missing)} images; "
                           f"both classes are needed.")
    n_val = int((frame.split == "val").sum())
    if n_val < MIN_VAL_IMAGES:
        found_val = f"val/ has {n_val} images (< {MIN_VAL_IMAGES}), merged into train" if "val" in found else "no val/"
        notes.append(f"{found_val}: carved {val_fraction:.0%} of the patients as validation")
        frame.loc[frame.split == "val", "split"] = "train"
    if "test" not in found:
        notes.append(f"no test/: carved {test_fraction:.0%} of train patients as an internal test split")
        train = frame.split == "train"
        frame.loc[train.to_numpy().nonzero()[0][split_by_patient(frame[train], test_fraction, seed)],
                  "split"] = "test"
    if n_val < MIN_VAL_IMAGES:
        train = frame.split == "train"
        share = val_fraction / max(1e-9, 1 - (test_fraction if "test" not in found else 0))
        frame.loc[train.to_numpy().nonzero()[0][split_by_patient(frame[train], share, seed + 1)],
                  "split"] = "val"
    return Dataset(root=root, frame=frame.reset_index(drop=True), notes=notes, unreadable=unreadable)


@dataclass
class DataCheck:
    """What a pre-flight check of a dataset folder found; `problems` block training, the rest inform."""
    root: str
    problems: list[str]
    counts: dict[str, int]           # readable films per class, all splits together
    unreadable: dict[str, str]       # path -> why it cannot be read (skipped by training)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(root: str | Path, min_per_class: int = MIN_IMAGES_PER_CLASS) -> DataCheck:
    """Check a folder before training: it exists, has both classes, enough readable films of each.

    Returns:
        A DataCheck: `ok` when nothing blocks training; counts per class; unreadable files and why.
    """
    try:
        dataset = load_dataset(root, skip_unreadable=True)
    except DatasetError as error:
        return DataCheck(str(root), [str(error)], {}, {})
    counts = {c: int((dataset.frame.label == i).sum()) for i, c in enumerate(CLASSES)}
    problems = [f"only {n} readable {c} film(s) in {root}; at least {min_per_class} are needed"
                for c, n in counts.items() if n < min_per_class]
    return DataCheck(str(root), problems, counts, dataset.unreadable)


def class_weights(labels) -> dict[int, float]:
    """Balanced weights n / (2 n_c), so each class carries half of the loss.

    Args:
        labels: (N,) 0/1.
    Returns:
        {0: weight of NORMAL, 1: weight of PNEUMONIA}.
    """
    labels = np.asarray(labels)
    return {c: float(len(labels) / (2 * max(1, (labels == c).sum()))) for c in (0, 1)}

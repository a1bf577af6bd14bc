"""A site's labelled films, for go-live: where they come from and how they are grouped.

A site folder holds NORMAL/ and PNEUMONIA/ films (or test/NORMAL and test/PNEUMONIA): `load_site`
reads it, `patient_folds` groups its films by patient for cross-validation, and the dashboard finds
folders with `site_folders` or unpacks an uploaded zip with `extract_zip`. What is done with the
films: `validation.py` (validate a version at the site), `adaptation.py` (adapt a version to it).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import struct
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pneumo_core.errors import DatasetError
from pneumo_core.learn.data import CLASSES, IMAGE_SUFFIXES, MIN_IMAGES_PER_CLASS, Dataset, load_dataset

MIN_FILMS_PER_CLASS = MIN_IMAGES_PER_CLASS   # 20, as for training jobs: below it a site's CIs span most of 0..1
FOLDS = 5


@dataclass
class SiteData:
    """A site's labelled films: path, label (0 NORMAL, 1 PNEUMONIA), patient; its name and fingerprint."""
    name: str
    root: Path
    frame: pd.DataFrame
    fingerprint: str
    notes: list

    @property
    def y(self) -> np.ndarray:
        return self.frame["label"].to_numpy().astype(int)


def site_name(root: Path, name: str | None = None) -> str:
    """A file-name-safe site name: `name`, else the folder's name ('site-a', 'st_marys')."""
    raw = name or Path(root).resolve().name
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")[:64]
    if not clean:
        raise DatasetError(f"site name {raw!r} has no letters or digits; use letters, digits, '-' or '_'")
    return clean


def load_site(data_dir, name: str | None = None) -> SiteData:
    """The labelled films of a site folder: `NORMAL/` and `PNEUMONIA/`, or `test/NORMAL` and `test/PNEUMONIA`.

    Unreadable files are skipped (listed in `notes`). Raises DatasetError when the folder is not
    there or has fewer than MIN_FILMS_PER_CLASS readable films of a class.
    """
    root = Path(data_dir)
    layout = ("Expected DIR/NORMAL/ and DIR/PNEUMONIA/ (or DIR/test/NORMAL/ and DIR/test/PNEUMONIA/) "
              "holding PNG or JPEG films.")
    if not root.is_dir():
        raise DatasetError(f"site folder {root} does not exist. {layout}")
    name = name or root.resolve().name
    # test/NORMAL and test/PNEUMONIA: the films are those of test/ (and the fingerprint is the same either way).
    root = class_folder(root)
    try:
        dataset = load_dataset(root, require_train=False, skip_unreadable=True)
    except DatasetError as error:
        raise DatasetError(f"{error} {layout}") from None
    frame = dataset.frame[["path", "label", "patient"]].reset_index(drop=True)
    counts = {c: int((frame["label"] == i).sum()) for i, c in enumerate(CLASSES)}
    short = [f"{n} {c}" for c, n in counts.items() if n < MIN_FILMS_PER_CLASS]
    if short:
        raise DatasetError(f"{root} has only {' and '.join(short)} readable film(s); a site validation needs at "
                           f"least {MIN_FILMS_PER_CLASS} of each class. {layout}")
    notes = [n for n in dataset.notes if n.startswith("skipped")]
    fingerprint = Dataset(root=root, frame=frame).fingerprint()
    return SiteData(site_name(root, name), root, frame, fingerprint, notes)


def class_folder(root: Path) -> Path:
    """The folder holding a site's NORMAL/ and PNEUMONIA/ folders: `root` itself or its test/ folder."""
    root = Path(root)
    names = {p.name.lower(): p for p in root.iterdir() if p.is_dir()} if root.is_dir() else {}
    if "test" in names and not {"normal", "pneumonia"} <= set(names):
        return names["test"]
    return root


def patient_folds(patients, labels, k: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Fold number (0..k-1) of each film: whole patients per fold, classes spread evenly.

    A patient's class is their most severe label; patients of each class are shuffled and each is
    put in the fold holding the fewest films of that class so far. No patient is in two folds, so a
    head trained on the other folds has never seen any film of a fold's patients.
    """
    frame = pd.DataFrame({"patient": np.asarray(patients).astype(str), "label": np.asarray(labels).astype(int)})
    per_patient = frame.groupby("patient")["label"].agg(["max", "size"])
    k = max(2, min(k, int(per_patient.groupby("max").size().min())))
    rng = np.random.default_rng(seed)
    assigned: dict[str, int] = {}
    for _, group in per_patient.groupby("max"):
        names = np.array(sorted(group.index))
        rng.shuffle(names)
        load = np.zeros(k)
        for name in names:
            fold = int(np.argmin(load))
            assigned[name] = fold
            load[fold] += group.loc[name, "size"]
    return frame["patient"].map(assigned).to_numpy()

# -- where site films come from (the dashboard) -----------------------------------------------------

UPLOADS = "sites"                  # PNEUMO_HOME/sites/<name>-<hash>/: extracted zip uploads
MAX_ZIP_FILES = 5000
# Every member counts (folders, other files): 550 000 empty members took 5 s and ~290 MB to list. Read
# from the zip's end record before the member list is parsed; 20 000 leaves room for folders and notes.
MAX_ZIP_MEMBERS = 20_000
MAX_ZIP_DIRECTORY_BYTES = 8 << 20  # the member list itself (~60 bytes a member with a short name)
MAX_ZIP_BYTES = 1 << 30            # uncompressed total
MAX_FILM_BYTES = 50 << 20
UPLOAD_DAYS = 7                    # default age at which an uploaded site's films are removed


def _is_site_folder(folder: Path) -> bool:
    names = {p.name.lower() for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()
    return {"normal", "pneumonia"} <= names or ("test" in names and _is_site_folder(
        next(p for p in folder.iterdir() if p.is_dir() and p.name.lower() == "test")))


def site_folders(settings) -> list[Path]:
    """Labelled folders a dashboard user may pick: under PNEUMO_SITE_DATA (when set), beside the training
    data folder, and uploaded ones.

    Only these roots are offered (the root itself when set by PNEUMO_SITE_DATA, and two levels down),
    so a browser user cannot point the server at an arbitrary path.
    """
    chosen = [Path(settings.site_data_dir)] if settings.site_data_dir else []
    roots = [*chosen, Path(settings.data_dir).parent, Path(settings.home) / UPLOADS]
    training = Path(settings.data_dir).resolve()

    def offered(folder: Path) -> bool:   # the training data itself is no site: the model learned from it
        return _is_site_folder(folder) and not folder.resolve().is_relative_to(training)

    found = [root for root in chosen if root.is_dir() and offered(root)]
    for root in roots:
        if not root.is_dir():
            continue
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            candidates = [child, *sorted(p for p in child.iterdir() if p.is_dir() and not p.name.startswith("."))]
            found += [c for c in candidates if offered(c)]
    found = list(dict.fromkeys(found))
    return [f for f in found if f.parent not in found]   # 'south', not also 'south/test': the same films


def zip_member_count(data: bytes) -> tuple[int, int]:
    """(members, bytes of the member list) as the zip's end record states them, read without parsing the list.

    Raises DatasetError when there is no end record (not a zip).
    """
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 0xFFFF))
    if end < 0 or len(data) < end + 22:
        raise DatasetError("the upload is not a zip file; zip a folder holding NORMAL/ and PNEUMONIA/ films")
    members, directory_bytes = struct.unpack("<HI", data[end + 10:end + 16])
    locator = end - 20
    if (members == 0xFFFF or directory_bytes == 0xFFFFFFFF) and locator >= 0 and \
            data[locator:locator + 4] == b"PK\x06\x07":   # zip64: the counts are in the zip64 end record
        record = struct.unpack("<Q", data[locator + 8:locator + 16])[0]
        if data[record:record + 4] == b"PK\x06\x06" and len(data) >= record + 56:
            members, directory_bytes = struct.unpack("<QQ", data[record + 32:record + 48])
    return members, directory_bytes


def expire_uploads(home: Path, days: float = UPLOAD_DAYS, now: float | None = None) -> list[Path]:
    """Remove uploaded sites (PNEUMO_HOME/sites/*) unpacked more than `days` ago, and unpacking
    folders left by a crash; their films are a hospital's and up to MAX_ZIP_BYTES each.

    Args:
        home: PNEUMO_HOME.
        days: age in days (of the folder's last change) past which an upload is removed.
        now: the time to measure from (default: now).
    Returns:
        The folders removed.
    """
    now = time.time() if now is None else now
    home = Path(home)
    old = [p for p in (home / UPLOADS).glob("*") if p.is_dir() and now - p.stat().st_mtime > days * 86400]
    old += [p for p in home.glob(".site-upload-*") if p.is_dir() and now - p.stat().st_mtime > 86400]
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)
    return old


def zip_site_name(file_name: str, data: bytes) -> str:
    """The site's name for an uploaded zip when the user typed none: the folder holding NORMAL/ and
    PNEUMONIA/ inside the zip ('north/NORMAL/…' -> 'north'; a 'test' folder counts as its parent),
    else the zip's own name ('north-films.zip' -> 'north-films').

    Args:
        file_name: the uploaded file's name; data: its bytes.
    Returns:
        A file-name-safe site name (`site_name`).
    Raises:
        DatasetError: neither gives letters or digits; the message asks for a typed name.
    """
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError):
        names = []
    parents = {}
    for member in names:
        parts = Path(member).parts
        for i, part in enumerate(parts[:-1]):
            if part.lower() in ("normal", "pneumonia"):
                parents.setdefault(parts[:i], set()).add(part.lower())
    roots = sorted((root for root, found in parents.items() if found == {"normal", "pneumonia"}), key=len)
    folder = [p for p in (roots[0] if roots else ()) if p.lower() != "test" and not p.startswith((".", "__"))]
    for raw in ([folder[-1]] if folder else []) + [Path(file_name).stem]:
        try:
            return site_name(Path(raw), raw)
        except DatasetError:
            continue
    raise DatasetError(f"no site name can be taken from {file_name!r} or its folders; type the site's name "
                       f"(letters, digits, '-' or '_')")


def extract_zip(data: bytes, home: Path, name: str, keep_days: float = UPLOAD_DAYS) -> Path:
    """Unpack an uploaded zip of NORMAL/ and PNEUMONIA/ films into PNEUMO_HOME/sites; returns the site folder.

    Refuses (DatasetError) what is not a zip, more than MAX_ZIP_MEMBERS members of any kind, members
    with absolute paths or '..', links, more than MAX_ZIP_FILES films or MAX_ZIP_BYTES uncompressed,
    and a member that is damaged or larger than its header says; only .png/.jpg/.jpeg files are
    written. Uploads older than `keep_days` are removed first (`expire_uploads`).
    """
    members_stated, directory_bytes = zip_member_count(data)
    if members_stated > MAX_ZIP_MEMBERS or directory_bytes > MAX_ZIP_DIRECTORY_BYTES:
        raise DatasetError(f"the zip holds {members_stated} members ({directory_bytes >> 10} KB of names); at most "
                           f"{MAX_ZIP_MEMBERS} files and folders are accepted")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError):
        raise DatasetError("the upload is not a zip file; zip a folder holding NORMAL/ and PNEUMONIA/ films") from None
    if len(archive.infolist()) > MAX_ZIP_MEMBERS:   # an end record that under-states the count
        raise DatasetError(f"the zip holds {len(archive.infolist())} members; at most {MAX_ZIP_MEMBERS} files "
                           f"and folders are accepted")
    members, total = [], 0
    for info in archive.infolist():
        parts = Path(info.filename).parts
        if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in info.filename:
            raise DatasetError(f"the zip holds an unsafe path {info.filename!r}; only relative paths are accepted")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"the zip holds a link {info.filename!r}; links are not accepted")
        if info.is_dir() or Path(info.filename).suffix.lower() not in IMAGE_SUFFIXES or \
                any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if info.file_size > MAX_FILM_BYTES:
            raise DatasetError(f"{info.filename} is {info.file_size >> 20} MB; films up to "
                               f"{MAX_FILM_BYTES >> 20} MB are accepted")
        total += info.file_size
        members.append(info)
    if len(members) > MAX_ZIP_FILES or total > MAX_ZIP_BYTES:
        raise DatasetError(f"the zip holds {len(members)} films, {total >> 20} MB; at most {MAX_ZIP_FILES} films "
                           f"and {MAX_ZIP_BYTES >> 20} MB are accepted")
    target = Path(home) / UPLOADS / f"{site_name(Path(name), name)}-{hashlib.sha256(data).hexdigest()[:8]}"
    Path(home).mkdir(parents=True, exist_ok=True)
    expire_uploads(home, keep_days)
    tmp = Path(tempfile.mkdtemp(dir=home, prefix=".site-upload-"))
    try:
        written = 0
        for info in members:
            out = tmp.joinpath(*Path(info.filename).parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            film = _member_bytes(archive, info)
            written += len(film)
            if written > MAX_ZIP_BYTES:   # the headers' sizes summed below it, the data does not
                raise DatasetError(f"the zip's films are over {MAX_ZIP_BYTES >> 20} MB uncompressed")
            out.write_bytes(film)
        roots = [tmp, *sorted(p for p in tmp.rglob("*") if p.is_dir())]
        root = next((r for r in roots if _is_site_folder(r)), None)
        if root is None:
            raise DatasetError("the zip has no NORMAL/ and PNEUMONIA/ folders of films (nor test/NORMAL and "
                               "test/PNEUMONIA)")
        relative = root.relative_to(tmp)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.rename(tmp, target)
        else:
            target.touch()   # uploaded again: its age starts again
        return target / relative
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _member_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, at most MAX_FILM_BYTES; DatasetError when its data does not match its header."""
    try:
        with archive.open(info) as source:
            chunk = source.read(MAX_FILM_BYTES + 1)   # the header's size may lie
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, RuntimeError, ValueError) as error:
        # A size or CRC that lies, a truncated or encrypted member, an unknown compression method.
        why = "encrypted" if "encrypted" in str(error) else "damaged or its header does not match its data"
        raise DatasetError(f"{info.filename} in the zip is {why} (header: {info.file_size} bytes); "
                           f"zip the folder again") from None
    if len(chunk) > MAX_FILM_BYTES:
        raise DatasetError(f"{info.filename} is over {MAX_FILM_BYTES >> 20} MB uncompressed")
    return chunk

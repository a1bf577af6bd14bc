"""Test helpers shared by several test files (tests never import each other)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Doe^Jane"


def png_bytes(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def chest_film(shape=(200, 160), diaphragm: float = 0.55, seed: int = 0) -> np.ndarray:
    """A synthetic frontal film: dark air around a bright body (an ellipse), two dark lungs above
    `diaphragm` (a fraction of the height) and a bright, evenly grey abdomen below it."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    body = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.55) / 0.5) ** 2 <= 1
    film = np.where(body, 190.0, 15.0)
    for cx in (0.33, 0.67):
        lung = ((xx - cx) / 0.11) ** 2 + ((yy - (diaphragm - 0.2)) / 0.19) ** 2 <= 1
        film[lung & body & (yy < diaphragm)] = 70
    return np.clip(film + rng.normal(0, 4, shape), 0, 255).astype(np.uint8)


def dicom_film(pixels: np.ndarray, accession: str = "ACC-2024-0042", study_uid: str = "1.2.826.0.1.3680043.2.1125.1",
               **tags) -> bytes:
    """A DX chest film as DICOM (8-bit), with patient-identifying tags that must never come out."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_NAME, "SECRET-123", "20190101"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined, ds.StudyDate = "DX", "AP", "CHEST", "20240301"
    ds.AccessionNumber, ds.StudyInstanceUID = accession, study_uid
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

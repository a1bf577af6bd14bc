"""A diagnosis as DICOM a PACS keeps beside the film: a Structured Report and a heatmap image.

Both are written by highdicom (no hand-made DICOM encoding) into new series of the source
film's study, with new UIDs, the patient and study modules copied from the source film, and a
reference to the source study, series and instance:

- `structured_report`: a Comprehensive SR holding a TID 1500 Measurement Report with one
  measurement group for the film: the call (SNOMED finding), the certainty words, the site's
  triage tier (when the version has a site guarantee) and the OOD flag as qualitative evaluations;
  the probability, the threshold and the OOD score as measurements;
  the model version and algorithm name as the algorithm identification (TID 4019). Marked
  neither final nor verified: it is decision support, a clinician signs the report. Its content
  tree alone: `measurement_report`.
- `heatmap_capture`: a Secondary Capture of the heatmap overlay, with the label "decision
  support, not a diagnosis", the call and the model version burned into the pixels, so any
  viewer shows them.

The result's UIDs are derived from (source SOP Instance UID, model version, kind): re-sending a
result after a failure replaces the same instance in the archive instead of adding a second one.
`read_result` reads an SR written here back into a plain dict.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from pneumo_core.explain.cam import overlay
from pneumo_core.serve.diagnosis import NOTICE, Diagnosis, format_probability, probability_phrase

MANUFACTURER = "Pneumo"
ALGORITHM = "Pneumo pneumonia classifier (chest X-ray)"
LABEL = "DECISION SUPPORT, NOT A DIAGNOSIS"
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902  # high numbers: after the acquisition series in viewers
# The capture's longer side: a 2500x2000 CR would make a 15 MB RGB capture; 1024 px keeps it ~2.5 MB
# and loses nothing of the heatmap (a 7x7 map stretched). The film itself stays in the archive.
MAX_CAPTURE_SIDE = 1024
MIN_CAPTURE_WIDTH = 640   # below this the label's three lines would be too small to read
SCHEME = "99PNEUMO"  # private coding scheme for what SNOMED/DCM have no code for

PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
NORMAL = Code("17621005", "SCT", "Normal")
YES, NO = Code("373066001", "SCT", "Yes"), Code("373067005", "SCT", "No")
CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
FINDING = Code("121071", "DCM", "Finding")
UNITLESS = Code("1", "UCUM", "no units")
PROBABILITY = Code("probability", SCHEME, "Probability of pneumonia")
THRESHOLD = Code("threshold", SCHEME, "Decision threshold for PNEUMONIA")
OOD_SCORE = Code("ood-score", SCHEME, "Out-of-distribution score (1.0 = flag line)")
OOD_FLAG = Code("ood-flag", SCHEME, "Unlike the training films (out of distribution)")
CERTAINTY = Code("certainty", SCHEME, "Certainty of the call")
TIER = Code("triage-tier", SCHEME, "Triage tier set on the site's own films")
TIER_MEANINGS = {"low": "Low: under the site's cut-off for missed pneumonia",
                 "uncertain": "Uncertain: between the site's cut-offs, needs a full read",
                 "high": "High: over the site's cut-off for false alarms"}


def _certainty_code(certainty: str) -> Code:
    """The certainty as a code: its short form as value (DICOM allows 16 characters), the words as meaning."""
    word = certainty.split(":")[0]
    return Code(word if len(word) <= 16 else "not-validated" if word.startswith("not validated") else word[:16],
                SCHEME, certainty[:64])


def result_uids(source_sop_uid: str, model_id: str) -> dict[str, str]:
    """Series and instance UIDs of the SR and the SC of one film scored by one model version
    (the same inputs always give the same UIDs; see the module docstring)."""
    return {f"{kind}_{level}": generate_uid(entropy_srcs=[source_sop_uid, model_id, kind, level])
            for kind in ("sr", "sc") for level in ("series", "instance")}


def _finding(label: str) -> Code:
    return PNEUMONIA if label == "PNEUMONIA" else NORMAL


def measurement_report(source, diagnosis: Diagnosis) -> hd.sr.MeasurementReport:
    """The content tree of `structured_report`: a TID 1500 Measurement Report of one diagnosis of `source`.

    Args:
        source: the scored film's pydicom Dataset (its SOP Class and Instance UIDs are referenced).
        diagnosis: its `Diagnosis`.
    Returns:
        A highdicom MeasurementReport (a sequence of one root CONTAINER item).
    """
    d = diagnosis
    uids = result_uids(source.SOPInstanceUID, d.model_id)
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM, version=d.model_id,
                                              parameters=[f"heatmap: {d.method}"] if d.method else None)
    measurements = [hd.sr.Measurement(name=PROBABILITY, value=round(d.probability, 6), unit=UNITLESS,
                                      algorithm_id=algorithm),
                    hd.sr.Measurement(name=THRESHOLD, value=round(d.threshold, 6), unit=UNITLESS)]
    evaluations = [hd.sr.QualitativeEvaluation(FINDING, _finding(d.label)),
                   hd.sr.QualitativeEvaluation(CERTAINTY, _certainty_code(d.certainty))]
    if d.tier is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(TIER, Code(d.tier, SCHEME, TIER_MEANINGS[d.tier])))
    if d.ood_score is not None:
        measurements.append(hd.sr.Measurement(name=OOD_SCORE, value=round(d.ood_score, 6), unit=UNITLESS))
        evaluations.append(hd.sr.QualitativeEvaluation(OOD_FLAG, YES if d.ood_flag else NO))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[uids["sr_instance"], "group"]),
                                                     identifier="Pneumonia classification"),
        finding_type=PNEUMONIA, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)])
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(entropy_srcs=[MANUFACTURER, d.model_id]),
                                                       name=MANUFACTURER, model_name=d.model_id[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    return hd.sr.MeasurementReport(observation_context=context, procedure_reported=CHEST_XRAY,
                                   imaging_measurements=[group])


def _stand_in(root: Dataset) -> hd.sr.ContainerContentItem:
    """A root CONTAINER of one TEXT item, named and templated as `root`: what highdicom's SR constructor
    needs to write the document modules, without the tree that `structured_report` attaches after."""
    stand_in = hd.sr.ContainerContentItem(name=root.ConceptNameCodeSequence[0], template_id="1500")
    stand_in.ContentSequence = hd.sr.ContentSequence(
        [hd.sr.TextContentItem(name=FINDING, value="stand-in", relationship_type="CONTAINS")])
    return stand_in


def structured_report(source, diagnosis: Diagnosis) -> Dataset:
    """The Comprehensive SR of one diagnosis of the film `source`: its `measurement_report`, in a new
    series of the source's study, marked complete, neither final nor verified.

    Args:
        source: the scored film's pydicom Dataset (patient, study and the film's UIDs are taken from it).
        diagnosis: its `Diagnosis`.
    Returns:
        A pydicom Dataset (with file meta): the document highdicom writes for this content, as
        `hd.sr.ComprehensiveSR(evidence=[source], content=measurement_report(...)[0], ...)` would.
    """
    uids = result_uids(source.SOPInstanceUID, diagnosis.model_id)
    root = measurement_report(source, diagnosis)[0]
    # highdicom's constructor deep-copies, re-parses and searches (three times) the content tree it is
    # given: 13 of the 17 ms it took per film, measured. It writes the document modules around a stand-in
    # root here, then the tree is attached as the constructor attaches it (each root attribute set on the
    # document). Its evidence check holds by construction: the tree references `source` only, the evidence.
    # tests/unit/test_pacs.py checks the file is byte for byte the one the constructor writes.
    document = hd.sr.ComprehensiveSR(evidence=[source], content=_stand_in(root),
                                     series_instance_uid=uids["sr_series"], series_number=SR_SERIES_NUMBER,
                                     sop_instance_uid=uids["sr_instance"], instance_number=1,
                                     manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False)
    sr = Dataset(document)   # its elements; without highdicom's view of the stand-in tree
    sr.file_meta, sr.preamble = document.file_meta, document.preamble
    for tag, value in root.items():
        sr[tag] = value
    sr.SeriesDescription = "Pneumo AI result: decision support, not a diagnosis"
    return sr


def _burn_in(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """White text on a black band across the top, sized to the film so it reads at any resolution."""
    image = rgb.copy()
    font = cv2.FONT_HERSHEY_SIMPLEX
    widest = max(cv2.getTextSize(line, font, 1.0, 2)[0][0] for line in lines)
    scale = min(max(0.5, image.shape[1] / 900), 0.94 * image.shape[1] / widest)   # every line fits the width
    thickness = max(1, round(scale * 2))
    line_height = int(34 * scale)
    cv2.rectangle(image, (0, 0), (image.shape[1], line_height * len(lines) + int(10 * scale)), (0, 0, 0), -1)
    for i, line in enumerate(lines):
        cv2.putText(image, line, (int(10 * scale), line_height * (i + 1)), font,
                    scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


def overlay_with_label(gray: np.ndarray, diagnosis: Diagnosis, alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 heatmap overlay with the decision-support label, the call and the model burned in."""
    d = diagnosis
    return _burn_in(overlay(gray, d.heatmap, alpha), [
        LABEL, f"AI: {d.label} p {probability_phrase(d.probability)} (threshold {format_probability(d.threshold)})",
        f"Pneumo {d.model_id} - {d.method}"])


def heatmap_capture(source, gray: np.ndarray, diagnosis: Diagnosis, alpha: float = 0.4) -> hd.sc.SCImage:
    """A Secondary Capture of the labelled heatmap overlay, in a new series of the source's study.

    Args:
        source: the scored film's pydicom Dataset.
        gray: the film as scored (2-D uint8, the size of the heatmap); the capture is resized to
            at least `MIN_CAPTURE_WIDTH` pixels wide and at most `MAX_CAPTURE_SIDE` on its longer side.
        diagnosis: its `Diagnosis`, with a heatmap.
        alpha: heatmap opacity.
    Returns:
        A highdicom SCImage (RGB) that references the source instance.
    """
    if diagnosis.heatmap is None:
        raise ValueError("the diagnosis has no heatmap; diagnose with a CAM method")
    uids = result_uids(source.SOPInstanceUID, diagnosis.model_id)
    # Small films are enlarged so the burned-in label stays legible; large ones reduced: the heatmap is
    # a 7x7 map stretched, and a full-size copy of the film would add only megabytes.
    scale = min(MAX_CAPTURE_SIDE / max(gray.shape), max(1.0, MIN_CAPTURE_WIDTH / gray.shape[1]))
    if scale != 1:
        size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        diagnosis = replace(diagnosis, heatmap=cv2.resize(diagnosis.heatmap, size, interpolation=cv2.INTER_LINEAR))
    orientation = source.get("PatientOrientation")
    # A frontal chest film is displayed with the patient's left on the right, feet down (L, F);
    # the source's own orientation wins when it has one.
    orientation = tuple(orientation) if orientation and len(orientation) == 2 else ("L", "F")
    sc = hd.sc.SCImage.from_ref_dataset(
        source, pixel_array=overlay_with_label(gray, diagnosis, alpha), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=uids["sc_series"],
        series_number=SC_SERIES_NUMBER, sop_instance_uid=uids["sc_instance"], instance_number=1,
        manufacturer=MANUFACTURER, patient_orientation=orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian)
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = "Pneumo heatmap: decision support, not a diagnosis"
    sc.ImageComments = f"{NOTICE} Model {diagnosis.model_id}."
    reference = hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID).ReferencedSOPSequence
    sc.SourceImageSequence = reference
    return sc


def read_result(sr) -> dict:
    """What an SR written by `structured_report` says, as a dict.

    Args:
        sr: the SR's pydicom Dataset (e.g. retrieved from the archive).
    Returns:
        {"label", "probability", "threshold", "certainty", "tier", "ood_score", "ood_flag", "model",
        "algorithm", "source_sop_uid", "study_uid"}; missing items are None.
    """
    items = hd.sr.utils.find_content_items(sr, recursive=True)
    by_code: dict[str, object] = {}
    for item in items:
        name = item.ConceptNameCodeSequence[0].CodeValue
        if item.ValueType == "NUM":
            by_code[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "CODE":
            by_code[name] = item.ConceptCodeSequence[0]
        elif item.ValueType == "TEXT":
            by_code.setdefault(name, item.TextValue)
        elif item.ValueType == "IMAGE":
            by_code["source"] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    finding, certainty, flag = (by_code.get(c.value) for c in (FINDING, CERTAINTY, OOD_FLAG))
    return {"label": None if finding is None else "PNEUMONIA" if finding.CodeValue == PNEUMONIA.value else "NORMAL",
            "probability": by_code.get(PROBABILITY.value), "threshold": by_code.get(THRESHOLD.value),
            "certainty": None if certainty is None else certainty.CodeMeaning,
            "tier": None if by_code.get(TIER.value) is None else by_code[TIER.value].CodeValue,
            "ood_score": by_code.get(OOD_SCORE.value),
            "ood_flag": None if flag is None else flag.CodeValue == YES.value,
            "model": by_code.get("111003"), "algorithm": by_code.get("111001"),
            "source_sop_uid": by_code.get("source"), "study_uid": str(sr.StudyInstanceUID)}


def film_as_cr(gray: np.ndarray, patient_name: str, patient_id: str, study_uid: str | None = None,
               view_position: str = "PA", body_part: str = "CHEST", modality: str = "CR",
               study_date: str | None = None, accession: str = "") -> Dataset:
    """A grayscale film (PNG/JPEG pixels) as a single-frame DICOM image, e.g. to load a demo or a
    test archive. Use synthetic patient names only.

    Args:
        gray: 2-D uint8 film.
        patient_name, patient_id: what the header names (synthetic).
        study_uid: the study to put it in (default: a new one).
        view_position, body_part, modality: header facts the watcher checks (PA/AP, CHEST, CR/DX).
        study_date: YYYYMMDD (default: today).
        accession: accession number.
    Returns:
        A pydicom Dataset with file meta, ready for STOW-RS or `dcmwrite`.
    """
    now = datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", "O"
    ds.StudyDate = study_date or now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = accession, "1", ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, body_part, view_position
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "synthetic"
    ds.PatientOrientation = ["L", "F"] if view_position in ("PA", "AP") else ["A", "F"]
    ds.StudyDescription = f"XR {body_part.title()} {view_position}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = gray.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelData = np.ascontiguousarray(gray, np.uint8).tobytes()
    return ds

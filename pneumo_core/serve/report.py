"""The report of one film: a text PDF on A4 (ReportLab), fit for the record.

Text, not a picture: it can be searched, copied and ingested. Fonts are embedded (DejaVu Sans from
Debian's fonts-dejavu-core where installed, else the Bitstream Vera that ships inside ReportLab;
`missing_glyphs` checks a text against the font). It carries whom it is about (the DICOM's patient
name, ID, birth date or age and study date; "not given" when absent), the study's identifiers
(DICOM accession number and Study Instance UID, or the reference the user typed), never the file
name; when the call was scored and when the report was made, each named, in local time with its
zone; the call, its probability against the threshold in words, the
certainty, the site's triage tier with its guarantee (or "not validated at this site") and any caution;
the figures that apply to the model, named by the data they were
measured on (`track_record`); the film and, where drawn, its heatmap with a colour bar; the
reader's findings and agreement with the call (from the reader's verdict, blank lines otherwise);
and a "read by / signed" line. Its file name (`report_filename`) holds no identifier of the
patient or of what the user typed: the study UID or the film's hash, and the date.
"""
from __future__ import annotations

import io
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from pneumo_core.evaluation.track_record import TrackRecord
from pneumo_core.explain.heatmap import colour_bar, display_name, for_display, overlay
from pneumo_core.records.verdicts import Verdict
from pneumo_core.serve.diagnosis import NOTICE, Diagnosis, format_date, format_probability, local_time

NOT_GIVEN = "not given"

FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu")]
FONT, BOLD = "PneumoSans", "PneumoSans-Bold"


@cache
def fonts() -> tuple[str, str]:
    """Register the report's fonts once; returns (regular, bold) file paths used."""
    import reportlab
    from reportlab.lib.fonts import addMapping
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    found = next(((d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf") for d in FONT_DIRS
                  if (d / "DejaVuSans.ttf").is_file() and (d / "DejaVuSans-Bold.ttf").is_file()), None)
    if found is None:
        bundled = Path(reportlab.__file__).parent / "fonts"
        found = (bundled / "Vera.ttf", bundled / "VeraBd.ttf")
    pdfmetrics.registerFont(TTFont(FONT, str(found[0])))
    pdfmetrics.registerFont(TTFont(BOLD, str(found[1])))
    addMapping(FONT, 0, 0, FONT)
    addMapping(FONT, 1, 0, BOLD)
    return str(found[0]), str(found[1])


def missing_glyphs(text: str) -> set[str]:
    """Characters of `text` the report's regular font cannot draw (empty: nothing will show as a box)."""
    from reportlab.pdfbase import pdfmetrics
    fonts()
    face = pdfmetrics.getFont(FONT).face
    return {c for c in text if not c.isspace() and ord(c) not in face.charToGlyph}


def study_reference(d: Diagnosis, reference: str | None = None) -> list[tuple[str, str]]:
    """(field, value) pairs that tie the report to its study: DICOM identifiers, else the typed reference."""
    fields = []
    if d.info is not None and d.info.accession_number:
        fields.append(("Accession number", d.info.accession_number))
    if d.info is not None and d.info.study_instance_uid:
        fields.append(("Study Instance UID", d.info.study_instance_uid))
    if reference and reference.strip():
        fields.append(("Reference", reference.strip()))
    if not fields:
        fields.append(("Reference", "none given: write the patient's identifiers on this report by hand"))
    return fields


def patient_lines(d: Diagnosis, locale: str | None = None) -> list[tuple[str, str]]:
    """(field, value) pairs naming whom the report is about, from the DICOM ("not given" when absent).

    Args:
        d: the diagnosis (its `info` carries the DICOM's patient fields; PNG/JPEG have none).
        locale: the reader's locale for the dates (`format_date`; None: ISO 8601).
    Returns:
        Patient name, patient ID, birth date (or age, when the DICOM gives only that) and study date.
    """
    info = d.info
    name, ident, birth, age, study = ((getattr(info, k, None) if info is not None else None) for k in
                                      ("patient_name", "patient_id", "birth_date", "patient_age", "study_date"))
    lines = [("Patient name", name or NOT_GIVEN), ("Patient ID", ident or NOT_GIVEN)]
    if birth or not age:
        lines.append(("Birth date", format_date(birth, locale) or NOT_GIVEN))
    if age:
        lines.append(("Age", _age_words(age)))
    return lines + [("Study date", format_date(study, locale) or NOT_GIVEN)]


def _age_words(age: str) -> str:
    """A DICOM age string ('047Y', '006M', '003W', '010D') in words; anything else as it is."""
    units = {"Y": "years", "M": "months", "W": "weeks", "D": "days"}
    if len(age) == 4 and age[:3].isdigit() and age[3] in units:
        return f"{int(age[:3])} {units[age[3]]}"
    return age


def findings_lines(reader: Verdict | None) -> list[tuple[str, str]]:
    """(field, value) pairs of the reader's findings and agreement; blank (to fill in by hand) without a verdict."""
    if reader is None:
        return [("Reader's findings", ""), ("Agrees with the call", "yes / no / not assessable (circle one)")]
    agree = {True: "yes", False: "no", None: "not assessable"}[reader.agree]
    lines = [("Reader's findings", reader.summary()), ("Agrees with the call", agree),
             ("Recorded", f"{reader.who or 'unknown'}, {local_time(reader.time)} (model {reader.model})")]
    return lines + ([("Reader's note", reader.note)] if reader.note else [])


def result_lines(d: Diagnosis) -> list[tuple[str, str]]:
    """(field, value) pairs of the call, shared by the screen and the report."""
    lines = [("Call", d.label),
             ("Probability of pneumonia", f"{d.probability_text}, {d.strength} ({format_probability(d.threshold)})"),
             ("Certainty", d.certainty)]
    if d.tier is not None:   # the site's guarantee; without one, the certainty says "not validated at this site"
        lines.append(("Triage tier", d.tier_guarantee))
    if d.ood_score is not None:
        lines.append(("Out-of-distribution score", f"{d.ood_score:.2f} (flagged above 1.00)"))
    return lines


def track_record_lines(record: TrackRecord) -> list[str]:
    """The figures that apply to the model, each line naming the data it was measured on.

    Internal figures are never shown alone as 'test-set sensitivity': their label says they come from
    the training source and were not validated at this site.
    """
    lines = [f"Sensitivity {record.text('sensitivity')}, specificity {record.text('specificity')}, "
             f"ROC-AUC {record.text('roc_auc')}" + (f" (n = {record.n})" if record.n else "") + f": {record.label}."]
    if record.source == "site" and record.figures.get("ppv") is not None:
        prevalence = f" of {100 * record.prevalence:.0f} %" if record.prevalence is not None else ""
        lines.append(f"At this site's prevalence{prevalence}: PPV {record.text('ppv')}, NPV {record.text('npv')} "
                     f"(the share of PNEUMONIA calls that are pneumonia, and of NORMAL calls that are normal).")
    if record.ci:
        lines.append("95 % confidence intervals in brackets.")
    return lines


def report_filename(d: Diagnosis, when: datetime | None = None) -> str:
    """The report's file name: the Study Instance UID (else the film's hash) and the date, nothing else.

    Never the patient's name or ID, the accession number or a typed reference (which may be a name):
    a downloaded file's name is seen in folders, mail and logs.

    Args:
        d: the diagnosis; when: the report's time (default: now).
    Returns:
        'pneumo-report-<study UID or first 16 hex digits of SHA-256>-<YYYYMMDD>.pdf'.
    """
    uid = d.info.study_instance_uid if d.info is not None and d.info.study_instance_uid else None
    ident = "".join(c for c in uid if c.isdigit() or c == ".")[:64] if uid else d.sha256[:16]
    return f"pneumo-report-{ident or d.sha256[:16]}-{(when or datetime.now(UTC)).astimezone():%Y%m%d}.pdf"


def _png(rgb: np.ndarray) -> io.BytesIO:
    return io.BytesIO(cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes())


def report_pdf(gray: np.ndarray, d: Diagnosis, record: TrackRecord | None, reference: str | None = None,
               heatmap: bool | None = None, alpha: float = 0.4, outline_only: bool = False,
               reader: Verdict | None = None, locale: str | None = None, made: str | None = None) -> bytes:
    """The report as PDF bytes (A4, text layer, fonts embedded).

    Args:
        gray: the film; d: its Diagnosis; record: the figures that apply to d's model (track_record).
        reference: what the user typed to identify the study (PNG/JPEG have no identifiers).
        heatmap: draw the heatmap (default: where the page draws it, `Diagnosis.shows_heatmap`).
        alpha, outline_only: as on screen.
        reader: the reader's verdict on this film that counts (the latest): its findings and agreement
            fill "Findings" (blank lines to fill in by hand without one).
        locale: the reader's locale for dates (`format_date`); made: the report's time (UTC ISO; default now).
    Returns:
        The PDF file's bytes.
    """
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    fonts()
    body = ParagraphStyle("body", fontName=FONT, fontSize=9.5, leading=12.5)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=10, textColor=colors.HexColor("#444444"))
    title = ParagraphStyle("title", parent=body, fontName=BOLD, fontSize=16, leading=20)
    heading = ParagraphStyle("heading", parent=body, fontName=BOLD, fontSize=11, leading=15, spaceBefore=6)
    red = colors.HexColor("#b3261e")
    call = ParagraphStyle("call", parent=title, fontSize=18, leading=22,
                          textColor=red if d.label == "PNEUMONIA" else colors.HexColor("#1b5e20"))

    def p(text, style=body):
        return Paragraph(escape(text), style)

    def fields(rows):
        table = Table([[p(k, small), p(v)] for k, v in rows], colWidths=[42 * mm, 128 * mm])
        table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
                                   ("TOPPADDING", (0, 0), (-1, -1), 1.5)]))
        return table

    notice = Table([[p(NOTICE, ParagraphStyle("notice", parent=body, textColor=red))]], colWidths=[170 * mm])
    notice.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1, red)]))
    source = [("Source", d.info.summary())] if d.info is not None else []
    made = made or datetime.now(UTC).isoformat(timespec="seconds")
    story = [p("Pneumo – chest X-ray report", title), notice, Spacer(1, 4 * mm),
             p("Patient", heading), fields(patient_lines(d, locale)),
             p("Study", heading), fields(study_reference(d, reference) + source + [("Film SHA-256", d.sha256)]),
             p("Result", heading), p(f"Call: {d.label}", call),
             fields(result_lines(d)[1:] + [("Model version", d.model_id),
                                           ("Scored by the model", local_time(d.when)),
                                           ("Report made", local_time(made))])]
    story += [p("Caution: " + caution, ParagraphStyle("caution", parent=body, textColor=red)) for caution in d.warnings]
    if record is not None:
        story.append(p("What this model's figures are based on", heading))
        story += [p(line) for line in track_record_lines(record)]

    draw_heatmap = d.shows_heatmap if heatmap is None else heatmap and d.heatmap is not None
    film = for_display(gray, 768)
    side = 62 * mm   # two panels and the patient, findings and signature blocks fit one A4 page
    scale = side / max(film.shape)
    size = (film.shape[1] * scale, film.shape[0] * scale)
    panels = [[Image(_png(overlay(film, None)), *size)], [p("Film", small)]]
    if draw_heatmap:
        panels[0].append(Image(_png(overlay(film, d.heatmap, alpha, outline_only)), *size))
        what = "outline of the strongest evidence" if outline_only else "colours"
        panels[1].append(p(f"{display_name(d.method)} heatmap ({what}): evidence for pneumonia, inside the chest "
                           "only. Blue: none, red: the strongest on this film.", small))
    else:
        panels[1].append(p("Heatmap not drawn: it is shown for PNEUMONIA and borderline calls.", small))
    images = Table(panels, colWidths=[85 * mm, 85 * mm])
    images.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP")]))
    story += [p("Images", heading), images]
    if draw_heatmap and not outline_only:
        story += [Image(_png(colour_bar(512, 12)), 80 * mm, 2 * mm, hAlign="RIGHT"),
                  Table([[p("no evidence", small), p("strongest evidence for pneumonia", small)]],
                        colWidths=[40 * mm, 40 * mm], hAlign="RIGHT")]
    signature = Table([[p("Read by:", small), "", p("Signature:", small), "", p("Date and time:", small), ""]],
                      colWidths=[17 * mm, 48 * mm, 20 * mm, 38 * mm, 25 * mm, 22 * mm], rowHeights=[9 * mm])
    signature.setStyle(TableStyle([("LINEBELOW", (1, 0), (1, 0), 0.6, colors.black),
                                   ("LINEBELOW", (3, 0), (3, 0), 0.6, colors.black),
                                   ("LINEBELOW", (5, 0), (5, 0), 0.6, colors.black),
                                   ("VALIGN", (0, 0), (-1, -1), "BOTTOM")]))
    findings = fields(findings_lines(reader))
    if reader is None:   # blank lines to write on
        findings.setStyle(TableStyle([("LINEBELOW", (1, 0), (1, 0), 0.6, colors.black),
                                      ("BOTTOMPADDING", (0, 0), (-1, -1), 10)]))
    story += [p("Findings", heading), findings, signature]

    buffer = io.BytesIO()
    document = SimpleDocTemplate(buffer, pagesize=A4, leftMargin=20 * mm, rightMargin=20 * mm, topMargin=15 * mm,
                                 bottomMargin=15 * mm, title="Pneumo chest X-ray report", author="Pneumo",
                                 subject=f"model {d.model_id}")
    document.build(story)
    return buffer.getvalue()

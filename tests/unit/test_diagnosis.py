"""The words and numbers a clinician reads (diagnosis.py)."""
import time

import numpy as np
import pytest

from pneumo_core.serve.diagnosis import (
    NOT_ASSESSABLE_TEXT,
    Diagnosis,
    certainty,
    format_date,
    format_probability,
    local_time,
    priority,
    probability_phrase,
    scale_position,
    shows_heatmap,
    strength_words,
    truth_and_call,
    worklist_order,
)


def make(p, threshold=0.874, flag=False, heatmap=True):
    label = "PNEUMONIA" if p >= threshold else "NORMAL"
    return Diagnosis(f"film-{p}", p, label, threshold, certainty(p, threshold, flag),
                     np.zeros((8, 8), np.uint8) if heatmap else None, "gradcam", "m", f"{p:.6f}", ood_flag=flag)


@pytest.mark.parametrize("p, text", [(0.0, "< 0.01"), (0.004, "< 0.01"), (0.0099, "< 0.01"), (0.01, "0.01"),
                                     (0.415, "0.41"), (0.99, "0.99"), (0.995, "> 0.99"), (0.9999, "> 0.99"),
                                     (1.0, "> 0.99")])
def test_probabilities_never_claim_certainty(p, text):
    assert format_probability(p) == text
    assert format_probability(p) not in ("1.000", "1.00", "0.00", "0.000")


@pytest.mark.parametrize("p, words", [
    (0.415, "below the threshold"),        # a clean normal film against a 0.874 threshold: NORMAL, not 'probable'
    (0.827, "just below the threshold"),   # bilateral opacities at 0.827: a NORMAL call, but only just
    (0.874, "just above the threshold"),   # at the threshold the call is PNEUMONIA
    (0.94, "just above the threshold"),
    (0.985, "above the threshold"),
    (0.999, "well above the threshold"),
    (0.05, "well below the threshold")])
def test_strength_says_where_the_call_sits_against_the_operating_point(p, words):
    assert strength_words(p, 0.874) == words
    assert ("above" in words) == (p >= 0.874)   # the side always agrees with the call


def test_the_scale_puts_the_threshold_in_the_middle_and_grows_with_the_probability():
    assert scale_position(0.874, 0.874) == pytest.approx(0.5)
    positions = [scale_position(p, 0.874) for p in (1e-9, 0.1, 0.5, 0.8, 0.874, 0.9, 0.99, 1.0)]
    assert positions == sorted(positions) and positions[0] == 0.0 and positions[-1] == 1.0


@pytest.mark.parametrize("p, threshold, word", [(0.5, 0.5, "borderline"), (0.95, 0.9, "borderline"),
                                                (0.10, 0.18, "borderline"), (0.98, 0.874, "probable"),
                                                (0.415, 0.874, "probable"), (0.999, 0.874, "clear"),
                                                (0.01, 0.874, "clear")])
def test_certainty_words(p, threshold, word):
    text = certainty(p, threshold)
    assert text.split(":")[0] == word
    if word == "borderline":
        assert "second reading" in text


@pytest.mark.parametrize("p", [0.001, 0.5, 0.874, 0.982, 0.9999])
def test_a_flagged_film_is_not_assessable_whatever_its_probability(p):
    assert certainty(p, 0.874, ood_flag=True) == NOT_ASSESSABLE_TEXT
    assert NOT_ASSESSABLE_TEXT.startswith("not assessable:") and "must not be relied on" in NOT_ASSESSABLE_TEXT
    assert certainty(p, 0.874, ood_flag=None) == certainty(p, 0.874, ood_flag=False)  # no detector: no flag


def test_worklist_pins_flagged_and_borderline_films_above_the_rest():
    films = [make(0.999), make(0.02), make(0.86), make(0.5, flag=True), make(0.97), make(0.3)]
    assert [priority(d) for d in films] == ["urgent", "routine", "check", "check", "urgent", "routine"]
    order = [films[i].probability for i in worklist_order(films)]
    assert order == [0.86, 0.5, 0.999, 0.97, 0.3, 0.02]


def test_heatmaps_are_drawn_for_pneumonia_and_borderline_calls_only():
    assert shows_heatmap(make(0.99)) and shows_heatmap(make(0.85))          # PNEUMONIA; borderline NORMAL
    assert not shows_heatmap(make(0.2))                                      # clear NORMAL: on request only
    assert not shows_heatmap(make(0.99, heatmap=False))                      # nothing to draw


def test_labelled_films_say_truth_and_call():
    assert truth_and_call(0, 0.93, 0.874) == "truth: NORMAL, call: PNEUMONIA, p = 0.93"
    assert truth_and_call(1, 0.0001, 0.5) == "truth: PNEUMONIA, call: NORMAL, p < 0.01"
    assert truth_and_call(None, 0.999, 0.5) == "call: PNEUMONIA, p > 0.99"


def test_local_time_names_its_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        assert local_time("2026-11-26T06:05:00+00:00") == "2026-11-26 07:05 CET (UTC+01:00)"
        assert local_time("2026-07-01T06:05:00+00:00") == "2026-07-01 08:05 CEST (UTC+02:00)"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()




@pytest.mark.parametrize("locale, shown", [("en-US", "12/06/2026"), ("en-GB", "06/12/2026"), ("de-DE", "06.12.2026"),
                                           ("sv-SE", "2026-12-06"), ("ja", "2026/12/06"), (None, "2026-12-06"),
                                           ("xx-YY", "2026-12-06")])
def test_study_dates_are_shown_in_the_readers_locale_style(locale, shown):
    assert format_date("20261206", locale) == shown            # DICOM's form, never shown raw
    assert format_date("2026-12-06", locale) == shown
    assert format_date(None, locale) == "" and format_date("2026", locale) == "2026"


@pytest.mark.parametrize("p, shown", [(0.99999, "> 0.99"), (0.0001, "< 0.01"), (0.4242, "= 0.42")])
def test_one_probability_rule_for_every_surface(p, shown):
    assert probability_phrase(p) == shown and format_probability(p) == shown.lstrip("= ")

"""Progress: what a reporter receives, the one line format, and the job runner reading it back."""
import io

import pytest

from pneumo_core.progress import CallbackReporter, Progress, StreamReporter, Update, format_line, parse_line


def test_progress_reports_the_start_about_every_step_and_the_end():
    updates = []
    progress = Progress("caching test", 100, CallbackReporter(updates.append), step=0.25)
    for _ in range(100):
        progress.update(1, "x")
    assert [u.done for u in updates] == [0, 25, 50, 75, 100]
    assert all(u.stage == "caching test" and u.total == 100 for u in updates)
    assert updates[-1].detail == "x" and updates[0].detail == ""


def test_progress_never_counts_past_the_total_and_finish_completes_it():
    updates = []
    progress = Progress("tuning trial", 3, CallbackReporter(updates.append))
    progress.update(5)
    assert progress.done == 3 and updates[-1].done == 3
    progress.update(0, "again")
    assert len(updates) == 2                        # the same count is not reported twice
    other = Progress("caching val", 40, CallbackReporter(updates.append))
    other.finish("cached")
    assert (updates[-1].stage, updates[-1].done, updates[-1].detail) == ("caching val", 40, "cached")


def test_an_unknown_total_reports_every_update():
    updates = []
    progress = Progress("tuning trial", None, CallbackReporter(updates.append))
    progress.update()
    progress.update()
    assert [(u.done, u.total, u.step) for u in updates] == [(0, None, "0/?"), (1, None, "1/?"), (2, None, "2/?")]


def test_without_a_reporter_nothing_is_printed(capsys):
    Progress("training epoch", 2).update(2)
    assert capsys.readouterr() == ("", "")


def test_stream_lines_are_what_the_job_runner_parses():
    stream = io.StringIO()
    progress = Progress("caching train augmented view 2/3", 400, StreamReporter(stream))
    progress.update(120, "batch 4")
    first, last = stream.getvalue().splitlines()
    assert first.startswith("progress: caching train augmented view 2/3 0/400 (0%) ")
    assert last.startswith("progress: caching train augmented view 2/3 120/400 (30%) ") and last.endswith(" batch 4")
    parsed = parse_line(last)
    assert (parsed.stage, parsed.done, parsed.total, parsed.step) == ("caching train augmented view 2/3", 120, 400,
                                                                      "120/400")


@pytest.mark.parametrize("line, stage, step", [
    ("progress: caching train augmented view 2/3 120/400 (30%) 5s", "caching train augmented view 2/3", "120/400"),
    ("progress: tuning trial 7/20 (35%) 12s", "tuning trial", "7/20"),
    ("progress: tuning trial 4/? 3s", "tuning trial", "4/?"),
    ("progress: training epoch 14/36 (39%) 2s head 2/3 val_auc=0.9120", "training epoch", "14/36"),
    (format_line(Update("fine-tuning epoch", 1, 2, 61.2, "loss=0.3")), "fine-tuning epoch", "1/2"),
])
def test_progress_lines_are_parsed(line, stage, step):
    update = parse_line(line)
    assert update and update.stage == stage and update.step == step


@pytest.mark.parametrize("line", ["Epoch 1/2", "note: skipped 1 unreadable file(s)", "20260101-mobilenet_v2", ""])
def test_other_lines_are_not_progress(line):
    assert parse_line(line) is None


def test_a_site_adaptations_bar_follows_its_stages_in_order_and_never_goes_back():
    from pneumo_core.jobs.progress_lines import SITE_ADAPT_BANDS, ProgressTracker
    tracker = ProgressTracker(1, every=0.0, bands=SITE_ADAPT_BANDS)
    loading = "progress: loading the site's films and the model"
    lines = [f"{loading} 0/3 0s", f"{loading} 1/3 3s", "progress: scoring site films (6 views) 20/40 (50%) 9s",
             "progress: caching train plain view 10/10 (100%) 1s",
             "progress: caching val 0/5 (0%) 0s", "progress: training site fold 5/5 (100%) 4s",
             "progress: evaluating the cross-validated figures 1/1 (100%) 0s",
             "progress: scoring internal val films (6 views) 5/5 (100%) 2s",
             "progress: scoring internal test films (6 views) 5/5 (100%) 2s",
             "progress: saving the adapted version 1/1 (100%) 9s"]
    percents = [tracker.feed(line, now=i)["percent"] for i, line in enumerate(lines)]
    assert percents[0] == 0 and 0 < percents[1] < percents[2] < 48     # moves while the model loads
    assert percents == sorted(percents) and percents[-1] == 100         # the second caching stage never pulls back

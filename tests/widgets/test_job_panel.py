"""The shared progress / cancel / error panel, with fake jobs (no model needed)."""

from __future__ import annotations

import threading
import time

import pytest

from napari_recist_seg._widgets._jobs import JobPanel, format_duration, phase_progress
from napari_recist_seg.jobs.common import (
    Cancelled,
    InputError,
    JobReport,
    ProgressEvent,
    ProgressTracker,
)


def counting_job(n: int, delay: float = 0.0, fail_at: int | None = None):
    """A bulk-like job: ``n`` items, optional per-item delay, one failing file."""

    def job(progress, cancel):
        tracker = ProgressTracker(n, progress)
        report = JobReport()
        for i in range(n):
            if cancel.cancelled:
                report.cancelled = True
                break
            if delay:
                time.sleep(delay)
            if i == fail_at:
                report.fail(f"img_{i}.png", "truncated or incomplete file")
            else:
                report.processed += 1
            tracker.step(f"img_{i}.png")
        return report

    return job


@pytest.fixture()
def panel(qtbot):
    p = JobPanel("test")
    qtbot.addWidget(p)
    yield p
    if p.busy:
        p.cancel()
        qtbot.waitUntil(lambda: not p.busy, timeout=10000)


def test_progress_result_and_failures(panel, qtbot):
    results = []
    busy = []
    panel.busy_changed.connect(busy.append)
    panel.run(counting_job(20_000, fail_at=7), on_result=results.append)
    assert panel.busy and panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.busy, timeout=20000)

    (report,) = results
    assert report.processed == 19_999
    assert panel.last_outcome.status == "ok"
    assert busy == [True, False]
    # The bar ends full; the summary and the failing file with its reason are shown.
    assert panel.bar.value() == panel.bar.maximum() == 20_000
    assert panel.last_event.done == 20_000
    assert "Done" in panel.status.text() and "1 failed" in panel.status.text()
    assert panel.failure_texts() == ["img_7.png: truncated or incomplete file"]
    assert not panel.cancel_button.isEnabled()


def test_cancel_button_stops_the_job_keeping_its_work(panel, qtbot):
    outcomes = []
    panel.job_finished.connect(outcomes.append)
    panel.run(counting_job(10_000, delay=0.002))
    qtbot.waitUntil(lambda: panel.last_event is not None and panel.last_event.done >= 5, timeout=10000)
    assert "ETA" in panel.status.text()
    panel.cancel_button.click()
    assert panel.cancel_button.text() == "Cancelling…" and not panel.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not panel.busy, timeout=10000)

    (outcome,) = outcomes
    assert outcome.status == "cancelled"
    assert 5 <= outcome.result.processed < 10_000 and outcome.result.cancelled
    assert "Cancelled" in panel.status.text() and "kept" in panel.status.text()


def test_cancelled_exception_and_errors_are_reported(panel, qtbot):
    def raises_cancelled(progress, cancel):
        raise Cancelled("cancelled by the user")

    panel.run(raises_cancelled)
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)
    assert panel.last_outcome.status == "cancelled" and panel.error.isHidden()

    errors = []

    def bad_input(progress, cancel):
        progress(ProgressEvent(1, 4, "reading"))
        raise InputError("RECIST CSV not found: /nowhere/recist.csv")

    panel.run(bad_input, on_error=errors.append)
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)
    assert panel.last_outcome.status == "error"
    assert isinstance(errors[0], InputError)
    assert not panel.error.isHidden()
    assert panel.error.text() == "RECIST CSV not found: /nowhere/recist.csv"  # no traceback
    assert "Traceback" in panel.error.toolTip()  # ... which is one hover away
    assert "Failed" in panel.status.text()


def test_relayed_events_arrive_in_order_in_the_gui_thread(panel, qtbot):
    seen = []
    gui = threading.get_ident()
    panel.job_event.connect(lambda name, payload: seen.append((name, payload, threading.get_ident())))
    send = panel.relay("epoch")

    def job(progress, cancel):
        for i in range(50):
            send({"epoch": i})
        return "done"

    panel.run(job)
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)
    assert [p["epoch"] for _, p, _ in seen] == list(range(50))
    assert {name for name, _, _ in seen} == {"epoch"} and {t for _, _, t in seen} == {gui}


def test_one_job_at_a_time_and_stale_events_are_dropped(panel, qtbot):
    gate = threading.Event()

    def slow(progress, cancel):
        gate.wait(5)
        return JobReport(processed=1)

    panel.run(slow)
    with pytest.raises(RuntimeError, match="already running"):
        panel.run(slow)
    old_send = panel.relay("epoch")  # belongs to the running job
    gate.set()
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)

    seen = []
    panel.job_event.connect(lambda name, payload: seen.append(payload))
    panel.run(counting_job(3))
    old_send("late")  # a straggler from the finished job
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)
    qtbot.wait(50)
    assert seen == []


def test_helpers():
    assert format_duration(59.4) == "59 s"
    assert format_duration(61) == "1 min 01 s"
    got = []
    cb = phase_progress(got.append, "segment B", 2, 4)
    cb(ProgressEvent(1, 4, "x.png", 1.0, 3.0))
    assert (got[0].done, got[0].total, got[0].eta) == (562, 1000, 3.0)
    assert got[0].message == "segment B 1/4: x.png"
    assert phase_progress(None, "x", 0, 1) is None

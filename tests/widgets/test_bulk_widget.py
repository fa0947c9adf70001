"""The "Bulk segment" dock on real ISIC images with a truncated file in the folder.

Checks: the run finishes and lists the truncated file with its reason; outputs equal
what ``recist-seg segment`` writes on the same folder; a cancelled run keeps what it
finished and the next run resumes (skips it); double-clicking a result opens the
image with its mask.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from napari_recist_seg.cli import main as cli_main
from napari_recist_seg.data import read_mask

STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"]
BROKEN = "ISIC_0000006"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def dataset(tmp_path, make_isic_dataset) -> Path:
    """5 real ISIC images + masks (RECIST derived from them) and one truncated JPEG."""
    return make_isic_dataset(tmp_path / "isic", STEMS, broken=BROKEN, keep=3)


@pytest.fixture()
def widget(open_dock, tiny_a1_ckpt):
    from napari_recist_seg._widgets.bulk import BulkSegmentWidget

    w = open_dock(BulkSegmentWidget, "Bulk segment", cancel_timeout_ms=30000)
    w.model.set_choice("checkpoint", tiny_a1_ckpt)
    return w


def _run(w, qtbot):
    worker = w.start()
    assert worker is not None, w.jobs.error.text()
    qtbot.waitUntil(lambda: not w.jobs.busy, timeout=60000)
    assert w.jobs.last_outcome is not None
    return w.jobs.last_outcome


def test_bulk_run_reports_truncated_file_and_matches_cli(widget, qtbot, dataset, tiny_a1_ckpt,
                                                          tmp_path):
    out = tmp_path / "out_widget"
    widget.input.set_path(dataset)
    widget.output.set_path(out)
    outcome = _run(widget, qtbot)

    assert outcome.status == "ok", widget.jobs.error.text()
    report = outcome.result
    assert report.processed == len(STEMS)
    assert [Path(f).name for f, _ in report.failures] == [f"{BROKEN}.jpg"]
    assert "truncated" in report.failures[0][1].lower()
    # The failure is shown in the panel and in the results list, the rest are done.
    assert any(BROKEN in t and "truncated" in t.lower() for t in widget.jobs.failure_texts())
    status = {row.stem: row.status for row in widget.rows}
    assert status == {**dict.fromkeys(STEMS, "done"), BROKEN: "failed"}
    assert "Done" in widget.jobs.status.text()

    # Same files as the command line on the same folder.
    cli_out = tmp_path / "out_cli"
    code = cli_main(["segment", str(dataset), "--model", str(tiny_a1_ckpt), "--out", str(cli_out),
                     "--device", "cpu", "-q"])
    assert code == 3  # some files failed
    for stem in STEMS:
        assert np.array_equal(read_mask(out / f"{stem}.png"), read_mask(cli_out / f"{stem}.png"))
    rows = [list(csv.reader(open(p / "measurements.csv"))) for p in (out, cli_out)]
    assert len(rows[0]) == len(STEMS) + 1
    assert rows[0] == rows[1]
    failures = [list(csv.reader(open(p / "failures.csv"))) for p in (out, cli_out)]
    assert failures[0] == failures[1]

    # Double-click a finished result: the image and its mask open in the viewer.
    item = widget.results.item([r.stem for r in widget.rows].index(STEMS[0]))
    widget._open_item(item)
    viewer = widget.viewer
    assert STEMS[0] in viewer.layers and f"{STEMS[0]} lesions" in viewer.layers
    shown = np.asarray(viewer.layers[f"{STEMS[0]} lesions"].data) > 0
    assert np.array_equal(shown, read_mask(out / f"{STEMS[0]}.png"))
    assert viewer.layers[STEMS[0]].rgb


def test_cancel_keeps_finished_outputs_and_next_run_resumes(widget, qtbot, dataset, tmp_path):
    out = tmp_path / "out"
    widget.input.set_path(dataset)
    widget.output.set_path(out)

    # Cancel from inside the job right after the first image is written: the cancel
    # is then deterministic (a Cancel click lands wherever the worker happens to be).
    panel = widget.jobs
    make = panel._make_progress_callback

    def cancelling(job_id):
        forward = make(job_id)

        def progress(event):
            forward(event)
            # Bad files are reported while a chunk is read, before any image is written.
            written = event.done >= 1 and not event.message.startswith("failed")
            if written and panel.cancel_token is not None:
                panel.cancel_token.cancel()

        return progress

    panel._make_progress_callback = cancelling
    first = _run(widget, qtbot)
    panel._make_progress_callback = make

    assert first.status == "cancelled"
    assert first.result.cancelled and first.result.processed == 1
    assert "Cancelled" in panel.status.text()
    done_first = sorted(p.stem for p in out.glob("ISIC_*.png"))
    assert len(done_first) == 1
    assert sum(r.status == "done" for r in widget.rows) == 1

    second = _run(widget, qtbot)
    assert second.status == "ok"
    assert second.result.skipped == 1  # resumed: the finished image is not redone
    assert second.result.processed == len(STEMS) - 1
    assert sorted(p.stem for p in out.glob("ISIC_*.png")) == STEMS
    with open(out / "measurements.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(STEMS)


def test_bad_input_is_reported_without_starting(widget, tmp_path):
    widget.input.set_path(tmp_path / "does_not_exist")
    assert widget.start() is None
    assert "does not exist" in widget.jobs.error.text()
    assert not widget.jobs.busy


def test_recist_source_folder_csv_or_derived_from_masks(widget, qtbot, dataset, tmp_path):
    """The folder's recist.csv wins by default; "derived from masks" ignores it."""
    from napari_recist_seg._widgets.bulk import RecistSource
    from napari_recist_seg.data import RecistRecord, read_recist_csv, write_recist_csv
    from napari_recist_seg.recist import recist_from_mask

    (dataset / "images" / f"{BROKEN}.jpg").unlink()
    (dataset / "masks" / f"{BROKEN}_segmentation.png").unlink()
    only = STEMS[0]
    gt = read_mask(dataset / "masks" / f"{only}_segmentation.png")
    write_recist_csv(dataset / "recist.csv",
                     [RecistRecord(dataset / "images" / f"{only}.jpg", 1, recist_from_mask(gt))])
    widget.input.set_path(dataset)

    widget.output.set_path(tmp_path / "from_csv")
    report = _run(widget, qtbot).result
    assert report.processed == 1
    assert sorted(Path(f).stem for f, _ in report.failures) == STEMS[1:]
    assert all("no RECIST" in reason for _, reason in report.failures)

    widget.source.setCurrentIndex(widget.source.findData(RecistSource.MASKS))
    widget.output.set_path(tmp_path / "from_masks")
    report = _run(widget, qtbot).result
    assert report.processed == len(STEMS) and not report.failures
    derived = read_recist_csv(tmp_path / "from_masks" / "recist_from_masks.csv")
    assert sorted(r.image.stem for r in derived) == STEMS

"""The pipelined bulk run (``jobs/pipeline.py``: read ahead, segment in chunks, write
behind) against the serial loop (``RECIST_SEG_SERIAL=1``) on 20 real ISIC images plus
a truncated JPEG and a RECIST outside its image: byte-identical outputs, resume after
a cancel, and a full disk stopping the writer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from napari_recist_seg.jobs import segment as segment_mod
from napari_recist_seg.jobs.common import CancelToken
from napari_recist_seg.jobs.outdir import OutputWriteError
from napari_recist_seg.jobs.segment import run_segment
from tests.jobs._bulk_data import dataset_with_two_failures, output_files

_ISIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "isic2017_train256"
_NAMES = sorted(p.stem for p in (_ISIC / "images").glob("ISIC_*.jpg"))[:21]
if len(_NAMES) < 21:
    pytest.skip(f"real data not found at {_ISIC}", allow_module_level=True)
STEMS, SPARE = _NAMES[:20], _NAMES[20:]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_isic_dataset) -> Path:
    """20 real images, a truncated JPEG and a bad lesion (tests/jobs/_bulk_data.py)."""
    return dataset_with_two_failures(make_isic_dataset, tmp_path_factory.mktemp("ds") / "ds",
                                     STEMS, SPARE[0])


_files = output_files


@pytest.fixture(scope="module")
def serial_out(dataset, tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECIST_SEG_SERIAL", "1")
        report = run_segment(dataset, out, predictor=tiny, batch_size=4)
    assert report.processed == 20 and len(report.failures) == 2
    return out


def test_pipelined_outputs_are_byte_identical_to_serial(dataset, tiny, serial_out, tmp_path, monkeypatch):
    threads = set()
    load = segment_mod._load

    def spy(item, report, **kw):
        threads.add(threading.current_thread().name)
        return load(item, report, **kw)

    monkeypatch.setattr(segment_mod, "_load", spy)
    out = tmp_path / "out"
    report = run_segment(dataset, out, predictor=tiny, batch_size=4)
    assert report.processed == 20 and not report.cancelled
    # really pipelined: images were read in the reader thread
    assert {t.split("_")[0] for t in threads} == {"recist-read"}
    got, want = _files(out), _files(serial_out)
    assert sorted(got) == sorted(want)
    assert sum(n.endswith(".png") for n in got) == 20
    for name in want:
        assert got[name] == want[name], name
    # both failures, in the serial order: the bad lesion, then the truncated JPEG
    lines = got["failures.csv"].decode().splitlines()
    assert STEMS[5] in lines[1] and "broken" in lines[2]


def test_cancel_then_resume_gives_the_serial_outputs(dataset, tiny, serial_out, tmp_path):
    out = tmp_path / "out"
    token = CancelToken()

    def progress(event):
        if event.done >= 6:
            token.cancel()

    report = run_segment(dataset, out, predictor=tiny, batch_size=4, progress=progress,
                         cancel=token)
    assert report.cancelled and report.exit_code == 130
    # cancel lands between images, as in the serial loop (not at the end of a chunk)
    assert report.processed == 6
    masks = sorted(p.name for p in out.glob("ISIC_*.png"))
    assert len(masks) == report.processed
    # what was cancelled is consistent: each mask has its row, no more
    rows = (out / "measurements.csv").read_text().splitlines()[1:]
    assert len({r.split(",")[0] for r in rows}) == report.processed
    again = run_segment(dataset, out, predictor=tiny, batch_size=4)
    assert again.skipped == report.processed and again.processed == 20 - report.processed
    got, want = _files(out), _files(serial_out)
    for name in ("measurements.csv", *[n for n in want if n.endswith(".png")]):
        assert got[name] == want[name], name


def test_full_disk_stops_the_writer_at_the_failing_image(dataset, tiny, tmp_path, monkeypatch):
    commit = segment_mod._commit
    calls = []

    def failing(loaded, *args):
        calls.append(loaded.item.stem)
        if len(calls) == 7:
            raise OutputWriteError("cannot write into out: no space left on device")
        return commit(loaded, *args)

    monkeypatch.setattr(segment_mod, "_commit", failing)
    out = tmp_path / "out"
    with pytest.raises(OutputWriteError):
        run_segment(dataset, out, predictor=tiny, batch_size=4)
    # nothing was written after the failing image, and the table holds the six before
    assert calls == STEMS[:7]
    assert sorted(p.stem for p in out.glob("ISIC_*.png")) == STEMS[:6]
    rows = (out / "measurements.csv").read_text().splitlines()[1:]
    assert len(rows) == 6

"""Bulk ``recist-seg segment`` in worker processes (``jobs/segment_processes.py``)
against the serial loop, with the shipped default model on 40 real ISIC images plus a
truncated JPEG and a RECIST outside its image: byte-identical outputs, cancel and
resume, a full disk, a bad model, and no worker outliving a killed parent."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from napari_recist_seg.jobs import segment_commit
from napari_recist_seg.jobs.common import CancelToken
from napari_recist_seg.jobs.outdir import OutputWriteError
from napari_recist_seg.jobs.segment import run_segment
from napari_recist_seg.jobs.segment_processes import process_workers
from tests.jobs._bulk_data import dataset_with_two_failures, output_files

_ISIC = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "isic2017_train256"
_NAMES = sorted(p.stem for p in (_ISIC / "images").glob("ISIC_*.jpg"))[:41]
if len(_NAMES) < 41:
    pytest.skip(f"real data not found at {_ISIC}", allow_module_level=True)
if sys.platform != "linux":
    pytest.skip("worker processes are forked on Linux only", allow_module_level=True)
STEMS, SPARE = _NAMES[:40], _NAMES[40:]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_isic_dataset) -> Path:
    """40 real images, a truncated JPEG and a bad lesion (tests/jobs/_bulk_data.py)."""
    return dataset_with_two_failures(make_isic_dataset, tmp_path_factory.mktemp("ds") / "ds",
                                     STEMS, SPARE[0])


_files = output_files


@pytest.fixture(scope="module")
def serial_out(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECIST_SEG_SERIAL", "1")
        report = run_segment(dataset, out)
    assert report.processed == 40 and len(report.failures) == 2
    return out


def test_worker_processes_give_the_serial_outputs_byte_for_byte(dataset, serial_out, tmp_path):
    children = []

    def progress(event):
        children.append(len(multiprocessing.active_children()))

    out = tmp_path / "out"
    report = run_segment(dataset, out, workers=2, progress=progress)
    assert report.processed == 40 and not report.cancelled
    assert max(children) == 2  # really in two worker processes
    got, want = _files(out), _files(serial_out)
    assert sorted(got) == sorted(want)
    for name in want:  # masks, measurements.csv, failures.csv and the journal
        assert got[name] == want[name], name
    lines = got["failures.csv"].decode().splitlines()
    assert STEMS[5] in lines[1] and "broken" in lines[2]
    assert not multiprocessing.active_children()  # the pool is gone with the run


def test_cancel_then_resume_gives_the_serial_outputs(dataset, serial_out, tmp_path):
    out, token = tmp_path / "out", CancelToken()

    def progress(event):
        if event.done >= 10:
            token.cancel()

    report = run_segment(dataset, out, workers=2, progress=progress, cancel=token)
    assert report.cancelled and report.exit_code == 130
    assert report.processed == 10  # between images, as the serial loop
    # the masks the workers wrote past the cancel are not left without their rows
    assert sorted(p.stem for p in out.glob("ISIC_*.png")) == STEMS[:10]
    rows = (out / "measurements.csv").read_text().splitlines()[1:]
    assert len({r.split(",")[0] for r in rows}) == 10  # only committed images have rows
    again = run_segment(dataset, out, workers=2)
    assert again.skipped == 10 and again.processed == 30
    got, want = _files(out), _files(serial_out)
    for name in ("measurements.csv", *[n for n in want if n.endswith(".png")]):
        assert got[name] == want[name], name


def test_a_full_disk_stops_the_run_and_a_rerun_repairs_it(dataset, serial_out, tmp_path, monkeypatch):
    write_png = segment_commit._write_png

    def full_at_13th(path, image):  # in the parent: the one process writing into OUT
        if path.name.startswith(STEMS[12]):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_png(path, image)

    monkeypatch.setattr(segment_commit, "_write_png", full_at_13th)
    out = tmp_path / "out"
    with pytest.raises(OutputWriteError, match="No space left on device; 12 image"):
        run_segment(dataset, out, workers=2)
    rows = (out / "measurements.csv").read_text().splitlines()[1:]
    assert sorted({r.split(",")[0].split("/")[-1][:12] for r in rows}) == STEMS[:12]
    assert sorted(p.stem for p in out.glob("ISIC_*.png")) == STEMS[:12]
    monkeypatch.setattr(segment_commit, "_write_png", write_png)
    again = run_segment(dataset, out, workers=2)
    assert again.skipped == 12
    got, want = _files(out), _files(serial_out)
    for name in ("measurements.csv", *[n for n in want if n.endswith(".png")]):
        assert got[name] == want[name], name


def test_a_bad_model_gives_the_same_one_line_error_as_one_process(dataset, tmp_path):
    (tmp_path / "nomodel").mkdir()
    messages = []
    for workers in (1, 2):
        with pytest.raises(Exception) as info:
            run_segment(dataset, tmp_path / f"out{workers}", model=tmp_path / "nomodel", workers=workers)
        messages.append((type(info.value), str(info.value)))
    assert messages[0] == messages[1]
    assert "nomodel" in messages[1][1]


def test_how_many_workers(monkeypatch):
    monkeypatch.delenv("RECIST_SEG_WORKERS", raising=False)
    assert process_workers(1000, 8, "cpu", 2) == 2
    assert process_workers(1000, 8, "cpu", 1) == 1
    assert process_workers(40, 8, "cpu", 4) == 2  # two chunks per worker at least
    assert process_workers(20, 8, "cpu", 2) == 1  # a small run: no processes to start
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch", object()))
    assert process_workers(1000, 8, "cpu") == 1  # unasked, no fork after torch
    monkeypatch.setenv("RECIST_SEG_WORKERS", "3")
    assert process_workers(1000, 8, "cpu") == 3
    monkeypatch.delitem(sys.modules, "torch")
    assert process_workers(1000, 8, "cuda") == 1  # one process owns the GPU
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:  # never forked from a process running other threads (the viewer)
        assert process_workers(1000, 8, "cpu", 2) == 1
    finally:
        stop.set()
        other.join()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited (nobody reaped it yet)


def test_no_worker_outlives_a_killed_parent(dataset, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECIST_SEG_WORKERS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "napari_recist_seg", "segment", str(dataset),
                             "--out", str(out), "-q"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
            workers = _children(proc.pid)
            time.sleep(0.02)
        assert len(workers) == 2, "the run did not start two workers"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers)
    finally:
        for w in _children(proc.pid) if proc.poll() is None else []:
            os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_cancelling_an_overwrite_keeps_the_rows_of_images_not_yet_redone(dataset, serial_out, tmp_path):
    out = tmp_path / "out"
    assert run_segment(dataset, out, workers=2).processed == 40
    token = CancelToken()

    def progress(event):
        if event.done >= 10:
            token.cancel()

    report = run_segment(dataset, out, workers=2, overwrite=True, progress=progress, cancel=token)
    assert report.cancelled and report.processed == 10
    # as the serial loop: the 30 images not redone keep their records, so their rows stay
    rows = (out / "measurements.csv").read_text().splitlines()[1:]
    assert len({r.split(",")[0] for r in rows}) == 40
    got, want = _files(out), _files(serial_out)
    assert got["measurements.csv"] == want["measurements.csv"]


# A worker is killed (the OOM killer) in a CLI run: the CLI's SIGTERM -> KeyboardInterrupt
# handler must not keep the other worker alive writing results into a pipe no one reads
# (each image's outcome padded past the pipe's 64 KiB here, as a big image's masks are).
_DYING_RUN = """
import os, signal, sys
from napari_recist_seg import cli
from napari_recist_seg.jobs import segment, segment_processes as sp
segment_chunk, segment_items = segment._segment_chunk, sp._segment_items
def dying(chunk, predictor, batch):
    if any(one.item.stem == {victim!r} for one in chunk):
        os.kill(os.getpid(), signal.SIGKILL)
    return segment_chunk(chunk, predictor, batch)
def padded(items):
    outcomes = segment_items(items)
    for o in outcomes:
        o.not_ct = o.not_ct + ["x" * 100_000]
    return outcomes
segment._segment_chunk, sp._segment_items = dying, padded
sys.exit(cli.main(["segment", {dataset!r}, "--out", {out!r}, "-q", "--workers", "2"]))
"""


def test_a_dead_worker_stops_the_cli_with_one_line_and_a_rerun_repairs_it(dataset, serial_out, tmp_path):
    out = tmp_path / "out"
    code = _DYING_RUN.format(victim=STEMS[20], dataset=str(dataset), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the run hung after a worker died")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "a worker process died" in lines[0] and "Traceback" not in done.stderr
    assert "the first not done: ISIC_" in lines[0]
    again = run_segment(dataset, out, workers=2)
    assert again.processed + again.skipped == 40
    got, want = _files(out), _files(serial_out)
    for name in ("measurements.csv", *[n for n in want if n.endswith(".png")]):
        assert got[name] == want[name], name


def test_volume_runs_keep_the_threads(tmp_path):
    from napari_recist_seg.jobs.segment_plan import SegmentItem
    from napari_recist_seg.jobs.segment_processes import holds_volumes

    photos = [SegmentItem(tmp_path / f"a{k}.jpg", f"a{k}") for k in range(3)]
    assert not holds_volumes(photos)
    for name in ("ct.nii.gz", "mr.nii", "slice.dcm", "stack.tif"):
        assert holds_volumes([*photos, SegmentItem(tmp_path / name, "v")]), name
    (tmp_path / "series").mkdir()
    assert holds_volumes([SegmentItem(tmp_path / "series", "series")])


def _die() -> None:
    os._exit(1)


def test_a_chunk_sent_to_a_broken_pool_is_the_same_one_line_error(tmp_path):
    # The pool may break between taking one chunk's results and sending the next one.
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from napari_recist_seg.jobs.common import JobReport
    from napari_recist_seg.jobs.segment_plan import SegmentItem
    from napari_recist_seg.jobs.segment_processes import WorkerDied, _submit

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    try:
        with pytest.raises(BrokenProcessPool):
            pool.submit(_die).result(timeout=30)
        chunks = deque([[SegmentItem(tmp_path / "b.jpg", "b")]])
        running = deque([([SegmentItem(tmp_path / "a.jpg", "a")], None)])
        with pytest.raises(WorkerDied, match="the first not done: a.jpg"):
            _submit(pool, chunks, running, JobReport())
    finally:
        pool.shutdown(wait=False, cancel_futures=True)

"""Bulk outputs that survive interruptions, concurrent runs, name collisions, foreign
files, hostile folders and full / read-only disks (issue 12), on real ISIC images."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.cli import main
from napari_recist_seg.data.dataset import scan_dataset
from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv
from napari_recist_seg.jobs import outdir
from napari_recist_seg.jobs.common import InputError
from napari_recist_seg.jobs.segment import run_segment
from napari_recist_seg.recist import recist_from_mask

STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004",
         "ISIC_0000006"]


@pytest.fixture()
def dataset(tmp_path, make_isic_dataset) -> Path:
    return make_isic_dataset(tmp_path / "ds", STEMS)


@pytest.fixture(scope="module")
def dark(make_dark_predictor):
    return make_dark_predictor(0.45)


def _outputs(out: Path) -> dict[str, bytes]:
    """Every user-visible output (not the bookkeeping) by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "measurements.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_interrupt_between_mask_and_record_then_resume_equals_a_clean_run(
    dataset, dark, tmp_path, monkeypatch
):
    clean = tmp_path / "clean"
    assert run_segment(dataset, clean, predictor=dark).exit_code == 0
    out = tmp_path / "out"
    real_write = outdir.write_record
    calls = []

    def dying_write(*args, **kw):
        calls.append(args[1])
        if len(calls) == 3:  # the third image's masks are written, its record is not
            raise KeyboardInterrupt
        real_write(*args, **kw)

    monkeypatch.setattr(outdir, "write_record", dying_write)
    with pytest.raises(KeyboardInterrupt):
        run_segment(dataset, out, predictor=dark)
    monkeypatch.setattr(outdir, "write_record", real_write)
    # the tables hold exactly the committed images, though 3 masks exist
    assert len(list(out.glob("ISIC_*.png"))) == 3
    assert [r["image"].split("/")[-1] for r in _rows(out)] == [f"{s}.jpg" for s in STEMS[:2]]
    again = run_segment(dataset, out, predictor=dark)
    assert again.exit_code == 0 and again.skipped == 2 and again.processed == 4
    assert _outputs(out) == _outputs(clean)


def test_a_cancel_as_the_last_image_is_done_still_writes_every_row(dataset, dark, tmp_path, monkeypatch):
    # SIGTERM (KeyboardInterrupt) while the final tables are written: every committed
    # image's row must be in measurements.csv (CI's kill test caught 9 rows for 10 masks).
    from napari_recist_seg.jobs import segment

    real_finish, calls = segment._finish, []

    def interrupted_finish(*args, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real_finish(*args, **kw)

    monkeypatch.setattr(segment, "_finish", interrupted_finish)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_segment(dataset, out, predictor=dark)
    assert len(list(out.glob("ISIC_*.png"))) == len(STEMS)
    assert [r["image"].split("/")[-1] for r in _rows(out)] == [f"{s}.jpg" for s in STEMS]


def test_a_second_run_on_the_same_out_refuses_while_the_first_is_alive(dataset, dark, tmp_path):
    out = tmp_path / "out"
    outdir.prepare_out(out)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lock = out / ".recist-seg" / "lock"
        import socket

        lock.write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        with pytest.raises(InputError, match=f"another recist-seg run \\(pid {sleeper.pid}\\)"):
            run_segment(dataset, out, predictor=dark)
        assert not list(out.glob("*.png"))
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same lock left by a dead process is stale: the next run takes over
    assert run_segment(dataset, out, predictor=dark).processed == len(STEMS)
    assert not lock.exists()


def test_output_name_collisions_are_refused(dataset, dark, tmp_path):
    images = dataset / "images"
    Image.open(images / "ISIC_0000000.jpg").save(images / "ISIC_0000000.png")
    gt = np.asarray(Image.open(dataset / "masks" / "ISIC_0000000_segmentation.png")) > 0
    r = recist_from_mask(gt)
    csv_path = tmp_path / "r.csv"
    write_recist_csv(csv_path, [RecistRecord(images / "ISIC_0000000.jpg", 1, r),
                                RecistRecord(images / "ISIC_0000000.png", 1, r)])
    with pytest.raises(InputError, match="would both be written as ISIC_0000000"):
        run_segment([images / "ISIC_0000000.jpg", images / "ISIC_0000000.png"],
                    tmp_path / "o1", recist_csv=csv_path, predictor=dark)
    # a.jpg with two lesions writes a_labels.png, as does the image a_labels.jpg
    shutil.copy(images / "ISIC_0000001.jpg", images / "ISIC_0000000_labels.jpg")
    write_recist_csv(csv_path, [RecistRecord(images / "ISIC_0000000.jpg", 1, r),
                                RecistRecord(images / "ISIC_0000000.jpg", 2, r),
                                RecistRecord(images / "ISIC_0000000_labels.jpg", 1, r)])
    with pytest.raises(InputError, match="ISIC_0000000_labels"):
        run_segment([images / "ISIC_0000000_labels.jpg", images / "ISIC_0000000.jpg"],
                    tmp_path / "o2", recist_csv=csv_path, predictor=dark)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("name", ["ISIC_0000002_labels.png", "failures.csv", "ISIC_0000003.png"])
def test_files_a_user_put_in_out_survive(dataset, dark, tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(b"the user's own file")
    if name.endswith("_labels.png"):
        # a one-lesion image writes no labels file: the run goes on, the file stays
        assert run_segment(dataset, out, predictor=dark).exit_code == 0
    else:
        with pytest.raises(InputError, match=f"already holds {name}.*did not write"):
            run_segment(dataset, out, predictor=dark)
        assert not list(out.glob("ISIC_000000[01].png"))
    assert (out / name).read_bytes() == b"the user's own file"


def test_own_outputs_are_not_foreign_on_resume_and_overwrite_replaces(dataset, dark, tmp_path):
    out = tmp_path / "out"
    run_segment(dataset, out, predictor=dark)
    (out / "ISIC_0000001.png").unlink()
    again = run_segment(dataset, out, predictor=dark)
    assert again.processed == 1 and again.skipped == len(STEMS) - 1


def test_out_inside_the_images_folder_is_refused(dataset, dark):
    with pytest.raises(InputError, match="inside the input folder"):
        run_segment(dataset, dataset / "images" / "seg", predictor=dark)
    assert not (dataset / "images" / "seg").exists()
    assert len(scan_dataset(dataset).items) == len(STEMS)


def test_targets_never_rewrites_the_datasets_recist_csv(dataset, tmp_path, capsys):
    gt = np.asarray(Image.open(dataset / "masks" / "ISIC_0000000_segmentation.png")) > 0
    write_recist_csv(dataset / "recist.csv",
                     [RecistRecord(dataset / "images" / "ISIC_0000000.jpg", 1, recist_from_mask(gt))])
    before = (dataset / "recist.csv").read_bytes()
    for out in (dataset, dataset / "images", dataset / "masks" / "t"):
        code = main(["targets", str(dataset), "--out", str(out), "--no-grabcut", "--quiet"])
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "refusing to write" in err[0]
    assert (dataset / "recist.csv").read_bytes() == before
    link = tmp_path / "link"
    link.symlink_to(dataset)
    assert main(["targets", str(dataset), "--out", str(link), "--no-grabcut", "--quiet"]) == 2
    assert (dataset / "recist.csv").read_bytes() == before


def test_a_symlink_loop_is_scanned_once(dataset):
    (dataset / "images" / "loop").symlink_to(".")
    (dataset / "images" / "sub").mkdir()
    (dataset / "images" / "sub" / "back").symlink_to("..")  # back to images/: a loop two levels deep
    (dataset / "masks" / "again").symlink_to(".")
    ds = scan_dataset(dataset)
    assert [i.stem for i in ds.items] == STEMS
    assert all(i.mask_path is not None and i.mask_path.parent == dataset / "masks" for i in ds.items)


def test_lesion_ids_beyond_uint16(dataset, dark, tmp_path):
    img = dataset / "images" / "ISIC_0000002.jpg"
    gt = np.asarray(Image.open(dataset / "masks" / "ISIC_0000002_segmentation.png")) > 0
    whole = recist_from_mask(gt)
    inner = whole.transformed(whole.centre, 0.3).transformed(-whole.centre, 1.0)
    csv_path = tmp_path / "r.csv"
    write_recist_csv(csv_path, [RecistRecord(img, 70000, whole), RecistRecord(img, 70001, inner)])
    report = run_segment([img], tmp_path / "out", recist_csv=csv_path, predictor=dark)
    assert report.exit_code == 0, report.failures
    labels = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000002_labels.png"))
    union = np.asarray(Image.open(tmp_path / "out" / "ISIC_0000002.png")) > 0
    np.testing.assert_array_equal(labels > 0, union)
    assert set(np.unique(labels)) == {0, 1, 2}  # a PNG holds 65535: ranks in id order
    assert [r["lesion"] for r in _rows(tmp_path / "out")] == ["70000", "70001"]


def test_out_that_is_a_file_is_one_line(dataset, tiny_a1_ckpt, tmp_path, capsys):
    out = tmp_path / "afile"
    out.write_text("x")
    code = main(["segment", str(dataset), "--model", str(tiny_a1_ckpt), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a file" in err[0]
    assert out.read_text() == "x"


@pytest.fixture()
def readonly_dir(tmp_path):
    """A read-only folder: a read-only tmpfs as root (root ignores permission bits),
    else chmod 555; skipped where neither works."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                           capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs: {r.stderr.decode().strip()}")
        yield d
        subprocess.run(["umount", str(d)], check=False)
    else:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)


def test_read_only_out_and_evaluate_json_are_one_line(dataset, tiny_a1_ckpt, readonly_dir, tmp_path, capsys):
    out = readonly_dir / "out"
    code = main(["segment", str(dataset), "--model", str(tiny_a1_ckpt), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write into" in err[0], err
    code = main(["evaluate", "--pred", str(dataset / "masks"), "--gt", str(dataset / "masks"),
                 "--json", str(readonly_dir / "r.json"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write --json" in err[0], err
    assert not list(readonly_dir.iterdir())


def test_temporary_files_of_a_killed_run_are_removed_on_start(dataset, dark, tmp_path):
    out = tmp_path / "out"
    outdir.prepare_out(out)
    stale = [out / ".ISIC_0000001.~part-ab12cd34.png",
             out / ".recist-seg" / "records" / ".ISIC_0000001.~part-zz99yy88.json"]
    for p in stale:
        p.write_bytes(b"half written")
    (out / ".keep").write_text("a user's hidden file")
    assert run_segment(dataset, out, predictor=dark).exit_code == 0
    assert not any(p.exists() for p in stale)
    assert (out / ".keep").read_text() == "a user's hidden file"


def _journal(out: Path) -> Path:
    return out / ".recist-seg" / "journal.jsonl"


def test_a_torn_journal_line_after_a_crash_is_repaired_by_a_re_run(dataset, dark, tmp_path):
    clean = tmp_path / "clean"
    assert run_segment(dataset, clean, predictor=dark).exit_code == 0
    out = tmp_path / "out"
    run_segment(dataset, out, predictor=dark)
    # A crash (or a full disk) in the middle of appending the last image's record:
    # its mask is written, its line stops half-way.
    journal = _journal(out).read_bytes()
    assert journal.count(b"\n") == len(STEMS) and journal.endswith(b"\n")
    last = journal.rstrip(b"\n").rfind(b"\n") + 1
    assert STEMS[-1].encode() in journal[last:]
    _journal(out).write_bytes(journal[: last + 25])
    again = run_segment(dataset, out, predictor=dark)
    assert again.exit_code == 0 and again.skipped == len(STEMS) - 1 and again.processed == 1
    assert _outputs(out) == _outputs(clean)
    # The torn piece was cut before the new line went in: every line is whole, and a
    # third run finds every image committed (a line glued to the torn piece would be
    # unreadable and its image redone).
    lines = _journal(out).read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(STEMS) + 1
    import json

    assert [json.loads(ln)["stem"] for ln in lines[:-1]] == STEMS
    third = run_segment(dataset, out, predictor=dark)
    assert third.skipped == len(STEMS) and third.processed == 0


def test_record_files_of_earlier_versions_resume_and_overwrite_drops_them(dataset, dark, tmp_path):
    out = tmp_path / "out"
    clean = tmp_path / "clean"
    run_segment(dataset, clean, predictor=dark)
    run_segment(dataset, out, predictor=dark)
    # the layout of earlier versions: one record file per image, no journal
    records = outdir.read_records(out)
    _journal(out).unlink()
    for stem, rec in records.items():
        outdir.write_record(out, stem, rec["outputs"], rec["rows"])
    again = run_segment(dataset, out, predictor=dark)
    assert again.skipped == len(STEMS) and again.processed == 0
    # --overwrite: each old record file goes before its masks are rewritten, and
    # every image is committed by a journal line
    assert run_segment(dataset, out, predictor=dark, overwrite=True).processed == len(STEMS)
    assert not list((out / ".recist-seg" / "records").glob("*.json"))
    lines = _journal(out).read_text().splitlines()
    assert len(lines) == len(STEMS)  # no drop lines: no record vouched in the journal yet
    assert outdir.read_records(out) == records
    assert _outputs(out) == _outputs(clean)


def test_overwrite_drops_the_journal_record_before_rewriting_the_masks(dataset, dark, tmp_path,
                                                                        monkeypatch):
    out = tmp_path / "out"
    run_segment(dataset, out, predictor=dark)
    from napari_recist_seg.jobs import segment_commit

    real = segment_commit._write_png

    def dying(path, image):
        if path.name == f"{STEMS[2]}.png":
            real(path, image)  # the new mask (PNG bytes) is in, its record not yet
            raise KeyboardInterrupt
        real(path, image)

    monkeypatch.setattr(segment_commit, "_write_png", dying)
    with pytest.raises(KeyboardInterrupt):
        run_segment(dataset, out, predictor=dark, overwrite=True)
    # the old record no longer vouches for the rewritten mask: a plain re-run redoes it
    assert STEMS[2] not in outdir.read_records(out)
    monkeypatch.setattr(segment_commit, "_write_png", real)
    again = run_segment(dataset, out, predictor=dark)
    assert again.processed == 1 and again.skipped == len(STEMS) - 1


def test_the_jobs_png_holds_the_same_pixels_as_the_general_mask_writer(dataset, tmp_path):
    from napari_recist_seg.data.masks import read_mask, write_mask
    from napari_recist_seg.jobs.segment_commit import _write_png

    gt = np.asarray(Image.open(dataset / "masks" / "ISIC_0000002_segmentation.png")) > 0
    _write_png(tmp_path / "fast.png", gt.astype(np.uint8) * 255)
    write_mask(tmp_path / "general.png", gt)
    fast, general = Image.open(tmp_path / "fast.png"), Image.open(tmp_path / "general.png")
    assert fast.mode == general.mode == "L" and fast.size == general.size
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(general))
    np.testing.assert_array_equal(read_mask(tmp_path / "fast.png"), gt)
    labels = gt.astype(np.uint8) * 7
    labels[:40, :40] = 3
    _write_png(tmp_path / "labels.png", labels)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "labels.png")), labels)


def test_a_journal_of_many_overwrite_runs_is_compacted(dataset, dark, tmp_path, monkeypatch):
    monkeypatch.setattr(outdir, "_COMPACT_SLACK", 0)
    out = tmp_path / "out"
    run_segment(dataset, out, predictor=dark)
    want = outdir.read_records(out)
    run_segment(dataset, out, predictor=dark, overwrite=True)  # a drop and a record each
    assert len(_journal(out).read_text().splitlines()) == 3 * len(STEMS)
    again = run_segment(dataset, out, predictor=dark)  # opens, compacts, skips every image
    assert again.skipped == len(STEMS)
    assert len(_journal(out).read_text().splitlines()) == len(STEMS)
    assert outdir.read_records(out) == want


def test_a_mask_cut_short_by_a_power_cut_is_redone_by_a_re_run(dataset, dark, tmp_path):
    # Masks are renamed into place without an fsync: after a power cut a committed
    # image's PNG can hold only its first bytes. Non-empty is not enough to skip it.
    clean = tmp_path / "clean"
    assert run_segment(dataset, clean, predictor=dark).exit_code == 0
    out = tmp_path / "out"
    assert run_segment(dataset, out, predictor=dark).exit_code == 0
    torn = out / f"{STEMS[2]}.png"
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    again = run_segment(dataset, out, predictor=dark)
    assert again.exit_code == 0 and again.skipped == len(STEMS) - 1 and again.processed == 1
    assert _outputs(out) == _outputs(clean)


def test_a_changed_recist_is_reported_not_silently_skipped_and_overwrite_redoes_it(dataset, dark, tmp_path):
    # The same images with RECIST derived from their masks, then the user edits one
    # lesion's RECIST in a CSV: that image's committed masks no longer match it.
    from napari_recist_seg.recist import Recist

    records = {p.stem: recist_from_mask(np.asarray(Image.open(p)) > 0)
               for p in sorted((dataset / "masks").glob("*.png"))}
    csv_path = tmp_path / "recist.csv"

    def write(changed: dict[str, np.ndarray]) -> None:
        rows = []
        for stem in STEMS:
            r = records[f"{stem}_segmentation"]
            long_axis = changed.get(stem, r.long_axis)
            rows.append(RecistRecord(dataset / "images" / f"{stem}.jpg", 1, Recist(long_axis, r.short_axis)))
        write_recist_csv(csv_path, rows)

    write({})
    out = tmp_path / "out"
    assert run_segment(dataset, out, recist_csv=csv_path, predictor=dark).exit_code == 0
    before = _outputs(out)
    again = run_segment(dataset, out, recist_csv=csv_path, predictor=dark)
    assert again.exit_code == 0 and again.skipped == len(STEMS)  # unchanged: all done
    r1 = records[f"{STEMS[1]}_segmentation"]
    moved = r1.long_axis + 0.1 * (r1.long_axis - r1.long_axis.mean(axis=0))  # drawn 10 % longer
    write({STEMS[1]: moved})
    changed = run_segment(dataset, out, recist_csv=csv_path, predictor=dark)
    assert changed.exit_code == 3 and changed.skipped == len(STEMS) - 1 and changed.processed == 0
    (failure,) = changed.failures
    assert STEMS[1] in failure[1] and "--overwrite" in failure[1] and "\n" not in failure[1]
    assert _outputs(out)[f"{STEMS[1]}.png"] == before[f"{STEMS[1]}.png"]  # kept as it was
    redo = run_segment(dataset, out, recist_csv=csv_path, predictor=dark, overwrite=True)
    assert redo.exit_code == 0 and redo.processed == len(STEMS)
    after = run_segment(dataset, out, recist_csv=csv_path, predictor=dark)
    assert after.exit_code == 0 and after.skipped == len(STEMS)

"""Bulk 2D segmentation reads a DICOM's Modality tag: an MR slice whose values happen to look
like Hounsfield units (air-like negatives) is still read by the percentile rule, as the
Predictor does when told "mr", and not through the CT window its values alone would get."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from napari_recist_seg.data import RecistRecord, read_mask, write_recist_csv  # noqa: E402
from napari_recist_seg.data.images import read_image  # noqa: E402
from napari_recist_seg.intensity import detect_modality  # noqa: E402
from napari_recist_seg.recist import recist_from_mask  # noqa: E402


def _negative_mr(path: Path) -> None:
    """pydicom's MR_small.dcm with 1500 subtracted: signed, min about -1370."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    arr = ds.pixel_array.astype(np.int16) - 1500
    ds.PixelRepresentation = 1
    ds.PixelData = arr.tobytes()
    ds.save_as(path)


@pytest.mark.parametrize("serial", ["1", "0"])
def test_an_mr_tag_wins_over_hu_looking_values(tmp_path, monkeypatch, serial):
    from napari_recist_seg.jobs.segment import run_segment
    from napari_recist_seg.predict import Predictor

    files = [tmp_path / "mr_a.dcm", tmp_path / "mr_b.dcm"]  # two: the shared-batch path too
    for f in files:
        _negative_mr(f)
    img = read_image(files[0])
    assert img.modality == "mr" and detect_modality(img.array) == "ct"  # values alone: CT
    lab, _ = ndi.label(img.array < 600 - 1500)
    r = recist_from_mask(lab == lab[38, 41])
    write_recist_csv(tmp_path / "r.csv", [RecistRecord(f, 1, r) for f in files])
    predictor = Predictor.load(None, device="cpu")
    want = {m: predictor.segment(img.array, [r], modality=m)[0].full_mask(img.array.shape)
            for m in ("mr", "ct")}
    assert (want["mr"] != want["ct"]).sum() > 5  # the rule matters for this lesion

    monkeypatch.setenv("RECIST_SEG_SERIAL", serial)
    report = run_segment(files, tmp_path / "out", recist_csv=tmp_path / "r.csv", predictor=predictor)
    assert report.processed == 2 and not report.failures
    for f in files:
        got = read_mask(tmp_path / "out" / f"{f.stem}.png") > 0
        np.testing.assert_array_equal(got, want["mr"])

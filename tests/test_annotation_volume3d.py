"""The annotator's 3D lesions and CT windows, core side (no Qt): requests and their
staleness, propagation on the real LiTS CT sample, the volume columns, the intensity
rule handed to the segmenter (CT windows for CT only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_recist_seg import annotation as ann
from napari_recist_seg.annotation import AnnotationSession, LineObs, ShapeSegmenter
from napari_recist_seg.data import read_image
from napari_recist_seg.progress import Cancelled, CancelToken

SAMPLES = Path(__file__).resolve().parents[1] / "napari_recist_seg" / "sample_data"
LONG = np.array([[4.0, 34, 46], [4, 55, 64]])  # lesion 1 of sample_data/ct_recist.csv
SHORT = np.array([[4.0, 50.15, 47.13], [4, 35.82, 63.85]])


@pytest.fixture(scope="module")
def slab() -> np.ndarray:
    return read_image(SAMPLES / "lits117_slab.nii.gz").array


def _segmented(slab):
    """A session holding lesion 1 on slice 4, its ellipse pasted into ``labels``."""
    s = AnnotationSession(slab.shape[1:], n_slices=slab.shape[0])
    out = s.sync([LineObs(-1, LONG), LineObs(-1, SHORT)])
    [req] = out.segment
    res = ShapeSegmenter("ellipse").segment(slab, [req.recist])[0]
    labels = np.zeros(slab.shape, np.uint16)
    idx, box = ann.paste_indices(labels, 1, res, 4)
    labels[idx] = 1
    assert s.accept(req, res, box)
    return s, labels


def test_a_volume_request_is_for_committed_lesions_and_goes_stale_on_any_change(slab):
    s, labels = _segmented(slab)
    assert s.volume_request(1, labels) is None  # not committed yet
    s.commit([1])
    req = s.volume_request(1, labels)
    assert req.z0 == 4 and np.array_equal(req.seed, labels[4] == 1) and s.is_volume_current(req)
    s.record_edit(1, 10, None, None)  # painted meanwhile: the painting wins
    assert not s.is_volume_current(req)
    req = s.volume_request(1, labels)
    s.uncommit([1])
    assert not s.is_volume_current(req)
    s.commit([1])
    req = s.volume_request(1, labels)
    s.uncommit([1])
    s.delete([1])
    assert not s.is_volume_current(req)


def test_propagation_on_the_ct_sample_spans_slices_and_is_measured_like_segment_3d(slab):
    s, labels = _segmented(slab)
    s.commit([1])
    req = s.volume_request(1, labels)
    seen = []
    seg = ann.with_intensity(ShapeSegmenter("ellipse"), "ct", "liver")
    les = ann.propagate_request(seg, slab, req, spacing=(2.5, 0.8, 0.8),
                                progress=lambda z, n: seen.append((z, n)))
    assert les.n_slices > 1 and np.array_equal(les.mask[4], req.seed)
    assert [n for _, n in seen] == list(range(1, len(seen) + 1)) and len(seen) >= les.n_slices - 1
    paste, clear = ann.volume_paste_indices(labels, 1, les.mask)
    labels[paste] = 1
    labels[clear] = 0
    v = ann.measure_volume(labels, 1, (2.5, 0.8, 0.8))
    assert v["volume_voxels"] == les.voxels and v["volume_mm3"] == pytest.approx(les.volume_mm3)
    assert (v["z_first"], v["z_last"], v["n_slices"]) == (*les.z_range, les.n_slices)
    s.set_volume(1, v)
    [row] = s.table_rows()
    assert row["volume"] == pytest.approx(les.voxels * 2.5 * 0.8 * 0.8) and row["volume_unit"] == "mm3"
    [meas] = s.measurement_rows("slab.nii.gz")
    assert meas["volume_voxels"] == les.voxels and meas["extent_mm"] == pytest.approx(2.5 * les.n_slices)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        ann.propagate_request(seg, slab, s.volume_request(1, labels), cancel=cancel)


def test_ct_windows_only_for_ct_and_the_segmenter_reads_each_image_by_its_modality(slab):
    assert ann.window_choices("ct") == ["soft_tissue", "liver", "lung", "bone"]
    assert ann.window_choices("mr") == ann.window_choices("rgb") == ann.window_choices("grey") == []
    assert ann.image_modality(slab) == "ct" and ann.image_modality(slab, "mr") == "mr"
    base = ShapeSegmenter("grabcut")
    ct = ann.with_intensity(base, "ct", "bone")
    mr = ann.with_intensity(base, "mr", "bone")
    assert (ct.modality, ct.window) == ("ct", "bone") and base.window is None  # a copy
    crop = slab[4, 20:70, 30:80]  # HU, below -200: the old rule would call it CT
    assert ct._ct_window(crop) == (400.0, 1800.0) and mr._ct_window(crop) is None
    assert ann.window_limits("liver") == (-20.0, 140.0)


def test_the_annotator_grows_the_same_3d_lesion_as_segment_3d(slab, tmp_path):
    """Same model, same RECIST (lesion 2 of the CT sample, whose RECIST-slice mask the
    intensity blend replaces): the annotator's 3D label is the one ``recist-seg segment
    --3d`` writes (one core path)."""
    from napari_recist_seg.data import read_recist_csv
    from napari_recist_seg.data.masks import read_labels
    from napari_recist_seg.jobs.segment3d import run_segment3d
    from napari_recist_seg.predict import Predictor
    from napari_recist_seg.recist import snap

    pytest.importorskip("onnxruntime")
    predictor = Predictor.load()
    csv = tmp_path / "one.csv"
    lines = (SAMPLES / "ct_recist.csv").read_text().splitlines()
    csv.write_text("\n".join([lines[0], lines[2]]).replace("lits117_slab.nii.gz", str(SAMPLES / "lits117_slab.nii.gz")) + "\n")
    report = run_segment3d([SAMPLES / "lits117_slab.nii.gz"], tmp_path / "out", recist_csv=csv,
                           predictor=predictor)
    assert report.processed == 1, report.failures
    cli = read_labels(tmp_path / "out" / "lits117_slab_labels.nii.gz") == 2
    r = snap(read_recist_csv(csv)[0].recist)
    seg = ann.with_intensity(predictor, "ct")
    res = seg.segment(slab, [r])[0]
    req = ann.VolumeRequest(1, 0, 0, 4, res.full_mask(slab.shape[1:]), res.recist)
    les = ann.propagate_request(seg, slab, req, spacing=read_image(SAMPLES / "lits117_slab.nii.gz").spacing)
    assert cli.sum() > 0 and np.flatnonzero(cli.any(axis=(1, 2))).size > 1
    assert not np.array_equal(les.mask[4], req.seed)  # the seed's blend won here
    np.testing.assert_array_equal(les.mask, cli)

"""Opening a RECIST CSV (issue 13): `recist-seg view x.csv`, images side by side."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from napari_recist_seg._reader import read_recist_layers

SAMPLES = Path(__file__).resolve().parents[2] / "napari_recist_seg" / "sample_data"


def test_images_of_a_multi_image_csv_are_laid_out_side_by_side():
    layers = read_recist_layers(SAMPLES / "dermoscopy_recist.csv")
    images = [(data, kw) for data, kw, kind in layers if kind == "image"]
    shapes = [kw for _, kw, kind in layers if kind == "shapes"]
    assert len(images) > 1
    starts = [kw["translate"][-1] for _, kw in images]
    for (data, kw), start, nxt in zip(images, starts, starts[1:]):
        width = data.shape[1] * (kw.get("scale", (1.0, 1.0))[-1])
        assert nxt >= start + width  # no overlap: the next image starts after this one
    assert [kw["translate"] for kw in shapes] == [kw["translate"] for _, kw in images]


def test_a_single_image_csv_stays_at_the_origin():
    layers = read_recist_layers(SAMPLES / "ct_recist.csv")
    assert all("translate" not in kw for _, kw, _ in layers)


def test_recist_seg_view_opens_a_recist_csv_without_a_reader_dialog(make_napari_viewer, tmp_path):
    # `recist-seg view` opens each path with _open_path. A second raw napari.Viewer in one
    # pytest process re-registers the plugin's commands (app-model ValueError), so the
    # viewer comes from the fixture.
    from napari_recist_seg._launch import _open_path

    folder = tmp_path / "case"
    shutil.copytree(SAMPLES, folder)
    csv = folder / "dermoscopy_recist.csv"
    viewer = make_napari_viewer()
    _open_path(viewer, csv)
    try:
        names = [layer.name for layer in viewer.layers]
        recist = [n for n in names if n.endswith(" RECIST")]
        assert len(recist) >= 2, names
        for n in recist:
            assert len(viewer.layers[n].data) >= 2  # both axes of each lesion
        image = viewer.layers[recist[0][: -len(" RECIST")]]
        assert np.asarray(image.data).ndim == 3
    finally:
        viewer.close()

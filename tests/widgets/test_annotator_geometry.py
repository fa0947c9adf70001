"""The annotator on a scan whose file states its geometry: 1 mm voxels are mm, and the
exported masks keep the scan's affine (oblique orientation, origin).

Real napari viewer; the LiTS CT sample's voxels written as a NIfTI with an oblique
1 mm affine (a 1 mm isotropic CT or MR is common), opened through the plugin's reader;
the model-free ellipse so that the masks are known.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)
pytest.importorskip("segmentation_models_pytorch")
nib = pytest.importorskip("nibabel")

from napari_recist_seg.annotation import ShapeSegmenter
from napari_recist_seg.data.images import read_image

REPO = Path(__file__).resolve().parents[2]
SLAB = REPO / "napari_recist_seg" / "sample_data" / "lits117_slab.nii.gz"
PLUGIN = "napari-recist-seg"
# Lesion 1 of sample_data/ct_recist.csv (slice 4; x, y -> row, col).
LONG = np.array([[4.0, 34, 46], [4, 55, 64]])
SHORT = np.array([[4.0, 50.15, 47.13], [4, 35.82, 63.85]])


def _oblique_1mm_nifti(path: Path) -> np.ndarray:
    """The slab with 1 mm voxels tilted 20 degrees about x, origin off zero; its affine."""
    vol = read_image(SLAB).array  # (z, row, col)
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    affine = np.array([[1.0, 0, 0, -63.5], [0, c, -s, 12.0], [0, s, c, -410.0], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.transpose(vol, (2, 1, 0)), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    nib.save(img, str(path))
    return affine


def test_a_stated_1mm_spacing_is_mm_and_exported_masks_keep_the_affine(make_napari_viewer, qtbot, tmp_path):
    from napari_recist_seg._widgets.annotator import AnnotatorWidget

    affine = _oblique_1mm_nifti(tmp_path / "ct_1mm.nii.gz")
    viewer = make_napari_viewer()
    [layer] = viewer.open(tmp_path / "ct_1mm.nii.gz", plugin=PLUGIN)
    assert tuple(layer.scale) == pytest.approx((1.0, 1.0, 1.0)) and layer.metadata["spacing_known"]
    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: widget.binding is not None and not widget.busy, timeout=15000)
    b = widget.binding
    assert b.session.spacing == (1.0, 1.0)  # the file says 1 mm: not "unknown (px)"
    b.shapes.add_lines([LONG, SHORT])
    qtbot.waitUntil(lambda: not widget.busy and b.session.lesions
                    and all(les.status == "done" for les in b.session.lesions.values()), timeout=15000)
    widget._refresh_table()
    headers = [widget.table.horizontalHeaderItem(j).text() for j in range(widget.table.columnCount())]
    assert "L (mm)" in headers and "L (px)" not in headers
    widget.volume_check.setChecked(True)
    widget.commit()
    qtbot.waitUntil(lambda: not widget.busy and b.session.lesions[1].volume is not None, timeout=15000)
    voxels = int((np.asarray(b.labels.data) == 1).sum())
    assert b.session.lesions[1].volume["volume_mm3"] == pytest.approx(voxels)  # 1 mm^3 each
    out = widget.export_masks(tmp_path / "masks.nii.gz", if_exists="error")
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)  # overlays the scan
    np.testing.assert_array_equal(np.transpose(np.asarray(written.dataobj), (2, 1, 0)),
                                  np.asarray(b.labels.data))
    # The dock's "unknown" overrides the file's 1 mm (a scale of ones cannot show it).
    widget.set_pixel_spacing(0)
    assert b.session.spacing is None

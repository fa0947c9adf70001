"""Sample data contributions (File > Open Sample): what ships, that it is what
``make_samples.py`` says it is, and that napari opens it through the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from napari_recist_seg._sample_data import CT_WINDOW, SAMPLE_DIR, ct_sample, dermoscopy_sample
from napari_recist_seg.data import read_labels, read_mask, read_recist_csv
from napari_recist_seg.recist import recist_from_mask

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO / ".." / "shared" / "data"
PLUGIN = "napari-recist-seg"


def test_sample_files_are_small_and_inside_the_package():
    import napari_recist_seg

    assert SAMPLE_DIR.parent == Path(napari_recist_seg.__file__).resolve().parent
    files = [p for p in SAMPLE_DIR.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 512 * 1024
    # pyproject ships "sample_data/*": files only, no subfolders.
    assert not [p for p in SAMPLE_DIR.iterdir() if p.is_dir() and p.name != "__pycache__"]
    readme = (SAMPLE_DIR / "README.md").read_text()
    assert "CC-0" in readme and "CC BY-NC-SA 4.0" in readme


def test_dermoscopy_recist_is_derived_from_the_expert_masks():
    records = read_recist_csv(SAMPLE_DIR / "dermoscopy_recist.csv")
    assert 3 <= len(records) <= 4
    for rec in records:
        expert = read_mask(SAMPLE_DIR / f"{rec.image.stem}_segmentation.png")
        derived = recist_from_mask(expert)
        np.testing.assert_allclose(rec.recist.long_axis, derived.long_axis, atol=1e-6)
        np.testing.assert_allclose(rec.recist.short_axis, derived.short_axis, atol=1e-6)


def test_shipped_isic_files_are_the_real_ones():
    src = SHARED_DATA / "isic2017_train256"
    if not (src / "images").is_dir():
        pytest.skip(f"real ISIC data not found at {src}")
    for rec in read_recist_csv(SAMPLE_DIR / "dermoscopy_recist.csv"):
        assert rec.image.read_bytes() == (src / "images" / rec.image.name).read_bytes()


def test_ct_slab_recist_measures_each_tumour_on_the_centre_slice():
    records = read_recist_csv(SAMPLE_DIR / "ct_recist.csv")
    labels = read_labels(SAMPLE_DIR / "lits117_slab_labels.nii.gz")
    assert labels.shape[0] == 9 and {r.recist.slice_index for r in records} == {4}
    comps, n = ndimage.label(labels[4] == 2, structure=np.ones((3, 3), bool))
    hit = set()
    for rec in records:
        r = rec.recist.validate(labels.shape)
        # Each RECIST crosses inside one tumour, and that tumour measures the same.
        c = np.round(r.crossing).astype(int)
        k = comps[c[0], c[1]]
        assert k > 0 and k not in hit
        hit.add(k)
        again = recist_from_mask(comps == k)
        assert r.long_length == pytest.approx(again.long_length)
    assert len(hit) >= 5


def test_ct_slab_is_the_real_case():
    src = SHARED_DATA / "lits_case117"
    if not (src / "ct.nii.gz").is_file():
        pytest.skip(f"real LiTS data not found at {src}")
    from napari_recist_seg.data import read_image

    case = read_image(src / "ct.nii.gz").array
    slab = read_image(SAMPLE_DIR / "lits117_slab.nii.gz").array
    starts = [z for z in range(case.shape[0] - 8) if np.array_equal(case[z : z + 9], slab)]
    assert len(starts) == 1


def test_sample_contributions_return_images_with_recist_layers():
    derm = dermoscopy_sample()
    kinds = [k for _, _, k in derm]
    assert kinds.count("image") == kinds.count("shapes") == kinds.count("labels") >= 3
    offsets = {tuple(kw["translate"]) for _, kw, k in derm if k == "image"}
    assert len(offsets) == kinds.count("image")  # side by side, not stacked
    for _, kw, kind in derm:
        if kind == "shapes":
            image_kw = next(k for _, k, t in derm if t == "image" and f"{k['name']} RECIST" == kw["name"])
            assert kw["translate"] == image_kw["translate"]
        if kind == "labels":
            assert kw["visible"] is False
    ct = ct_sample()
    image = next((d, kw) for d, kw, k in ct if k == "image")
    assert image[0].ndim == 3 and image[1]["contrast_limits"] == CT_WINDOW == (-100.0, 250.0)
    shapes = next(kw for _, kw, k in ct if k == "shapes")
    assert shapes["ndim"] == 3


@pytest.mark.parametrize("key", ["dermoscopy", "ct"])
def test_napari_opens_the_samples_and_the_annotator_segments_them(key, make_napari_viewer, qtbot):
    from napari.layers import Image

    from napari_recist_seg._widgets.annotator import AnnotatorWidget
    from napari_recist_seg.annotation import ShapeSegmenter

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, key)
    images = [layer for layer in viewer.layers if isinstance(layer, Image)]
    assert images
    widget = AnnotatorWidget(viewer, segmenter=ShapeSegmenter("ellipse"))
    viewer.window.add_dock_widget(widget)
    b = widget.bind(images[0])
    qtbot.waitUntil(lambda: not widget.busy, timeout=15000)
    n = len(b.shapes.data) // 2
    assert n >= 1 and sorted(b.session.lesions) == list(range(1, n + 1))
    assert all(les.status == "done" for les in b.session.lesions.values())
    assert set(np.unique(np.asarray(b.labels.data))) == set(range(n + 1))

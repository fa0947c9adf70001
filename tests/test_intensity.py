"""Intensity by modality on real images: pydicom's MR_small.dcm (MR: never a CT window),
the LiTS CT (HU: unchanged soft-tissue window), a 16-bit photograph, window presets."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage as ndi

from napari_recist_seg.data.images import read_image
from napari_recist_seg.intensity import (
    WINDOW_PRESETS,
    detect_modality,
    normalize_grey,
    resolve_window,
)
from napari_recist_seg.preprocess import PreprocessConfig, crop_box, extract_crop, make_input
from napari_recist_seg.recist import recist_from_mask


@pytest.fixture(scope="module")
def mr():
    return read_image(get_testdata_file("MR_small.dcm"))


@pytest.fixture(scope="module")
def predictor():
    from napari_recist_seg.predict import Predictor

    predictor = Predictor.load(None, device="cpu")
    # The intensity rule alone (the RECIST-consistent threshold would partly hide a
    # wrong window by choosing another threshold): tests/test_refine.py covers it.
    predictor.refine = "none"
    return predictor


def _dark_blob(mr):
    # The dark round structure (about 20-40 x 10 signal) inside its bright ring
    # (100-150 x 10): the pixels below the half-way value 600 connected to its centre.
    lab, _ = ndi.label(mr.array < 600)
    blob = lab == lab[38, 41]
    assert 30 < blob.sum() < 60
    return blob


def test_mr_crop_is_not_clipped_by_a_ct_window(mr):
    assert mr.modality == "mr"
    r = recist_from_mask(_dark_blob(mr))
    cfg = PreprocessConfig()
    crop = extract_crop(mr.array, crop_box(r, cfg), cfg.input_size, pad_mode=cfg.pad_mode)
    as_ct = normalize_grey(crop, "ct")
    as_mr = normalize_grey(crop, "mr")
    assert np.mean(as_ct >= 1.0) > 0.5  # the bug: most of the crop is white
    assert np.mean(as_mr >= 1.0) <= 0.02 and np.mean(as_mr <= 0.0) <= 0.02
    x_mr, _ = make_input(mr.array, r, cfg, modality="mr")
    x_ct, _ = make_input(mr.array, r, cfg, modality="ct")
    assert not np.allclose(x_mr, x_ct)


def test_mr_mask_follows_the_lesion(mr, predictor):
    blob = _dark_blob(mr)
    r = recist_from_mask(blob)

    def dice(modality):
        m = predictor.segment(mr.array, [r], modality=modality)[0].full_mask(mr.array.shape)
        return 2 * (m & blob).sum() / (m.sum() + blob.sum()), int(m.sum())

    d_ct, n_ct = dice("ct")
    d_auto, n_auto = dice(None)  # the predictor decides: MR values are not HU
    d_mr, n_mr = dice("mr")
    assert (d_auto, n_auto) == (d_mr, n_mr)
    assert d_mr > d_ct + 0.03
    assert n_mr > 1.5 * n_ct  # the CT window shrank the mask (26 px against 61 here)


def test_ct_unchanged(lits_dir, predictor):
    ct = read_image(lits_dir / "ct.nii.gz")
    assert ct.modality == "ct"
    labels = read_image(lits_dir / "labels.nii.gz").array
    z = int(np.argmax((labels == 2).sum(axis=(1, 2))))
    lab, _ = ndi.label(labels[z] == 2)
    biggest = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    r = recist_from_mask(biggest, slice_index=z)
    cfg = predictor.preprocess
    x_none, _ = make_input(ct.array[z], r, cfg)
    x_ct, _ = make_input(ct.array[z], r, cfg, modality="ct")
    np.testing.assert_array_equal(x_none, x_ct)
    auto = predictor.segment(ct.array, [r])[0]
    window = predictor.segment(ct.array, [r], modality="ct")[0]
    np.testing.assert_array_equal(auto.mask, window.mask)
    predictor.window = "lung"
    try:
        lung = predictor.segment(ct.array, [r])[0]
    finally:
        predictor.window = None
    assert not np.array_equal(lung.probability, window.probability)  # the preset reaches the model input


def test_detection_is_robust_to_mr_and_photographs(mr):
    assert detect_modality(mr.array) == "grey"  # MR values carry no air at -1000
    artefact = mr.array.astype(np.float32)
    artefact[:3, :3] = -900.0  # a few negative voxels: the old "min <= -200" rule said CT
    assert detect_modality(artefact) == "grey"
    photo = (np.random.default_rng(0).random((40, 40)) * 65535).astype(np.uint16)
    assert detect_modality(photo) == "grey"
    assert detect_modality(photo, "ct") == "ct"  # the user's word wins
    assert detect_modality(np.zeros((4, 4, 3), np.uint8)) == "rgb"


def test_window_presets_and_errors():
    assert resolve_window(None) == (40.0, 400.0)
    assert resolve_window("Soft tissue") == WINDOW_PRESETS["soft_tissue"]
    assert resolve_window("bone") == (400.0, 1800.0)
    assert resolve_window((60, 160)) == (60.0, 160.0)
    with pytest.raises(ValueError, match="preset"):
        resolve_window("brain-ish")
    with pytest.raises(ValueError, match="positive"):
        resolve_window("40,0")

"""The crop rule: boxes, crops, normalisation and paste-back, on real images."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from napari_recist_seg.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropBox,
    PreprocessConfig,
    crop_box,
    extract_crop,
    make_input,
    normalize_intensity,
    paste_back,
    render_recist,
)
from napari_recist_seg.recist import Recist, RecistError, recist_from_mask

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ISIC = DATA / "isic2017_train256"
needs_isic = pytest.mark.skipif(not ISIC.is_dir(), reason=f"real data missing: {ISIC}")


def _isic(stem: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    img = np.asarray(Image.open(ISIC / "images" / f"{stem}.jpg").convert("RGB"))
    gt = np.asarray(Image.open(ISIC / "masks" / f"{stem}_segmentation.png")) > 0
    return img, gt


def test_crop_box_hand_computed():
    # L = 40, centre (50, 50): side 2 * 40 = 80 covering rows 11..90 (midpoint 50.5).
    r = Recist([[50, 30], [50, 70]], [[40, 50], [60, 50]])
    assert crop_box(r, PreprocessConfig(crop_factor=2.0)) == CropBox(11, 11, 80)
    # Odd side: centred exactly: side 61 covers 20..80 around 50.
    r2 = Recist([[50, 40], [50, 60]], [[45, 50], [55, 50]])
    assert crop_box(r2, PreprocessConfig(crop_factor=3.05, min_crop=8)) == CropBox(20, 20, 61)
    # A small lesion gets the minimum side.
    assert crop_box(r2, PreprocessConfig(min_crop=64)).side == 64
    with pytest.raises(RecistError):
        crop_box(Recist([[np.nan, 0], [1, 1]], [[0, 0], [1, 0]]))


def test_config_validation_and_round_trip():
    cfg = PreprocessConfig(input_size=96, crop_factor=1.8, recist_channel=False)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.in_channels == 3
    for bad in ({"input_size": 4}, {"crop_factor": 0}, {"pad_mode": "mirror"}, {"ct_window": (40, 0)}):
        with pytest.raises(ValueError):
            PreprocessConfig(**bad)


@needs_isic
def test_extract_crop_matches_resize_of_the_slice_inside_the_image():
    img, _ = _isic("ISIC_0000000")
    box = CropBox(40, 60, 100)
    crop = extract_crop(img, box, 50)
    ref = cv2.resize(img[40:140, 60:160].astype(np.float32), (50, 50), interpolation=cv2.INTER_LINEAR)
    assert crop.shape == (50, 50, 3) and crop.dtype == np.float32
    np.testing.assert_allclose(crop, ref, atol=1e-3)


@needs_isic
def test_extract_crop_pads_outside_the_image():
    img, _ = _isic("ISIC_0000001")
    box = CropBox(-10, 200, 80)  # 10 rows above the image, 24 columns past its right edge
    edge = extract_crop(img, box, 80, pad_mode="edge")
    const = extract_crop(img, box, 80, pad_mode="constant")
    np.testing.assert_array_equal(edge[10:, :56], img[0:70, 200:256])
    np.testing.assert_array_equal(edge[0], edge[10])  # replicated top row
    np.testing.assert_array_equal(edge[20, 56:], np.repeat(img[10, 255][None], 24, 0))
    assert np.all(const[:10] == 0) and np.all(const[:, 56:] == 0)
    np.testing.assert_array_equal(const[10:, :56], img[0:70, 200:256])
    # A box that misses the image completely is all padding, not an error.
    assert np.all(extract_crop(img, CropBox(1000, 1000, 40), 32) == 0)


def test_extract_crop_reads_only_the_box():
    # 3000 x 2000 RGB image (18 MB): cropping a 200 px lesion must not copy it.
    big = np.zeros((3000, 2000, 3), np.uint8)
    big[1500:1600, 1000:1100] = 200
    tracemalloc.start()
    crop = extract_crop(big, CropBox(1450, 950, 200), 128)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 2_000_000, peak
    assert crop[64, 64, 0] == pytest.approx(200)


@needs_isic
@pytest.mark.parametrize("pad_mode", ["edge", "constant"])
def test_big_padded_boxes_are_sampled_like_pad_then_resize(pad_mode):
    img, _ = _isic("ISIC_0000002")
    box = CropBox(-300, -150, 900)  # 3.5x the image, reaching out on every side
    got = extract_crop(img, box, 128, pad_mode=pad_mode)
    border = cv2.BORDER_REPLICATE if pad_mode == "edge" else cv2.BORDER_CONSTANT
    padded = cv2.copyMakeBorder(
        img.astype(np.float32), 300, 900 - 300 - 256, 150, 900 - 150 - 256, border, value=0
    )
    ref = cv2.resize(padded, (128, 128), interpolation=cv2.INTER_LINEAR)
    assert got.shape == ref.shape and got.dtype == np.float32
    # Same sampling positions; the warp rounds its uint8 output (measured: max 0.5,
    # mean 0.09 grey levels).
    assert np.abs(got - ref).max() <= 1.0
    assert np.abs(got - ref).mean() < 0.2


def test_a_lesion_bigger_than_a_photo_does_not_pad_at_full_resolution():
    big = np.full((3000, 2000, 3), 90, np.uint8)
    box = CropBox(-1500, -2000, 6000)  # a 6000 px box: 432 MB as a padded float copy
    tracemalloc.start()
    crop = extract_crop(big, box, 128)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 30_000_000, peak
    np.testing.assert_allclose(crop, 90.0)


def test_grey_and_ct_normalisation():
    cfg = PreprocessConfig(ct_window=(40, 400))
    hu = np.array([[-160.0, 40.0], [240.0, 1000.0]], np.float32)  # window edges -160 .. 240
    x = normalize_intensity(hu, np.int16, cfg)
    mean = np.asarray(IMAGENET_MEAN)[:, None, None]
    std = np.asarray(IMAGENET_STD)[:, None, None]
    unscaled = x * std + mean
    np.testing.assert_allclose(unscaled[0], [[0.0, 0.5], [1.0, 1.0]], atol=1e-6)
    assert x.shape == (3, 2, 2)
    np.testing.assert_allclose(unscaled[0], unscaled[2], atol=1e-6)  # grey -> 3 equal channels
    u8 = normalize_intensity(np.array([[0.0, 255.0]], np.float32), np.uint8, cfg) * std + mean
    np.testing.assert_allclose(u8[1], [[0.0, 1.0]], atol=1e-6)
    nan = normalize_intensity(np.array([[np.nan, 40.0]], np.float32), np.float32, cfg)
    assert np.all(np.isfinite(nan))
    rgb = normalize_intensity(np.full((2, 2, 3), 255.0, np.float32), np.uint8, cfg) * std + mean
    np.testing.assert_allclose(rgb, 1.0, atol=1e-6)


def test_colour_normalisation_is_the_plain_float32_formula_and_leaves_the_crop_alone():
    # Computed in place on a channels-first copy (speed): bit for bit the formula on the
    # channels-last crop, and the caller's crop (extract_crop's output) is not changed.
    cfg = PreprocessConfig()
    rng = np.random.default_rng(3)
    mean = np.asarray(cfg.mean, np.float32)[:, None, None]
    std = np.asarray(cfg.std, np.float32)[:, None, None]
    # (a float image whose values exceed 1 is taken as 0..255; top 0.95: as 0..1)
    for dtype, top, scale in ((np.uint8, 255.0, 255.0), (np.uint16, 65535.0, 65535.0),
                              (np.float32, 255.0, 255.0), (np.float32, 0.95, 1.0)):
        for shape in ((128, 128, 3), (1, 1, 3), (5, 9, 3)):
            crop = (rng.random(shape) * top * 1.1 - 0.05 * top).astype(np.float32)
            if top < 1:
                crop = np.minimum(crop, np.float32(0.99))
            crop.flat[0] = np.nan
            before = crop.copy()
            scale = np.float32(scale)
            plain = np.moveaxis(crop / scale, -1, 0)
            plain = (np.nan_to_num(np.clip(plain, 0.0, 1.0), nan=0.0) - mean) / std
            got = normalize_intensity(crop, dtype, cfg)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            assert np.array_equal(got, plain)
            assert np.array_equal(crop, before, equal_nan=True)


@needs_isic
def test_recist_maps_onto_the_crop():
    img, gt = _isic("ISIC_0000002")
    r = recist_from_mask(gt)
    cfg = PreprocessConfig(input_size=128)
    box = crop_box(r, cfg)
    # Mark the long-axis endpoints in a blank image and find them in the crop.
    marks = np.zeros(gt.shape, np.float32)
    for p in r.long_axis:
        marks[int(round(p[0])), int(round(p[1]))] = 1.0
    crop = extract_crop(marks, box, box.side * 2)  # 2x upsampling keeps the dots
    r_crop = box.to_crop(r, box.side * 2)
    for p_img, p_crop in zip(r.long_axis, r_crop.long_axis):
        rr, cc = np.round(p_crop).astype(int)
        window = crop[max(rr - 2, 0) : rr + 3, max(cc - 2, 0) : cc + 3]
        assert window.max() > 0.2, (p_img, p_crop)
    # to_image inverts to_crop.
    np.testing.assert_allclose(box.to_image(r_crop.long_axis, box.side * 2), r.long_axis, atol=1e-9)


@needs_isic
def test_make_input_and_paste_back_round_trip_on_a_real_mask():
    img, gt = _isic("ISIC_0000003")
    r = recist_from_mask(gt)
    cfg = PreprocessConfig(input_size=128, recist_channel=True)
    x, box = make_input(img, r, cfg)
    assert x.shape == (4, 128, 128) and x.dtype == np.float32
    # The RECIST channel draws the axes where the RECIST is in the crop.
    r_crop = box.to_crop(r, 128)
    mid = np.round(r_crop.long_axis.mean(axis=0)).astype(int)
    assert x[3, mid[0] - 1 : mid[0] + 2, mid[1] - 1 : mid[1] + 2].max() > 0.3
    assert x[3].sum() == pytest.approx(render_recist(r_crop, 128).sum())
    # Mask -> crop -> back: the geometry is preserved.
    m_crop = extract_crop(gt.astype(np.float32), box, 128)
    (r0, c0), back = paste_back(m_crop, box, gt.shape)
    full = np.zeros(gt.shape, bool)
    full[r0 : r0 + back.shape[0], c0 : c0 + back.shape[1]] = back > 0.5
    inter = np.logical_and(full, gt).sum()
    assert 2 * inter / (full.sum() + gt.sum()) > 0.97
    assert (r0, c0) == (max(box.row0, 0), max(box.col0, 0))


def test_paste_back_clips_to_the_image():
    prob = np.ones((32, 32), np.float32)
    (r0, c0), p = paste_back(prob, CropBox(-8, 90, 40), (100, 120))
    assert (r0, c0) == (0, 90) and p.shape == (32, 30)
    (r0, c0), p = paste_back(prob, CropBox(500, 500, 40), (100, 120))
    assert p.size == 0
    with pytest.raises(ValueError):
        paste_back(np.ones((3, 4)), CropBox(0, 0, 4), (10, 10))


def test_grey_volume_plane_view_works():
    vol = np.random.default_rng(0).integers(-1000, 1000, (4, 64, 64)).astype(np.int16)
    r = Recist([[20, 20], [20, 40]], [[15, 30], [25, 30]], slice_index=2)
    x, box = make_input(vol[2], r, PreprocessConfig(input_size=32, recist_channel=False))
    assert x.shape == (3, 32, 32)
    with pytest.raises(ValueError, match="2D plane"):
        extract_crop(vol, box, 32)


def test_crop_box_of_an_asymmetric_lesion_hand_computed():
    # Endpoints span rows 20..40 and cols 40..90: centre (30, 65), L = 50 -> side 100,
    # row0 = floor(30 - 49.5 + 0.5) = -19, col0 = floor(65 - 49.5 + 0.5) = 16.
    r = Recist([[30, 40], [30, 90]], [[20, 65], [40, 65]])
    assert crop_box(r, PreprocessConfig(crop_factor=2.0)) == CropBox(-19, 16, 100)
    # Odd side 61 (crop factor 1.22): row0 = 30 - 30 = 0, col0 = 65 - 30 = 35.
    assert crop_box(r, PreprocessConfig(crop_factor=1.22, min_crop=8)) == CropBox(0, 35, 61)


def test_crop_offset_has_the_half_pixel_term():
    # cv2.resize maps image pixel p to (p - row0 + 0.5) * s - 0.5; s = 80 / 40 = 2.
    box = CropBox(10, 20, 40)
    assert box.crop_offset(80) == pytest.approx((9.75, 19.75))
    r = Recist([[10, 20], [10, 30]], [[5, 25], [15, 25]])
    rc = box.to_crop(r, 80)
    np.testing.assert_allclose(rc.long_axis, [[0.5, 0.5], [0.5, 20.5]])
    np.testing.assert_allclose(rc.short_axis, [[-9.5, 10.5], [10.5, 10.5]])
    # Down-sampling (s = 0.5): offset row0 - 0.5 + 1 = row0 + 0.5.
    assert CropBox(3, -7, 64).crop_offset(32) == pytest.approx((3.5, -6.5))
    # A one-pixel dot lands on the crop pixel to_crop names.
    img = np.zeros((60, 70), np.float32)
    img[31, 47] = 1.0
    box = CropBox(12, 26, 41)
    crop = extract_crop(img, box, 123)  # 3x up-sampling
    dot = Recist([[31, 45], [31, 49]], [[29, 47], [33, 47]])
    centre = box.to_crop(dot, 123).long_axis.mean(axis=0)
    peak = np.unravel_index(int(np.argmax(crop)), crop.shape)
    np.testing.assert_allclose(peak, centre, atol=1e-9)


def test_paste_back_hand_computed():
    p = np.arange(16, dtype=np.float32).reshape(4, 4)
    # Box rows -1..2, cols 8..11 in a 10 x 10 image: rows 0..2, cols 8..9 remain.
    (r0, c0), out = paste_back(p, CropBox(-1, 8, 4), (10, 10))
    assert (r0, c0) == (0, 8)
    np.testing.assert_array_equal(out, [[4, 5], [8, 9], [12, 13]])
    # A 2x up-sampling: cv2 linear resize of [[0, 1], [2, 3]] at half-pixel centres.
    (r0, c0), out = paste_back(np.array([[0, 1], [2, 3]], np.float32), CropBox(3, 5, 4), (20, 20))
    assert (r0, c0) == (3, 5)
    np.testing.assert_allclose(out[0], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(out[:, 0], [0.0, 0.5, 1.5, 2.0])

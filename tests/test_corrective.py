"""Corrective clicks (napari_recist_seg.corrective) on real ISIC images and expert masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_recist_seg.corrective import Click, correct_lesion, correct_mask, error_click

STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000013"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _case(isic_dir, stem):
    image = np.asarray(Image.open(isic_dir / "images" / f"{stem}.jpg").convert("RGB"))
    gt = np.asarray(Image.open(isic_dir / "masks" / f"{stem}_segmentation.png")) > 0
    return image, gt


@pytest.mark.parametrize("stem", STEMS)
def test_a_positive_click_on_a_missed_part_brings_it_back(isic_dir, stem):
    image, gt = _case(isic_dir, stem)
    rows, cols = np.nonzero(gt)
    mask = gt.copy()
    mask[:, int(np.percentile(cols, 65)):] = False  # the right third of the lesion missed
    click = error_click(mask, gt)
    assert click.positive and gt[int(click.row), int(click.col)]
    out = correct_lesion(image, mask, [click])
    assert out[int(click.row), int(click.col)]
    assert _dice(out, gt) > _dice(mask, gt) + 0.03


@pytest.mark.parametrize("stem", STEMS)
def test_a_negative_click_removes_a_false_blob_and_leaves_the_rest(isic_dir, stem):
    image, gt = _case(isic_dir, stem)
    # A false blob of skin attached to the lesion (at its right edge).
    rows, cols = np.nonzero(gt)
    r, c = int(rows.mean()), int(cols.max())
    rr, cc = np.ogrid[: gt.shape[0], : gt.shape[1]]
    blob = ((rr - r) ** 2 + (cc - c - 12) ** 2 <= 14**2) & ~gt
    assert blob.sum() > 200
    mask = gt | blob
    click = error_click(mask, gt)
    assert not click.positive and blob[int(click.row), int(click.col)]
    out = correct_lesion(image, mask, [click])
    assert not out[int(click.row), int(click.col)]
    assert (out & blob).sum() < 0.5 * blob.sum()
    # Local: the lesion far from the click is kept as it was.
    far = gt.copy()
    far[:, c - 30 :] = False
    assert (out & far).sum() >= 0.98 * far.sum()


def test_without_clicks_nothing_changes_and_far_pixels_never_change(isic_dir):
    image, gt = _case(isic_dir, STEMS[0])
    assert np.array_equal(correct_mask(image, gt, []), gt)
    mask = gt.copy()
    mask[0:6, 0:6] = True  # an island the user painted, far from the click
    rows, cols = np.nonzero(gt)
    out = correct_lesion(image, mask, [Click(float(rows.mean()), float(cols.mean()), True)])
    assert out[0:6, 0:6].all()


def test_three_simulated_clicks_improve_a_poor_mask(isic_dir):
    image, gt = _case(isic_dir, STEMS[1])
    from scipy import ndimage

    mask = ndimage.binary_erosion(gt, iterations=10)  # an undersegmentation all round
    start = _dice(mask, gt)
    clicks = []
    current = mask
    for _ in range(3):
        clicks.append(error_click(current, gt))
        current = correct_lesion(image, mask, clicks)
    assert _dice(current, gt) > start + 0.1

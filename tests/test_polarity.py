"""Lesion polarity (napari_recist_seg.polarity): a lesion brighter than its surroundings
in a grey (MR, CT through its window) image is shown to the model inverted; colour and
8-bit inputs are untouched; a 3D walk keeps the RECIST slice's decision."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.polarity import lesion_polarity, recist_regions, wants_inversion
from napari_recist_seg.preprocess import PreprocessConfig, make_input
from napari_recist_seg.recist import Recist

YY, XX = np.mgrid[:96, :96]
DISC = (YY - 48) ** 2 + ((XX - 50) / 1.3) ** 2 <= 15 ** 2
RECIST = Recist([[48, 50 - 19.5], [48, 50 + 19.5]], [[33, 50], [63, 50]])


def _disc_image(inside: float, outside: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.where(DISC, inside, outside).astype(np.float32)
    return img + rng.normal(0, 30, img.shape).astype(np.float32)


def _crescent_image(seed: int = 0) -> np.ndarray:
    """A bright lesion (800) on mid-grey (400) hugged by a dark crescent (100): an
    uninverted crop shows the model a dark lesion-like blob beside the real one."""
    rng = np.random.default_rng(seed)
    img = np.full(DISC.shape, 400.0, np.float32)
    img[((YY - 48) ** 2 + ((XX - 50) / 1.3) ** 2 <= 20 ** 2) & ~DISC & (YY < 48)] = 100.0
    img[DISC] = 800.0
    return img + rng.normal(0, 40, img.shape).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_regions_lie_inside_and_around_the_lesion():
    inside, ring = recist_regions(RECIST, DISC.shape)
    assert inside.sum() > 300 and DISC[inside].mean() > 0.99  # the vertices lie on the outline
    assert ring.sum() > 300 and not (ring & DISC).any() and not (ring & inside).any()


@pytest.mark.parametrize("modality", ["grey", "mr"])
def test_bright_and_dark_discs_are_told_apart(modality):
    assert lesion_polarity(_disc_image(800, 400), RECIST, modality=modality) == "bright"
    assert lesion_polarity(_disc_image(100, 400), RECIST, modality=modality) == "dark"
    assert lesion_polarity(_disc_image(800, 400), RECIST, modality=modality, mode="dark") == "dark"
    with pytest.raises(ValueError, match="polarity"):
        lesion_polarity(_disc_image(800, 400), RECIST, modality=modality, mode="brighter")


def test_ct_is_judged_in_its_window():
    hyper = _disc_image(200, 100) - 30  # a hyperdense lesion (170 HU) in liver (70 HU)
    assert lesion_polarity(hyper, RECIST, modality="ct") == "bright"
    assert lesion_polarity(hyper - 100, RECIST, modality="ct", window="lung") == "bright"
    assert lesion_polarity(_disc_image(40, 120), RECIST, modality="ct") == "dark"  # hypodense
    assert lesion_polarity(_disc_image(900, 700), RECIST, modality="ct") == "dark"  # both clipped white


def test_colour_and_8_bit_images_are_never_inverted():
    bright = _disc_image(800, 400)
    assert lesion_polarity(np.clip(bright / 4, 0, 255).astype(np.uint8), RECIST, modality="grey") is None
    rgb = np.repeat(np.clip(bright / 4, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    assert lesion_polarity(rgb, RECIST, modality="rgb") is None
    for img, mod in ((rgb, "rgb"), (rgb[..., 0], None), (rgb[..., 0], "grey"), (bright, None)):
        assert not wants_inversion(img, RECIST, PreprocessConfig(), modality=mod, window=None,
                                   polarity="bright")


def test_inverted_input_is_one_minus_the_normalised_crop():
    cfg = PreprocessConfig()
    img = _disc_image(800, 400)
    x, _ = make_input(img, RECIST, cfg, modality="grey")
    xi, _ = make_input(img, RECIST, cfg, modality="grey", invert=True)
    mean, std = np.asarray(cfg.mean)[:, None, None], np.asarray(cfg.std)[:, None, None]
    np.testing.assert_allclose(xi[:3] * std + mean, 1.0 - (x[:3] * std + mean), atol=1e-5)
    np.testing.assert_array_equal(xi[3], x[3])  # the RECIST channel is not an intensity


@pytest.fixture(scope="module")
def predictor():
    from napari_recist_seg.predict import Predictor

    return Predictor.load(None, device="cpu")


def test_a_bright_lesion_is_segmented_like_a_dark_one(predictor):
    img = _crescent_image()
    auto = predictor.segment(img, [RECIST], modality="grey")[0].full_mask(img.shape)
    before = predictor.segment(img, [RECIST], modality="grey", polarity="dark")[0].full_mask(img.shape)
    assert _dice(auto, DISC) > 0.93
    assert _dice(before, DISC) < 0.85  # uninverted, the model takes in the dark crescent
    dark = predictor.segment(1200 - img, [RECIST], modality="grey")[0].full_mask(img.shape)
    assert _dice(auto, dark) > 0.98  # the same mask as the mirrored (dark) lesion


def test_colour_and_8_bit_results_do_not_depend_on_the_polarity_mode(predictor):
    grey8 = np.clip(_crescent_image() / 4, 0, 255).astype(np.uint8)
    for img in (grey8, np.repeat(grey8[..., None], 3, axis=2)):
        a, b = (predictor.segment(img, [RECIST], polarity=p)[0] for p in ("dark", "bright"))
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.probability, b.probability)


def _bright_volume() -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoidal bright lesion over 7 slices, each slice like :func:`_crescent_image`."""
    zz = np.arange(9)[:, None, None]
    rad = np.sqrt(np.clip(1 - ((zz - 4) / 4.0) ** 2, 0, None))
    ell = (YY - 48) ** 2 + ((XX - 50) / 1.3) ** 2
    lesion = ell <= (15 * rad) ** 2
    vol = np.full(lesion.shape, 400.0, np.float32)
    vol[(ell <= (15 * rad + 5) ** 2) & ~lesion & (YY < 48)] = 100.0
    vol[lesion] = 800.0
    rng = np.random.default_rng(1)
    return vol + rng.normal(0, 40, vol.shape).astype(np.float32), lesion


def _bright_nifti(tmp_path):
    """The bright volume as a NIfTI (3 mm slices) and a one-lesion RECIST CSV."""
    import nibabel as nib

    from napari_recist_seg.data import RecistRecord, write_recist_csv
    from napari_recist_seg.data.images import read_image

    vol, lesion = _bright_volume()
    path = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(np.ascontiguousarray(vol.transpose(2, 1, 0)), np.diag([1.0, 1.0, 3.0, 1.0])),
             str(path))
    img = read_image(path)
    assert img.array.shape == vol.shape and np.allclose(img.array, vol)
    csv_path = tmp_path / "recist.csv"
    write_recist_csv(csv_path, [RecistRecord(path, 1, Recist(
        RECIST.long_axis, RECIST.short_axis, slice_index=4))])
    return path, csv_path, lesion


def test_the_3d_walk_keeps_the_recist_slice_polarity(predictor, tmp_path, monkeypatch):
    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.jobs.segment3d import run_segment3d

    path, csv_path, lesion = _bright_nifti(tmp_path)
    seen = _recording(predictor, monkeypatch)
    run_segment3d([path], tmp_path / "out", recist_csv=csv_path, predictor=predictor)
    labels = read_image(tmp_path / "out" / "mr_labels.nii.gz").array == 1
    assert len(seen) >= 5 and set(seen) == {"bright"}  # decided once, kept off-slice
    assert _dice(labels, lesion) > 0.92  # never inverted: 0.84


def _recording(predictor, monkeypatch) -> list:
    seen: list = []
    real = predictor.segment

    def recording(image, recists, **kwargs):
        seen.append(kwargs.get("polarity"))
        return real(image, recists, **kwargs)

    monkeypatch.setattr(predictor, "segment", recording)
    return seen


def test_a_slice_segmenter_keeps_its_first_decision(predictor, monkeypatch):
    from napari_recist_seg.propagate import predictor_segmenter

    vol, _ = _bright_volume()
    seen = _recording(predictor, monkeypatch)
    seg = predictor_segmenter(predictor, vol, modality="grey")
    seg(4, RECIST)
    on_dark = Recist([[30, 40], [30, 60]], [[25, 50], [35, 50]])  # over the dark crescent
    assert lesion_polarity(vol[4], on_dark, modality="grey") == "dark"
    seg(4, on_dark)
    assert seen == ["bright", "bright"]


def test_the_annotator_walk_decides_on_the_recist_slice(predictor, monkeypatch):
    from napari_recist_seg.annotation.volume3d import VolumeRequest, propagate_request

    vol, lesion = _bright_volume()
    seen = _recording(predictor, monkeypatch)
    les = propagate_request(predictor, vol, VolumeRequest(1, 0, 0, 4, lesion[4], None))
    assert len(seen) >= 4 and set(seen) == {"bright"}  # from the (hand-edited) seed's RECIST
    assert _dice(les.mask, lesion) > 0.92


def test_the_cli_polarity_option_overrides_the_rule(tmp_path):
    from napari_recist_seg.cli import main
    from napari_recist_seg.data.images import read_image

    path, csv_path, lesion = _bright_nifti(tmp_path)
    dice = {}
    for mode in ("auto", "dark"):
        out = tmp_path / mode
        rc = main(["segment", str(path), "--recist", str(csv_path), "--out", str(out), "--3d",
                   "--device", "cpu", "--quiet", "--polarity", mode])
        assert rc == 0
        dice[mode] = _dice(read_image(out / "mr_labels.nii.gz").array == 1, lesion)
    assert dice["auto"] > 0.92 and dice["dark"] < 0.9

"""Curated annotations -> training samples, saved to disk safely; before / after scoring."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from medpy.metric.binary import dc as medpy_dice

from napari_recist_seg import curation
from napari_recist_seg.curation import (
    AnnotatedImage,
    CurationConflict,
    curation_conflicts,
    holdout_scores,
    recist_errors,
    save_curated,
    split_holdout,
    training_samples,
    write_derived_recist,
)
from napari_recist_seg.data import (
    dataset_recists,
    read_image,
    read_labels,
    read_mask,
    read_recist_csv,
    scan_dataset,
)
from napari_recist_seg.recist import Recist, recist_from_mask

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ISIC = SHARED_DATA / "isic2017_train256"
STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003"]


@pytest.fixture(scope="module")
def isic() -> Path:
    if not (ISIC / "images").is_dir():
        pytest.skip(f"real data not found at {ISIC}")
    return ISIC


def _annotated(stem: str, curated: bool, *, source: bool = True) -> AnnotatedImage:
    """A real ISIC image whose curated labels are its expert mask (label 1)."""
    img = read_image(ISIC / "images" / f"{stem}.jpg").array
    gt = read_mask(ISIC / "masks" / f"{stem}_segmentation.png")
    r = recist_from_mask(gt)
    return AnnotatedImage(
        stem, img, [(1, r)], labels=gt.astype(np.int32) if curated else None,
        curated=curated, source=ISIC / "images" / f"{stem}.jpg" if source else None,
    )


# -- lesion masks and samples ---------------------------------------------------------


def test_lesion_mask_prefers_own_label_then_components_under_the_axes():
    lab = np.zeros((50, 60), np.int32)
    lab[5:15, 5:25] = 1  # lesion 1
    lab[30:45, 30:55] = 7  # painted with another label value
    r1 = Recist([[10, 5], [10, 24]], [[5, 15], [14, 15]])
    r2 = Recist([[37, 30], [37, 54]], [[30, 42], [44, 42]])
    img = AnnotatedImage("x", np.zeros((50, 60), np.uint8), [(1, r1), (2, r2)], labels=lab, curated=True)
    assert np.array_equal(img.lesion_mask(1, r1), lab == 1)
    # Lesion 2 has no pixel labelled 2: the component its axes cross is taken, not lesion 1.
    assert np.array_equal(img.lesion_mask(2, r2), lab == 7)
    # Erased by the user: empty, never the neighbour.
    lab2 = lab.copy()
    lab2[lab2 == 7] = 0
    img.labels = lab2
    assert not img.lesion_mask(2, r2).any()


def test_training_samples_use_masks_of_curated_images_only(isic):
    cur, weak = _annotated(STEMS[0], True), _annotated(STEMS[1], False)
    samples = training_samples([cur, weak])
    assert [s.name for s in samples] == [f"{STEMS[0]}#1", f"{STEMS[1]}#1"]
    assert [s.group for s in samples] == STEMS[:2]
    assert np.array_equal(samples[0].curated_mask, cur.labels == 1)
    assert samples[1].curated_mask is None
    assert all(s.curated_mask is None for s in training_samples([cur], use_curated_masks=False))
    split = training_samples([cur, weak], split=lambda im: "val" if im.name == STEMS[1] else "train")
    assert [s.split for s in split] == ["train", "val"]


def test_split_holdout_is_seeded_and_only_holds_out_curated():
    imgs = [AnnotatedImage(f"c{i}", np.zeros((4, 4)), [], curated=True) for i in range(5)]
    imgs += [AnnotatedImage(f"w{i}", np.zeros((4, 4)), []) for i in range(3)]
    tune, held = split_holdout(imgs, 0.3, seed=1)
    assert len(held) == 2 and all(im.curated for im in held)
    assert len(tune) == 6 and {im.name for im in tune} >= {"w0", "w1", "w2"}
    again = split_holdout(list(reversed(imgs)), 0.3, seed=1)[1]
    assert sorted(im.name for im in again) == sorted(im.name for im in held)
    one = [AnnotatedImage("c", np.zeros((4, 4)), [], curated=True)]
    assert split_holdout(one)[1] == []  # the only curated image is trained on
    two = [AnnotatedImage(n, np.zeros((4, 4)), [], curated=True) for n in "ab"]
    assert [len(x) for x in split_holdout(two, 0.01)] == [1, 1]


# -- saving -----------------------------------------------------------------------------


def test_save_curated_writes_a_dataset_folder(isic, tmp_path):
    cur = _annotated(STEMS[0], True)
    weak = _annotated(STEMS[1], False, source=False)  # written from the array
    folder = tmp_path / "curated"
    saved = save_curated([cur, weak], folder)

    # The source file is copied byte for byte; the array-only image is a lossless png.
    assert saved.images[STEMS[0]].read_bytes() == (ISIC / "images" / f"{STEMS[0]}.jpg").read_bytes()
    assert saved.images[STEMS[1]].suffix == ".png"
    assert np.array_equal(read_image(saved.images[STEMS[1]]).array, weak.image)
    assert set(saved.masks) == {STEMS[0]}
    assert np.array_equal(read_mask(saved.masks[STEMS[0]]), cur.labels > 0)
    assert np.array_equal(read_labels(saved.labels[STEMS[0]]), cur.labels)
    # No temporary files left behind.
    assert not list(folder.rglob(".*"))

    # recist-seg reads it as a dataset: masks for the curated image only, same RECIST.
    ds = scan_dataset(folder)
    assert [(i.stem, i.mask_path is not None) for i in ds.items] == [(STEMS[0], True), (STEMS[1], False)]
    records = read_recist_csv(folder / "recist.csv")
    assert len(records) == 2
    for rec, img in zip(records, (cur, weak)):
        assert rec.image.resolve() == saved.images[img.name].resolve()
        np.testing.assert_allclose(rec.recist.endpoints, img.recists[0][1].endpoints, atol=1e-9)
    assert set(dataset_recists(ds)) == set(STEMS[:2])


def test_saving_never_overwrites_changed_files_silently(isic, tmp_path):
    cur = _annotated(STEMS[0], True)
    folder = tmp_path / "curated"
    first = save_curated([cur], folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "curation.json"}

    # Saving the same content again is harmless.
    assert curation_conflicts([cur], folder) == []
    again = save_curated([cur], folder)
    assert first.images[STEMS[0]] in again.unchanged

    # The user paints more: the mask and labels would change -> refused, files untouched.
    cur.labels = cur.labels.copy()
    cur.labels[:5, :5] = 1
    with pytest.raises(CurationConflict) as err:
        save_curated([cur], folder)
    assert {p.name for p in err.value.paths} == {
        f"{STEMS[0]}_segmentation.png", f"{STEMS[0]}_labels.png"}
    assert all(p.read_bytes() == data for p, data in before.items())

    save_curated([cur], folder, overwrite=True)
    assert read_mask(folder / "masks" / f"{STEMS[0]}_segmentation.png")[:5, :5].all()


def test_save_refuses_clashing_names_and_bad_label_shapes(tmp_path):
    r = Recist([[2, 2], [2, 8]], [[0, 5], [4, 5]])
    a = AnnotatedImage("a b", np.zeros((10, 10), np.uint8), [(1, r)])
    b = AnnotatedImage("a_b", np.zeros((10, 10), np.uint8), [(1, r)])
    with pytest.raises(ValueError, match="same name"):
        save_curated([a, b], tmp_path / "x")
    c = AnnotatedImage("c", np.zeros((10, 10, 3), np.uint8), [(1, r)],
                       labels=np.zeros((9, 10), np.int32), curated=True)
    with pytest.raises(ValueError, match="do not match"):
        save_curated([c], tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_fine_tune_saves_the_curation_before_training(isic, tmp_path, monkeypatch):
    """If training fails, the curated masks are already on disk."""
    import napari_recist_seg.finetune as finetune
    import napari_recist_seg.training as training

    def broken_train(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(finetune, "fine_tune", broken_train)
    monkeypatch.setattr(curation, "holdout_scores", lambda *a, **k: [])
    images = [_annotated(STEMS[0], True), _annotated(STEMS[1], True), _annotated(STEMS[2], False)]
    with pytest.raises(RuntimeError, match="simulated"):
        curation.fine_tune(images, tmp_path / "model", training.TrainConfig(epochs=1),
                           init_checkpoint=tmp_path / "any")
    for img in images[:2]:
        saved = tmp_path / "model" / "curated" / "masks" / f"{img.name}_segmentation.png"
        assert np.array_equal(read_mask(saved), img.labels > 0)


def test_fine_tune_needs_a_curated_image(tmp_path):
    from napari_recist_seg.training import TrainConfig

    r = Recist([[2, 2], [2, 8]], [[0, 5], [4, 5]])
    with pytest.raises(ValueError, match="no curated image"):
        curation.fine_tune([AnnotatedImage("a", np.zeros((10, 10), np.uint8), [(1, r)])],
                           tmp_path, TrainConfig(epochs=1))
    assert not any(tmp_path.iterdir())


# -- scoring and helpers -------------------------------------------------------------------


def test_holdout_scores_match_an_independent_dice(isic, tmp_path):
    from napari_recist_seg.model import ModelConfig, build_model, save_checkpoint
    from napari_recist_seg.predict import Predictor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(mode="a1", input_size=32, decoder_channels=16)
    ckpt = save_checkpoint(tmp_path / "m", build_model(cfg), cfg)
    images = [_annotated(s, True) for s in STEMS[:2]]
    rows = holdout_scores(ckpt, images, device="cpu")
    pred = Predictor.load(ckpt, device="cpu")
    for img, row in zip(images, rows):
        (res,) = pred.segment(img.image, [img.recists[0][1]])
        mask = res.full_mask(img.shape)
        expected = medpy_dice(mask, img.labels > 0) if mask.any() else 0.0
        assert row["case"] == img.name
        assert row["dice"] == pytest.approx(expected, abs=1e-9)


def test_recist_errors_by_hand_and_in_mm():
    g = np.zeros((40, 40), bool)
    g[14:20, 5:25] = True  # long axis between pixel centres: sqrt(19^2 + 5^2)
    p = np.zeros((40, 40), bool)
    p[14:20, 5:31] = True  # sqrt(25^2 + 5^2)
    err = recist_errors(p, g)
    assert err["long_error"] == pytest.approx(math.hypot(25, 5) - math.hypot(19, 5), abs=1e-6)
    assert err["short_error"] < 1.0  # same height: the short axes nearly agree
    mm = recist_errors(p, g, spacing=(0.5, 0.5))
    assert mm["long_error"] == pytest.approx(err["long_error"] * 0.5, abs=1e-6)
    empty = recist_errors(np.zeros_like(g), g)
    assert math.isnan(empty["long_error"]) and math.isnan(empty["short_error"])


def test_write_derived_recist_ignores_the_folders_csv(isic, tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for s in STEMS[:2]:
        shutil.copy(ISIC / "images" / f"{s}.jpg", root / "images")
        shutil.copy(ISIC / "masks" / f"{s}_segmentation.png", root / "masks")
    (root / "recist.csv").write_text("not,a,recist,csv\n")  # would be used otherwise
    out = write_derived_recist(root, tmp_path / "derived.csv")
    records = read_recist_csv(out)
    assert [r.image.name for r in records] == [f"{s}.jpg" for s in STEMS[:2]]
    for rec, s in zip(records, STEMS[:2]):
        expected = recist_from_mask(read_mask(ISIC / "masks" / f"{s}_segmentation.png"))
        np.testing.assert_allclose(rec.recist.endpoints, expected.endpoints, atol=1e-9)

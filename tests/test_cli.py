"""Command-line behaviour shared by all commands: exit codes and one-line errors."""

from __future__ import annotations

from napari_recist_seg.cli import main


def test_missing_dataset_is_a_one_line_error(tmp_path, capsys):
    code = main(["targets", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().startswith("recist-seg: error:")
    assert "nope" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_option_exits_2(capsys):
    try:
        main(["segment"])
    except SystemExit as exc:  # argparse
        assert exc.code == 2
    else:
        raise AssertionError("argparse should have refused a missing --out")


def test_view_opens_napari_with_the_annotator_and_sample(monkeypatch):
    """`recist-seg view` (the README's run command) opens the sample and docks the widget."""
    import napari

    from napari_recist_seg import _launch

    calls = {}

    def fake_open_viewer(paths, *, sample=None, widgets=(), run=True):
        calls.update(paths=list(paths), sample=sample, widgets=list(widgets))
        return None

    monkeypatch.setattr(_launch, "open_viewer", fake_open_viewer)
    assert main(["view"]) == 0
    assert calls == {"paths": [], "sample": "dermoscopy", "widgets": ["RECIST annotator"]}
    assert napari  # the napari layer is importable where the CLI runs it


def test_segment_tta_option_gives_the_predictors_flip4_masks(tmp_path, make_isic_dataset, isic_dir):
    """``segment --tta flip4``: the masks of ``Predictor.segment(..., tta="flip4")``;
    the default (no TTA) differs from them."""
    import numpy as np

    from napari_recist_seg.data.dataset import dataset_recists, scan_dataset
    from napari_recist_seg.data.images import read_image
    from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor

    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        import pytest

        pytest.skip("the default model is not installed")
    stems = sorted(p.stem for p in (isic_dir / "images").glob("*.jpg"))[:2]
    ds = make_isic_dataset(tmp_path / "ds", stems)
    masks = {}
    for mode in ("none", "flip4"):
        out = tmp_path / mode
        assert main(["segment", str(ds), "--out", str(out), "--device", "cpu", "--quiet", "--tta", mode]) == 0
        masks[mode] = {s: read_image(out / f"{s}.png").array > 0 for s in stems}
    predictor = Predictor.load(None, device="cpu")
    recists = dataset_recists(scan_dataset(ds))  # derived from the masks, as segment does
    for stem in stems:
        image = read_image(ds / "images" / f"{stem}.jpg").array
        [res] = predictor.segment(image, [r.recist for r in recists[stem]], tta="flip4")
        np.testing.assert_array_equal(masks["flip4"][stem], res.full_mask(image.shape))
    assert any(not np.array_equal(masks["none"][s], masks["flip4"][s]) for s in stems)

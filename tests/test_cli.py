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

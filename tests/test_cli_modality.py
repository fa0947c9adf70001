"""``recist-seg segment --modality``: the user's choice reaches the intensity rule."""

from __future__ import annotations

import numpy as np
import pytest

from napari_recist_seg.cli import main
from napari_recist_seg.intensity import detect_modality


def _hu_looking_volume() -> np.ndarray:
    """Half air (-1000), half soft tissue (40): what the HU test calls CT."""
    vol = np.full((3, 16, 16), 40.0, np.float32)
    vol[:, :, :8] = -1000.0
    return vol


@pytest.mark.parametrize("three_d, module", [(False, "segment"), (True, "segment3d")])
@pytest.mark.parametrize("choice, expected", [("other", "other"), ("ct", "ct"), ("auto", "ct")])
def test_modality_choice_decides_the_rule_even_on_hu_values(
        tmp_path, monkeypatch, three_d, module, choice, expected):
    """``--modality other`` on a volume whose values look like HU must not be
    re-guessed as CT (it was passed as "grey", which means "decide from the values")."""
    import importlib

    job = importlib.import_module(f"napari_recist_seg.jobs.{module}")
    seen = {}

    def fake_run(inputs, out, **kwargs):
        seen.update(kwargs)
        return job.JobReport()

    monkeypatch.setattr(job, "run_segment3d" if three_d else "run_segment", fake_run)
    argv = ["segment", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "out"),
            "--modality", choice, "-q"] + (["--3d"] if three_d else [])
    (tmp_path / "ct.nii.gz").write_bytes(b"")
    assert main(argv) == 0
    assert detect_modality(_hu_looking_volume(), seen["modality"]) == expected

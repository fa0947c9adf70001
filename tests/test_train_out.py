"""Where a trained or fine-tuned model may be written: never into the folder it starts
from, never into a shipped model, and over an existing model only with ``--overwrite``
(a review found ``train DS --init D --curated ... --out D`` replaced D's config and
deleted its INT8 graph, silently)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from napari_recist_seg import cli
from napari_recist_seg.checkpoint import SHIPPED_MODELS_DIR
from napari_recist_seg.predict import DEFAULT_MODEL_DIR
from napari_recist_seg.progress import InputError

STEMS = ["ISIC_0000000", "ISIC_0000001"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def dataset(tmp_path, make_isic_dataset) -> Path:
    return make_isic_dataset(tmp_path / "ds", STEMS)


@pytest.fixture
def model_copy(tmp_path) -> Path:
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no default model at {DEFAULT_MODEL_DIR}")
    return Path(shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "start"))


def test_fine_tune_into_its_own_starting_folder_is_refused(dataset, model_copy, capsys):
    before = _digest(model_copy)
    argv = ["train", str(dataset), "--init", str(model_copy), "--curated", str(dataset / "masks"),
            "--out", str(model_copy), "-q"]
    assert cli.main(argv) == 2
    assert "already holds a model" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the model it starts from (--init)" in err[0]
    assert _digest(model_copy) == before  # nothing written, nothing deleted


def test_the_shipped_model_is_never_a_training_output(dataset, model_copy, capsys):
    assert DEFAULT_MODEL_DIR.parent == SHIPPED_MODELS_DIR
    before = _digest(DEFAULT_MODEL_DIR)
    argv = ["train", str(dataset), "--init", str(model_copy), "--curated", str(dataset / "masks"),
            "--out", str(DEFAULT_MODEL_DIR), "--overwrite", "-q"]
    assert cli.main(argv) == 2
    assert "shipped with napari-recist-seg" in capsys.readouterr().err
    assert _digest(DEFAULT_MODEL_DIR) == before


def test_the_library_refuses_too(model_copy):
    from napari_recist_seg.finetune import fine_tune

    with pytest.raises(InputError, match="starts from"):  # curation.fine_tune and the dock call it
        fine_tune([], model_copy, model_copy)
    with pytest.raises(InputError, match="shipped"):
        fine_tune([], model_copy, DEFAULT_MODEL_DIR)

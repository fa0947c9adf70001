"""Hostile and corrupt checkpoints (issue 12 items 10-12, 15): copies of the shipped
model with one thing broken are refused at load with exit 2 and one line, never loaded
into a model that gives empty masks, never a traceback or a network access."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_recist_seg.checkpoint_checks import CheckpointError, json_depth, model_config_problem
from napari_recist_seg.cli import main
from napari_recist_seg.model import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "napari_recist_seg" / "models" / "default"
ISIC = REPO.parent / "shared" / "data" / "isic2017_train256"


def broken_copy(tmp_path: Path, *, model=None, top=None, state=None, text=None) -> Path:
    """A copy of the shipped checkpoint with ``config["model"]`` updated by ``model``, the
    top level by ``top``, the weights changed by ``state(dict)`` (checksum updated, so
    only the new check can catch them), or ``config.json`` replaced by ``text``."""
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    shutil.copytree(DEFAULT, ckpt)
    cfg_path = ckpt / "config.json"
    doc = json.loads(cfg_path.read_text())
    doc["model"].update(model or {})
    doc.update(top or {})
    if state is not None:
        weights = ckpt / doc["weights"]
        tensors = load_file(str(weights))
        state(tensors)
        save_file(tensors, str(weights))
        doc["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    cfg_path.write_text(text if text is not None else json.dumps(doc))
    return ckpt


def nan_weights(t):
    k = "net.decoder.aspp.0.convs.0.0.weight"
    t[k] = t[k].clone()
    t[k].view(-1)[:5] = float("nan")


def int8_weights(t):
    k = "net.decoder.aspp.0.convs.0.0.weight"
    t[k] = t[k].to(__import__("torch").int8)


def bool_weights(t):
    k = "net.classification_head.3.weight"
    t[k] = t[k] > 0


CASES = {
    "decoder_channels string": (dict(model={"decoder_channels": "128"}), "decoder_channels must be an integer in 8..1024, got '128'"),
    "decoder_channels -1": (dict(model={"decoder_channels": -1}), "decoder_channels must be an integer in 8..1024, got -1"),
    "decoder_channels 200000": (dict(model={"decoder_channels": 200000}), "got 200000"),
    "encoder list": (dict(model={"encoder": ["resnet18"]}), 'encoder must build offline (a segmentation-models-pytorch encoder or tu-<timm model>), got ["resnet18"]'),
    "encoder hf hub": (dict(model={"encoder": "tu-hf-hub:timm/resnet18.a1_in1k"}), "encoder must build offline"),
    "input_size 1e6": (dict(model={"input_size": 10**6}), "input_size must be an integer in 16..1024, got 1000000"),
    "input_size stride": (dict(model={"input_size": 120}), "input_size must be a multiple of the encoder output stride 16, got 120"),
    "threshold NaN": (dict(model={"threshold": float("nan")}), "threshold must be a number strictly between 0 and 1, got NaN"),
    "threshold 1": (dict(model={"threshold": 1.0}), "threshold must be a number strictly between 0 and 1"),
    "zero std": (dict(model={"std": [0, 0, 0]}), "std must be 3 positive finite numbers, got [0, 0, 0]"),
    "format_version string": (dict(top={"format_version": "1"}), "format_version must be an integer (this version writes 1), got '1'"),
    "format_version 2": (dict(top={"format_version": 2}), "format version 2 is newer than this version"),
    "weights outside": (dict(top={"weights": "../elsewhere/w.safetensors"}), "'weights' in config.json must name a file inside the checkpoint folder, got '../elsewhere/w.safetensors'"),
    "NaN weights": (dict(state=nan_weights), "weight net.decoder.aspp.0.convs.0.0.weight holds 5 NaN or infinite values"),
    "int8 weights": (dict(state=int8_weights), "weight net.decoder.aspp.0.convs.0.0.weight has dtype int8; expected floating point"),
    "bool weights": (dict(state=bool_weights), "has dtype bool; expected floating point"),
    "nested JSON": (dict(text='{"format": "napari-recist-seg", "model": {}, "x": ' + "[" * 100000 + "]" * 100000 + "}"), "nested too deeply"),
    "nested JSON 40": (dict(text='{"format": "napari-recist-seg", "model": {}, "x": ' + "[" * 40 + "]" * 40 + "}"), "nested too deeply (more than 16 levels)"),
}


@pytest.fixture(scope="module")
def one_image(tmp_path_factory):
    """One ISIC image and a RECIST CSV for it."""
    if not ISIC.is_dir():
        pytest.skip("real data missing")
    from PIL import Image

    from napari_recist_seg.data.recist_csv import RecistRecord, write_recist_csv
    from napari_recist_seg.recist import recist_from_mask

    root = tmp_path_factory.mktemp("img")
    img = Path(shutil.copy(ISIC / "images" / "ISIC_0000001.jpg", root))
    gt = np.asarray(Image.open(ISIC / "masks" / "ISIC_0000001_segmentation.png")) > 0
    write_recist_csv(root / "recist.csv", [RecistRecord(img, 1, recist_from_mask(gt))])
    return img, root / "recist.csv"


@pytest.mark.parametrize("case", list(CASES))
def test_segment_refuses_a_broken_checkpoint_with_one_line(case, tmp_path, one_image, capsys, monkeypatch):
    # Any network access would be a bug: make it fail loudly.
    import socket

    def no_network(*a, **k):
        raise AssertionError("the checkpoint check tried the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    edits, expected = CASES[case]
    if case == "weights outside":
        (tmp_path / "elsewhere").mkdir()
        shutil.copy(next(DEFAULT.glob("weights-*.safetensors")), tmp_path / "elsewhere" / "w.safetensors")
        ckpt = broken_copy(tmp_path, **edits)
        # the same file inside the folder's parent's sibling: the old check loaded it
        shutil.move(str(tmp_path / "elsewhere"), str(ckpt.parent / "elsewhere"))
    else:
        ckpt = broken_copy(tmp_path, **edits)
    img, csv_path = one_image
    out = tmp_path / "out"
    code = main(["segment", str(img), "--recist", str(csv_path), "--model", str(ckpt),
                 "--out", str(out), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("recist-seg: error: ") and expected in err, err
    assert "Traceback" not in err
    assert not list(out.glob("*.png")) if out.exists() else True


def test_the_unbroken_copy_loads(tmp_path):
    """The helper itself changes nothing when asked for nothing (so the cases above fail
    for their edit, not for the copy)."""
    model, cfg, clusters = load_checkpoint(broken_copy(tmp_path, state=lambda t: None))
    assert cfg.decoder_channels == 128 and clusters is not None


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    ckpt = broken_copy(tmp_path)
    doc = json.loads((ckpt / "config.json").read_text())
    real = ckpt / doc["weights"]
    outside = tmp_path / "outside.safetensors"
    shutil.move(str(real), str(outside))
    real.symlink_to(outside)
    with pytest.raises(CheckpointError, match="must name a file inside the checkpoint folder"):
        load_checkpoint(ckpt)


def test_timm_encoders_that_build_offline_are_accepted():
    assert model_config_problem({"encoder": "resnet34"}) is None
    assert model_config_problem({"encoder": "tu-resnet18"}) is None
    assert "build offline" in model_config_problem({"encoder": "tu-no-such-model"})
    assert "build offline" in model_config_problem({"encoder": "tu-hf_hub:timm/x"})
    assert model_config_problem({"n_clusters": True}).startswith("n_clusters must be an integer")
    assert json_depth({"a": [[1]]}) == 3


@pytest.mark.parametrize("option, value, expected", [
    ("--input-size", "100000", "invalid model settings: input_size must be an integer in 16..1024, got 100000"),
    ("--input-size", "120", "input_size must be a multiple of the encoder output stride 16, got 120"),
    ("--encoder", "tu-hf-hub:timm/resnet18.a1_in1k", "encoder must build offline"),
    ("--lambda", "nan", "--lambda must be a finite number, got nan"),
    ("--lambda", "inf", "--lambda must be a finite number, got inf"),
])
def test_train_refuses_bad_settings_with_one_line(option, value, expected, tmp_path, capsys):
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    code = main(["train", str(ds), "--out", str(tmp_path / "m"), option, value, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("module", ["napari_recist_seg.checkpoint_checks", "napari_recist_seg.data.limits"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0

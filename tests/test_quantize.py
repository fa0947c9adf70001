"""The INT8 graph stored beside the float graph (napari_recist_seg.quantize).

The shipped default model's INT8 graph against its float graph on real ISIC
validation images; tiny untrained checkpoints for the storage rules (hash, stale
graphs, ``precision`` choices, one clear error).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_recist_seg import quantize
from napari_recist_seg.clusters import ClusterModel
from napari_recist_seg.graph import GraphError
from napari_recist_seg.model import ModelConfig, build_model, read_checkpoint_config, save_checkpoint
from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor
from napari_recist_seg.preprocess import make_input
from napari_recist_seg.recist import recist_from_mask, snap

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _case(isic_dir: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(Image.open(isic_dir / "images" / f"{stem}.jpg").convert("RGB"))
    return image, np.asarray(Image.open(isic_dir / "masks" / f"{stem}_segmentation.png")) > 0


def _default_split() -> dict:
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip(f"no default model at {DEFAULT_MODEL_DIR}")
    return json.loads((DEFAULT_MODEL_DIR / "split.json").read_text())


def test_default_model_ships_an_int8_graph_with_the_float_masks(isic_dir, dice):
    split = _default_split()
    int8 = Predictor.load(None, device="cpu")  # "auto": the INT8 graph on CPU
    fp32 = Predictor.load(None, device="cpu", precision="fp32")
    assert int8._runner.precision == "int8" and fp32._runner.precision == "fp32"
    agreement = []
    for stem in sorted(split["val"])[:24]:
        image, mask = _case(isic_dir, stem)
        r = [recist_from_mask(mask)]
        [a], [b] = int8.segment(image, r), fp32.segment(image, r)
        agreement.append(dice(a.full_mask(image.shape), b.full_mask(image.shape)))
        assert a.cluster == b.cluster
    assert np.mean(agreement) >= 0.99, agreement


def test_int8_predictor_does_not_import_torch(isic_dir):
    _default_split()
    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from napari_recist_seg.predict import Predictor\n"
        "from napari_recist_seg.recist import recist_from_mask\n"
        f"d = {str(isic_dir)!r}\n"
        "im = np.asarray(Image.open(d + '/images/ISIC_0000000.jpg').convert('RGB'))\n"
        "m = np.asarray(Image.open(d + '/masks/ISIC_0000000_segmentation.png')) > 0\n"
        "p = Predictor.load(device='cpu', precision='int8')\n"
        "[r] = p.segment(im, [recist_from_mask(m)])\n"
        "assert r.area_px > 1000, r.area_px\n"
        "print(p._runner.precision, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["int8", "False"]


def _tiny(path: Path, seed: int = 3) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(mode="a1l", n_clusters=3, input_size=64, decoder_channels=32)
    return save_checkpoint(path, build_model(cfg), cfg, ClusterModel(np.eye(3, 7), np.zeros(7), np.ones(7)))


def _inputs(isic_dir: Path, ckpt: Path, n: int, start: int = 0) -> np.ndarray:
    config = Predictor.load(ckpt, device="cpu").config
    stems = sorted(p.stem for p in (isic_dir / "images").glob("*.jpg"))[start : start + n]
    xs = []
    for stem in stems:
        image, mask = _case(isic_dir, stem)
        xs.append(make_input(image, snap(recist_from_mask(mask), image_shape=image.shape), config.preprocess)[0])
    return np.stack(xs)


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory, isic_dir):
    """A tiny checkpoint with its INT8 graph (the check accepts any agreement: an
    untrained network's logits hover around 0)."""
    ckpt = _tiny(tmp_path_factory.mktemp("int8") / "c")
    calibration, check = _inputs(isic_dir, ckpt, 16), _inputs(isic_dir, ckpt, 4, start=16)
    saved = quantize.MIN_MASK_DICE
    quantize.MIN_MASK_DICE = 0.0
    try:
        quantize.add_int8_graph(ckpt, calibration, check)
    finally:
        quantize.MIN_MASK_DICE = saved
    return ckpt, calibration, check


def test_int8_graph_is_stored_by_hash_and_chosen_by_precision(tiny_int8, tmp_path):
    ckpt = shutil.copytree(tiny_int8[0], tmp_path / "c")
    doc = read_checkpoint_config(ckpt)
    data = (ckpt / doc["int8_graph"]).read_bytes()
    assert doc["int8_graph"].startswith("int8-") and doc["int8_graph_of"] == doc["graph_sha256"]
    assert quantize.read_int8_graph(ckpt, doc) == data
    assert len(data) < 0.6 * (ckpt / doc["graph"]).stat().st_size  # int8 weights
    assert Predictor.load(ckpt, device="cpu")._runner.precision == "int8"
    assert Predictor.load(ckpt, device="cpu", precision="fp32")._runner.precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, int8, fp32"):
        Predictor.load(ckpt, device="cpu", precision="int4")
    # New weights saved into the folder: the INT8 graph of the old ones goes with them.
    _tiny(ckpt, seed=4)
    assert "int8_graph" not in read_checkpoint_config(ckpt) and not list(ckpt.glob("int8-*"))
    assert Predictor.load(ckpt, device="cpu")._runner.precision == "fp32"
    with pytest.raises(ValueError, match="no valid INT8 graph; use precision 'fp32' or 'auto'"):
        Predictor.load(ckpt, device="cpu", precision="int8")


def test_a_damaged_or_stale_int8_graph_falls_back_to_float(tiny_int8, tmp_path, caplog):
    ckpt = shutil.copytree(tiny_int8[0], tmp_path / "c")
    doc = read_checkpoint_config(ckpt)
    (ckpt / doc["int8_graph"]).write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING):
        assert Predictor.load(ckpt, device="cpu")._runner.precision == "fp32"
    assert "INT8 graph checksum mismatch" in caplog.text
    doc["int8_graph_of"] = "0" * 64  # built from another float graph
    assert quantize.read_int8_graph(ckpt, doc) is None


def test_int8_graph_whose_masks_disagree_is_refused(tiny_int8, tmp_path, monkeypatch):
    ckpt = shutil.copytree(tiny_int8[0], tmp_path / "c")
    before = (ckpt / "config.json").read_text()
    for f in ckpt.glob("int8-*"):
        f.unlink()
    # The float graph itself as the "quantised" one: Dice 1.0, below a bar of 1.01.
    monkeypatch.setattr(quantize, "_quantize", lambda graph, calibration, work: graph)
    monkeypatch.setattr(quantize, "MIN_MASK_DICE", 1.01)
    with pytest.raises(GraphError, match="INT8 masks differ from the float graph's"):
        quantize.add_int8_graph(ckpt, tiny_int8[1], tiny_int8[2])
    assert (ckpt / "config.json").read_text() == before and not list(ckpt.glob("int8-*"))


def test_cli_precision_int8_without_an_int8_graph_is_one_line(tmp_path, isic_dir):
    ckpt = _tiny(tmp_path / "plain")
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "masks").mkdir()
    for sub, name in (("images", "ISIC_0000000.jpg"), ("masks", "ISIC_0000000_segmentation.png")):
        shutil.copy(isic_dir / sub / name, ds / sub)
    cmd = [sys.executable, "-m", "napari_recist_seg", "segment", str(ds), "--out", str(tmp_path / "o"),
           "--model", str(ckpt), "--device", "cpu", "-q"]
    bad = subprocess.run([*cmd, "--precision", "int8"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "no valid INT8 graph" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    ok = subprocess.run([*cmd, "--precision", "fp32"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "o" / "ISIC_0000000.png").is_file()

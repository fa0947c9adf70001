"""The ONNX graph stored in checkpoints: inference without torch, same masks as PyTorch.

Real ISIC images and the shipped default model where present; tiny untrained
checkpoints for the storage rules (hash, stale graphs, fallback for old checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_recist_seg import graph as graph_mod
from napari_recist_seg.clusters import ClusterModel
from napari_recist_seg.model import (
    ModelConfig,
    add_graph,
    build_model,
    read_checkpoint_config,
    save_checkpoint,
)
from napari_recist_seg.predict import DEFAULT_MODEL_DIR, Predictor
from napari_recist_seg.recist import recist_from_mask

REPO = Path(__file__).resolve().parents[1]
ISIC = REPO / ".." / "shared" / "data" / "isic2017_train256"
STEMS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000003", "ISIC_0000008", "ISIC_0000013"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _isic(stem: str) -> tuple[np.ndarray, np.ndarray]:
    if not (ISIC / "images").is_dir():
        pytest.skip(f"real ISIC data not found at {ISIC}")
    image = np.asarray(Image.open(ISIC / "images" / f"{stem}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(ISIC / "masks" / f"{stem}_segmentation.png")) > 0
    return image, mask


def _tiny(path: Path, *, half: bool = False, graph: bool = True, seed: int = 3) -> Path:
    torch.manual_seed(seed)
    cfg = ModelConfig(mode="a1l", n_clusters=3, input_size=64, decoder_channels=32)
    clusters = ClusterModel(np.eye(3, 7), np.zeros(7), np.ones(7))
    return save_checkpoint(path, build_model(cfg), cfg, clusters, half=half, graph=graph)


def _assert_same_results(a: Predictor, b: Predictor, stems=STEMS[:2]) -> None:
    for stem in stems:
        image, mask = _isic(stem)
        r = [recist_from_mask(mask)]
        for x, y in zip(a.segment(image, r), b.segment(image, r)):
            np.testing.assert_allclose(x.probability, y.probability, atol=1e-4)
            assert x.offset == y.offset and np.array_equal(x.mask, y.mask)
            assert x.cluster == y.cluster


def test_default_model_segments_without_importing_torch():
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("default model not shipped in this checkout")
    _isic(STEMS[0])
    code = (
        "import sys, numpy as np\n"
        "from PIL import Image\n"
        "from napari_recist_seg.predict import Predictor\n"
        "from napari_recist_seg.recist import recist_from_mask\n"
        f"d = {str(ISIC)!r}\n"
        f"im = np.asarray(Image.open(d + '/images/{STEMS[0]}.jpg').convert('RGB'))\n"
        f"m = np.asarray(Image.open(d + '/masks/{STEMS[0]}_segmentation.png')) > 0\n"
        "p = Predictor.load(device='cpu')\n"
        "[r] = p.segment(im, [recist_from_mask(m)])\n"
        "assert r.area_px > 1000, r.area_px\n"
        "print(p.backend, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["onnxruntime", "False"]


def test_default_model_onnx_masks_equal_pytorch_masks_on_isic():
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        pytest.skip("default model not shipped in this checkout")
    onnx = Predictor.load(device="cpu", precision="fp32")  # the float graph (INT8: test_quantize)
    eager = Predictor.load(device="cpu", optimize=False)
    assert onnx.backend == "onnxruntime" and eager.backend == "eager"
    _assert_same_results(onnx, eager, STEMS)


def test_saved_checkpoint_names_its_graph_by_hash(tmp_path):
    ckpt = _tiny(tmp_path / "c")
    doc = read_checkpoint_config(ckpt)
    data = (ckpt / doc["graph"]).read_bytes()
    assert doc["graph"] == f"graph-{hashlib.sha256(data).hexdigest()[:16]}.onnx"
    assert doc["graph_sha256"] == hashlib.sha256(data).hexdigest()
    assert doc["graph_weights_sha256"] == doc["weights_sha256"]
    # Saving again (new weights) replaces the graph; the stale one is removed.
    _tiny(ckpt, seed=4)
    doc2 = read_checkpoint_config(ckpt)
    assert doc2["graph"] != doc["graph"] and sorted(p.name for p in ckpt.glob("graph-*")) == [doc2["graph"]]


def test_stored_graph_is_used_without_export(tmp_path, monkeypatch):
    ckpt = _tiny(tmp_path / "c")
    eager = Predictor.load(ckpt, device="cpu", optimize=False)

    def no_export(*args, **kwargs):
        raise AssertionError("exported at load although a graph is stored")

    monkeypatch.setattr("napari_recist_seg.runtime.export_onnx", no_export)
    monkeypatch.setattr("napari_recist_seg.runtime._onnxruntime", no_export)
    fast = Predictor.load(ckpt, device="cpu")
    assert fast.backend == "onnxruntime"
    _assert_same_results(fast, eager)


def test_half_checkpoint_graph_is_half_size_and_exact(tmp_path):
    full = _tiny(tmp_path / "full")
    half = _tiny(tmp_path / "half", half=True)
    size = lambda c: (c / read_checkpoint_config(c)["graph"]).stat().st_size  # noqa: E731
    assert size(half) < 0.6 * size(full)
    _assert_same_results(Predictor.load(half, device="cpu"), Predictor.load(half, device="cpu", optimize=False))


def test_old_checkpoint_without_graph_still_loads_and_add_graph_upgrades_it(tmp_path):
    ckpt = _tiny(tmp_path / "old", graph=False)
    doc = read_checkpoint_config(ckpt)
    assert "graph" not in doc and not list(ckpt.glob("graph-*"))
    old = Predictor.load(ckpt, device="cpu")  # exported at load, as before
    assert old.backend == "onnxruntime"
    weights = (ckpt / doc["weights"]).read_bytes()
    name = add_graph(ckpt)
    doc2 = read_checkpoint_config(ckpt)
    assert doc2["graph"] == name and (ckpt / doc["weights"]).read_bytes() == weights
    assert {k: v for k, v in doc2.items() if not k.startswith("graph")} == doc
    _assert_same_results(Predictor.load(ckpt, device="cpu"), Predictor.load(ckpt, device="cpu", optimize=False))


@pytest.mark.parametrize("damage", ["bytes", "other_weights", "missing"])
def test_damaged_graph_falls_back_to_export(tmp_path, damage, caplog):
    ckpt = _tiny(tmp_path / "c")
    doc = read_checkpoint_config(ckpt)
    path = ckpt / doc["graph"]
    if damage == "bytes":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "other_weights":
        doc["graph_weights_sha256"] = "0" * 64
        (ckpt / "config.json").write_text(json.dumps(doc))
    else:
        path.unlink()
    assert graph_mod.read_graph(ckpt, read_checkpoint_config(ckpt)) is None
    with caplog.at_level(logging.WARNING, logger="napari_recist_seg.graph"):
        fast = Predictor.load(ckpt, device="cpu")
    assert "exporting again" in caplog.text
    _assert_same_results(fast, Predictor.load(ckpt, device="cpu", optimize=False), STEMS[:1])


def test_graph_that_disagrees_with_pytorch_is_not_stored(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("napari_recist_seg.runtime._agrees", lambda *a: False)
    with caplog.at_level(logging.WARNING, logger="napari_recist_seg.model"):
        ckpt = _tiny(tmp_path / "c")
    assert "saved without an ONNX graph" in caplog.text
    assert "graph" not in read_checkpoint_config(ckpt) and not list(ckpt.glob("graph-*"))

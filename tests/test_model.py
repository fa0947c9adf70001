"""The network and its checkpoint: shapes, round trip, atomic saving, refusal of bad files."""

from __future__ import annotations

import json
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_recist_seg import model as model_mod
from napari_recist_seg import network as network_mod
from napari_recist_seg.clusters import ClusterModel
from napari_recist_seg.model import (
    FORMAT_VERSION,
    CheckpointError,
    ModelConfig,
    build_model,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)

SIZE = 64


def _clusters(k: int = 3) -> ClusterModel:
    rng = np.random.default_rng(0)
    return ClusterModel.fit(rng.normal(size=(60, 7)), k=k, seed=0)


def _a1l(k: int = 3, **kw) -> ModelConfig:
    return ModelConfig(mode="a1l", n_clusters=k, input_size=SIZE, **kw)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    cfg = _a1l()
    net = build_model(cfg).eval()
    d = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(d, net, cfg, _clusters(), {"note": "test", "value": np.float32(0.5)})
    return d, net, cfg


def _x(n: int = 2, c: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).normal(size=(n, c, SIZE, SIZE)).astype(np.float32))


def test_forward_shapes_a1_and_a1l():
    seg, aux = build_model(_a1l(k=5)).eval()(_x())
    assert tuple(seg.shape) == (2, 1, SIZE, SIZE) and tuple(aux.shape) == (2, 5)
    cfg = ModelConfig(mode="a1", n_clusters=4, input_size=SIZE, recist_channel=False)
    assert cfg.n_clusters == 0 and cfg.in_channels == 3
    seg, aux = build_model(cfg).eval()(_x(c=3))
    assert tuple(seg.shape) == (2, 1, SIZE, SIZE) and aux is None


def test_config_validation():
    with pytest.raises(ValueError, match="at least 2 clusters"):
        ModelConfig(mode="a1l", n_clusters=1)
    with pytest.raises(ValueError, match="mode"):
        ModelConfig(mode="a2")
    cfg = _a1l(crop_factor=1.8)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.preprocess.crop_factor == 1.8 and cfg.preprocess.input_size == SIZE


def test_round_trip_predictions_identical(saved):
    d, net, cfg = saved
    loaded, cfg2, clusters = load_checkpoint(d)
    assert cfg2 == cfg
    assert clusters is not None and clusters.k == 3
    np.testing.assert_array_equal(clusters.centers, _clusters().centers)
    x = _x()
    with torch.no_grad():
        a, b = net(x), loaded(x)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    doc = read_checkpoint_config(d)
    assert doc["format_version"] == FORMAT_VERSION and doc["training"]["value"] == 0.5
    assert (d / doc["weights"]).is_file()


def test_half_precision_round_trip(tmp_path, saved):
    _, net, cfg = saved
    save_checkpoint(tmp_path / "h", net, cfg, _clusters(), half=True)
    loaded, _, _ = load_checkpoint(tmp_path / "h")
    x = _x()
    with torch.no_grad():
        p1 = torch.sigmoid(net(x)[0])
        p2 = torch.sigmoid(loaded(x)[0])
    assert float((p1 - p2).abs().max()) < 0.02
    assert next(loaded.parameters()).dtype == torch.float32


def test_resave_keeps_one_weights_file_and_failed_save_keeps_the_old(tmp_path, saved, monkeypatch):
    _, net, cfg = saved
    d = tmp_path / "m"
    save_checkpoint(d, net, cfg, _clusters(), {"epoch": 1})
    net2 = build_model(cfg).eval()
    with torch.no_grad():
        for p in net2.parameters():
            p.add_(0.01)
    save_checkpoint(d, net2, cfg, _clusters(), {"epoch": 2})
    assert len(list(d.glob("weights-*.safetensors"))) == 1
    assert read_checkpoint_config(d)["training"]["epoch"] == 2

    # A crash while writing the next checkpoint leaves epoch 2 loadable and intact.
    import safetensors.torch

    def boom(*a, **k):
        Path(a[1]).write_bytes(b"half-written")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(d, net, cfg, _clusters(), {"epoch": 3})
    monkeypatch.undo()
    loaded, _, _ = load_checkpoint(d)
    assert read_checkpoint_config(d)["training"]["epoch"] == 2
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], net2(x)[0], rtol=0, atol=0)
    assert not list(d.glob(".weights.*")), "temporary file left behind"


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Evil(marker)}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()
    # Also through torch's own zip format.
    evil2 = tmp_path / "evil2.pth"
    torch.save({"model": _Evil(marker)}, evil2)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil2)
    assert not marker.exists()


def test_plain_state_dict_files_load(tmp_path, saved):
    d, net, cfg = saved
    state = net.state_dict()
    bundle = tmp_path / "bundle.pt"
    torch.save({"model": cfg.to_dict(), "state_dict": state, "clusters": _clusters().to_json()}, bundle)
    loaded, cfg2, clusters = load_checkpoint(bundle)
    assert cfg2 == cfg and clusters.k == 3
    # A bare state dict next to a config.json.
    side = tmp_path / "side"
    side.mkdir()
    (side / "config.json").write_text((d / "config.json").read_text())
    torch.save(state, side / "weights.pth")
    loaded2, _, _ = load_checkpoint(side / "weights.pth")
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], loaded2(x)[0], rtol=0, atol=0)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_config(d: Path, fn) -> None:
    doc = json.loads((d / "config.json").read_text())
    fn(doc)
    (d / "config.json").write_text(json.dumps(doc))


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path, saved):
    d, _, _ = saved
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(empty)

    trunc = _copy(d, tmp_path / "trunc")
    w = next(trunc.glob("weights-*.safetensors"))
    w.write_bytes(w.read_bytes()[: 5000])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(trunc)
    _edit_config(trunc, lambda doc: doc.pop("weights_sha256"))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(trunc)

    future = _copy(d, tmp_path / "future")
    _edit_config(future, lambda doc: doc.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(future)

    enc = _copy(d, tmp_path / "enc")
    _edit_config(enc, lambda doc: doc["model"].update(encoder="mobilenet_v2"))
    with pytest.raises(CheckpointError, match="mobilenet_v2"):
        load_checkpoint(enc)

    k = _copy(d, tmp_path / "k")
    _edit_config(k, lambda doc: doc["model"].update(n_clusters=4))
    with pytest.raises(CheckpointError, match="K=3"):
        load_checkpoint(k)

    heads = _copy(d, tmp_path / "heads")
    def both(doc):
        doc["model"].update(n_clusters=4)
        doc["clusters"] = _clusters(4).to_json()
    _edit_config(heads, both)
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(heads)

    a1 = _copy(d, tmp_path / "a1")
    _edit_config(a1, lambda doc: doc["model"].update(mode="a1"))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(a1)

    missing = tmp_path / "missing_keys.pt"
    _, net, cfg = saved
    state = {k: v for k, v in net.state_dict().items() if "decoder" not in k}
    torch.save({"model": cfg.to_dict(), "state_dict": state, "clusters": _clusters().to_json()}, missing)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(missing)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(garbage)

    bad_json = _copy(d, tmp_path / "badjson")
    (bad_json / "config.json").write_text("{ truncated")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(bad_json)


def test_save_refuses_inconsistent_clusters(tmp_path, saved):
    _, net, cfg = saved
    with pytest.raises(ValueError, match="cluster model"):
        save_checkpoint(tmp_path / "x", net, cfg, None)
    with pytest.raises(ValueError, match="K=4"):
        save_checkpoint(tmp_path / "x", net, cfg, _clusters(4))


def test_imagenet_weights_offline_fall_back_with_a_warning(monkeypatch):
    # No cached weights and no network: random init plus a clear warning, no hang.
    monkeypatch.setattr(network_mod, "_network_reachable", lambda *a, **k: False)
    import huggingface_hub

    def not_cached(*a, **k):
        if k.get("local_files_only"):
            raise FileNotFoundError("not cached")
        raise AssertionError("must not try to download when offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", not_cached)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = build_model(ModelConfig(mode="a1", encoder_weights="imagenet", input_size=SIZE))
    assert any("random initialisation" in str(w.message) for w in caught)
    assert tuple(net.eval()(_x(1))[0].shape) == (1, 1, SIZE, SIZE)


def test_resolve_device():
    assert model_mod.resolve_device("cpu") == "cpu"
    assert model_mod.resolve_device("auto") in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError):
        model_mod.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            model_mod.resolve_device("cuda")

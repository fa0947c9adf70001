"""A model's checkpoint: a directory with its config, weights and ONNX graph.

A checkpoint directory holds

- ``config.json``: ``{"format": "napari-recist-seg", "format_version": 1, "model":
  ModelConfig, "clusters": {centers, mean, scale, feature_names} or null, "weights":
  file name, "weights_sha256": ..., "training": {...}}``;
- the weights as safetensors (optionally float16 to keep the shipped model small);
- optionally the network's ONNX graph (``graph-<sha>.onnx``), run without torch.

Saving is atomic: the weights go to a new content-addressed file, then ``config.json``
is replaced in one rename, then stale weight files are removed, so a crash or cancel
at any moment leaves the previous checkpoint loadable. A ``.pt`` / ``.pth`` file is
read with ``torch.load(weights_only=True)`` only: pickled objects are refused.

The names are re-exported by :mod:`napari_recist_seg.model`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from napari_recist_seg import checkpoint_checks
from napari_recist_seg.checkpoint_checks import CheckpointError
from napari_recist_seg.clusters import ClusterModel
from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.graph import GraphError, build_graph, read_graph, write_graph
from napari_recist_seg.network import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ModelConfig,
    build_model,
    resolve_device,
)
from napari_recist_seg.progress import InputError

if TYPE_CHECKING:  # a torch class, created on first use
    from napari_recist_seg.network import RecistSegNet

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_WEIGHTS_FILE",
    "add_graph",
    "load_checkpoint",
    "load_checkpoint_graph",
    "read_checkpoint_config",
    "save_checkpoint",
]

# Logged under the name these messages always had (``model``), so that logging set-ups
# and filters written for it keep working after the split.
logger = logging.getLogger("napari_recist_seg.model")

CONFIG_FILE = "config.json"
DEFAULT_WEIGHTS_FILE = "weights.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_mode() -> int:
    """Ordinary file permissions: temp files are created 0600, a model is shareable.

    (Not derived from ``os.umask``, which can only be read by changing it, racing
    with other threads.)
    """
    return 0o644


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def save_checkpoint(
    path: str | os.PathLike[str],
    model: Any,
    config: ModelConfig,
    clusters: ClusterModel | None = None,
    extra: Mapping[str, Any] | None = None,
    *,
    half: bool = False,
    graph: bool = True,
) -> Path:
    """Write a checkpoint directory atomically (the previous one stays loadable).

    Parameters
    ----------
    path : path
        The checkpoint directory (created if missing; other files in it are kept).
    model : torch.nn.Module
        The network (a ``DistributedDataParallel`` wrapper is unwrapped).
    config : ModelConfig
    clusters : ClusterModel, optional
        Required for A1+L (its K must equal ``config.n_clusters``).
    extra : mapping, optional
        JSON-serialisable training summary stored under ``"training"``.
    half : bool
        Store floating-point weights as float16 (halves the size; loading converts
        back to float32).
    graph : bool
        Also store the network's ONNX graph (``graph-<sha>.onnx``, named with its
        sha256 in ``config.json``), exported from the weights as stored and checked
        against PyTorch now, so that :class:`~napari_recist_seg.predict.Predictor`
        runs it with ONNX Runtime alone (no torch import, no export at load). If the
        export or the check fails, a warning is logged and the checkpoint is saved
        without it (loading then exports, as for old checkpoints).

    Returns
    -------
    Path
        The directory.
    """
    from safetensors.torch import save_file

    if config.has_aux:
        if clusters is None:
            raise ValueError("an A1+L checkpoint needs its cluster model")
        if clusters.k != config.n_clusters:
            raise ValueError(
                f"cluster model has K={clusters.k} but the model config says {config.n_clusters}"
            )
    module = getattr(model, "module", model)
    state = {}
    for k, v in module.state_dict().items():
        t = v.detach().to("cpu")
        if half and t.is_floating_point():
            t = t.half()
        state[k] = t.contiguous()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # Content-addressed weights: never overwrites the file the current config names.
    fd, tmp_name = tempfile.mkstemp(prefix=".weights.", suffix=".safetensors", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(state, str(tmp), metadata={"format": FORMAT_NAME})
        os.chmod(tmp, _file_mode())
        digest = _sha256(tmp)
        weights_name = f"weights-{digest[:16]}.safetensors"
        os.replace(tmp, out / weights_name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    doc = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "clusters": clusters.to_json() if clusters is not None else None,
        "weights": weights_name,
        "weights_sha256": digest,
        "weights_dtype": "float16" if half else "float32",
        "training": _jsonable(dict(extra or {})),
    }
    graph_name = _store_graph(out, state, config, digest, half) if graph else None
    if graph_name:
        doc.update(graph_name)
    atomic_write_text(out / CONFIG_FILE, json.dumps(doc, indent=2, allow_nan=False))
    with contextlib.suppress(OSError):
        os.chmod(out / CONFIG_FILE, _file_mode())
    # Only now is the old weights file unreferenced.
    for old in out.glob("weights-*.safetensors"):
        if old.name != weights_name:
            with contextlib.suppress(OSError):
                old.unlink()
    for old in [*out.glob("graph-*.onnx"), *out.glob("int8-*.onnx")]:
        # New weights: an INT8 graph of the old ones is stale (napari_recist_seg.quantize).
        if old.name != doc.get("graph"):
            with contextlib.suppress(OSError):
                old.unlink()
    return out


def _store_graph(
    out: Path, state: Mapping[str, Any], config: ModelConfig, weights_sha: str, half: bool
) -> dict[str, str] | None:
    """Export, check and write the ONNX graph of the weights as stored; config keys.

    The network is rebuilt from ``state`` (the saved tensors, float16 if ``half``) as
    :func:`load_checkpoint` would, so the graph computes what loading computes.
    """
    pre = config.preprocess
    try:
        net = build_model(config, pretrained=False)
        _check_state(state, net, config, str(out))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        data = build_graph(net.eval(), (pre.in_channels, pre.input_size, pre.input_size), half=half)
    except (GraphError, CheckpointError, ValueError, RuntimeError, ImportError) as exc:
        logger.warning("%s: saved without an ONNX graph (%s); loading will export it", out, exc)
        return None
    name, sha = write_graph(out, data)
    return {"graph": name, "graph_sha256": sha, "graph_weights_sha256": weights_sha}


#: The models shipped inside the package (``predict.DEFAULT_MODEL_DIR`` is one of them).
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent / "models"


def refuse_model_out(out: str | os.PathLike[str], init: str | os.PathLike[str] | None = None) -> None:
    """Refuse to write a model into the folder it starts from or into a shipped model:
    both would be replaced while (or before) being read, silently.

    Raises
    ------
    InputError
        ``out`` is ``init`` or lies under :data:`SHIPPED_MODELS_DIR`.

    Examples
    --------
    >>> refuse_model_out(SHIPPED_MODELS_DIR / "default")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    napari_recist_seg.progress.InputError: ... is a model shipped with napari-recist-seg: write the new model to a folder of your own
    """
    target = Path(out).expanduser().resolve()
    if init is not None and Path(init).expanduser().resolve() == target:
        raise InputError(f"--out {out} is the model it starts from (--init): write the new model to "
                         "another folder")
    if target == SHIPPED_MODELS_DIR or SHIPPED_MODELS_DIR in target.parents:
        raise InputError(f"{out} is a model shipped with napari-recist-seg: write the new model to a "
                         "folder of your own")


def read_checkpoint_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (no weights loaded)."""
    p = Path(path)
    cfg_path = p / CONFIG_FILE if p.is_dir() else p.with_name(CONFIG_FILE)
    if not cfg_path.is_file():
        raise CheckpointError(f"{p}: no {CONFIG_FILE} (not a napari-recist-seg checkpoint)")
    try:
        doc = checkpoint_checks.parse_config(cfg_path.read_text(encoding="utf-8"), cfg_path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: unreadable config ({exc})") from exc
    if not isinstance(doc, dict) or "model" not in doc:
        raise CheckpointError(f"{cfg_path}: not a napari-recist-seg checkpoint config")
    checkpoint_checks.check_format_version(doc.get("format_version", FORMAT_VERSION), FORMAT_VERSION, cfg_path)
    return doc


def _load_torch_file(path: Path) -> dict[str, Any]:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file contains pickled Python objects, which could run "
            "arbitrary code; only plain state dicts (weights_only) are loaded"
        ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read torch file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _check_state(state: Mapping[str, Any], module: Any, config: ModelConfig, where: str) -> None:
    import torch

    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    bad_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    if not (missing or unexpected or bad_shape):
        return
    hint = ""
    if any(k.startswith("net.classification_head") for k in missing + unexpected):
        hint = " (A1 / A1+L mode or number of clusters differs from the config)"
    elif missing or unexpected:
        hint = f" (weights do not match encoder {config.encoder!r})"
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys, e.g. {missing[:3]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:3]}")
    if bad_shape:
        parts.append(f"{len(bad_shape)} shape mismatches, e.g. {bad_shape[:2]}")
    raise CheckpointError(f"{where}: weights do not match the model config{hint}: " + "; ".join(parts))


def load_checkpoint(
    path: str | os.PathLike[str],
    device: str = "cpu",
) -> tuple[RecistSegNet, ModelConfig, ClusterModel | None]:
    """Load a checkpoint directory (or a ``.safetensors`` / ``.pt`` file).

    Accepted forms:

    - a directory written by :func:`save_checkpoint`;
    - a ``.safetensors`` or ``.pt`` / ``.pth`` state dict with a ``config.json`` next
      to it;
    - a ``.pt`` / ``.pth`` dict ``{"model": ModelConfig dict, "state_dict": ...,
      "clusters": {...}}`` of plain tensors / numbers / strings.

    ``.pt`` files are read with ``torch.load(weights_only=True)``: a file holding
    pickled objects is refused without running anything.

    Returns
    -------
    model : RecistSegNet
        In eval mode on ``device``.
    config : ModelConfig
    clusters : ClusterModel or None

    Raises
    ------
    CheckpointError
        Missing / corrupt / unsafe file, future format version, or weights that do not
        match the config (encoder, mode, K, shapes).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint")
    doc: dict[str, Any]
    if p.is_dir():
        doc = read_checkpoint_config(p)
        weights = checkpoint_checks.weights_path(p, doc.get("weights"), DEFAULT_WEIGHTS_FILE)
    else:
        weights = p
        doc = {}
    suffix = weights.suffix.lower()
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file missing")
    if suffix == ".safetensors":
        if not doc:
            doc = read_checkpoint_config(weights)
        expected_sha = doc.get("weights_sha256")
        if expected_sha and _sha256(weights) != expected_sha:
            raise CheckpointError(f"{weights}: checksum mismatch (file corrupt or replaced)")
        try:
            state = load_file(str(weights), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{weights}: corrupt safetensors file ({exc})") from exc
    elif suffix in (".pt", ".pth", ".ckpt", ".bin"):
        obj = _load_torch_file(weights)
        if "state_dict" in obj and "model" in obj:
            doc = {"model": obj["model"], "clusters": obj.get("clusters"),
                   "format_version": obj.get("format_version", FORMAT_VERSION)}
            state = obj["state_dict"]
        else:
            if not doc:
                doc = read_checkpoint_config(weights)
            state = obj
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{weights}: the state dict must map names to tensors")
    else:
        raise CheckpointError(
            f"{weights}: unknown checkpoint type {suffix or '(no suffix)'}; expected a "
            "checkpoint folder, .safetensors or .pt/.pth"
        )
    checkpoint_checks.check_weights(state, p)  # finite float weights
    config, clusters = _config_and_clusters(doc, p)
    try:
        model = build_model(config, pretrained=False)
    except ValueError as exc:
        raise CheckpointError(f"{p}: {exc}") from exc
    _check_state(state, model, config, str(p))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    return model.to(resolve_device(device)), config, clusters


def _config_and_clusters(doc: Mapping[str, Any], p: Path) -> tuple[ModelConfig, ClusterModel | None]:
    """The model config and cluster model of a parsed config, checked together."""
    checkpoint_checks.check_config(doc, FORMAT_VERSION, p)  # types, ranges, nesting
    version = doc.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format version {version} is newer than supported ({FORMAT_VERSION})"
        )
    config = ModelConfig.from_dict(doc["model"])
    clusters = None
    if doc.get("clusters") is not None:
        try:
            clusters = ClusterModel.from_arrays(doc["clusters"])
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{p}: invalid cluster model ({exc})") from exc
    if config.has_aux:
        if clusters is None:
            raise CheckpointError(f"{p}: A1+L checkpoint without its cluster model")
        if clusters.k != config.n_clusters:
            raise CheckpointError(
                f"{p}: cluster model has K={clusters.k} but the model has "
                f"{config.n_clusters} cluster outputs"
            )
    return config, clusters


def load_checkpoint_graph(
    path: str | os.PathLike[str],
) -> tuple[bytes, ModelConfig, ClusterModel | None] | None:
    """A checkpoint folder's stored ONNX graph with its config, without torch.

    Returns
    -------
    (graph, config, clusters) or None
        ``None`` when ``path`` is not a folder with a usable stored graph (a file, an
        old checkpoint, or a graph that fails its checksum: see
        :func:`~napari_recist_seg.graph.read_graph`); then use :func:`load_checkpoint`.

    Raises
    ------
    CheckpointError
        Missing or invalid config, as :func:`load_checkpoint`.
    """
    p = Path(path)
    if not p.is_dir():
        if not p.exists():
            raise CheckpointError(f"{p}: no such checkpoint")
        return None
    doc = read_checkpoint_config(p)
    # The weights must live in the folder even when the graph is used instead.
    checkpoint_checks.weights_path(p, doc.get("weights"), DEFAULT_WEIGHTS_FILE)
    data = read_graph(p, doc)
    if data is None:
        return None
    config, clusters = _config_and_clusters(doc, p)
    return data, config, clusters


def add_graph(path: str | os.PathLike[str]) -> str:
    """Store the ONNX graph in an existing checkpoint folder (weights unchanged).

    For checkpoints saved before graphs were stored: afterwards
    :class:`~napari_recist_seg.predict.Predictor` loads them without torch.
    ``config.json`` gains ``graph``, ``graph_sha256`` and ``graph_weights_sha256``
    (replaced atomically); every other entry is kept as it was.

    Returns
    -------
    str
        The graph's file name.

    Raises
    ------
    CheckpointError
        Not a checkpoint folder, or its graph cannot be exported / does not match.
    """
    from safetensors.torch import load_file

    p = Path(path)
    doc = read_checkpoint_config(p)
    load_checkpoint(p)  # every check of a normal load (checksum, shapes, clusters)
    weights = p / Path(str(doc.get("weights") or DEFAULT_WEIGHTS_FILE)).name
    config, _ = _config_and_clusters(doc, p)
    half = doc.get("weights_dtype") == "float16"
    keys = _store_graph(p, load_file(str(weights), device="cpu"), config, str(doc.get("weights_sha256")), half)
    if keys is None:
        raise CheckpointError(f"{p}: the ONNX graph could not be exported or checked")
    doc.update(keys)
    atomic_write_text(p / CONFIG_FILE, json.dumps(doc, indent=2, allow_nan=False))
    for old in p.glob("graph-*.onnx"):
        if old.name != keys["graph"]:
            with contextlib.suppress(OSError):
                old.unlink()
    return keys["graph"]

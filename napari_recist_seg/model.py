"""The multi-task network (DeepLabV3+ with a RECIST-cluster head) and its checkpoint.

Network: ``smp.DeepLabV3Plus`` with one segmentation output and, for A1+L, an
auxiliary classification head on the encoder's deepest features that predicts the
RECIST shape cluster (Chu et al., MIDL 2021). :class:`RecistSegNet` wraps it so that
``forward`` always returns ``(seg_logits, cluster_logits_or_None)``.

Checkpoint: a directory with

- ``config.json``: ``{"format": "napari-recist-seg", "format_version": 1, "model":
  ModelConfig, "clusters": {centers, mean, scale, feature_names} or null, "weights":
  file name, "weights_sha256": ..., "training": {...}}``;
- the weights as safetensors (optionally float16 to keep the shipped model small).

Saving is atomic: the weights go to a new content-addressed file, then ``config.json``
is replaced in one rename, then stale weight files are removed, so a crash or cancel
at any moment leaves the previous checkpoint loadable. A ``.pt`` / ``.pth`` file is
read with ``torch.load(weights_only=True)`` only: pickled objects are refused.

Examples
--------
>>> import torch
>>> cfg = ModelConfig(encoder="resnet18", mode="a1l", n_clusters=3, input_size=64)
>>> net = build_model(cfg).eval()
>>> seg, aux = net(torch.zeros(2, cfg.in_channels, 64, 64))
>>> tuple(seg.shape), tuple(aux.shape)
((2, 1, 64, 64), (2, 3))
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import socket
import tempfile
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from napari_recist_seg import checkpoint_checks
# CheckpointError lives with the checks (a lower module) so they can raise it.
from napari_recist_seg.checkpoint_checks import CheckpointError
from napari_recist_seg.clusters import ClusterModel
from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.preprocess import (
    CT_SOFT_TISSUE_WINDOW,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
)

__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "CheckpointError",
    "ModelConfig",
    "RecistSegNet",
    "build_model",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
    "load_checkpoint_graph",
    "add_graph",
    "resolve_device",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "napari-recist-seg"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
DEFAULT_WEIGHTS_FILE = "weights.safetensors"
# How long to wait when probing whether pretrained weights can be downloaded.
NETWORK_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and preprocessing of a model (``config.json["model"]``).

    Parameters
    ----------
    encoder : str
        Any segmentation-models-pytorch encoder name (``resnet18`` by default: p50
        about 21 ms per lesion at 128 px on a 2-core CPU).
    encoder_weights : str, optional
        ``"imagenet"`` to start from pretrained weights when available (cached or
        downloadable); random initialisation otherwise, with a warning.
    mode : {"a1", "a1l"}
        A1 = segmentation only; A1+L = plus the RECIST-cluster head.
    n_clusters : int
        Classes of the cluster head (A1+L; 0 for A1).
    decoder_channels, encoder_output_stride, aux_dropout
        DeepLabV3+ decoder width, encoder output stride (8 or 16), dropout of the head.
    threshold : float
        Probability above which a pixel is lesion.
    input_size, crop_factor, min_crop, recist_channel, pad_mode, ct_window, mean, std
        The crop rule; see :class:`~napari_recist_seg.preprocess.PreprocessConfig`.
    """

    encoder: str = "resnet18"
    encoder_weights: str | None = None
    mode: str = "a1l"
    n_clusters: int = 0
    decoder_channels: int = 128
    encoder_output_stride: int = 16
    aux_dropout: float = 0.2
    threshold: float = 0.5
    input_size: int = 128
    crop_factor: float = 2.0
    min_crop: int = 32
    recist_channel: bool = True
    pad_mode: str = "edge"
    ct_window: tuple[float, float] = CT_SOFT_TISSUE_WINDOW
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.mode not in ("a1", "a1l"):
            raise ValueError(f"mode must be 'a1' or 'a1l', got {self.mode!r}")
        k = int(self.n_clusters)
        if self.mode == "a1l" and k < 2:
            raise ValueError(f"A1+L needs at least 2 clusters, got n_clusters={k}")
        if self.mode == "a1":
            k = 0
        object.__setattr__(self, "n_clusters", k)
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.encoder_output_stride not in (8, 16):
            raise ValueError(
                f"encoder_output_stride must be 8 or 16, got {self.encoder_output_stride}"
            )
        # Validates the crop settings.
        self.preprocess  # noqa: B018

    @property
    def preprocess(self) -> PreprocessConfig:
        """The crop rule as a :class:`PreprocessConfig`."""
        return PreprocessConfig.from_dict(asdict(self))

    @property
    def in_channels(self) -> int:
        return 4 if self.recist_channel else 3

    @property
    def has_aux(self) -> bool:
        return self.mode == "a1l"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ct_window", "mean", "std"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Build from ``config.json["model"]``.

        Raises
        ------
        CheckpointError
            Newer format version or invalid values.
        """
        if not isinstance(d, Mapping):
            raise CheckpointError("the model config is not a JSON object")
        version = int(d.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format version {version} is newer than this version of "
                f"napari-recist-seg supports ({FORMAT_VERSION}); upgrade the package"
            )
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid model config: {exc}") from exc


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if available, else ``"mps"``, else ``"cpu"``.

    Raises
    ------
    ValueError
        If the requested device is not available on this machine.
    """
    import torch

    dev = (device or "auto").lower()
    if dev == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dev == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' requested but Apple MPS is not available")
    if not (dev == "cpu" or dev == "mps" or dev.startswith("cuda")):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    return dev


# -- network ----------------------------------------------------------------------
# torch is imported only when a network is built, trained or loaded with PyTorch:
# reading a checkpoint's config and running its stored ONNX graph need no torch.
@functools.cache
def _net_class() -> type:
    import torch

    class RecistSegNet(torch.nn.Module):
        """DeepLabV3+ whose ``forward`` returns ``(seg_logits, cluster_logits | None)``.

        ``seg_logits`` is ``(B, 1, S, S)``; ``cluster_logits`` is ``(B, K)`` for A1+L and
        ``None`` for A1.
        """

        def __init__(self, config: ModelConfig, net: torch.nn.Module) -> None:
            super().__init__()
            self.config = config
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            out = self.net(x)
            if isinstance(out, (tuple, list)):
                return out[0], out[1]
            return out, None

    RecistSegNet.__qualname__ = "RecistSegNet"
    return RecistSegNet


def __getattr__(name: str) -> Any:
    # ``RecistSegNet`` (a torch.nn.Module subclass) is created on first use.
    if name == "RecistSegNet":
        return _net_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _network_reachable(host: str = "huggingface.co", port: int = 443) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, port), timeout=NETWORK_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _pretrained_state(encoder: str, weights: str) -> dict | None:
    """The encoder's pretrained state dict if cached or quickly downloadable, else None."""
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file
    from segmentation_models_pytorch.encoders import encoders

    if encoder not in encoders:
        return None
    settings = encoders[encoder]["pretrained_settings"].get(weights)
    if settings is None:
        raise ValueError(
            f"encoder {encoder!r} has no {weights!r} weights; available: "
            f"{sorted(encoders[encoder]['pretrained_settings'])}"
        )
    kw = {"repo_id": settings["repo_id"], "filename": "model.safetensors",
          "revision": settings["revision"]}
    try:
        path = hf_hub_download(**kw, local_files_only=True)
    except Exception:
        if not _network_reachable():
            return None
        try:
            path = hf_hub_download(**kw, etag_timeout=NETWORK_PROBE_TIMEOUT_S)
        except Exception:
            return None
    return load_file(path, device="cpu")


def build_model(config: ModelConfig, *, pretrained: bool = True) -> RecistSegNet:
    """Build the network for ``config`` (random or ImageNet-initialised encoder).

    Parameters
    ----------
    config : ModelConfig
    pretrained : bool
        Load ``config.encoder_weights`` when set (``False`` when the weights will be
        overwritten by a checkpoint anyway). When the weights are neither cached nor
        downloadable (offline), a ``UserWarning`` says so and the encoder starts from
        random initialisation; this never blocks for more than a few seconds.
    """
    import segmentation_models_pytorch as smp

    aux = {"classes": config.n_clusters, "dropout": config.aux_dropout} if config.has_aux else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            net = smp.DeepLabV3Plus(
                encoder_name=config.encoder,
                encoder_weights=None,
                encoder_output_stride=config.encoder_output_stride,
                decoder_channels=config.decoder_channels,
                in_channels=3,
                classes=1,
                aux_params=aux,
            )
        except KeyError as exc:
            raise ValueError(f"unknown encoder {config.encoder!r}: {exc}") from exc
    loaded = False
    if pretrained and config.encoder_weights:
        state = None
        if config.encoder.startswith(("tu-", "timm-")):
            warnings.warn(
                f"pretrained weights for {config.encoder!r} are not supported here; "
                "using random initialisation",
                stacklevel=2,
            )
        else:
            state = _pretrained_state(config.encoder, config.encoder_weights)
            if state is None:
                warnings.warn(
                    f"{config.encoder_weights} weights for encoder {config.encoder!r} are "
                    "not cached and cannot be downloaded (offline?); the encoder starts "
                    "from random initialisation",
                    stacklevel=2,
                )
        if state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            net.encoder.load_state_dict(state, strict=False)
            loaded = True
    if config.in_channels != 3:
        net.encoder.set_in_channels(config.in_channels, pretrained=loaded)
    return _net_class()(config, net)


# -- checkpoint -----------------------------------------------------------------
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
    for old in out.glob("graph-*.onnx"):
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
    from napari_recist_seg.graph import GraphError, build_graph, write_graph

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
    import pickle

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
    from napari_recist_seg.graph import read_graph

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

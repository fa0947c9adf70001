"""The multi-task network (DeepLabV3+ with a RECIST-cluster head) and its config.

Network: ``smp.DeepLabV3Plus`` with one segmentation output and, for A1+L, an
auxiliary classification head on the encoder's deepest features that predicts the
RECIST shape cluster (Chu et al., MIDL 2021). :class:`RecistSegNet` wraps it so that
``forward`` always returns ``(seg_logits, cluster_logits_or_None)``.

:class:`ModelConfig` is what a checkpoint's ``config.json["model"]`` holds; the
checkpoint itself (saving, loading, the stored graph) is :mod:`napari_recist_seg.checkpoint`.
Both are re-exported by :mod:`napari_recist_seg.model`.
"""

from __future__ import annotations

import functools
import os
import socket
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

# CheckpointError lives with the checks (a lower module) so they can raise it.
from napari_recist_seg.checkpoint_checks import CheckpointError
from napari_recist_seg.preprocess import (
    CT_SOFT_TISSUE_WINDOW,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PreprocessConfig,
)

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelConfig",
    "RecistSegNet",  # noqa: F822 - made on first use (module __getattr__)
    "build_model",
    "resolve_device",
]

FORMAT_NAME = "napari-recist-seg"
FORMAT_VERSION = 1
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
    logit_bias, boundary_offset, recist_fit, grabcut_blend : float
        Calibration to a clinic's annotation style, learned from its curated masks
        (:mod:`napari_recist_seg.calibration`; 0 = none, the default, and what every
        checkpoint without the keys gets): ``logit_bias`` is added to the network's
        logits before the threshold, ``boundary_offset`` moves the final mask's
        outline outwards (> 0) or inwards by that fraction of the RECIST long axis,
        ``recist_fit`` moves it by that fraction of the gap between the mask's
        measured axes and the drawn ones (:func:`~napari_recist_seg.refine.axis_gap`),
        ``grabcut_blend`` (0..1) blends the refined mask with GrabCut from the same
        RECIST before the outline moves (:mod:`~napari_recist_seg.grabcut_blend`).
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
    logit_bias: float = 0.0
    boundary_offset: float = 0.0
    recist_fit: float = 0.0
    grabcut_blend: float = 0.0
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


def build_model(config: ModelConfig, *, pretrained: bool = True) -> RecistSegNet:  # noqa: F821 - see __getattr__
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

"""The multi-task network (DeepLabV3+ with a RECIST-cluster head) and its checkpoint.

This module gathers the public names of two rooms: :mod:`napari_recist_seg.network`
(:class:`ModelConfig`, :func:`build_model`, :class:`RecistSegNet`, :func:`resolve_device`)
and :mod:`napari_recist_seg.checkpoint` (saving, loading, the stored ONNX graph).
``from napari_recist_seg.model import X`` keeps working for each of them.

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

from typing import Any

from napari_recist_seg.checkpoint import (
    CONFIG_FILE,
    DEFAULT_WEIGHTS_FILE,
    add_graph,
    load_checkpoint,
    load_checkpoint_graph,
    read_checkpoint_config,
    save_checkpoint,
)
from napari_recist_seg.checkpoint_checks import CheckpointError
from napari_recist_seg.network import (
    FORMAT_NAME,
    FORMAT_VERSION,
    NETWORK_PROBE_TIMEOUT_S,
    ModelConfig,
    _net_class,
    build_model,
    resolve_device,
)

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_WEIGHTS_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "NETWORK_PROBE_TIMEOUT_S",
    "CheckpointError",
    "ModelConfig",
    "RecistSegNet",  # noqa: F822 - made on first use (module __getattr__)
    "build_model",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
    "load_checkpoint_graph",
    "add_graph",
    "resolve_device",
]


def __getattr__(name: str) -> Any:
    # ``RecistSegNet`` (a torch.nn.Module subclass) is created on first use.
    if name == "RecistSegNet":
        return _net_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

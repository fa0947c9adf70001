"""The predictor on a checkpoint's stored ONNX graph: ONNX Runtime alone, no torch.

:func:`_graph_predictor` is the fast path of
:meth:`~napari_recist_seg.predict.Predictor.load`; :func:`_graph_device` decides
where the graph may run (``None``: use PyTorch).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

from napari_recist_seg.runtime import runner_from_graph

logger = logging.getLogger("napari_recist_seg.predict")


def _nvidia_driver_present() -> bool:
    """An NVIDIA driver is loaded (Linux), so ``auto`` may mean CUDA; checked without torch."""
    return os.path.exists("/proc/driver/nvidia/version")


def _graph_device(device: str) -> str | None:
    """The device a stored ONNX graph runs on for ``device``; ``None``: use PyTorch.

    ``auto`` is CPU unless torch would pick a GPU: an NVIDIA driver (CUDA, via ONNX
    Runtime's CUDA provider when present) or macOS (MPS), both decided by PyTorch.
    """
    dev = (device or "auto").lower()
    if dev == "auto":
        if sys.platform == "darwin" or _nvidia_driver_present():
            dev = "cuda" if _nvidia_driver_present() else "mps"
        else:
            return "cpu"
    if dev.startswith("cuda"):
        if importlib.util.find_spec("onnxruntime") is None:
            return None
        import onnxruntime as ort

        return dev if "CUDAExecutionProvider" in ort.get_available_providers() else None
    return "cpu" if dev == "cpu" else None


def _graph_predictor(cls: type, path: Path, device: str, kwargs: dict,
                     load_checkpoint_graph: Any) -> Any:
    """A Predictor running the checkpoint's stored ONNX graph (no torch), or None.

    ``load_checkpoint_graph`` is :func:`napari_recist_seg.model.load_checkpoint_graph`
    (the caller has imported that module; it is slow to import)."""
    if kwargs.get("optimize") is False or kwargs.get("backend") not in (None, "auto", "onnxruntime"):
        return None
    dev = _graph_device(device)
    if dev is None:
        return None
    stored = load_checkpoint_graph(path)
    if stored is None:
        return None
    graph, config, clusters = stored
    rest = {k: v for k, v in kwargs.items() if k not in ("optimize", "backend")}
    try:
        runner = runner_from_graph(graph, dev)
    except Exception as exc:  # noqa: BLE001 - e.g. an ONNX Runtime too old for the graph
        logger.warning("%s: cannot run the stored graph (%s); using PyTorch", path, exc)
        return None
    return cls(None, config, clusters, dev, path=path, runner=runner, **rest)

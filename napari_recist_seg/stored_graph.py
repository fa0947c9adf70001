"""The predictor on a checkpoint's stored ONNX graph: ONNX Runtime alone, no torch.

:func:`_graph_predictor` is the fast path of
:meth:`~napari_recist_seg.predict.Predictor.load`; :func:`_graph_device` decides
where the graph may run (``None``: use PyTorch).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from napari_recist_seg.quantize import read_int8_graph
from napari_recist_seg.runtime import runner_from_graph

logger = logging.getLogger("napari_recist_seg.predict")

#: ``Predictor.load(..., precision=)``: see :func:`_graph_predictor`.
PRECISIONS = ("auto", "int8", "fp32")


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


def runs_on_cpu(device: str) -> bool:
    """True when a checkpoint's stored graph runs on the CPU for ``device`` (``"auto"``
    on a machine with no GPU for torch to pick)."""
    return _graph_device(device) == "cpu"


def check_precision(precision: str) -> str:
    """``precision`` lower-cased, or ``ValueError`` naming the choices."""
    p = str(precision or "auto").lower()
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return p


def _int8_graph(path: Path, dev: str, precision: str) -> bytes | None:
    """The checkpoint's INT8 graph where ``precision`` asks for it and it runs (CPU).

    ``"int8"`` without one is an error (one line); ``"auto"`` falls back to float."""
    if precision == "fp32":
        return None
    data = None
    if dev == "cpu":  # the config was read and checked with the float graph
        data = read_int8_graph(path, json.loads((path / "config.json").read_text()))
    if data is None and precision == "int8":
        where = "this checkpoint has no valid INT8 graph" if dev == "cpu" else f"INT8 runs on the CPU only, not {dev}"
        raise ValueError(f"{path}: {where}; use precision 'fp32' or 'auto'")
    return data


def _graph_predictor(cls: type, path: Path, device: str, kwargs: dict,
                     load_checkpoint_graph: Any) -> Any:
    """A Predictor running the checkpoint's stored ONNX graph (no torch), or None.

    ``load_checkpoint_graph`` is :func:`napari_recist_seg.model.load_checkpoint_graph`
    (the caller has imported that module; it is slow to import). ``kwargs`` are
    :meth:`Predictor.load`'s; their ``precision`` and ``threads`` are taken out of them
    here (the PyTorch path has neither). ``precision``: ``"auto"`` (default) runs the
    INT8 graph on CPU when the checkpoint stores one, ``"int8"`` insists on it,
    ``"fp32"`` runs the float graph; ``threads``: ONNX Runtime's intra-op threads."""
    precision = check_precision(kwargs.pop("precision", "auto"))
    threads = kwargs.pop("threads", None)  # ONNX Runtime intra-op threads (default: the cores)
    if kwargs.get("optimize") is False or kwargs.get("backend") not in (None, "auto", "onnxruntime"):
        if precision == "int8":
            raise ValueError("precision 'int8' runs the stored ONNX graph only (no PyTorch backend)")
        return None
    dev = _graph_device(device)
    stored = None if dev is None else load_checkpoint_graph(path)
    if stored is None:
        if precision == "int8":
            raise ValueError(f"{path}: no stored ONNX graph for {device}; precision 'int8' needs one")
        return None
    graph, config, clusters = stored
    runner = None
    int8 = _int8_graph(path, dev, precision)
    if int8 is not None:
        try:
            runner = runner_from_graph(int8, dev, threads, precision="int8")
        except Exception as exc:  # noqa: BLE001 - e.g. an ONNX Runtime without its kernels
            if precision == "int8":
                raise ValueError(f"{path}: cannot run the INT8 graph ({exc})") from None
            logger.warning("%s: cannot run the INT8 graph (%s); using the float graph", path, exc)
    if runner is None:
        try:
            runner = runner_from_graph(graph, dev, threads)
        except Exception as exc:  # noqa: BLE001 - e.g. an ONNX Runtime too old for the graph
            logger.warning("%s: cannot run the stored graph (%s); using PyTorch", path, exc)
            return None
    rest = {k: v for k, v in kwargs.items() if k not in ("optimize", "backend")}
    return cls(None, config, clusters, dev, path=path, runner=runner, **rest)

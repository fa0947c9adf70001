"""The network's ONNX graph, stored in the checkpoint so inference needs no torch.

:func:`build_graph` exports a network (the weights exactly as stored in the
checkpoint) to ONNX and checks ONNX Runtime against PyTorch on a fixed batch before
it is accepted; :func:`write_graph` stores it content-addressed (``graph-<sha>.onnx``,
its sha256 goes to ``config.json``); :func:`read_graph` returns the bytes of a
checkpoint's graph after checking that hash (and that it was exported from the
weights the config names), or ``None`` so the caller falls back to exporting.

Only :func:`build_graph` imports torch (and ``onnx``); reading needs neither.

Float16 checkpoints keep a graph of about their own size: the weights go into the
graph as float16 with a ``Cast`` to float32 in front (exact: those weights were float16
to begin with), which ONNX Runtime folds into float32 constants when the session is
created (no cost per call).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# As a module, not its names: tests (and callers) may replace a runtime helper.
from napari_recist_seg import runtime

__all__ = ["GraphError", "build_graph", "read_graph", "read_verified", "write_graph"]

logger = logging.getLogger(__name__)

GRAPH_PREFIX = "graph-"
GRAPH_SUFFIX = ".onnx"
OPSET = 17
# ONNX Runtime must reproduce PyTorch this closely on the check batch (logits).
PARITY_ATOL = 1e-3


class GraphError(RuntimeError):
    """The network could not be exported, or ONNX Runtime does not reproduce it."""


def check_batch(input_shape: tuple[int, int, int]) -> np.ndarray:
    """The fixed batch of two the graph is checked on (own RNG: seeds untouched)."""
    return np.random.default_rng(0).standard_normal((2, *input_shape)).astype(np.float32)


def _export(model: Any, example: np.ndarray, has_aux: bool) -> bytes:
    import torch

    net = runtime._traceable(model, has_aux)
    names = ["seg", "aux"] if has_aux else ["seg"]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        # No constant folding: batch norms stay separate (ONNX Runtime fuses them when
        # the session starts), so the stored weights are the checkpoint's own and a
        # float16 checkpoint's weights stay exactly float16.
        torch.onnx.export(
            net, (torch.from_numpy(example[:1]),), buf, dynamo=False,
            input_names=["x"], output_names=names, opset_version=OPSET,
            dynamic_axes={n: {0: "batch"} for n in ["x", *names]},
            do_constant_folding=False,
        )
    return buf.getvalue()


def _halve(graph: bytes) -> bytes:
    """Store float32 initializers that are exactly float16 as float16 + ``Cast``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(graph)
    inits, casts = [], []
    for init in proto.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32 and a.size >= 16 and np.array_equal(
            a.astype(np.float16).astype(np.float32), a
        ):
            half = numpy_helper.from_array(a.astype(np.float16), init.name + "__f16")
            inits.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        else:
            inits.append(init)
    if not casts:
        return graph
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(casts + nodes)
    return proto.SerializeToString()


def build_graph(model: Any, input_shape: tuple[int, int, int], *, half: bool = False) -> bytes:
    """Export ``model`` (CPU, eval mode) and check ONNX Runtime against PyTorch.

    Parameters
    ----------
    model : torch.nn.Module
        Returns ``(seg, aux | None)``; its weights must be those stored on disk.
    input_shape : (C, S, S)
    half : bool
        The weights are float16 values: store them as float16 in the graph.

    Raises
    ------
    GraphError
        Export failed, or the graph's logits differ from PyTorch's by more than
        ``PARITY_ATOL`` on the check batch.
    """
    x = check_batch(input_shape)
    ref = runtime._eager(model, "cpu")(x)
    try:
        graph = _export(model, x, ref[1] is not None)
        if half:
            graph = _halve(graph)
        ok = runtime._agrees(runtime.onnx_session_runner(graph, threads=None), ref, x)
    except Exception as exc:  # noqa: BLE001 - any exporter / runtime failure
        raise GraphError(f"ONNX export failed ({type(exc).__name__}: {exc})") from exc
    if not ok:
        raise GraphError(f"ONNX Runtime differs from PyTorch by more than {PARITY_ATOL}")
    return graph


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_graph(out: Path, graph: bytes, prefix: str = GRAPH_PREFIX) -> tuple[str, str]:
    """Write ``graph`` into checkpoint folder ``out`` as ``<prefix><sha16>.onnx``.

    Atomic (temp file + rename) and content-addressed, so the file the current
    config names is never overwritten. Returns ``(file name, sha256)``.
    """
    digest = _sha256_bytes(graph)
    name = f"{prefix}{digest[:16]}{GRAPH_SUFFIX}"
    fd, tmp_name = tempfile.mkstemp(prefix=".graph.", suffix=GRAPH_SUFFIX, dir=out)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(graph)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return name, digest



def read_verified(path: Path, sha256: object, what: str, fallback: str) -> bytes | None:
    """The bytes of ``path`` if their sha256 is ``sha256``, else ``None`` with a warning
    naming ``what`` and the ``fallback`` taken (a stored graph is never trusted blind)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        logger.warning("%s: %s unreadable (%s); %s", path, what, exc, fallback)
        return None
    if _sha256_bytes(data) != sha256:
        logger.warning("%s: %s checksum mismatch; %s", path, what, fallback)
        return None
    return data

def read_graph(folder: Path, doc: Mapping[str, Any]) -> bytes | None:
    """The checked graph of a checkpoint folder, or ``None`` (then export as before).

    ``None`` when the config names no graph, or (with a logged warning) when the
    file is missing, its sha256 differs from ``graph_sha256``, or it was exported
    from other weights than the config's ``weights_sha256``.
    """
    name = doc.get("graph")
    if not name:
        return None
    path = folder / Path(str(name)).name
    if (doc.get("graph_weights_sha256") or None) != (doc.get("weights_sha256") or None):
        logger.warning("%s: the stored graph belongs to other weights; exporting again", path)
        return None
    data = read_verified(path, doc.get("graph_sha256"), "stored graph", "exporting again")
    if data is None:
        return None
    return data

"""An INT8 copy of a checkpoint's stored ONNX graph, for fast CPU inference.

:func:`build_int8_graph` quantises the float graph statically with ONNX Runtime
(QDQ, weights int8 per output channel with a 7-bit range, activations uint8 with
min/max ranges from calibration inputs) and accepts it only if its masks agree with the
float graph's on check inputs (:data:`MIN_MASK_DICE`). :func:`add_int8_graph` stores it
in a checkpoint folder beside the float graph, content-addressed like it
(``int8-<sha>.onnx``; ``config.json`` gains ``int8_graph``, ``int8_graph_sha256`` and
``int8_graph_of``, the float graph's sha256); :func:`read_int8_graph` returns it after
checking both hashes, or ``None`` (then the float graph runs).

Kept in float: the mask head (the last convolution and its upsampling, which
produce the logits the thresholds cut; 3% of the compute). Chosen on the default
model's validation ids (``benchmarks/README.md``): quantising the head too gave a
mean Dice of the final masks to the float masks of 0.9951; keeping the first
convolution in float as well 0.9965, at 40% more CPU time per lesion.

The weights' 7-bit range avoids the int16 saturation of ONNX Runtime's uint8 x int8
kernels on x86 CPUs without VNNI, so the same graph gives the same masks there.

Building needs ``onnxruntime.quantization`` and ``onnx``; reading needs neither (and no
torch). Calibration inputs must come from training images, never from the ids the
model is evaluated on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

# As modules: tests (and callers) may replace a helper.
from napari_recist_seg import graph as graph_io
from napari_recist_seg import runtime
from napari_recist_seg.data.atomic import atomic_write_text

__all__ = ["MIN_MASK_DICE", "add_int8_graph", "build_int8_graph", "carry_int8_graph", "int8_mask_dice",
           "read_int8_graph"]

logger = logging.getLogger(__name__)

INT8_PREFIX = "int8-"
#: The INT8 graph is stored only if its masks (logits > 0) on the check inputs have
#: at least this mean Dice to the float graph's.
MIN_MASK_DICE = 0.99
_CALIBRATION_BATCH = 8


def _float_ends(model: Any) -> list[str]:
    """Names of the nodes kept in float: the mask head, from the last Conv before the
    ``seg`` output to it."""
    producer = {out: n for n in model.graph.node for out in n.output}
    keep: list[str] = []
    node = producer.get("seg")
    while node is not None:
        keep.append(node.name)
        if node.op_type == "Conv":
            break
        node = producer.get(node.input[0])
    return keep


def int8_mask_dice(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Dice of the masks ``logits > 0`` of two ``(N, S, S)`` logit batches, per input
    (1 where both are empty).

    Examples
    --------
    >>> a = np.full((2, 4, 4), -1.0); a[:, :2] = 1.0
    >>> b = a.copy(); b[1, :, :] = 1.0
    >>> int8_mask_dice(a, b).round(3).tolist()
    [1.0, 0.667]
    """
    a, b = reference > 0, other > 0
    inter = (a & b).sum(axis=(1, 2))
    total = a.sum(axis=(1, 2)) + b.sum(axis=(1, 2))
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def _quantize(graph: bytes, calibration: np.ndarray, work: Path) -> bytes:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, pre, out = work / "float.onnx", work / "pre.onnx", work / "int8.onnx"
    src.write_bytes(graph)
    # Shape inference and the float graph's own fusions (batch norms into convs) first.
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            # Whole batches only: the calibrator stacks them.
            n = len(calibration) // _CALIBRATION_BATCH * _CALIBRATION_BATCH
            self.chunks = iter(calibration[i : i + _CALIBRATION_BATCH]
                               for i in range(0, n, _CALIBRATION_BATCH))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.chunks, None)
            return None if x is None else {"x": np.ascontiguousarray(x, np.float32)}

    quantize_static(
        str(pre), str(out), Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=_float_ends(onnx.load(str(pre))),
        extra_options={"CalibMovingAverage": True},
    )
    return out.read_bytes()


def build_int8_graph(graph: bytes, calibration: np.ndarray, check: np.ndarray) -> bytes:
    """The INT8 graph of ``graph``, calibrated on ``calibration`` and checked on ``check``.

    Parameters
    ----------
    graph : bytes
        The float ONNX graph (a checkpoint's stored graph).
    calibration : np.ndarray
        ``(N, C, S, S)`` float32 network inputs of training images (N >= 8).
    check : np.ndarray
        Other inputs, not used for calibration, on which the masks must agree.

    Raises
    ------
    GraphError
        Quantisation failed, or the mean mask Dice to the float graph on ``check`` is
        below :data:`MIN_MASK_DICE`.
    """
    if len(calibration) < _CALIBRATION_BATCH or len(check) == 0:
        raise graph_io.GraphError(f"need at least {_CALIBRATION_BATCH} calibration and 1 check input")
    try:
        with tempfile.TemporaryDirectory(prefix="recist_int8_") as tmp:
            data = _quantize(graph, calibration, Path(tmp))
        ref = runtime.onnx_session_runner(graph, threads=None)(check)[0]
        got = runtime.onnx_session_runner(data, threads=None)(check)[0]
    except Exception as exc:  # noqa: BLE001 - any quantiser / runtime failure
        raise graph_io.GraphError(f"INT8 quantisation failed ({type(exc).__name__}: {exc})") from exc
    dice = float(np.mean(int8_mask_dice(ref, got)))
    if dice < MIN_MASK_DICE:
        raise graph_io.GraphError(f"INT8 masks differ from the float graph's (mean Dice {dice:.4f} < {MIN_MASK_DICE})")
    return data


def add_int8_graph(folder: str | Path, calibration: np.ndarray, check: np.ndarray) -> str:
    """Build (:func:`build_int8_graph`) and store the INT8 graph of a checkpoint folder.

    The folder's float graph must be stored and valid. ``config.json`` is replaced
    atomically with the three ``int8_*`` keys added, every other entry kept; an older
    INT8 graph file is removed once unreferenced. Returns the file name.

    Raises
    ------
    GraphError
        No valid float graph, or quantisation / its check failed (nothing written).
    """
    p = Path(folder)
    doc = json.loads((p / "config.json").read_text())
    graph = graph_io.read_graph(p, doc)
    if graph is None:
        raise graph_io.GraphError(f"{p}: no valid stored ONNX graph to quantise (add it first)")
    data = build_int8_graph(graph, calibration, check)
    name, sha = graph_io.write_graph(p, data, prefix=INT8_PREFIX)
    doc.update(int8_graph=name, int8_graph_sha256=sha, int8_graph_of=doc["graph_sha256"])
    atomic_write_text(p / "config.json", json.dumps(doc, indent=2, allow_nan=False))
    for old in p.glob(f"{INT8_PREFIX}*{graph_io.GRAPH_SUFFIX}"):
        if old.name != name:
            with contextlib.suppress(OSError):
                old.unlink()
    return name


def read_int8_graph(folder: Path, doc: Mapping[str, Any]) -> bytes | None:
    """The checked INT8 graph of a checkpoint folder, or ``None`` (run the float graph).

    ``None`` when the config names none, or (with a logged warning) when the file is
    missing, its sha256 differs from ``int8_graph_sha256``, or it was built from
    another float graph than the config's ``graph_sha256`` (the weights changed).
    """
    name = doc.get("int8_graph")
    if not name:
        return None
    path = folder / Path(str(name)).name
    if not doc.get("graph_sha256") or doc.get("int8_graph_of") != doc.get("graph_sha256"):
        logger.warning("%s: the INT8 graph belongs to another model; using the float graph", path)
        return None
    return graph_io.read_verified(path, doc.get("int8_graph_sha256"), "INT8 graph", "using the float graph")


def carry_int8_graph(start: str | Path, folder: str | Path) -> str | None:
    """Give ``folder`` the float and INT8 graphs of ``start`` when it holds the same weights.

    A fine-tune that keeps the starting weights (calibration only) saves them again
    (same sha256) but exports its own float graph, whose bytes may differ (another
    exporter version) and which has no INT8 graph. The start's two graphs, checked
    against these very weights when they were made, are valid for it: with them CPU
    inference runs INT8 and gives the start's masks (plus the new calibration).
    Anything else (other weights, a missing or corrupt graph) changes nothing.
    Returns the INT8 file name carried, or ``None``.
    """
    src, dst = Path(start), Path(folder)
    try:
        start_doc = json.loads((src / "config.json").read_text())
        doc = json.loads((dst / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not doc.get("weights_sha256") or start_doc.get("weights_sha256") != doc["weights_sha256"]:
        return None
    graph, int8 = graph_io.read_graph(src, start_doc), read_int8_graph(src, start_doc)
    if graph is None or int8 is None:  # (logged by the readers)
        return None
    old_graph = doc.get("graph")
    g_name, g_sha = graph_io.write_graph(dst, graph)
    name, sha = graph_io.write_graph(dst, int8, prefix=INT8_PREFIX)
    doc.update(graph=g_name, graph_sha256=g_sha, graph_weights_sha256=doc["weights_sha256"],
               int8_graph=name, int8_graph_sha256=sha, int8_graph_of=g_sha)
    atomic_write_text(dst / "config.json", json.dumps(doc, indent=2, allow_nan=False))
    if old_graph and old_graph != g_name:  # unreferenced now
        with contextlib.suppress(OSError):
            (dst / Path(str(old_graph)).name).unlink()
    return name

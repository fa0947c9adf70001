"""Running the network for inference: ONNX Runtime, TorchScript or eager PyTorch.

One function, :func:`make_runner`, picks the fastest backend that reproduces the
eager network on a check batch, and returns a :class:`NetworkRunner` that maps an
input batch ``(N, C, S, S)`` float32 to mask logits ``(N, S, S)`` and cluster logits
``(N, K)`` (or ``None`` for a model without a cluster head), all numpy.

Measured on the 2-core CPU (resnet18 DeepLabV3+, 128 px, one lesion, medians):
ONNX Runtime 11-13 ms, TorchScript (traced, frozen, batch-norm folded) 20 ms, eager
PyTorch 23 ms; see ``benchmarks/latency.py --backend``. On CUDA the eager network
runs under float16 autocast.

Examples
--------
>>> import torch
>>> from napari_recist_seg.model import ModelConfig, build_model
>>> cfg = ModelConfig(mode="a1", input_size=64, decoder_channels=32)
>>> runner = make_runner(build_model(cfg).eval(), "cpu", backend="eager")
>>> seg, aux = runner(np.zeros((2, cfg.preprocess.in_channels, 64, 64), np.float32))
>>> seg.shape, aux is None, runner.backend
((2, 64, 64), True, 'eager')
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

__all__ = ["BACKENDS", "NetworkRunner", "export_onnx", "make_runner", "runner_from_graph"]

Backend = Literal["onnxruntime", "torchscript", "eager"]
#: Tried in this order on CPU by ``backend="auto"``.
BACKENDS: tuple[Backend, ...] = ("onnxruntime", "torchscript", "eager")
# A backend is used only if it reproduces the eager logits this closely.
PARITY_ATOL = 1e-3


@dataclass
class NetworkRunner:
    """A ready network: ``runner(x) -> (seg_logits (N, S, S), aux_logits (N, K) | None)``.

    Attributes
    ----------
    backend : str
        ``"onnxruntime"``, ``"torchscript"`` or ``"eager"``.
    device : str
    precision : str
        ``"fp32"``, or ``"int8"`` for a checkpoint's quantised graph
        (:mod:`napari_recist_seg.quantize`).
    """

    backend: str
    device: str
    _run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    precision: str = "fp32"

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if len(x) == 0:
            raise ValueError("empty input batch")
        return self._run(x)


def _pair(out: Any) -> tuple[Any, Any]:
    """``(seg, aux)`` from a network returning a pair, a 1-tuple or the mask alone."""
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


def _numpy_pair(seg: Any, aux: Any) -> tuple[np.ndarray, np.ndarray | None]:
    seg_np = seg[:, 0].float().cpu().numpy()
    return seg_np, (None if aux is None else aux.float().cpu().numpy())


def _traceable(model: Any, has_aux: bool) -> Any:
    """The network as a module returning a tensor or a tuple of tensors, never None
    (tracing and export cannot return None; A1 has no cluster head)."""
    import torch

    class SegOnly(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):  # noqa: D401 - torch API
            return self.net(x)[0]

    return model if has_aux else SegOnly(model).eval()


def _eager(model: Any, device: str) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    import torch

    dev = torch.device(device)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        autocast = torch.autocast("cuda", dtype=torch.float16) if dev.type == "cuda" else nullcontext()
        with torch.inference_mode(), autocast:
            seg, aux = _pair(model(torch.from_numpy(x).to(dev, non_blocking=True)))
            return _numpy_pair(seg, aux)

    return run


def _torchscript(model: Any, example: np.ndarray, has_aux: bool) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    import torch

    net = _traceable(model, has_aux)
    with warnings.catch_warnings(), torch.no_grad():
        # TorchScript is deprecated in favour of torch.compile (which needs a compiler
        # toolchain and minutes of compiling): kept as the fallback while it works.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, torch.from_numpy(example[:1]), check_trace=False)
        fast = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with torch.inference_mode():
            seg, aux = _pair(fast(torch.from_numpy(x)))
            return _numpy_pair(seg, aux)

    return run


def export_onnx(model: Any, example: np.ndarray, has_aux: bool) -> bytes:
    """The network as an ONNX graph (opset 17, dynamic batch axis), in memory.

    Inputs ``x``; outputs ``seg`` and, with a cluster head, ``aux``.
    """
    import torch

    net = _traceable(model, has_aux)
    names = ["seg", "aux"] if has_aux else ["seg"]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        torch.onnx.export(
            net, (torch.from_numpy(example[:1]),), buf, dynamo=False,
            input_names=["x"], output_names=names, opset_version=17,
            dynamic_axes={n: {0: "batch"} for n in ["x", *names]},
        )
    return buf.getvalue()


def default_threads() -> int:
    """Intra-op threads for ONNX Runtime: ``OMP_NUM_THREADS``, else torch's setting
    when torch is already imported (never imported for this), else the usable cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_num_threads"):
        return max(1, int(torch.get_num_threads()))
    return usable_cores()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def onnx_session_runner(
    graph: bytes, threads: int | None = None, device: str = "cpu"
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """Run an ONNX graph with ONNX Runtime alone (no torch).

    ``device="cuda"`` uses the CUDA execution provider, which must be available
    (``onnxruntime-gpu``); ``ValueError`` otherwise.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads or default_threads()))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only; no warnings on the user's console
    # No busy-waiting between calls: in the viewer the GUI thread needs that core (about
    # 2 ms per call slower alone on 2 cores; no difference measured in the annotator).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("ONNX Runtime has no CUDA provider (install onnxruntime-gpu)")
        providers = ["CUDAExecutionProvider", *providers]
    session = ort.InferenceSession(graph, opts, providers=providers)

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        outs = session.run(None, {"x": x})
        return outs[0][:, 0], (outs[1] if len(outs) > 1 else None)

    return run


def runner_from_graph(graph: bytes, device: str = "cpu", threads: int | None = None,
                      precision: str = "fp32") -> NetworkRunner:
    """A :class:`NetworkRunner` for a stored (already verified) ONNX graph; no torch."""
    return NetworkRunner("onnxruntime", str(device), onnx_session_runner(graph, threads, device), precision)


def _onnxruntime(
    model: Any, example: np.ndarray, has_aux: bool, threads: int
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    # Exported in memory at load time (checkpoints without a stored graph): nothing is
    # cached on disk, so a changed checkpoint can never meet a stale graph.
    return onnx_session_runner(export_onnx(model, example, has_aux), threads)


def _agrees(run: Callable, ref: tuple[np.ndarray, np.ndarray | None], x: np.ndarray) -> bool:
    got = run(x)
    for a, b in zip(ref, got):
        if (a is None) != (b is None):
            return False
        if a is not None and (a.shape != b.shape or not np.allclose(a, b, atol=PARITY_ATOL, rtol=PARITY_ATOL)):
            return False
    return True


def make_runner(
    model: Any,
    device: str = "cpu",
    *,
    backend: Backend | Literal["auto"] = "auto",
    input_shape: tuple[int, int, int] | None = None,
    threads: int | None = None,
) -> NetworkRunner:
    """The fastest backend that reproduces the eager network (within 1e-3).

    Parameters
    ----------
    model : torch.nn.Module
        A network returning ``(seg, aux)`` with ``aux`` possibly ``None``; in eval mode.
    device : str
        ``"cpu"`` tries ONNX Runtime, then TorchScript; other devices run eager.
    backend : {"auto", "onnxruntime", "torchscript", "eager"}
        ``"auto"`` tries them in order; a named one is tried alone (still falling
        back to eager if it fails or disagrees).
    input_shape : (C, S, S), optional
        One input's shape, for tracing/export and the parity check; read from
        ``model.config.preprocess`` when omitted.
    threads : int, optional
        ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).

    Returns
    -------
    NetworkRunner
    """
    import torch

    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}; got {backend!r}")
    eager = _eager(model, device)
    if backend == "eager" or not str(device).startswith("cpu"):
        return NetworkRunner("eager", str(device), eager)
    if input_shape is None:
        pre = model.config.preprocess
        input_shape = (int(pre.in_channels), int(pre.input_size), int(pre.input_size))
    # A fixed check batch of two (not the global RNG: loading must not change seeds).
    check = np.random.default_rng(0).standard_normal((2, *input_shape)).astype(np.float32)
    ref = eager(check)
    has_aux = ref[1] is not None
    threads = int(threads or torch.get_num_threads() or os.cpu_count() or 1)
    tries = BACKENDS[:-1] if backend == "auto" else (backend,)
    for name in tries:
        try:
            if name == "onnxruntime":
                run = _onnxruntime(model, check, has_aux, threads)
            else:
                run = _torchscript(model, check, has_aux)
            if _agrees(run, ref, check):
                return NetworkRunner(name, str(device), run)
        except Exception:  # noqa: BLE001 - missing package, export or trace failure: next
            continue
    return NetworkRunner("eager", str(device), eager)

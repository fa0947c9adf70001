"""The predictor: RECIST -> crop -> network -> lesion mask, batched for bulk work.

A :class:`Predictor` loads a checkpoint once and segments any number of lesions of one
image per call: every lesion's crop (the crop rule of :mod:`~napari_recist_seg.preprocess`,
stored in the checkpoint) goes through the network in one forward pass (in chunks of
``batch_size``), the probabilities are resized back to each crop box and clipped to the
image. Only the crop boxes of the image are ever read or allocated: a ``(Z, H, W)``
volume is segmented on the view ``volume[slice_index]`` and a 3000x2000 photograph is
never copied, so memory is bounded by the crop, not the image.

The mask is the probability above ``config.threshold`` (0.5). Optional post-processing
(``postprocess=True``) keeps the lesion the RECIST points at (the connected component
containing the crossing point of the axes, else the largest component overlapping the
RECIST quadrilateral) and fills holes. It is off by default because it changed no mask
of 200 held-out ISIC images and one of 254 LiTS tumours (the network already returns
one filled blob; ``benchmarks/README.md``); click mode always applies it, since a click
is a weaker prompt.

Examples
--------
>>> import numpy as np, tempfile
>>> from napari_recist_seg.model import ModelConfig, build_model, save_checkpoint
>>> from napari_recist_seg.recist import Recist
>>> cfg = ModelConfig(mode="a1", input_size=64)
>>> ckpt = save_checkpoint(tempfile.mkdtemp(), build_model(cfg), cfg)
>>> predictor = Predictor.load(ckpt, device="cpu")
>>> image = np.zeros((100, 120, 3), np.uint8)
>>> [res] = predictor.segment(image, [Recist([[50, 30], [50, 70]], [[40, 50], [60, 50]])])
>>> res.offset, res.mask.shape, res.cluster
((11, 11), (80, 80), None)
>>> predictor.segment(image, [Recist([[50, 30], [50, 30]], [[40, 50], [60, 50]])])
Traceback (most recent call last):
...
napari_recist_seg.recist.RecistError: long axis has (near) zero length (0.00 px)
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from napari_recist_seg.recist import Recist, RecistError, recist_from_mask, shape_features, snap
from napari_recist_seg.runtime import make_runner

__all__ = [
    "DEFAULT_MODEL_DIR",
    "LesionResult",
    "Predictor",
    "click_scales",
    "postprocess_mask",
]

logger = logging.getLogger(__name__)


def _lazy_module(name: str) -> Any:
    """``name`` imported on first attribute access (importlib's LazyLoader recipe)."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    loader = importlib.util.LazyLoader(spec.loader)  # type: ignore[arg-type]
    spec.loader = loader  # type: ignore[union-attr]
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    loader.exec_module(module)
    return module


# scipy.ndimage takes about 0.8 s to import on the 2-core CPU, a third of a cold
# `recist-seg segment`, and only post-processing (off by default) needs it.
ndimage = _lazy_module("scipy.ndimage")

#: Where the default model ships inside the package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
# A click candidate whose mean probability on its crop border exceeds this leaks out
# of its crop: the lesion is larger than the crop.
_CLICK_BORDER_LIMIT = 0.05
#: Masks with more pixels are measured on a decimated grid (see ``measure_mask``).
MEASURE_MAX_PIXELS = 1 << 20

_STRUCT8 = np.ones((3, 3), bool)
#: Refinement a Predictor applies by default (see napari_recist_seg.refine; chosen on
#: the validation ids of the default model's split with benchmarks/proxy_shift.py).
DEFAULT_REFINE = "recist"


@dataclass
class LesionResult:
    """One segmented lesion; arrays cover only its crop box (clipped to the image).

    Attributes
    ----------
    recist : Recist
        The (snapped) prompt; for click mode the RECIST derived from the mask.
    offset : (int, int)
        Top-left ``(row, col)`` of ``mask`` in the image plane.
    mask : np.ndarray
        bool, the lesion inside the crop box.
    probability : np.ndarray
        float32 lesion probability, same shape as ``mask``.
    cluster : int or None
        RECIST shape cluster predicted by the auxiliary head (A1+L); ``None`` for A1.
    confidence : float or None
        Softmax probability of that cluster.
    measured : Recist or None
        RECIST measured on the predicted mask (image coordinates); ``None`` if the
        mask is empty or degenerate.
    """

    recist: Recist
    offset: tuple[int, int]
    mask: np.ndarray
    probability: np.ndarray
    cluster: int | None = None
    confidence: float | None = None
    measured: Recist | None = None

    @property
    def area_px(self) -> int:
        """Mask area in pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def area_mm2(self) -> float | None:
        """Mask area in mm² (``None`` when the spacing is unknown)."""
        sp = self.recist.spacing
        return None if sp is None else self.area_px * sp[0] * sp[1]

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices of the crop box in the image plane."""
        r0, c0 = self.offset
        h, w = self.mask.shape
        return slice(r0, r0 + h), slice(c0, c0 + w)

    def _plane(self, target: np.ndarray) -> np.ndarray:
        # (Z, H, W) targets: paste on the RECIST's slice (a view, written in place).
        if target.ndim == 3 and self.recist.slice_index is not None:
            return target[self.recist.slice_index]
        if target.ndim != 2:
            raise ValueError(
                f"expected a (rows, cols) array or a (z, rows, cols) volume with a RECIST "
                f"slice index; got shape {target.shape}"
            )
        return target

    def paste_into(self, labels: np.ndarray, value: int) -> None:
        """Set ``labels`` to ``value`` where this lesion's mask is, in place.

        ``labels`` is the image plane ``(rows, cols)`` or, for a lesion on a volume
        slice, the ``(z, rows, cols)`` volume. Pixels outside the mask are untouched.
        """
        plane = self._plane(labels)
        rs, cs = self.slices
        if rs.stop > plane.shape[0] or cs.stop > plane.shape[1]:
            raise ValueError(
                f"the lesion's box {rs.start}:{rs.stop}, {cs.start}:{cs.stop} does not fit "
                f"an array of shape {plane.shape}"
            )
        plane[rs, cs][self.mask] = value

    def full_mask(self, shape: Sequence[int]) -> np.ndarray:
        """The mask as a bool array of the image (plane) ``shape``.

        ``shape`` may be the image shape itself: ``(H, W)``, ``(H, W, 3)`` (the colour
        axis is dropped) or ``(Z, H, W)`` (the mask is placed on the RECIST's slice).
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) == 3 and self.recist.slice_index is None and shape[-1] in (3, 4):
            shape = shape[:2]
        out = np.zeros(shape, dtype=bool)
        self.paste_into(out, True)
        return out


def _largest(labels: np.ndarray, n: int, among: np.ndarray | None = None) -> int:
    """Label (1..n) of the largest component, optionally only among ``among`` labels."""
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[0] = 0
    if among is not None:
        keep = np.zeros(n + 1, bool)
        keep[among] = True
        areas[~keep] = 0
    return int(np.argmax(areas)) if areas.max() > 0 else 0


def postprocess_mask(
    mask: np.ndarray, recist_local: Recist | None, *, fill_holes: bool = True
) -> np.ndarray:
    """Keep the lesion a RECIST points at and fill its holes.

    Parameters
    ----------
    mask : np.ndarray
        bool, the thresholded probability in a crop.
    recist_local : Recist or None
        The RECIST in the crop's pixel coordinates; ``None`` keeps the largest
        component.
    fill_holes : bool
        Fill holes of the kept component(s).

    Returns
    -------
    np.ndarray
        bool mask: the 8-connected component containing the crossing point of the
        axes; else the largest component overlapping the quadrilateral of the four
        RECIST endpoints; else (nothing overlaps) the largest component.

    Examples
    --------
    >>> m = np.zeros((20, 20), bool); m[2:10, 2:10] = True; m[14:18, 14:18] = True
    >>> m[5, 5] = False
    >>> r = Recist([[15, 14], [15, 17]], [[14, 15.5], [17, 15.5]])
    >>> out = postprocess_mask(m, r)
    >>> int(out.sum()), bool(out[15, 15]), bool(out[5, 5])
    (16, True, False)
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=_STRUCT8)
    keep = 0
    if n == 1:
        keep = 1
    elif recist_local is not None:
        try:
            r, c = (int(round(v)) for v in recist_local.crossing)
        except RecistError:
            r, c = (int(round(v)) for v in recist_local.centre)
        if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1]:
            keep = int(labels[r, c])
        if keep == 0:
            quad = np.zeros(mask.shape, np.uint8)
            pts = recist_local.endpoints[[0, 2, 1, 3]]  # long1, short1, long2, short2
            poly = np.round(pts[:, ::-1] * 16).astype(np.int32)  # (x, y), fixed point
            cv2.fillPoly(quad, [poly], 1, lineType=cv2.LINE_8, shift=4)
            for seg in (recist_local.long_axis, recist_local.short_axis):
                (r1, c1), (r2, c2) = np.round(seg * 16).astype(int)
                cv2.line(quad, (c1, r1), (c2, r2), 1, 1, cv2.LINE_8, 4)
            touching = np.unique(labels[quad.astype(bool)])
            touching = touching[touching > 0]
            if touching.size:
                keep = _largest(labels, n, touching)
    if keep == 0:
        keep = _largest(labels, n)
    out = labels == keep
    if fill_holes:
        out = ndimage.binary_fill_holes(out)
    return out


def _sigmoid_inplace(x: np.ndarray) -> np.ndarray:
    """float32 sigmoid without temporaries (crop boxes of big lesions are large)."""
    np.clip(x, -30.0, 30.0, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)
    return x


def measure_mask(mask: np.ndarray, offset: tuple[int, int], recist: Recist) -> Recist | None:
    """RECIST measured on a crop mask, in image coordinates (``None`` if degenerate).

    Masks larger than :data:`MEASURE_MAX_PIXELS` are measured on every ``f``-th row
    and column (their lengths are then within about ``f`` px, far below 1 % of such
    a lesion): :func:`recist_from_mask` needs about 70 bytes per lesion pixel.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    # Measure inside the mask's bounding box (the crop is about 4x the lesion's area).
    r0, c0 = int(rows[0]), int(cols[0])
    sub = mask[r0 : int(rows[-1]) + 1, c0 : int(cols[-1]) + 1]
    f = max(1, math.ceil(math.sqrt(sub.size / MEASURE_MAX_PIXELS)))
    try:
        m = recist_from_mask(
            sub[::f, ::f] if f > 1 else sub,
            spacing=recist.spacing,
            slice_index=recist.slice_index,
        )
    except RecistError:
        return None
    shift = (offset[0] + r0, offset[1] + c0)
    return replace(m, long_axis=m.long_axis * f + shift, short_axis=m.short_axis * f + shift)


def recist_cluster_probs(clusters: Any, recist: Recist) -> np.ndarray:
    """Soft assignment ``(K,)`` of a RECIST to shape clusters from its features alone.

    Softmax of minus half the squared distances to the centres in standardised
    feature space (a unit-variance Gaussian per cluster): 1/K when the RECIST lies
    between all centres, near 1 when it sits on one.
    """
    d2 = clusters.distances(shape_features(recist)[None])[0] ** 2
    e = np.exp(-0.5 * (d2 - d2.min()))
    return e / e.sum()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _is_volume(image: np.ndarray) -> bool:
    return image.ndim == 3 and image.shape[-1] not in (3, 4)


def _as_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """Input rules beyond the shape (issue 12): complex images are refused, and an
    integer RGB(A) image whose values all lie in 0..255 is taken as the 8-bit image it
    is (int64 from a list, int32, int16, even uint16), so it gives the uint8 result
    instead of being scaled by its dtype's range."""
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"the image must be real; got dtype {arr.dtype}")
    if (arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype != np.uint8
            and np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 255):
        return arr.astype(np.uint8)
    return arr


def _check_plane_values(plane: np.ndarray, where: str) -> None:
    """Refuse a float plane holding infinities or no finite pixel at all (it would give
    a confident mask of nothing); NaN pixels among finite ones count as the lowest
    intensity (see :func:`~napari_recist_seg.preprocess.normalize_intensity`)."""
    if not np.issubdtype(plane.dtype, np.floating):
        return
    finite = np.isfinite(plane)
    if not finite.any():
        raise ValueError(f"{where}the image (plane) has no finite pixel values (all NaN or infinite)")
    n_inf = int(np.isinf(plane).sum())
    if n_inf:
        raise ValueError(f"{where}the image holds {n_inf} infinite pixel values; replace them first "
                         "(e.g. numpy.nan_to_num)")


def _check_image(image: Any) -> np.ndarray:
    # np.asarray never copies an ndarray or memmap: volumes stay where they are.
    arr = image if isinstance(image, np.ndarray) else np.asarray(image)
    if arr.ndim in (2, 3):
        if min(arr.shape) == 0:
            raise ValueError(f"the image has no pixels (shape {arr.shape})")
        if arr.dtype == object or not (
            np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
        ):
            raise ValueError(f"the image must be numeric; got dtype {arr.dtype}")
        return _as_uint8_rgb(arr)
    raise ValueError(
        "expected an (H, W) grey, (H, W, 3) RGB image or a (Z, H, W) volume; "
        f"got shape {arr.shape}"
    )


def _plane(image: np.ndarray, recist: Recist) -> np.ndarray:
    """The 2D plane of a RECIST: the image itself, or a view of the volume slice."""
    if _is_volume(image):
        return image[recist.slice_index]
    return image


def _nvidia_driver_present() -> bool:
    """An NVIDIA driver is loaded (Linux), so ``auto`` may mean CUDA; checked without torch."""
    return os.path.exists("/proc/driver/nvidia/version")


def _graph_device(device: str) -> str | None:
    """The device a stored ONNX graph runs on for ``device``; ``None``: use PyTorch.

    ``auto`` is CPU unless torch would pick a GPU: an NVIDIA driver (CUDA, via ONNX
    Runtime's CUDA provider when present) or macOS (MPS), both decided by PyTorch.
    """
    import importlib.util

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


def _graph_predictor(cls: type, path: Path, device: str, kwargs: dict) -> Any:
    """A Predictor running the checkpoint's stored ONNX graph (no torch), or None."""
    from napari_recist_seg.model import load_checkpoint_graph
    from napari_recist_seg.runtime import runner_from_graph

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


class Predictor:
    """A loaded model, ready to segment lesions from RECIST prompts.

    Use :meth:`load`; the model is loaded once and reused for every call.

    Parameters
    ----------
    model : torch.nn.Module or None
        A :class:`~napari_recist_seg.model.RecistSegNet` (returns ``(seg, aux)``);
        ``None`` with ``runner`` (a stored ONNX graph: no torch), in which case
        :attr:`model` loads the PyTorch network from ``path`` on first access.
    config : ModelConfig
        Its configuration (crop rule, threshold, mode).
    clusters : ClusterModel, optional
        The RECIST shape clusters. An A1+L model predicts the cluster with its head;
        an A1 model that carries them assigns the nearest cluster centre of the
        RECIST's shape features (confidence: softmax of the negative squared
        distances), so both show a cluster.
    device : str
        Where the model lives (``"cpu"``, ``"cuda"``, ``"mps"``).
    postprocess : bool
        Component selection + hole filling (see :func:`postprocess_mask`); off by
        default (no measured Dice gain), always on in :meth:`segment_click`.
    tta : bool
        Test-time augmentation: average with the horizontally flipped crop (twice
        the compute; off by default for the latency budget).
    optimize : bool, optional
        Run the network with the fastest backend that reproduces it (see
        :func:`~napari_recist_seg.runtime.make_runner`): ONNX Runtime (about 11-13 ms
        instead of 20-23 ms per lesion on the 2-core CPU), else a traced TorchScript
        copy, else eager PyTorch. ``None`` (default) = on for CPU; ``False`` = eager.
    backend : str, optional
        Force one backend (``"onnxruntime"``, ``"torchscript"``, ``"eager"``).
    path : Path, optional
        Where the checkpoint came from (for display).
    runner : NetworkRunner, optional
        A ready network (e.g. :func:`~napari_recist_seg.runtime.runner_from_graph`);
        ``optimize`` and ``backend`` are then ignored.
    """

    def __init__(
        self,
        model: Any,
        config: Any,
        clusters: Any = None,
        device: str = "cpu",
        *,
        postprocess: bool = False,
        tta: bool = False,
        optimize: bool | None = None,
        backend: str | None = None,
        path: Path | None = None,
        runner: Any = None,
    ) -> None:
        self._model = None if model is None else model.eval()
        self.config = config
        self.clusters = clusters
        self.device = str(device)
        self.postprocess = bool(postprocess)
        self.tta = bool(tta)
        self.path = path
        self.preprocess = config.preprocess
        self.threshold = float(getattr(config, "threshold", 0.5))
        # Post-processing of the probability (napari_recist_seg.refine.METHODS).
        self.refine = DEFAULT_REFINE
        #: Intensity rule (napari_recist_seg.intensity): ``None`` = decided per image
        #: (DICOM tag / HU range); a CT ``window`` preset or (level, width) override.
        self.modality: str | None = None
        self.window: Any = None
        if runner is not None:
            self._runner = runner
            return
        if model is None:
            raise ValueError("Predictor needs a model or a runner")
        if optimize is None:
            optimize = self.device == "cpu"
        if backend is None:
            backend = "auto" if optimize else "eager"
        pre = self.preprocess
        self._runner = make_runner(
            self.model, self.device, backend=backend,  # type: ignore[arg-type]
            input_shape=(int(pre.in_channels), int(pre.input_size), int(pre.input_size)),
        )

    @property
    def model(self) -> Any:
        """The PyTorch network (loaded, with torch, on first access when the
        predictor runs a stored ONNX graph)."""
        if self._model is None:
            from napari_recist_seg.model import load_checkpoint

            if self.path is None:
                raise AttributeError("this predictor has no PyTorch model and no checkpoint path")
            self._model = load_checkpoint(self.path, device="cpu")[0].eval()
        return self._model

    @property
    def backend(self) -> str:
        """How the network runs: ``"onnxruntime"``, ``"torchscript"`` or ``"eager"``."""
        return self._runner.backend

    @property
    def optimized(self) -> bool:
        """True when the network runs on a faster backend than eager PyTorch."""
        return self._runner.backend != "eager"

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        device: str = "auto",
        **kwargs: Any,
    ) -> "Predictor":
        """Load a checkpoint (``None``: the default model shipped with the package).

        Parameters
        ----------
        path : path, optional
            Checkpoint folder or file (see :func:`~napari_recist_seg.model.load_checkpoint`).
        device : str
            ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
        **kwargs
            ``postprocess``, ``tta``, ``optimize``, ``backend``: see :class:`Predictor`.

        Notes
        -----
        A checkpoint folder with a stored ONNX graph (every checkpoint saved by this
        version) runs with ONNX Runtime alone on CPU: torch is not imported. PyTorch is
        used for checkpoints without a graph (exported at load, as before), for
        ``optimize=False`` or ``backend="torchscript"/"eager"``, and for GPUs unless
        ONNX Runtime has the CUDA provider.

        Raises
        ------
        CheckpointError
            Missing default model, or a corrupt / mismatched checkpoint.
        ValueError
            An unavailable device.
        """
        from napari_recist_seg.model import CheckpointError, load_checkpoint, resolve_device

        if path is None:
            if not (DEFAULT_MODEL_DIR / "config.json").is_file():
                raise CheckpointError(
                    f"the default model is missing from this installation ({DEFAULT_MODEL_DIR}); "
                    "pass a checkpoint with --model (or Predictor.load(path)), or train one "
                    "with `recist-seg train`"
                )
            path = DEFAULT_MODEL_DIR
        fast = _graph_predictor(cls, Path(path), device, kwargs)
        if fast is not None:
            return fast
        dev = resolve_device(device)
        model, config, clusters = load_checkpoint(path, device=dev)
        return cls(model, config, clusters, dev, path=Path(path), **kwargs)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Predictor({c.mode}, encoder={c.encoder}, input={c.input_size}px, "
            f"K={c.n_clusters}, device={self.device}, path={self.path})"
        )

    # -- internals -------------------------------------------------------------------
    def _forward(self, batch: np.ndarray, batch_size: int, tta: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Segmentation logits ``(N, S, S)`` and cluster probabilities ``(N, K)``."""
        seg_out: list[np.ndarray] = []
        aux_out: list[np.ndarray] = []
        for start in range(0, len(batch), max(1, int(batch_size))):
            x = batch[start : start + batch_size]
            seg, aux = self._runner(x)
            if tta:
                seg_f, aux_f = self._runner(np.flip(x, axis=3))
                seg = (seg + np.flip(seg_f, axis=2)) / 2
                if aux is not None:
                    aux = (aux + aux_f) / 2
            seg_out.append(seg)
            if aux is not None:
                aux_out.append(_softmax(aux))
        seg_all = np.concatenate(seg_out) if seg_out else np.zeros((0, 1, 1), np.float32)
        aux_all = np.concatenate(aux_out) if aux_out else None
        return seg_all, aux_all

    def _run(
        self,
        image: np.ndarray,
        recists: Sequence[Recist],
        *,
        batch_size: int,
        tta: bool,
        timings: dict[str, float] | None,
        postprocess: bool | None = None,
        modality: str | None = None,
    ) -> list[LesionResult]:
        """Segment already validated / snapped RECIST of one image (no checks)."""
        return self._run_many(
            [(image, recists)], batch_size=batch_size, tta=tta, timings=timings,
            postprocess=postprocess, modality_of=modality,
        )[0]

    def _run_many(
        self,
        pairs: Sequence[tuple[np.ndarray, Sequence[Recist]]],
        *,
        batch_size: int,
        tta: bool,
        timings: dict[str, float] | None,
        postprocess: bool | None = None,
        modality_of: str | None = None,
    ) -> list[list[LesionResult]]:
        """Segment validated RECIST of several images in shared forward passes."""
        from napari_recist_seg.preprocess import make_input

        postprocess = self.postprocess if postprocess is None else postprocess
        t0 = time.perf_counter()
        inputs, boxes = [], []
        for image, recists in pairs:
            modality = self._modality(image, modality_of)
            for r in recists:
                x, box = make_input(_plane(image, r), r, self.preprocess,
                                    modality=modality, window=self.window)
                inputs.append(x)
                boxes.append(box)
        t1 = time.perf_counter()
        seg, aux = self._forward(np.stack(inputs) if inputs else np.zeros(0), batch_size, tta)
        t2 = time.perf_counter()
        out: list[list[LesionResult]] = []
        k = 0
        for image, recists in pairs:
            results = []
            for r in recists:
                plane_shape = _plane(image, r).shape[:2]
                res = self._finish(r, boxes[k], seg[k], None if aux is None else aux[k],
                                   plane_shape, postprocess)
                results.append(self._refined(res, _plane(image, r), postprocess))
                k += 1
            out.append(results)
        t3 = time.perf_counter()
        if timings is not None:
            for key, dt in (("preprocess", t1 - t0), ("forward", t2 - t1), ("postprocess", t3 - t2)):
                timings[key] = timings.get(key, 0.0) + dt
        return out

    def _finish(
        self,
        r: Recist,
        box: Any,
        logits_crop: np.ndarray,
        cluster_probs: np.ndarray | None,
        plane_shape: tuple[int, int],
        postprocess: bool,
    ) -> LesionResult:
        """Network output of one crop -> LesionResult in image coordinates."""
        from napari_recist_seg.preprocess import paste_back

        # Resize logits (smoother than resizing probabilities), then sigmoid.
        offset, logits = paste_back(logits_crop, box, plane_shape)
        # paste_back's output is a fresh array (or a slice of the batch output, unused).
        prob = _sigmoid_inplace(np.asarray(logits, dtype=np.float32))
        mask = prob > self.threshold
        if postprocess and mask.any():
            mask = postprocess_mask(mask, r.transformed(offset, 1.0))
        cluster = confidence = None
        if cluster_probs is None and self.clusters is not None:
            cluster_probs = recist_cluster_probs(self.clusters, r)
        if cluster_probs is not None:
            cluster = int(np.argmax(cluster_probs))
            confidence = float(cluster_probs[cluster])
        offset = (int(offset[0]), int(offset[1]))
        return LesionResult(r, offset, mask, prob, cluster, confidence, measure_mask(mask, offset, r))

    def _refined(self, res: LesionResult, plane: np.ndarray, postprocess: bool) -> LesionResult:
        """Apply ``self.refine`` (a :mod:`~napari_recist_seg.refine` method) to a result."""
        if self.refine == "none" or not res.mask.any():
            return res
        from napari_recist_seg.refine import refine_mask

        (r0, c0), (h, w) = res.offset, res.mask.shape
        local = res.recist.transformed(res.offset, 1.0)
        crop = plane[r0 : r0 + h, c0 : c0 + w]
        mask = refine_mask(self.refine, res.probability, local, crop, threshold=self.threshold)
        if postprocess and mask.any():
            mask = postprocess_mask(mask, local)
        return replace(res, mask=mask, measured=measure_mask(mask, res.offset, res.recist))

    def _modality(self, image: np.ndarray, given: str | None) -> str | None:
        """What the intensity rule needs for ``image``: the given modality, else the
        predictor's, else one detected from the values (HU air); 8-bit and colour
        images are not affected by it."""
        from napari_recist_seg.intensity import detect_modality

        hint = given if isinstance(given, str) else None
        hint = hint or self.modality
        if image.dtype == np.uint8 or (image.ndim == 3 and image.shape[-1] in (3, 4)):
            return hint
        return detect_modality(image, hint)

    def _prompts(self, arr: np.ndarray, recists: Sequence[Recist], where: str = "") -> list[Recist]:
        """Validate and snap the RECIST of one image; RecistError names which one."""
        if isinstance(recists, Recist):
            recists = [recists]
        prompts = []
        for i, r in enumerate(recists):
            if not isinstance(r, Recist):
                raise TypeError(f"{where}recists[{i}] is a {type(r).__name__}, not a Recist")
            try:
                r.validate(arr.shape)
                _check_plane_values(_plane(arr, r), where)
                prompts.append(snap(r, image_shape=arr.shape))
            except RecistError as exc:
                if len(recists) == 1 and not where:
                    raise
                raise RecistError(f"{where}RECIST {i + 1} of {len(recists)}: {exc}") from exc
        return prompts

    # -- public API ------------------------------------------------------------------
    def segment(
        self,
        image: np.ndarray,
        recists: Sequence[Recist],
        *,
        batch_size: int = 32,
        tta: bool | None = None,
        timings: dict[str, float] | None = None,
        modality: str | None = None,
    ) -> list[LesionResult]:
        """Segment the lesions of one image, all in one batched forward pass.

        Parameters
        ----------
        image : np.ndarray
            ``(H, W)`` grey, ``(H, W, 3)`` RGB (uint8 / uint16 / float), or a
            ``(Z, H, W)`` volume (CT in HU): each RECIST is segmented on the slice
            ``recist.slice_index``, read through a view (never copied).
        recists : sequence of Recist
            Prompts in image pixel coordinates. Each is validated against the image
            (a :class:`RecistError` names the reason and the lesion's position) and
            snapped (short axis perpendicular through the crossing).
        batch_size : int
            Crops per forward pass.
        tta : bool, optional
            Override the predictor's test-time augmentation flag.
        timings : dict, optional
            If given, seconds spent in ``"preprocess"``, ``"forward"`` and
            ``"postprocess"`` are added to it.
        modality : str, optional
            ``"ct"`` (CT window, :attr:`window` or soft tissue) or another modality
            (per-crop percentile normalisation); default: :attr:`modality`, else
            detected from the values (:func:`~napari_recist_seg.intensity.detect_modality`).

        Returns
        -------
        list of LesionResult
            In the order of ``recists``.
        """
        t0 = time.perf_counter()
        arr = _check_image(image)
        prompts = self._prompts(arr, recists)
        if not prompts:
            return []
        if timings is not None:  # validation + snapping count as preprocessing
            timings["preprocess"] = timings.get("preprocess", 0.0) + time.perf_counter() - t0
        return self._run(
            arr, prompts, batch_size=batch_size, tta=self.tta if tta is None else tta,
            timings=timings, modality=modality,
        )

    def segment_many(
        self,
        items: Sequence[tuple[np.ndarray, Sequence[Recist]]],
        *,
        batch_size: int = 32,
        tta: bool | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[list[LesionResult]]:
        """Segment the lesions of several images in shared forward passes.

        The bulk job's fast path: on a CPU a batch of 8 crops costs about half as
        much per crop as one crop alone, and most images hold one lesion. Results
        equal those of :meth:`segment` on each image.

        Parameters
        ----------
        items : sequence of (image, recists)
            As for :meth:`segment`.
        batch_size, tta, timings
            As for :meth:`segment`.

        Returns
        -------
        list of list of LesionResult
            One list per item, in order.

        Raises
        ------
        RecistError
            Naming the image (by position) and the RECIST.
        """
        t0 = time.perf_counter()
        pairs = []
        for j, (image, recists) in enumerate(items):
            arr = _check_image(image)
            pairs.append((arr, self._prompts(arr, recists, f"image {j + 1}: ")))
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + time.perf_counter() - t0
        return self._run_many(
            pairs, batch_size=batch_size, tta=self.tta if tta is None else tta, timings=timings
        )

    def segment_click(
        self,
        image: np.ndarray,
        point: Sequence[float],
        *,
        slice_index: int | None = None,
        spacing: tuple[float, float] | None = None,
        scales: Sequence[float] | None = None,
        refine: bool = True,
    ) -> LesionResult:
        """Segment the lesion under one click, without a drawn RECIST.

        Every diameter in ``scales`` gives a circular pseudo-RECIST centred on the
        click; all are segmented in one batch. The network follows the extent a
        RECIST tells it, so each candidate is a lesion-like blob of about that size
        and the network's confidence hardly tells the sizes apart; the image does:
        among the candidates that contain the click and fit their crop, the one
        whose mask stands out most from the ring of image just outside it (10 % of
        the diameter wide; colour difference of the means over the summed spreads,
        in CIE Lab, or grey / CT-windowed intensity) wins, and its mask is measured
        (:func:`recist_from_mask`).
        With ``refine`` (default) the lesion is segmented once more from that
        RECIST, which follows the lesion's real shape rather than a circle (held-out
        ISIC Dice +0.02 with the default model, ``benchmarks/README.md``).

        Parameters
        ----------
        image : np.ndarray
            As for :meth:`segment`.
        point : (row, col)
            The click, in pixels of the image plane.
        slice_index : int, optional
            Required for volumes.
        spacing : (row_mm, col_mm), optional
            Stored on the returned RECIST.
        scales : sequence of float, optional
            Pseudo-RECIST diameters in pixels; default :func:`click_scales` of the
            plane (12 sizes from 12 px to 1.25 times the image side).
        refine : bool
            Re-segment from the derived RECIST (one more forward pass).

        Returns
        -------
        LesionResult
            Its ``recist`` (and ``measured``) is the RECIST derived from its mask
            with :func:`recist_from_mask`; it lies inside the mask.

        Raises
        ------
        RecistError
            If the point lies outside the image, or no candidate mask contains it.
        """
        arr = _check_image(image)
        if _is_volume(arr):
            if slice_index is None:
                raise RecistError(
                    f"the image is a {'x'.join(map(str, arr.shape))} volume: give the slice index"
                )
            if not 0 <= int(slice_index) < arr.shape[0]:
                raise RecistError(
                    f"slice {slice_index} is outside the volume (0..{arr.shape[0] - 1})"
                )
            slice_index = int(slice_index)
            h, w = arr.shape[1:]
        else:
            slice_index = None
            h, w = arr.shape[:2]
        p = np.asarray(point, dtype=float).ravel()
        if p.shape != (2,) or not np.all(np.isfinite(p)):
            raise RecistError(f"the click must be one finite (row, col) point; got {point!r}")
        if not (-0.5 <= p[0] <= h - 0.5 and -0.5 <= p[1] <= w - 0.5):
            raise RecistError(
                f"the click ({p[0]:.1f}, {p[1]:.1f}) lies outside the {h}x{w} image"
            )
        diameters = click_scales((h, w)) if scales is None else [float(d) for d in scales]
        diameters = [d for d in diameters if d >= 2.0]
        if not diameters:
            raise ValueError("scales must hold diameters of at least 2 px")
        prompts = [_circle(p, d, slice_index, spacing) for d in diameters]
        # Pseudo-RECIST may reach past the image border: the crop pads, so no validation.
        # A click is a weak prompt: always keep only the component under it.
        candidates = self._run(
            arr, prompts, batch_size=len(prompts), tta=self.tta, timings=None, postprocess=True
        )
        pr, pc = int(round(p[0])), int(round(p[1]))
        plane = arr[slice_index] if slice_index is not None else arr
        # Image features of the region all candidates (and their rings) cover.
        pad = max(2, int(round(0.1 * max(diameters))))
        w0r = max(0, min(c.offset[0] for c in candidates) - pad)
        w0c = max(0, min(c.offset[1] for c in candidates) - pad)
        w1r = min(h, max(c.offset[0] + c.mask.shape[0] for c in candidates) + pad)
        w1c = min(w, max(c.offset[1] + c.mask.shape[1] for c in candidates) + pad)
        feats = _click_features(plane[w0r:w1r, w0c:w1c], self.preprocess)
        best: tuple[tuple[bool, float], LesionResult] | None = None
        for d, res in zip(diameters, candidates):
            lr, lc = pr - res.offset[0], pc - res.offset[1]
            inside = 0 <= lr < res.mask.shape[0] and 0 <= lc < res.mask.shape[1]
            if not inside or not res.mask[lr, lc] or res.measured is None:
                continue
            # A mask running into its crop border (inside the image) is cut off: the
            # lesion is bigger than this crop; prefer candidates that fit.
            leak = _border_leak(res.probability, res.recist, self.preprocess, (h, w))
            score = _region_contrast(
                feats, (w0r, w0c), res.mask, res.offset, max(2, int(round(0.1 * d)))
            )
            key = (leak <= _CLICK_BORDER_LIMIT, score)
            if best is None or key > best[0]:
                best = (key, res)
        if best is None:
            raise RecistError(
                f"no lesion found at ({p[0]:.0f}, {p[1]:.0f}); draw the RECIST axes instead"
            )
        chosen = best[1]
        derived = replace(chosen.measured, spacing=spacing, slice_index=slice_index)  # type: ignore[arg-type]
        if not refine:
            return replace(chosen, recist=derived)
        try:
            prompt = snap(derived)
        except RecistError:  # a derived RECIST of an odd shape may not cross
            return replace(chosen, recist=derived)
        [final] = self._run(
            arr, [prompt], batch_size=1, tta=self.tta, timings=None, postprocess=True
        )
        lr, lc = pr - final.offset[0], pc - final.offset[1]
        if final.measured is None or not (
            0 <= lr < final.mask.shape[0] and 0 <= lc < final.mask.shape[1] and final.mask[lr, lc]
        ):
            return replace(chosen, recist=derived)
        # The result's RECIST is the one measured on the final mask (it lies inside it).
        measured = replace(final.measured, spacing=spacing, slice_index=slice_index)
        return replace(final, recist=measured, measured=measured)


def click_scales(plane_shape: Sequence[int], n: int = 12, smallest: float = 12.0) -> list[float]:
    """Pseudo-RECIST diameters tried by a click: geometric, ``smallest`` px up to 1.25
    times the longer image side, at most ``n`` of them (ratio at least 1.2).

    >>> [round(d) for d in click_scales((256, 256))]
    [12, 16, 22, 29, 40, 53, 72, 97, 131, 176, 237, 320]
    """
    top = 1.25 * max(int(plane_shape[0]), int(plane_shape[1]))
    if top <= smallest:
        return [float(smallest)]
    ratio = max(1.2, (top / smallest) ** (1.0 / max(1, n - 1)))
    count = int(math.floor(math.log(top / smallest) / math.log(ratio) + 1e-9)) + 1
    return [smallest * ratio**i for i in range(count)]


def _circle(
    centre: np.ndarray, diameter: float, slice_index: int | None, spacing: tuple[float, float] | None
) -> Recist:
    """A circular pseudo-RECIST: two perpendicular diameters through ``centre``."""
    r, c = float(centre[0]), float(centre[1])
    half = diameter / 2.0
    return Recist(
        [[r, c - half], [r, c + half]],
        [[r - half, c], [r + half, c]],
        slice_index=slice_index,
        spacing=spacing,
    )


def _click_features(region: np.ndarray, cfg: Any) -> np.ndarray:
    """Per-pixel features ``(h, w, C)`` float32 for judging a click candidate.

    Colour images: CIE Lab (perceptual colour differences); 8-bit grey: the value;
    other grey images (CT in HU): clipped to the model's CT window, so that air and
    bone next to a lesion do not swamp its contrast with soft tissue.
    """
    x = np.asarray(region)
    if x.ndim == 3:
        rgb = x[..., :3]
        if rgb.dtype == np.uint8:
            return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2LAB).astype(np.float32)
        f = rgb.astype(np.float32)
        if rgb.dtype == np.uint16:
            f /= 65535.0
        elif np.nanmax(f, initial=0.0) > 1.0:
            f /= 255.0
        f = np.clip(np.nan_to_num(f, nan=0.0), 0.0, 1.0)
        return cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2Lab)
    f = np.nan_to_num(x.astype(np.float32), nan=0.0)
    if x.dtype not in (np.uint8, np.bool_):
        level, width = cfg.ct_window
        f = np.clip(f, level - width / 2.0, level + width / 2.0)
    return f[..., None]


def _region_contrast(
    feats: np.ndarray,
    feats_offset: tuple[int, int],
    mask: np.ndarray,
    mask_offset: tuple[int, int],
    width: int,
) -> float:
    """How much a mask stands out from the ``width`` px ring of image around it.

    ``|mean inside - mean in the ring| / (sd inside + sd in the ring)`` of the image
    features: high when the mask's boundary separates lesion from background, low
    when mask and ring both lie in the lesion (too small) or both in skin/tissue.
    """
    fh, fw = feats.shape[:2]
    r0 = mask_offset[0] - feats_offset[0]
    c0 = mask_offset[1] - feats_offset[1]
    # The mask plus its ring, inside the feature window.
    a0, b0 = max(0, r0 - width), max(0, c0 - width)
    a1 = min(fh, r0 + mask.shape[0] + width)
    b1 = min(fw, c0 + mask.shape[1] + width)
    local = np.zeros((a1 - a0, b1 - b0), np.uint8)
    mr0, mc0 = r0 - a0, c0 - b0
    sub = mask[max(0, -mr0) : local.shape[0] - mr0, max(0, -mc0) : local.shape[1] - mc0]
    local[max(0, mr0) : max(0, mr0) + sub.shape[0], max(0, mc0) : max(0, mc0) + sub.shape[1]] = sub
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * width + 1, 2 * width + 1))
    inside = local.astype(bool)
    ring = cv2.dilate(local, kernel).astype(bool) & ~inside
    if not inside.any() or not ring.any():
        return 0.0
    window = feats[a0:a1, b0:b1]
    fin, fout = window[inside], window[ring]
    diff = float(np.linalg.norm(fin.mean(axis=0) - fout.mean(axis=0)))
    spread = float(np.sqrt(fin.var(axis=0).sum())) + float(np.sqrt(fout.var(axis=0).sum()))
    return diff / (spread + 1e-6)


def _border_leak(
    prob: np.ndarray, recist: Recist, cfg: Any, plane_shape: tuple[int, int]
) -> float:
    """Mean probability on the crop box border pixels that lie inside the image.

    Where the box is clipped by the image edge the image border is not counted: a
    lesion may legitimately touch the edge of the photograph.
    """
    from napari_recist_seg.preprocess import crop_box

    box = crop_box(recist, cfg)
    h, w = prob.shape
    parts = []
    if box.row0 >= 0:
        parts.append(prob[0, :])
    if box.row0 + box.side <= plane_shape[0]:
        parts.append(prob[h - 1, :])
    if box.col0 >= 0:
        parts.append(prob[:, 0])
    if box.col0 + box.side <= plane_shape[1]:
        parts.append(prob[:, w - 1])
    if not parts:
        return 0.0
    return float(np.mean(np.concatenate(parts)))

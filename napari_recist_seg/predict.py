"""The predictor: RECIST -> crop -> network -> lesion mask, batched for bulk work.

A :class:`Predictor` loads a checkpoint once and segments any number of lesions of one
image per call: every lesion's crop (the crop rule of :mod:`~napari_recist_seg.preprocess`,
stored in the checkpoint) goes through the network in one forward pass (in chunks of
``batch_size``), the probabilities are resized back to each crop box and clipped to the
image. Only the crop boxes of the image are ever read or allocated: a ``(Z, H, W)``
volume is segmented on the view ``volume[slice_index]`` and a 3000x2000 photograph is
never copied, so memory is bounded by the crop, not the image.

The mask is the probability above ``config.threshold``, refined per lesion against the
RECIST (``refine``, :mod:`~napari_recist_seg.refine`). ``postprocess=True`` also keeps
the component the RECIST points at and fills holes (off by default: it changed no mask
of 200 held-out ISIC images, ``benchmarks/README.md``; click mode always applies it).

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

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from napari_recist_seg.click import click_scales
from napari_recist_seg.click_rank import segment_click
from napari_recist_seg.image_checks import _check_image, _check_plane_values, _plane
from napari_recist_seg.intensity import detect_modality
from napari_recist_seg.model import CheckpointError, load_checkpoint, load_checkpoint_graph, resolve_device
from napari_recist_seg.polarity import DEFAULT_POLARITY, model_input
from napari_recist_seg.postprocess import (
    LesionResult,
    _sigmoid_inplace,
    _softmax,
    measure_mask,
    postprocess_mask,
    recist_cluster_probs,
)
from napari_recist_seg.preprocess import paste_back
from napari_recist_seg.recist import Recist, RecistError, snap
from napari_recist_seg.refine import refine_result
from napari_recist_seg.runtime import make_runner
from napari_recist_seg.stored_graph import _graph_predictor
from napari_recist_seg.tta import flip_average, resolve_tta
from napari_recist_seg.upsample import upsample_box

__all__ = ["DEFAULT_MODEL_DIR", "LesionResult", "Predictor", "click_scales", "postprocess_mask"]

#: Where the default model ships inside the package.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
#: Default refinement (napari_recist_seg.refine; chosen on val ids with benchmarks/proxy_shift.py).
DEFAULT_REFINE = "recist"
#: Probability upsampling before the threshold (napari_recist_seg.upsample.METHODS).
DEFAULT_UPSAMPLE = "none"


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
    tta : bool or str
        Test-time augmentation (:mod:`napari_recist_seg.tta`): ``"none"``/``False``,
        ``"flip"``/``True`` (left-right mirror, 2x the compute) or ``"flip4"`` (4x).
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
        tta: bool | str = False,
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
        self.tta = resolve_tta(tta)
        self.path = path
        self.preprocess = config.preprocess
        self.threshold = float(getattr(config, "threshold", 0.5))
        #: Calibration to a clinic's style (napari_recist_seg.calibration): logits + bias, outline moved.
        self.logit_bias, self.boundary_offset, self.recist_fit, self.grabcut_blend = (float(getattr(
            config, k, 0.0)) for k in ("logit_bias", "boundary_offset", "recist_fit", "grabcut_blend"))
        # Post-processing of the probability (napari_recist_seg.refine.METHODS).
        self.refine = DEFAULT_REFINE
        self.upsample = DEFAULT_UPSAMPLE  # edge-aware: napari_recist_seg.upsample
        #: Intensity rule (napari_recist_seg.intensity): ``None`` = decided per image
        #: (DICOM tag / HU range); a CT ``window`` preset or (level, width) override.
        self.modality: str | None = None
        self.window: Any = None
        self.polarity: str = DEFAULT_POLARITY  #: bright grey lesions shown dark: napari_recist_seg.polarity
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
            ``postprocess``, ``tta``, ``optimize``, ``backend``: see :class:`Predictor`;
            ``precision`` (``"auto"``, ``"int8"``, ``"fp32"``): see :mod:`~napari_recist_seg.stored_graph`.

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
        if path is None:
            if not (DEFAULT_MODEL_DIR / "config.json").is_file():
                raise CheckpointError(
                    f"the default model is missing from this installation ({DEFAULT_MODEL_DIR}); "
                    "pass a checkpoint with --model (or Predictor.load(path)), or train one "
                    "with `recist-seg train`"
                )
            path = DEFAULT_MODEL_DIR
        fast = _graph_predictor(cls, Path(path), device, kwargs, load_checkpoint_graph)
        if fast is not None:
            return fast
        dev = resolve_device(device)
        model, config, clusters = load_checkpoint(path, device=dev)
        return cls(model, config, clusters, dev, path=Path(path), **kwargs)

    def __repr__(self) -> str:
        c = self.config
        return (f"Predictor({c.mode}, encoder={c.encoder}, input={c.input_size}px, "
                f"K={c.n_clusters}, device={self.device}, path={self.path})")

    # -- internals -------------------------------------------------------------------
    def _forward(self, batch: np.ndarray, batch_size: int, tta: bool | str) -> tuple[np.ndarray, np.ndarray | None]:
        """Segmentation logits ``(N, S, S)`` and cluster probabilities ``(N, K)``."""
        seg_out: list[np.ndarray] = []
        aux_out: list[np.ndarray] = []
        for start in range(0, len(batch), max(1, int(batch_size))):
            seg, aux = flip_average(self._runner, batch[start : start + batch_size], tta)
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
        tta: bool | str,
        timings: dict[str, float] | None,
        postprocess: bool | None = None,
        modality: str | None = None, polarity: str | None = None,
    ) -> list[LesionResult]:
        """Segment already validated / snapped RECIST of one image (no checks)."""
        return self._run_many(
            [(image, recists)], batch_size=batch_size, tta=tta, timings=timings,
            postprocess=postprocess, modality_of=modality, polarity=polarity,
        )[0]

    def _run_many(
        self,
        pairs: Sequence[tuple[np.ndarray, Sequence[Recist]]],
        *,
        batch_size: int,
        tta: bool | str,
        timings: dict[str, float] | None,
        postprocess: bool | None = None,
        modality_of: str | Sequence[str | None] | None = None,
        polarity: str | None = None,
    ) -> list[list[LesionResult]]:
        """Segment validated RECIST of several images in shared forward passes
        (``modality_of``: one for all images, or one per image)."""
        postprocess = self.postprocess if postprocess is None else postprocess
        t0 = time.perf_counter()
        inputs, boxes, pol = [], [], polarity or self.polarity
        each = [modality_of] * len(pairs) if modality_of is None or isinstance(modality_of, str) else modality_of
        for (image, recists), given in zip(pairs, each):
            modality = self._modality(image, given)
            for r in recists:
                x, box = model_input(_plane(image, r), r, self.preprocess, modality=modality,
                                     window=self.window, polarity=pol)
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
                plane = _plane(image, r)
                res = self._finish(r, boxes[k], seg[k], None if aux is None else aux[k], plane.shape[:2],
                                   postprocess, plane, measure=not self._refines)
                results.append(self._refined(res, plane, postprocess))
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
        plane: np.ndarray | None = None,
        measure: bool = True,  # False: the refinement measures its own mask
    ) -> LesionResult:
        """Network output of one crop -> LesionResult in image coordinates (``plane``: guide)."""
        # Resize logits (smoother than resizing probabilities), then sigmoid; paste_back's
        # output is a fresh array (or a slice of the batch output, unused).
        offset, logits = paste_back(logits_crop, box, plane_shape)
        logits = np.asarray(logits, dtype=np.float32)
        prob = _sigmoid_inplace(logits + np.float32(self.logit_bias) if self.logit_bias else logits)
        if self.upsample != "none" and plane is not None:
            prob = upsample_box(self.upsample, prob, plane, offset, box.side / self.preprocess.input_size)
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
        measured = measure_mask(mask, offset, r) if measure or not mask.any() else None
        return LesionResult(r, offset, mask, prob, cluster, confidence, measured)

    @property
    def _refines(self) -> bool:  # True: _refined replaces (and measures) a non-empty mask
        return self.refine != "none" or bool(self.boundary_offset or self.recist_fit or self.grabcut_blend)

    def _refined(self, res: LesionResult, plane: np.ndarray, postprocess: bool) -> LesionResult:
        """Apply ``self.refine`` (a :mod:`~napari_recist_seg.refine` method), then the outline moves."""
        if not self._refines or not res.mask.any():
            return res
        return refine_result(res, plane, self.refine, threshold=self.threshold, postprocess=postprocess,
                             boundary_offset=self.boundary_offset, recist_fit=self.recist_fit,
                             grabcut_blend=self.grabcut_blend)

    def _modality(self, image: np.ndarray, given: str | None) -> str | None:
        """What the intensity rule needs for ``image``: the given modality, else the
        predictor's, else one detected from the values (HU air); 8-bit and colour
        images are not affected by it."""
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
        tta: bool | str | None = None,
        timings: dict[str, float] | None = None,
        modality: str | None = None,
        polarity: str | None = None,
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
        tta : bool or str, optional
            Override the predictor's test-time augmentation (:attr:`tta`).
        timings : dict, optional
            If given, seconds spent in ``"preprocess"``, ``"forward"`` and
            ``"postprocess"`` are added to it.
        modality : str, optional
            ``"ct"`` (CT window, :attr:`window` or soft tissue) or another modality
            (per-crop percentile normalisation); default: :attr:`modality`, else
            detected from the values (:func:`~napari_recist_seg.intensity.detect_modality`).
        polarity : str, optional
            ``"auto"`` or a decided ``"bright"`` / ``"dark"``; default :attr:`polarity`.

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
            timings=timings, modality=modality, polarity=polarity,
        )

    def segment_many(
        self,
        items: Sequence[tuple[np.ndarray, Sequence[Recist]]],
        *,
        batch_size: int = 32,
        tta: bool | str | None = None,
        timings: dict[str, float] | None = None,
        modalities: Sequence[str | None] | None = None,
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
        modalities : sequence of str or None, optional
            Each image's ``modality`` (as for :meth:`segment`; ``None``: detected).

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
        if modalities is not None and len(modalities) != len(pairs):
            raise ValueError(f"{len(modalities)} modalities for {len(pairs)} images")
        return self._run_many(pairs, batch_size=batch_size, tta=self.tta if tta is None else tta,
                              timings=timings, modality_of=None if modalities is None else list(modalities))

    def segment_click(
        self,
        image: np.ndarray,
        point: Sequence[float],
        *,
        slice_index: int | None = None,
        spacing: tuple[float, float] | None = None,
        scales: Sequence[float] | None = None,
        refine: bool = True, rounds: int | None = None, chooser: str | None = None,
    ) -> LesionResult:
        """Segment the lesion under one click, without a drawn RECIST: see
        :func:`napari_recist_seg.click_rank.segment_click` (this predictor is its ``predictor``)."""
        return segment_click(self, image, point, slice_index=slice_index, spacing=spacing,
                             scales=scales, refine=refine, rounds=rounds, chooser=chooser)

"""The model's mask blended with GrabCut from the same RECIST (the ``grabcut_blend`` knob).

Which is better depends on the clinic (issue #10): on one clinic's full-resolution
images GrabCut from the drawn RECIST beat the model (0.945 vs 0.923 Dice), on the
project's proxy the model beats GrabCut. A calibration chosen on the clinic's curated
images (:mod:`napari_recist_seg.calibration`) can weigh the two: the final mask is
where ``(1 - w) (sd(model) + px) + w sd(GrabCut) > 0`` (signed distances, positive
inside), ``w`` = ``grabcut_blend`` (0 = the model alone: every checkpoint without the
key), ``px`` the calibration's outline move of the model's mask (``boundary_offset x L
+ recist_fit x gap``, the gap measured on the model's mask).

GrabCut is :func:`~napari_recist_seg.grabcut.grabcut_mask` (seeded by the RECIST
ellipse, the no-training baseline), run on the lesion's crop box. Where it degenerates
(it returns the ellipse) the model's mask is kept. The blend keeps the component at
the RECIST crossing, holes filled. It runs after the refinement and the outline moves
(:func:`napari_recist_seg.refine.refine_result`): GrabCut's outline is the image's, not
fitted to the RECIST. Measured against the other order (the fit measured on the blended
outline, ``benchmarks/grabcut_blend.py``): the same on the val proxy, up to 0.0015 better
where the clinic's outlines follow colour edges.

Examples
--------
>>> from napari_recist_seg.recist import Recist
>>> img = np.full((64, 64), 40, np.uint8)
>>> img[20:44, 12:52] = 200                        # a bright 24 x 40 rectangle
>>> r = Recist([[32, 12], [32, 51]], [[20, 32], [43, 32]])
>>> model = np.zeros((64, 64), bool); model[16:48, 8:56] = True   # 4 px too large
>>> gc = grabcut_of(img, r)
>>> [int(blend_masks(model, gc, w, r).sum()) for w in (0.0, 1.0)] == [int(model.sum()), int(gc.sum())]
True
"""

from __future__ import annotations

import numpy as np

from napari_recist_seg.grabcut import grabcut_mask
from napari_recist_seg.mask_holes import fill_holes
from napari_recist_seg.recist import Recist, RecistError

__all__ = ["BLENDS", "blend_masks", "grabcut_of", "signed_distance"]

#: Blend weights the calibration searches (0 = the model, 1 = GrabCut).
BLENDS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def grabcut_of(crop: np.ndarray, recist_local: Recist) -> np.ndarray | None:
    """GrabCut's mask of the lesion on ``crop`` (the RECIST in its coordinates), or
    ``None`` where GrabCut degenerates (it would give the ellipse) or fails."""
    import cv2

    try:
        res = grabcut_mask(crop, recist_local, return_info=True)
    except (RecistError, ValueError, cv2.error):
        return None
    return None if res.fell_back or not res.mask.any() else res.mask


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance to the outline (px, float32): positive inside, negative outside.

    The crop's edge is not the lesion's edge: a mask touching it is extended beyond it.
    """
    import cv2

    m = np.pad(mask, 1, mode="edge").astype(np.uint8)
    inside = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return (inside - outside)[1:-1, 1:-1]


def _component_at(mask: np.ndarray, recist_local: Recist) -> np.ndarray:
    """The 8-connected component of ``mask`` at the RECIST crossing (else the largest),
    holes filled (as ``ndimage.binary_fill_holes``: background 4-connected to the
    border stays). OpenCV: the calibration runs this for every setting it scores."""
    import cv2

    m = mask.astype(np.uint8)
    n, labels = cv2.connectedComponents(m, connectivity=8)
    if n > 2:  # label 0 is the background
        try:
            r, c = (int(round(v)) for v in recist_local.crossing)
        except RecistError:
            r, c = (int(round(v)) for v in recist_local.centre)
        keep = int(labels[r, c]) if 0 <= r < mask.shape[0] and 0 <= c < mask.shape[1] else 0
        if keep == 0:
            keep = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
        m = (labels == keep).astype(np.uint8)
    elif n < 2:
        return mask
    return fill_holes(m)


def blend_masks(model: np.ndarray, gc: np.ndarray | None, weight: float, recist_local: Recist,
                sd_model: np.ndarray | None = None, sd_gc: np.ndarray | None = None,
                shift: float = 0.0) -> np.ndarray:
    """Where ``(1 - weight) (sd(model) + shift) + weight sd(gc) > 0``, the component at the
    crossing.

    Parameters
    ----------
    model, gc : np.ndarray
        bool masks of the same crop; ``gc`` ``None`` (GrabCut degenerated): ``model``.
    weight : float in [0, 1]
        0 returns ``model`` itself (unchanged, the same array).
    recist_local : Recist
        The prompt in the crop's coordinates (which component to keep).
    sd_model, sd_gc : np.ndarray, optional
        Their :func:`signed_distance` maps when already computed (the calibration
        scores several weights on the same masks).
    shift : float
        The model's outline moved outwards by this many pixels first (inwards if < 0).
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"grabcut_blend must be in [0, 1], got {weight}")
    if weight == 0 or gc is None or not model.any():
        return model
    if weight == 1:
        return _component_at(gc, recist_local)
    a = signed_distance(model) if sd_model is None else sd_model
    b = signed_distance(gc) if sd_gc is None else sd_gc
    out = (1.0 - weight) * (a + shift) + weight * b > 0
    return _component_at(out, recist_local) if out.any() else model

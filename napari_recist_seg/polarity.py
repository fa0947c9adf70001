"""Lesion polarity: is the lesion brighter than the tissue around it?

The default model was trained on dermoscopy, where lesions are darker than the skin
around them. Most CT lesions are darker than the liver in the soft-tissue window too,
but many MR lesions are brighter than their surroundings (brain lesions on T2 /
FLAIR, enhancing breast lesions on contrast T1), as is a hyperdense CT lesion. For a
grey image the model therefore sees a *bright* lesion's crop inverted (``1 - x`` of
the normalised crop), so that the lesion is dark as in training.

The rule (also in ``docs/RADIOLOGY.md``)
-----------------------------------------
The decision is made from the drawn RECIST alone, in the lesion's normalised crop
(the model's input crop before the mean / std step): the median inside the RECIST's
quadrilateral (the four endpoints; inside any lesion the axes span) against the
median of a ring around the RECIST's ellipse (axes = the drawn long and short axes;
:data:`RING` times its size). The lesion is ``"bright"`` when the inside median
exceeds the ring's by more than :data:`MARGIN` (in units of the normalised 0..1
range), else ``"dark"``.

It applies to grey images that are not 8-bit (MR, ``"grey"``, and CT read through its
window: a hyperdense lesion is bright there); colour and 8-bit images (dermoscopy,
photographs) are never inverted. On the LiTS CT no tumour is called bright (the
largest contrast is 0.009), so CT results there are unchanged (``docs/RESULTS.md``).
A lesion's decision is made once, on its RECIST slice, and kept for the 3D walk
(off-slice prompts are derived from masks and would each see a different crop).

Examples
--------
>>> yy, xx = np.mgrid[:64, :64]
>>> disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 100
>>> r = Recist([[32, 22], [32, 42]], [[22, 32], [42, 32]])
>>> crop_polarity(np.where(disc, 0.9, 0.4), r)
'bright'
>>> crop_polarity(np.where(disc, 0.1, 0.4), r)
'dark'
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from napari_recist_seg.intensity import normalize_grey
from napari_recist_seg.preprocess import CropBox, PreprocessConfig, crop_box, extract_crop, make_input
from napari_recist_seg.recist import Recist

__all__ = [
    "DEFAULT_POLARITY",
    "MARGIN",
    "POLARITY_MODES",
    "RING",
    "applies",
    "crop_contrast",
    "crop_polarity",
    "lesion_contrast",
    "lesion_polarity",
    "model_input",
    "recist_regions",
    "wants_inversion",
]

#: ``"auto"``: decided per lesion (:func:`lesion_polarity`); ``"dark"``: never invert;
#: ``"bright"``: always invert (grey, non-8-bit images only).
POLARITY_MODES = ("auto", "dark", "bright")
#: The :class:`~napari_recist_seg.predict.Predictor`'s default mode.
DEFAULT_POLARITY = "auto"
#: Inside median minus ring median (normalised units) above which a lesion is bright
#: (chosen on the even LiTS tumours of the MR-like proxies, benchmarks/lits_3d.py).
MARGIN = 0.05
#: Inner and outer size of the ring, in multiples of the RECIST's ellipse.
RING = (1.2, 1.6)


def applies(plane: np.ndarray, modality: str | None) -> bool:
    """True when ``plane`` may be inverted: grey, not 8-bit / bool, a known modality
    (CT, MR, ``"grey"``; not ``"rgb"``)."""
    a = np.asarray(plane)
    if a.ndim != 2 or a.dtype == np.uint8 or a.dtype == np.bool_:
        return False
    return modality is not None and str(modality).lower() != "rgb"


def recist_regions(recist: Recist, shape: tuple[int, int],
                   ring: tuple[float, float] = RING) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, ring)`` boolean masks of ``shape`` for a RECIST in its coordinates.

    ``inside``: the quadrilateral of the four endpoints (long, short, long, short).
    ``ring``: between ``ring[0]`` and ``ring[1]`` times the ellipse centred on the
    long axis' midpoint with the drawn long and short axes (half-lengths at least
    1 px), outside ``inside``.
    """
    (a0, a1), (b0, b1) = recist.long_axis, recist.short_axis
    quad = np.array([a0, b0, a1, b1], float)[:, ::-1]  # (col, row) for OpenCV
    inside = np.zeros(shape, np.uint8)
    cv2.fillPoly(inside, [np.round(quad * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    centre = (a0 + a1) / 2.0
    u = (a1 - a0) / max(float(np.hypot(*(a1 - a0))), 1e-9)
    half_l = max(recist.long_length / 2.0, 1.0)
    half_w = max(recist.short_length / 2.0, 1.0)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    dr, dc = rows - centre[0], cols - centre[1]
    along = dr * u[0] + dc * u[1]
    across = -dr * u[1] + dc * u[0]
    rho = np.sqrt((along / half_l) ** 2 + (across / half_w) ** 2)
    band = (rho >= ring[0]) & (rho <= ring[1]) & (inside == 0)
    return inside.astype(bool), band


def crop_contrast(crop01: np.ndarray, recist_in_crop: Recist) -> float:
    """Median inside the RECIST's quadrilateral minus the ring's median (0 when either
    region is empty), for a normalised grey crop and its RECIST in crop coordinates."""
    x = np.asarray(crop01, np.float32)
    inside, ring = recist_regions(recist_in_crop, x.shape[:2])
    vin, vout = x[inside], x[ring]
    vin, vout = vin[np.isfinite(vin)], vout[np.isfinite(vout)]
    if vin.size == 0 or vout.size == 0:
        return 0.0
    return float(np.median(vin)) - float(np.median(vout))


def crop_polarity(crop01: np.ndarray, recist_in_crop: Recist, margin: float = MARGIN) -> str:
    """``"bright"`` when :func:`crop_contrast` exceeds ``margin``, else ``"dark"``."""
    return "bright" if crop_contrast(crop01, recist_in_crop) > margin else "dark"


def lesion_contrast(plane: np.ndarray, recist: Recist, config: Any = None, *,
                    modality: str | None = None, window: Any = None) -> float:
    """:func:`crop_contrast` of a lesion's normalised model crop (any grey plane)."""
    cfg = config if config is not None else PreprocessConfig()
    box = crop_box(recist, cfg)
    size = int(cfg.input_size)
    crop = extract_crop(plane, box, size, pad_mode=cfg.pad_mode)
    return crop_contrast(normalize_grey(crop, modality, window), box.to_crop(recist, size))


def lesion_polarity(plane: np.ndarray, recist: Recist, config: Any = None, *,
                    modality: str | None = None, window: Any = None,
                    mode: str = "auto") -> str | None:
    """The polarity the model should see a lesion with (``None``: not applicable).

    Parameters
    ----------
    plane : ndarray (H, W)
        The RECIST's image plane (a volume slice).
    recist : Recist
        The drawn RECIST, in image coordinates.
    config : PreprocessConfig, optional
        The crop rule (the model's; default :class:`PreprocessConfig`).
    modality, window
        The intensity rule (:func:`~napari_recist_seg.intensity.normalize_grey`).
    mode : {"auto", "dark", "bright"}
        ``"auto"`` decides from the crop (:func:`crop_polarity`); the others are returned
        as they are.

    Returns
    -------
    str or None
        ``"bright"`` / ``"dark"``, or ``None`` for images the rule leaves alone
        (colour, 8-bit; see :func:`applies`).
    """
    if mode not in POLARITY_MODES:
        raise ValueError(f"polarity must be one of {POLARITY_MODES}, got {mode!r}")
    if not applies(plane, modality):
        return None
    if mode != "auto":
        return mode
    contrast = lesion_contrast(plane, recist, config, modality=modality, window=window)
    return "bright" if contrast > MARGIN else "dark"


def wants_inversion(plane: np.ndarray, recist: Recist, config: Any, *, modality: str | None,
                    window: Any, polarity: str | None) -> bool:
    """Whether the model's input crop of this lesion is inverted.

    ``polarity`` is a decided ``"bright"`` / ``"dark"`` (kept for a 3D walk), or a
    mode (``"auto"``) to decide here; ``None`` = ``"dark"`` (never invert).
    """
    if polarity is None or polarity == "dark":
        return False
    return lesion_polarity(plane, recist, config, modality=modality, window=window,
                           mode=polarity) == "bright"


def model_input(plane: np.ndarray, recist: Recist, config: Any, *, modality: str | None,
                window: Any, polarity: str | None) -> tuple[np.ndarray, CropBox]:
    """:func:`~napari_recist_seg.preprocess.make_input`, inverted where
    :func:`wants_inversion` says so (the predictor's input for one lesion)."""
    invert = wants_inversion(plane, recist, config, modality=modality, window=window,
                             polarity=polarity)
    return make_input(plane, recist, config, modality=modality, window=window, invert=invert)

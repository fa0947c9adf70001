"""The crop rule shared by training and inference: RECIST -> crop box -> network input.

A lesion is segmented inside a square crop centred on its RECIST (the centre of the
bounding box of the four endpoints), ``crop_factor`` times the long axis wide (at least
``min_crop`` pixels), resized to ``input_size`` x ``input_size``. Only the crop region of
the image is ever read (a 3000x2000 image or a volume plane is never copied); the part
of the box outside the image is padded. The network's probability map is resized back
to the box and clipped to the image by :func:`paste_back`.

Everything here is numpy + OpenCV (no torch), so the same code runs in training data
loaders, the predictor and tests. The settings live in :class:`PreprocessConfig`, which
is stored in every checkpoint so that inference uses exactly the training rule.

Pixel convention: pixel centres are at integer ``(row, col)``; the crop box covers
rows ``row0 .. row0 + side - 1``. ``cv2.resize`` maps pixel centres with the
"half-pixel" rule, and :meth:`CropBox.to_crop` uses the same rule for RECIST points,
so a point drawn on an image pixel lands on the matching crop pixel.

Examples
--------
>>> import numpy as np
>>> from napari_recist_seg.recist import Recist
>>> r = Recist([[50, 30], [50, 70]], [[40, 50], [60, 50]])
>>> cfg = PreprocessConfig(input_size=64, crop_factor=2.0)
>>> box = crop_box(r, cfg)
>>> box
CropBox(row0=11, col0=11, side=80)
>>> image = np.zeros((100, 120, 3), np.uint8)
>>> x = make_input(image, r, cfg)[0]
>>> x.shape, x.dtype.name
((4, 64, 64), 'float32')
>>> offset, prob = paste_back(np.ones((64, 64), np.float32), box, image.shape)
>>> offset, prob.shape
((11, 11), (80, 80))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from napari_recist_seg.intensity import is_ct, percentile_normalize, resolve_window
from napari_recist_seg.recist import Recist, RecistError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CropBox",
    "PreprocessConfig",
    "crop_box",
    "extract_crop",
    "make_input",
    "normalize_intensity",
    "paste_back",
    "render_recist",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Soft-tissue CT window (level, width) in HU: the usual RECIST reading window.
CT_SOFT_TISSUE_WINDOW = (40.0, 400.0)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a lesion crop is made and normalised (stored in the checkpoint).

    Parameters
    ----------
    input_size : int
        Side of the square network input in pixels.
    crop_factor : float
        Crop side as a multiple of the RECIST long axis.
    min_crop : int
        Smallest crop side in image pixels (tiny lesions still get context).
    recist_channel : bool
        Append a fourth input channel with the two RECIST axes drawn in it (tells the
        network which lesion and how far it extends when several are in the crop).
    pad_mode : {"edge", "constant"}
        How the part of the box outside the image is filled: replicate the border
        pixels, or zero (in raw intensity).
    ct_window : (float, float)
        ``(level, width)`` used for grey images that are not 8-bit (CT in HU).
    mean, std : (float, float, float)
        Per-channel normalisation applied after scaling intensities to [0, 1]
        (ImageNet statistics, so that ImageNet encoders see what they expect).
    """

    input_size: int = 128
    crop_factor: float = 2.0
    min_crop: int = 32
    recist_channel: bool = True
    pad_mode: str = "edge"
    ct_window: tuple[float, float] = CT_SOFT_TISSUE_WINDOW
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if int(self.input_size) < 8:
            raise ValueError(f"input_size must be at least 8 px, got {self.input_size}")
        if not float(self.crop_factor) > 0:
            raise ValueError(f"crop_factor must be positive, got {self.crop_factor}")
        if int(self.min_crop) < 2:
            raise ValueError(f"min_crop must be at least 2 px, got {self.min_crop}")
        if self.pad_mode not in ("edge", "constant"):
            raise ValueError(f"pad_mode must be 'edge' or 'constant', got {self.pad_mode!r}")
        if float(self.ct_window[1]) <= 0:
            raise ValueError(f"CT window width must be positive, got {self.ct_window[1]}")
        object.__setattr__(self, "input_size", int(self.input_size))
        object.__setattr__(self, "min_crop", int(self.min_crop))
        object.__setattr__(self, "crop_factor", float(self.crop_factor))
        object.__setattr__(self, "recist_channel", bool(self.recist_channel))
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def in_channels(self) -> int:
        """Number of network input channels (3 image channels, + 1 RECIST channel)."""
        return 4 if self.recist_channel else 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ct_window", "mean", "std"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessConfig":
        """Build from a dict, ignoring unknown keys (e.g. a whole ``ModelConfig``)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class CropBox:
    """A square crop in image pixel coordinates; it may extend outside the image.

    Covers rows ``row0 .. row0 + side - 1`` and the same for columns.
    """

    row0: int
    col0: int
    side: int

    def scale(self, size: int) -> float:
        """Zoom factor from image pixels to a ``size`` x ``size`` crop."""
        return size / self.side

    def crop_offset(self, size: int) -> tuple[float, float]:
        """The ``offset`` for :meth:`Recist.transformed` into a ``size`` crop.

        ``cv2.resize`` maps image pixel centre ``p`` to ``(p - row0 + 0.5) * s - 0.5``
        (``s = size / side``), which equals ``(p - offset) * s`` with this offset.
        """
        s = self.scale(size)
        return (self.row0 - 0.5 + 0.5 / s, self.col0 - 0.5 + 0.5 / s)

    def to_crop(self, recist: Recist, size: int) -> Recist:
        """``recist`` in the coordinates of the ``size`` x ``size`` resized crop."""
        return recist.transformed(self.crop_offset(size), self.scale(size))

    def to_image(self, points: np.ndarray, size: int) -> np.ndarray:
        """Map ``(N, 2)`` crop-pixel points back to image coordinates."""
        pts = np.asarray(points, dtype=float)
        return pts / self.scale(size) + np.asarray(self.crop_offset(size))

    def clipped(self, image_shape: Sequence[int]) -> tuple[slice, slice]:
        """Row and column slices of the box inside an image of ``image_shape``."""
        h, w = int(image_shape[0]), int(image_shape[1])
        r0, c0 = max(self.row0, 0), max(self.col0, 0)
        r1, c1 = min(self.row0 + self.side, h), min(self.col0 + self.side, w)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def crop_box(recist: Recist, config: PreprocessConfig | Any = None) -> CropBox:
    """The square crop for one lesion: centred on ``recist.centre``.

    ``side = max(min_crop, round(crop_factor * long_length))``.

    Parameters
    ----------
    recist : Recist
        The measurement, in image pixel coordinates (for a volume, of its slice).
    config : PreprocessConfig or any object with ``crop_factor`` and ``min_crop``
        Defaults to ``PreprocessConfig()``.

    Raises
    ------
    RecistError
        If the endpoints are not finite.

    Examples
    --------
    >>> r = Recist([[10, 10], [10, 20]], [[8, 15], [12, 15]])
    >>> crop_box(r, PreprocessConfig(min_crop=32))  # a 10 px lesion gets the minimum
    CropBox(row0=-5, col0=0, side=32)
    """
    cfg = config if config is not None else PreprocessConfig()
    pts = recist.endpoints
    if not np.all(np.isfinite(pts)):
        raise RecistError("coordinates contain NaN or infinity")
    side = max(int(cfg.min_crop), int(round(float(cfg.crop_factor) * recist.long_length)))
    centre = recist.centre
    # Box pixel centres run row0 .. row0+side-1, so their midpoint is row0+(side-1)/2.
    row0 = int(math.floor(centre[0] - (side - 1) / 2.0 + 0.5))
    col0 = int(math.floor(centre[1] - (side - 1) / 2.0 + 0.5))
    return CropBox(row0, col0, side)


def _plane_shape(image_plane: np.ndarray) -> tuple[int, int]:
    if image_plane.ndim == 2 or (image_plane.ndim == 3 and image_plane.shape[-1] in (3, 4)):
        return int(image_plane.shape[0]), int(image_plane.shape[1])
    raise ValueError(
        "expected a 2D plane: (H, W) grey or (H, W, 3/4) colour; "
        f"got shape {image_plane.shape} (pass one slice of a volume)"
    )


def extract_crop(
    image_plane: np.ndarray,
    box: CropBox,
    size: int,
    *,
    pad_mode: str = "edge",
) -> np.ndarray:
    """Read the box from the image, pad what lies outside, resize to ``size``.

    Only the box region is read (``image_plane`` can be a memory map or a view of a
    volume slice). Works for ``(H, W)`` grey and ``(H, W, 3)`` / ``(H, W, 4)`` colour
    images of any numeric dtype (an alpha channel is dropped).

    Returns
    -------
    np.ndarray
        float32 ``(size, size)`` or ``(size, size, 3)`` in the image's raw intensities.
    """
    h, w = _plane_shape(image_plane)
    if image_plane.ndim == 3 and image_plane.shape[-1] == 4:
        image_plane = image_plane[..., :3]
    rs, cs = box.clipped((h, w))
    region = np.asarray(image_plane[rs, cs])
    if region.dtype == bool:
        region = region.astype(np.uint8)
    top, left = rs.start - box.row0, cs.start - box.col0
    bottom = box.side - top - region.shape[0]
    right = box.side - left - region.shape[1]
    padded = bool(top or left or bottom or right)
    if padded and region.size and box.side > BIG_BOX_FACTOR * size:
        return _sample_padded(region, top, left, box.side, size, pad_mode)
    region = region.astype(np.float32, copy=False)
    if region.size == 0:
        # The box misses the image entirely: nothing to replicate.
        shape = (box.side, box.side) + region.shape[2:]
        region = np.zeros(shape, np.float32)
    elif top or left or bottom or right:
        border = cv2.BORDER_REPLICATE if pad_mode == "edge" else cv2.BORDER_CONSTANT
        region = cv2.copyMakeBorder(region, top, bottom, left, right, border, value=0)
    if region.shape[0] != size:
        region = cv2.resize(region, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(region, dtype=np.float32)


# Boxes this many times the network input that reach outside the image are sampled
# straight from the image instead of padded at full resolution first: a lesion larger
# than a 3000 x 2000 photo makes a 5000+ px box, 300+ MB as a padded float copy.
BIG_BOX_FACTOR = 4


def _sample_padded(
    region: np.ndarray, top: int, left: int, side: int, size: int, pad_mode: str
) -> np.ndarray:
    """What padding ``region`` to ``side`` and resizing to ``size`` gives, without the
    padded copy: bilinear sampling at the same positions as ``cv2.resize`` (pixel
    centre ``(o + 0.5) * side / size - 0.5`` of the padded box), with the border rule
    of the padding (interpolation weights in 1/32 px steps, OpenCV's warp tables)."""
    if region.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        region = region.astype(np.float32)
    k = side / size
    m = np.array([[k, 0.0, 0.5 * k - 0.5 - left], [0.0, k, 0.5 * k - 0.5 - top]])
    border = cv2.BORDER_REPLICATE if pad_mode == "edge" else cv2.BORDER_CONSTANT
    out = cv2.warpAffine(
        np.ascontiguousarray(region), m, (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border, borderValue=0,
    )
    return np.ascontiguousarray(out, dtype=np.float32)


def normalize_intensity(
    crop: np.ndarray,
    source_dtype: np.dtype | type,
    config: PreprocessConfig | Any = None,
    *,
    window: tuple[float, float] | None = None,
    modality: str | None = None,
    invert: bool = False,
) -> np.ndarray:
    """Scale a raw crop to [0, 1], make it 3-channel, apply mean/std.

    Rules (``source_dtype`` is the dtype of the image the crop came from):

    - colour ``(S, S, 3)``: uint8 / 255, uint16 / 65535, float taken as [0, 1]
      (or / 255 when its values exceed 1);
    - grey uint8 (and bool): / 255;
    - any other grey (CT in HU, int16, uint16, float): the window ``(level, width)``
      (``window`` argument, else ``config.ct_window``, soft tissue by default),
      clipped to [0, 1]; replicated to 3 channels so one network takes both.
      When ``modality`` is given and is not CT (``"mr"``, ``"grey"``...), the crop's
      1-99 percentiles map to [0, 1] instead: never a CT window on MR or a 16-bit
      photograph (:mod:`napari_recist_seg.intensity`). ``modality=None`` keeps the
      window (callers that know their array is CT in HU).

    NaN pixels become 0 (the lower end of the range). ``invert`` (grey crops only)
    maps the [0, 1] crop to ``1 - x``: a lesion brighter than its surroundings is
    shown dark, as the model was trained (:mod:`napari_recist_seg.polarity`).

    Returns
    -------
    np.ndarray
        float32 ``(3, S, S)``.
    """
    cfg = config if config is not None else PreprocessConfig()
    dt = np.dtype(source_dtype)
    x = np.asarray(crop, dtype=np.float32)
    if x.ndim == 3:
        scale = 255.0 if dt == np.uint8 else 65535.0 if dt == np.uint16 else None
        if scale is None and np.issubdtype(dt, np.floating) and np.nanmax(x, initial=0.0) > 1.0:
            scale = 255.0
        # Channels first in a C-ordered copy, then every step in place: the same float32
        # operations as on the channels-last view, in a fifth of the time (~0.3 ms at 128 px).
        x = np.moveaxis(x, -1, 0).astype(np.float32, order="C")
        if scale is not None:
            x /= np.float32(scale)
        return _clip_standardise(x, cfg)
    elif x.ndim == 2:
        if dt == np.uint8 or dt == np.bool_:
            x = x / 255.0 if dt == np.uint8 else x
        elif modality is not None and not is_ct(modality):
            x = percentile_normalize(x)
        else:
            level, width = resolve_window(window) if window is not None else cfg.ct_window
            x = (x - (float(level) - float(width) / 2.0)) / float(width)
        if invert:
            x = 1.0 - np.clip(x, 0.0, 1.0)
        x = np.broadcast_to(x, (3,) + x.shape)
    else:
        raise ValueError(f"crop must be (S, S) or (S, S, 3); got shape {x.shape}")
    return _clip_standardise(np.array(x, dtype=np.float32), cfg)


def _clip_standardise(x: np.ndarray, cfg: PreprocessConfig | Any) -> np.ndarray:
    """``(clip(x, 0, 1) - mean) / std`` per channel, NaN as 0, in place on ``x``
    (float32 ``(3, S, S)``, the caller's own copy)."""
    np.clip(x, 0.0, 1.0, out=x)
    np.nan_to_num(x, copy=False, nan=0.0)
    x -= np.asarray(cfg.mean, np.float32)[:, None, None]
    x /= np.asarray(cfg.std, np.float32)[:, None, None]
    return x


def render_recist(recist_in_crop: Recist, size: int) -> np.ndarray:
    """Draw the two RECIST axes (1-px anti-aliased lines, value 1) into a ``size``² map.

    ``recist_in_crop`` must already be in crop coordinates (:meth:`CropBox.to_crop`).
    """
    canvas = np.zeros((size, size), np.float32)
    shift = 4  # sub-pixel endpoints: cv2 takes fixed-point coordinates
    for seg in (recist_in_crop.long_axis, recist_in_crop.short_axis):
        (r1, c1), (r2, c2) = seg
        p1 = (int(round(c1 * 16)), int(round(r1 * 16)))
        p2 = (int(round(c2 * 16)), int(round(r2 * 16)))
        cv2.line(canvas, p1, p2, 1.0, thickness=1, lineType=cv2.LINE_AA, shift=shift)
    return np.clip(canvas, 0.0, 1.0)


def make_input(
    image_plane: np.ndarray,
    recist: Recist,
    config: PreprocessConfig | Any = None,
    *,
    window: tuple[float, float] | None = None,
    box: CropBox | None = None,
    modality: str | None = None,
    invert: bool = False,
) -> tuple[np.ndarray, CropBox]:
    """The network input for one lesion: crop, resize, normalise, RECIST channel.

    Parameters
    ----------
    image_plane : np.ndarray
        ``(H, W)`` grey or ``(H, W, 3)`` RGB plane (for a volume: ``volume[z]``, a view).
    recist : Recist
        The measurement in image coordinates.
    config : PreprocessConfig
        The crop rule (``ModelConfig.preprocess`` of a checkpoint).
    window : (level, width), optional
        Override the CT window for non-8-bit grey images (or a preset name).
    box : CropBox, optional
        Use this box instead of ``crop_box(recist, config)`` (training jitter).
    modality : str, optional
        ``"ct"``: the CT window; any other (``"mr"``, ``"grey"``): per-crop 1-99
        percentile normalisation; ``None``: the window (see :func:`normalize_intensity`).
    invert : bool
        Grey crops only: the normalised crop becomes ``1 - x`` (a bright lesion shown
        dark; :func:`napari_recist_seg.polarity.wants_inversion` decides).

    Returns
    -------
    x : np.ndarray
        float32 ``(C, S, S)``, C = ``config.in_channels``.
    box : CropBox
        The crop, for :func:`paste_back`.
    """
    cfg = config if config is not None else PreprocessConfig()
    if box is None:
        box = crop_box(recist, cfg)
    size = int(cfg.input_size)
    crop = extract_crop(image_plane, box, size, pad_mode=cfg.pad_mode)
    x = normalize_intensity(crop, image_plane.dtype, cfg, window=window, modality=modality,
                            invert=invert)
    if cfg.recist_channel:
        ch = render_recist(box.to_crop(recist, size), size)
        x = np.concatenate([x, ch[None]], axis=0)
    return np.ascontiguousarray(x), box


def paste_back(
    prob_crop: np.ndarray,
    box: CropBox,
    image_shape: Sequence[int],
) -> tuple[tuple[int, int], np.ndarray]:
    """Resize a crop's probability map to the box and clip it to the image.

    Parameters
    ----------
    prob_crop : np.ndarray
        ``(S, S)`` probabilities (or logits) from the network.
    box : CropBox
        The box the input was cut from.
    image_shape : sequence of int
        ``(H, W, ...)`` of the image plane.

    Returns
    -------
    offset : (int, int)
        Top-left ``(row, col)`` of the returned array in the image.
    prob : np.ndarray
        float32, the part of the box inside the image (possibly empty).
    """
    p = np.asarray(prob_crop, dtype=np.float32)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"prob_crop must be square (S, S); got shape {p.shape}")
    h, w = int(image_shape[0]), int(image_shape[1])
    rs, cs = box.clipped((h, w))
    if p.shape[0] != box.side:
        p = cv2.resize(p, (box.side, box.side), interpolation=cv2.INTER_LINEAR)
    r0, c0 = rs.start - box.row0, cs.start - box.col0
    out = p[r0 : r0 + (rs.stop - rs.start), c0 : c0 + (cs.stop - cs.start)]
    return (rs.start, cs.start), np.ascontiguousarray(out)

"""Edge-aware upsampling of the network's probability to the image's resolution.

The network sees the lesion's crop resized to ``input_size`` (128) pixels; on a
full-resolution photograph the crop box is several times larger, so the probability
resized back to it (bilinear) has a boundary as coarse as one network pixel (about
``box side / input_size`` image pixels). A guided filter (He, Sun and Tang, "Guided
image filtering", ECCV 2010 / TPAMI 2013) with the full-resolution image crop as the
guide makes the probability follow the image's own edges where the image has them and
leaves it smooth where it has none: inside every ``(2 radius + 1)`` window the output
is a linear function of the guide, ``q = a I + b``, fitted to the probability with a
ridge ``eps`` on ``a``. Computed in the "fast" form (He and Sun 2015): the
coefficients at twice the resolution of the network's output (where the probability
has its information), then resized to the box and applied to the full-resolution guide.
:class:`~napari_recist_seg.predict.Predictor` applies it when ``upsample = "guided"``
(off by default: on the proxy it gains with exact RECIST only, ``docs/RESULTS.md``).

Only ``cv2.boxFilter`` / ``cv2.resize`` (no opencv-contrib); pure numpy otherwise.

Examples
--------
>>> import numpy as np
>>> guide = np.zeros((64, 64), np.float32); guide[:, 29:] = 1.0  # an edge at col 29
>>> prob = np.zeros((64, 64), np.float32); prob[:, 32:] = 1.0    # a boundary 3 px off
>>> prob = cv2.GaussianBlur(prob, (0, 0), 4)                     # ... and blurred
>>> q = guided_filter(guide, prob, radius=8, eps=1e-3)
>>> int(np.argmax(q[32] > 0.5)), int(np.argmax(prob[32] > 0.5))
(29, 32)
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = [
    "METHODS", "UPSAMPLE_EPS", "UPSAMPLE_RADIUS", "guide_image", "guided_filter",
    "guided_upsample", "upsample_box",
]

#: ``"none"``: the bilinear probability as is; ``"guided"``: :func:`guided_upsample`.
METHODS = ("none", "guided")

#: Window radius in network-output pixels (x the box's scale in image pixels) and the
#: ridge on the guide's slope (guide channels normalised to 0..1 per crop): chosen on
#: 60 validation ids of the default model's split, renders clinic / none / hires of
#: benchmarks/proxy_shift.py (benchmarks/upsample_grid.py; docs/RESULTS.md).
UPSAMPLE_RADIUS = 6.0
UPSAMPLE_EPS = 1e-3
# Below this box side / input size the bilinear boundary is already fine: no filtering.
_MIN_SCALE = 1.5


def _box(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the ``(2 radius + 1)`` square window (edges: reflected)."""
    k = 2 * int(radius) + 1
    return cv2.boxFilter(x, cv2.CV_32F, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)


def guide_image(image_crop: np.ndarray) -> np.ndarray:
    """The grey guide of an image crop, float32 in 0..1 (1st-99th percentile per crop).

    Colour crops use their luminance (dermoscopic lesions are darker than skin);
    CT / 16-bit crops are stretched by the same percentiles, so ``eps`` means the
    same for every modality. 8-bit crops go through a histogram and a look-up
    table (~1 ms for a 600 x 600 crop instead of ~20 ms).

    >>> [round(float(v), 2) for v in guide_image(np.array([[0, 100], [200, 255]], np.uint8)).ravel()]
    [0.0, 0.39, 0.78, 1.0]
    """
    x = np.asarray(image_crop)
    if x.ndim == 3:
        x = x[..., :3]
        if x.dtype == np.uint8:
            x = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY)
        else:
            x = x.astype(np.float32).mean(axis=2)
    if x.size == 0:
        return np.zeros(x.shape, np.float32)
    if x.dtype == np.uint8:
        cdf = np.cumsum(np.bincount(x.ravel(), minlength=256)) / x.size
        lo, hi = _cdf_percentile(cdf, 0.01), _cdf_percentile(cdf, 0.99)
        lut = np.clip((np.arange(256, dtype=np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        return lut[x] if hi - lo > 1e-6 else np.zeros(x.shape, np.float32)
    g = np.nan_to_num(x.astype(np.float32), nan=0.0)
    step = max(1, int(np.sqrt(g.size / 40000)))  # percentiles of a ~200 x 200 sample
    lo, hi = np.percentile(g[::step, ::step], (1, 99))
    if hi - lo < 1e-6:
        return np.zeros(g.shape, np.float32)
    return np.clip((g - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _cdf_percentile(cdf: np.ndarray, q: float) -> float:
    """The value at quantile ``q`` of an 8-bit histogram's cumulative distribution
    (linear between bins, like ``np.percentile``)."""
    k = int(np.searchsorted(cdf, q))
    lo = cdf[k - 1] if k > 0 else 0.0
    return float(k - 1 + (q - lo) / max(cdf[k] - lo, 1e-12)) if k > 0 else 0.0


def guided_filter(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float, *, subsample: float = 1.0
) -> np.ndarray:
    """He et al.'s guided filter of ``src`` by the grey ``guide`` (same shape).

    Parameters
    ----------
    guide, src : np.ndarray
        float32 ``(H, W)`` arrays.
    radius : int
        Window radius in pixels of ``guide``.
    eps : float
        Regularisation of the local slope (in the guide's squared units).
    subsample : float
        The coefficients are computed on both arrays shrunk by this factor (the fast
        guided filter), then resized back; 1 = the exact filter.

    Returns
    -------
    np.ndarray
        float32 ``(H, W)``.
    """
    guide = np.asarray(guide, np.float32)
    src = np.asarray(src, np.float32)
    h, w = guide.shape
    s = max(1.0, float(subsample))
    small = (max(1, int(round(w / s))), max(1, int(round(h / s))))
    if s > 1.0:
        g = cv2.resize(guide, small, interpolation=cv2.INTER_AREA)
        p = cv2.resize(src, small, interpolation=cv2.INTER_AREA)
    else:
        g, p = guide, src
    r = max(1, int(round(radius / s)))
    mean_g, mean_p = _box(g, r), _box(p, r)
    var_g = _box(g * g, r) - mean_g * mean_g
    cov = _box(g * p, r) - mean_g * mean_p
    a = cov / (var_g + np.float32(eps))
    b = mean_p - a * mean_g
    mean_a, mean_b = _box(a, r), _box(b, r)
    if s > 1.0:
        mean_a = cv2.resize(mean_a, (w, h), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (w, h), interpolation=cv2.INTER_LINEAR)
    return mean_a * guide + mean_b


def colour_guide(image_crop: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` float32 guide in 0..1: each channel stretched by its 1st-99th
    percentile (grey crops: :func:`guide_image` repeated)."""
    x = np.asarray(image_crop)
    if x.ndim == 2 or x.shape[-1] < 3:
        g = guide_image(x if x.ndim == 2 else x[..., 0])
        return np.repeat(g[..., None], 3, axis=2)
    return np.stack([guide_image(np.ascontiguousarray(x[..., k])) for k in range(3)], axis=2)


def colour_guided_filter(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float, *, subsample: float = 1.0
) -> np.ndarray:
    """He et al.'s guided filter with a colour guide ``(H, W, 3)`` (a 3 x 3 local
    covariance per window instead of a variance: edges of hue as well as of grey)."""
    guide = np.asarray(guide, np.float32)
    src = np.asarray(src, np.float32)
    h, w = src.shape
    s = max(1.0, float(subsample))
    if s > 1.0:
        small = (max(1, int(round(w / s))), max(1, int(round(h / s))))
        g = cv2.resize(guide, small, interpolation=cv2.INTER_AREA)
        p = cv2.resize(src, small, interpolation=cv2.INTER_AREA)
    else:
        g, p = guide, src
    r = max(1, int(round(radius / s)))
    mean_g = np.stack([_box(g[..., k], r) for k in range(3)], axis=2)
    mean_p = _box(p, r)
    cov_gp = np.stack([_box(g[..., k] * p, r) for k in range(3)], axis=2) - mean_g * mean_p[..., None]
    c = {}
    for i in range(3):
        for j in range(i, 3):
            c[i, j] = _box(g[..., i] * g[..., j], r) - mean_g[..., i] * mean_g[..., j]
            if i == j:
                c[i, j] += np.float32(eps)
    a = _solve_sym3(c, cov_gp)
    b = mean_p - (a * mean_g).sum(axis=2)
    mean_a = np.stack([_box(np.ascontiguousarray(a[..., k]), r) for k in range(3)], axis=2)
    mean_b = _box(b, r)
    if s > 1.0:
        mean_a = cv2.resize(mean_a, (w, h), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (w, h), interpolation=cv2.INTER_LINEAR)
    return (mean_a * guide).sum(axis=2) + mean_b


def _solve_sym3(c: dict, rhs: np.ndarray) -> np.ndarray:
    """Per-pixel solution of a symmetric 3 x 3 system (entries ``c[i, j]``, i <= j),
    by the adjugate (``np.linalg.solve`` over the pixels is ~10x slower)."""
    a, b, d = c[0, 0], c[0, 1], c[0, 2]
    e, f, k = c[1, 1], c[1, 2], c[2, 2]
    i00, i01, i02 = e * k - f * f, d * f - b * k, b * f - d * e
    i11, i12, i22 = a * k - d * d, b * d - a * f, a * e - b * b
    det = a * i00 + b * i01 + d * i02
    x, y, z = rhs[..., 0], rhs[..., 1], rhs[..., 2]
    out = np.stack([i00 * x + i01 * y + i02 * z, i01 * x + i11 * y + i12 * z,
                    i02 * x + i12 * y + i22 * z], axis=2)
    return out / det[..., None]


def guided_upsample(
    prob: np.ndarray,
    image_crop: np.ndarray,
    scale: float,
    *,
    radius: float = UPSAMPLE_RADIUS,
    eps: float = UPSAMPLE_EPS,
    colour: bool = True,
    smooth: float = 0.0,
    detail: float = 2.0,
) -> np.ndarray:
    """The probability of a crop box made to follow the full-resolution image's edges.

    Parameters
    ----------
    prob : np.ndarray
        float32 ``(h, w)`` probability already resized to the box (bilinear).
    image_crop : np.ndarray
        The image under it (same rows and cols; grey or colour, any dtype).
    scale : float
        Image pixels per network-output pixel (box side / input size). Below 1.5
        ``prob`` is returned as is (nothing to recover).
    radius : float
        Window radius in network-output pixels (image pixels: ``radius * scale``).
    eps : float
        Ridge on the slope, guide in 0..1.
    colour : bool
        Colour guide (:func:`colour_guided_filter`; a grey crop is its own guide);
        ``False``: the luminance (:func:`guided_filter`, ~4 x cheaper, a little
        less accurate on the proxy).
    smooth : float
        Blur the guide by ``smooth * scale / 2`` px first (against sensor noise;
        0 = off, measured no better on the noisy ``hires`` proxy).
    detail : float
        The coefficients are computed at ``detail`` x the network's output
        resolution (the fast guided filter's subsampling is ``scale / detail``).

    Returns
    -------
    np.ndarray
        float32 ``(h, w)`` in 0..1.

    Examples
    --------
    >>> p = np.full((40, 40), 0.2, np.float32)
    >>> guided_upsample(p, np.zeros((40, 40, 3), np.uint8), 1.0) is p
    True
    """
    if scale < _MIN_SCALE or prob.size == 0 or prob.shape != image_crop.shape[:2]:
        return prob
    # The coefficients at about the network's resolution: finer adds nothing to
    # what the probability knows and costs scale^2 more.
    guide = colour_guide(image_crop) if colour else guide_image(image_crop)
    if smooth > 0:  # sensor noise: the last step q = a I + b would copy it into q
        guide = cv2.GaussianBlur(guide, (0, 0), smooth * scale / 2.0)
    filt = colour_guided_filter if colour else guided_filter
    q = filt(guide, prob, int(round(radius * scale)), eps, subsample=scale / max(detail, 1e-3))
    return np.clip(q, 0.0, 1.0, out=q)



def upsample_box(
    method: str, prob: np.ndarray, plane: np.ndarray, offset: tuple[int, int], scale: float
) -> np.ndarray:
    """``prob`` (at ``offset`` in the image ``plane``) upsampled by ``method``.

    The hook of :class:`~napari_recist_seg.predict.Predictor` (its ``upsample``).

    >>> p = np.full((4, 4), 0.5, np.float32)
    >>> upsample_box("none", p, np.zeros((9, 9), np.uint8), (2, 2), 4.0) is p
    True
    """
    if method not in METHODS:
        raise ValueError(f"unknown upsampling {method!r}; choose one of {', '.join(METHODS)}")
    if method == "none":
        return prob
    (r0, c0), (h, w) = offset, prob.shape
    return guided_upsample(prob, plane[r0 : r0 + h, c0 : c0 + w], scale)

"""Click mode: the lesion under one click, without a drawn RECIST.

Circular pseudo-RECIST of several sizes are segmented around the click in one batch;
the image (not the network's confidence) ranks the candidates by how much their mask
stands out from the ring of image around it; the RECIST measured on each of the best
few is segmented (one more batch), and the round that stands out most while keeping
the RECIST it was prompted with wins; its RECIST is segmented again until it stops
moving. :meth:`~napari_recist_seg.predict.Predictor.segment_click` runs this rule with
``chooser="rounds"`` (:mod:`~napari_recist_seg.click_rank`: the default for models other than
the shipped one); ``click_check`` judges a result with the same features.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Any, Sequence

import cv2
import numpy as np

from napari_recist_seg.image_checks import _check_image, _is_volume
from napari_recist_seg.polarity import lesion_polarity
from napari_recist_seg.postprocess import LesionResult
from napari_recist_seg.preprocess import crop_box
from napari_recist_seg.recist import Recist, RecistError, snap
from napari_recist_seg.tta import resolve_tta

__all__ = ["CLICK_RECIST_TOLERANCE", "CLICK_ROUNDS", "click_predictor", "click_scales", "recist_shift", "segment_click"]

# A click candidate whose mean probability on its crop border exceeds this leaks out
# of its crop: the lesion is larger than the crop.
_CLICK_BORDER_LIMIT = 0.05
#: Most click -> mask -> RECIST -> mask rounds (each one forward pass).
CLICK_ROUNDS = 3
#: First round: the best candidates (by contrast) whose RECIST round is compared.
CLICK_TOP_K = 4
#: First rounds are compared by their contrast over the ring's spread only
#: (:func:`_region_contrast` ``ring_only``) less this weight x their RECIST shift;
#: before issue 10fr: the two-sided contrast, weight 2.
CLICK_RING_ONLY = True
CLICK_SHIFT_WEIGHT = 0.0
#: The iteration has converged when no endpoint of the measured RECIST moved by more
#: than this fraction of its long axis.
CLICK_RECIST_TOLERANCE = 0.02


def segment_click(
    predictor: Any,
    image: np.ndarray,
    point: Sequence[float],
    *,
    slice_index: int | None = None,
    spacing: tuple[float, float] | None = None,
    scales: Sequence[float] | None = None,
    refine: bool = True,
    rounds: int | None = None,
) -> LesionResult:
    """Segment the lesion under one click, without a drawn RECIST.

    Every diameter in ``scales`` gives a circular pseudo-RECIST centred on the
    click; all are segmented in one batch. The network follows the extent a
    RECIST tells it, so each candidate is a lesion-like blob of about that size
    and the network's confidence hardly tells the sizes apart; the image does:
    among the candidates that contain the click and fit their crop, the one
    whose mask stands out most from the ring of image just outside it (10 % of
    the diameter wide; colour difference of the means over the summed spreads,
    in CIE Lab, or grey / CT-windowed intensity) ranks them (without
    ``refine`` the first one is returned).
    With ``refine`` (default) the RECIST measured (:func:`recist_from_mask`) on
    each of the :data:`CLICK_TOP_K` best candidates is segmented in one batch
    (a RECIST follows the lesion's real shape rather than a circle); the round
    that stands out most from its ring, judged by the ring's spread alone
    (:data:`CLICK_RING_ONLY`: a lesion with a dark core and a lighter rim varies
    inside, its core alone does not), less :data:`CLICK_SHIFT_WEIGHT` (0) times
    its :func:`recist_shift`, wins.
    Its RECIST is then segmented again, at most ``rounds - 1`` more times, while
    the shift shrinks and is at least :data:`CLICK_RECIST_TOLERANCE`; the most
    self-consistent round is returned. On 80 fresh validation ids of the 3x
    re-rendered clinic proxy the ring-only rule lifted click Dice from 0.836 to
    0.875 (``docs/RESULTS.md``).

    Parameters
    ----------
    predictor : Predictor
        The loaded model (:class:`~napari_recist_seg.predict.Predictor`).
    image : np.ndarray
        As for :meth:`~napari_recist_seg.predict.Predictor.segment`.
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
        Re-segment from the derived RECIST (``False``: the chosen candidate as is).
    rounds : int, optional
        Most RECIST rounds with ``refine`` (default :data:`CLICK_ROUNDS`); the
        first is a batch of :data:`CLICK_TOP_K` crops, each later one one crop.

    Returns
    -------
    LesionResult
        Its ``recist`` (and ``measured``) is the RECIST derived from its mask
        with :func:`recist_from_mask`; it lies inside the mask.

    Raises
    ------
    RecistError
        If the point lies outside the image, or no candidate mask contains it.

    Notes
    -----
    A calibration's ``recist_fit`` (the shipped default has 0.75) is off here: it
    fits the outline to a *drawn* RECIST, and a click has none (fitting each
    candidate to its circle, and each round to its own measured RECIST, lost 0.024 Dice
    on 40 val ids of the clinic proxy); so is ``grabcut_blend`` (GrabCut is seeded by a
    drawn RECIST's ellipse, a candidate's circle is not one, and it would run on every
    candidate); ``logit_bias`` and ``boundary_offset`` (the clinic's style) apply.
    Test-time augmentation is off too (with ``flip4``: -0.014 Dice, 30 val clicks, clinic).
    """
    return _segment_click(click_predictor(predictor), image, point, slice_index, spacing, scales,
                          refine, rounds)


def click_predictor(predictor: Any) -> Any:
    """``predictor`` as a click runs it (no ``recist_fit``, ``grabcut_blend``, TTA): a shallow
    copy when any is set, so another thread segmenting RECIST with it keeps them."""
    if (getattr(predictor, "recist_fit", 0.0) or getattr(predictor, "grabcut_blend", 0.0)
            or resolve_tta(getattr(predictor, "tta", False)) != "none"):
        predictor = copy.copy(predictor)
        predictor.recist_fit = predictor.grabcut_blend = 0.0
        predictor.tta = "none"
    return predictor


def _segment_click(predictor: Any, image: np.ndarray, point: Sequence[float], slice_index: int | None,
                   spacing: tuple[float, float] | None, scales: Sequence[float] | None,
                   refine: bool, rounds: int | None) -> LesionResult:
    """:func:`segment_click` with the predictor's calibration as it is."""
    arr, slice_index, plane, (pr, pc), diameters, candidates = click_candidates(
        predictor, image, point, slice_index, spacing, scales)
    ranked = _ranked_candidates(predictor, plane, (pr, pc), diameters, candidates)
    if not ranked:
        raise RecistError(f"no lesion found at ({pr}, {pc}); draw the RECIST axes instead")
    n_rounds = CLICK_ROUNDS if rounds is None else int(rounds)
    chosen = ranked[0]
    if refine and n_rounds >= 1:
        chosen = _first_round(predictor, arr, plane, (pr, pc), ranked)
        chosen = _iterate_click(_kept_polarity(predictor, arr, plane, chosen), arr, chosen, (pr, pc),
                                n_rounds - 1)
    measured = replace(chosen.measured, spacing=spacing, slice_index=slice_index)  # type: ignore[arg-type]
    return replace(chosen, recist=measured, measured=measured)


def click_candidates(predictor: Any, image: np.ndarray, point: Sequence[float], slice_index: int | None,
                     spacing: tuple[float, float] | None, scales: Sequence[float] | None) -> tuple:
    """The circular candidates of a click, segmented in one batch: ``(array, slice_index,
    plane, (row, col) click, diameters, results)`` (one result per diameter)."""
    arr = _check_image(image)
    slice_index, h, w = _click_slice(arr, slice_index)
    p = _click_point(point, h, w)
    diameters = click_scales((h, w)) if scales is None else [float(d) for d in scales]
    diameters = [d for d in diameters if d >= 2.0]
    if not diameters:
        raise ValueError("scales must hold diameters of at least 2 px")
    prompts = [_circle(p, d, slice_index, spacing) for d in diameters]
    # Pseudo-RECIST may reach past the image border: the crop pads, so no validation.
    # A click is a weak prompt: always keep only the component under it.
    candidates = predictor._run(
        arr, prompts, batch_size=len(prompts), tta=predictor.tta, timings=None, postprocess=True
    )
    plane = arr[slice_index] if slice_index is not None else arr
    return arr, slice_index, plane, (int(round(p[0])), int(round(p[1]))), diameters, candidates


def _kept_polarity(predictor: Any, arr: np.ndarray, plane: np.ndarray, chosen: LesionResult) -> Any:
    """``predictor`` with the lesion polarity of the chosen round (decided on its RECIST
    prompt, as for a drawn RECIST) fixed for the later rounds (a shallow copy)."""
    mode = getattr(predictor, "polarity", None)
    if mode != "auto" or not hasattr(predictor, "_modality"):
        return predictor
    pol = lesion_polarity(plane, chosen.recist, predictor.preprocess, mode=mode,
                          modality=predictor._modality(arr, None), window=predictor.window)
    if pol is None:
        return predictor
    predictor = copy.copy(predictor)
    predictor.polarity = pol
    return predictor


def _click_slice(arr: np.ndarray, slice_index: int | None) -> tuple[int | None, int, int]:
    """``(slice_index, h, w)`` of the clicked plane (a volume needs a valid slice)."""
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
    return slice_index, h, w


def _click_point(point: Sequence[float], h: int, w: int) -> np.ndarray:
    """The click as a finite ``(row, col)`` inside the ``h`` x ``w`` plane."""
    p = np.asarray(point, dtype=float).ravel()
    if p.shape != (2,) or not np.all(np.isfinite(p)):
        raise RecistError(f"the click must be one finite (row, col) point; got {point!r}")
    if not (-0.5 <= p[0] <= h - 0.5 and -0.5 <= p[1] <= w - 0.5):
        raise RecistError(
            f"the click ({p[0]:.1f}, {p[1]:.1f}) lies outside the {h}x{w} image"
        )
    return p


def _feature_window(
    predictor: Any, plane: np.ndarray, results: Sequence[LesionResult], pad: int
) -> tuple[np.ndarray, tuple[int, int]]:
    """Image features of the region all ``results`` (and ``pad`` px rings) cover."""
    h, w = plane.shape[:2]
    w0r = max(0, min(c.offset[0] for c in results) - pad)
    w0c = max(0, min(c.offset[1] for c in results) - pad)
    w1r = min(h, max(c.offset[0] + c.mask.shape[0] for c in results) + pad)
    w1c = min(w, max(c.offset[1] + c.mask.shape[1] for c in results) + pad)
    return _click_features(plane[w0r:w1r, w0c:w1c], predictor.preprocess), (w0r, w0c)


def _ranked_candidates(
    predictor: Any,
    plane: np.ndarray,
    click: tuple[int, int],
    diameters: Sequence[float],
    candidates: Sequence[LesionResult],
) -> list[LesionResult]:
    """The candidates that contain the click, best first: those that fit their crop
    first, then by how much they stand out from the ring of image around them."""
    h, w = plane.shape[:2]
    feats, origin = _feature_window(
        predictor, plane, candidates, max(2, int(round(0.1 * max(diameters))))
    )
    keyed = []
    for i, (d, res) in enumerate(zip(diameters, candidates)):
        if not _holds(res, click):
            continue
        # A mask running into its crop border (inside the image) is cut off: the
        # lesion is bigger than this crop; prefer candidates that fit.
        leak = _border_leak(res.probability, res.recist, predictor.preprocess, (h, w))
        score = _region_contrast(feats, origin, res.mask, res.offset, max(2, int(round(0.1 * d))))
        keyed.append(((leak <= _CLICK_BORDER_LIMIT, score, -i), res))
    keyed.sort(key=lambda kr: kr[0], reverse=True)
    return [res for _, res in keyed]


def _first_round(
    predictor: Any,
    arr: np.ndarray,
    plane: np.ndarray,
    click: tuple[int, int],
    ranked: Sequence[LesionResult],
) -> LesionResult:
    """The first RECIST round of the :data:`CLICK_TOP_K` best candidates, in one
    batch; the round whose mask stands out most from its ring (over the ring's
    spread when :data:`CLICK_RING_ONLY`), less :data:`CLICK_SHIFT_WEIGHT` times how
    far its RECIST moved from the candidate's, wins. The best candidate itself
    when no round holds the click."""
    top, prompts = [], []
    for res in ranked[:CLICK_TOP_K]:
        try:
            prompts.append(snap(res.measured))
        except RecistError:  # a derived RECIST of an odd shape may not cross
            continue
        top.append(res)
    if not prompts:
        return ranked[0]
    rounds = predictor._run(
        arr, prompts, batch_size=len(prompts), tta=predictor.tta, timings=None, postprocess=True
    )
    held = [(c, r) for c, r in zip(top, rounds) if _holds(r, click)]
    if not held:
        return ranked[0]
    longest = max(r.measured.long_length for _, r in held)
    feats, origin = _feature_window(
        predictor, plane, [r for _, r in held], max(2, int(round(0.1 * longest)))
    )

    def score(pair: tuple[LesionResult, LesionResult]) -> float:
        cand, res = pair
        width = max(2, int(round(0.1 * res.measured.long_length)))
        # Spread of the ring only: a whole lesion with a dark core and a lighter rim
        # is as distinct from the skin around it as its core alone, but its inside
        # varies more (the two-sided contrast chose the core too often).
        contrast = _region_contrast(feats, origin, res.mask, res.offset, width,
                                    ring_only=CLICK_RING_ONLY)
        return contrast - CLICK_SHIFT_WEIGHT * recist_shift(cand.measured, res.measured)

    return max(held, key=score)[1]


def _iterate_click(
    predictor: Any, arr: np.ndarray, current: LesionResult, click: tuple[int, int], rounds: int
) -> LesionResult:
    """Re-segment from the measured RECIST while it keeps moving (at most ``rounds``).

    Each result's shift is how far the RECIST measured on its mask moved from the
    RECIST it was prompted with (:func:`recist_shift`). The iteration stops when
    the shift falls below :data:`CLICK_RECIST_TOLERANCE` (converged), stops
    shrinking (it oscillates), or a round does not cross or loses the click; the
    most self-consistent result seen (smallest shift) is returned.
    """
    best, best_shift = current, recist_shift(current.recist, current.measured)
    shift = best_shift
    for _ in range(rounds):
        if shift < CLICK_RECIST_TOLERANCE:
            break
        nxt = _click_round(predictor, arr, current.measured, click)
        if nxt is None:
            break
        current, previous = nxt, shift
        shift = recist_shift(nxt.recist, nxt.measured)
        if shift < best_shift:
            best, best_shift = nxt, shift
        if shift >= previous:
            break
    return best


def _click_round(
    predictor: Any, arr: np.ndarray, recist: Recist, click: tuple[int, int]
) -> LesionResult | None:
    """One forward pass from ``recist``; ``None`` when it does not cross or the new
    mask misses the click."""
    try:
        prompt = snap(recist)
    except RecistError:  # a derived RECIST of an odd shape may not cross
        return None
    [res] = predictor._run(
        arr, [prompt], batch_size=1, tta=predictor.tta, timings=None, postprocess=True
    )
    return res if _holds(res, click) else None


def _holds(res: LesionResult, click: tuple[int, int]) -> bool:
    """The result has a measured RECIST and its mask contains the click."""
    lr, lc = click[0] - res.offset[0], click[1] - res.offset[1]
    return (
        res.measured is not None
        and 0 <= lr < res.mask.shape[0]
        and 0 <= lc < res.mask.shape[1]
        and bool(res.mask[lr, lc])
    )


def recist_shift(a: Recist, b: Recist) -> float:
    """How far RECIST ``b`` moved from ``a``: the largest endpoint distance (long to
    long, short to short, either order of each axis' ends) over ``a``'s long axis.

    >>> a = Recist([[0, 0], [0, 10]], [[-2, 5], [2, 5]])
    >>> recist_shift(a, Recist([[0, 10], [0, 0]], [[2, 5], [-2, 6]]))
    0.1
    """
    def axis(p: np.ndarray, q: np.ndarray) -> float:
        same = np.linalg.norm(p - q, axis=1).max()
        swapped = np.linalg.norm(p - q[::-1], axis=1).max()
        return float(min(same, swapped))

    d = max(axis(a.long_axis, b.long_axis), axis(a.short_axis, b.short_axis))
    return d / max(a.long_length, 1e-6)


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
    *,
    ring_only: bool = False,
) -> float:
    """How much a mask stands out from the ``width`` px ring of image around it.

    ``|mean inside - mean in the ring| / (sd inside + sd in the ring)`` of the image
    features (``ring_only``: ``/ sd in the ring``): high when the mask's boundary
    separates lesion from background, low when mask and ring both lie in the lesion
    (too small) or both in skin/tissue.
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
    inside = local.astype(bool)
    # The ring: pixels within ``width`` of the mask (a distance transform costs the
    # same for any width; a dilation with a wide disk took ~40 ms on a 768 px image).
    dist = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    ring = (dist > 0) & (dist <= width)
    if not inside.any() or not ring.any():
        return 0.0
    window = feats[a0:a1, b0:b1]
    fin, fout = window[inside], window[ring]
    diff = float(np.linalg.norm(fin.mean(axis=0) - fout.mean(axis=0)))
    spread = float(np.sqrt(fout.var(axis=0).sum()))
    if not ring_only:
        spread += float(np.sqrt(fin.var(axis=0).sum()))
    return diff / (spread + 1e-6)


def _border_leak(
    prob: np.ndarray, recist: Recist, cfg: Any, plane_shape: tuple[int, int]
) -> float:
    """Mean probability on the crop box border pixels that lie inside the image.

    Where the box is clipped by the image edge the image border is not counted: a
    lesion may legitimately touch the edge of the photograph.
    """
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

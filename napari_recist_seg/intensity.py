"""Intensity by modality: which grey images get a CT window, which a robust normalisation.

The rule (also in ``docs/RADIOLOGY.md``)
-----------------------------------------
- **CT** (values in Hounsfield units) gets a CT window ``(level, width)``: soft tissue
  (40 / 400) unless the user picks another preset or gives numbers.
- **Everything else that is grey and not 8-bit** (MR, X-ray, ultrasound, 16-bit
  photographs, float images) gets a per-crop robust normalisation: the 1st and 99th
  percentiles of the crop map to 0 and 1. A CT window is never applied to them.
- 8-bit grey and colour images are divided by 255 as before (not decided here).

An image is CT when the file says so (DICOM ``Modality`` = CT, a DeepLesion slice),
when the user says so, or, for files that do not say (NIfTI, TIFF, a numpy array),
when its values look like Hounsfield units: air (about -1000 HU) surrounds the body,
so at least 1% of the voxels lie at or below -500 while the top 1% stay below
5000. MR signal is not negative in this way (raw MR is >= 0; normalised MR sits
within a few units of 0), so an MR volume with a few negative artefact voxels is not
taken for CT (the old rule "minimum <= -200" was).

Examples
--------
>>> ct = np.full((8, 8), -1000.0); ct[2:6, 2:6] = 40.0
>>> detect_modality(ct)
'ct'
>>> mr = np.linspace(0, 900, 64).reshape(8, 8); mr[0, 0] = -300.0
>>> detect_modality(mr)
'grey'
>>> resolve_window("lung")
(-600.0, 1500.0)
>>> resolve_window("50,350")
(50.0, 350.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_WINDOW",
    "WINDOW_PRESETS",
    "detect_modality",
    "display_range",
    "is_ct",
    "normalize_grey",
    "percentile_normalize",
    "resolve_window",
]

#: CT windows ``(level, width)`` in HU, the presets a radiologist reads with.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
DEFAULT_WINDOW = "soft_tissue"

# HU heuristics (see the module notes): air fraction and the plausible top of CT.
_AIR_HU = -500.0
_AIR_FRACTION = 0.01
_MAX_CT_HU = 5000.0
# Percentiles of the robust normalisation for non-CT grey images.
_LOW_PCT, _HIGH_PCT = 1.0, 99.0
_SAMPLE = 400_000  # voxels looked at by detect_modality (a strided subsample)

_CT_NAMES = {"ct", "hu"}


def is_ct(modality: str | None) -> bool:
    """True for the modality strings that mean Hounsfield units (``"ct"``)."""
    return str(modality or "").lower() in _CT_NAMES


def _sample(arr: np.ndarray) -> np.ndarray:
    """A strided subsample (a view where possible) of at most about ``_SAMPLE`` values."""
    a = np.asarray(arr)
    if a.size <= _SAMPLE:
        return a.reshape(-1) if a.flags.c_contiguous else a.ravel()
    step = int(np.ceil((a.size / _SAMPLE) ** (1.0 / a.ndim)))
    return np.asarray(a[(slice(None, None, step),) * a.ndim]).ravel()


def detect_modality(arr: np.ndarray, hint: str | None = None) -> str:
    """``"ct"``, ``"rgb"`` or ``"grey"`` for an image whose file may not say.

    Parameters
    ----------
    arr : ndarray
        ``(H, W)``, ``(H, W, 3)`` or ``(Z, H, W)``.
    hint : str, optional
        What the file or the user says (``"ct"``, ``"mr"``, ...); it wins when given
        (``"auto"`` / ``None`` / ``"grey"`` mean "decide from the values").

    Returns
    -------
    str
        The hint in lower case when it is given, else ``"ct"`` when the values look
        like Hounsfield units, ``"rgb"`` for colour, else ``"grey"``.
    """
    h = str(hint or "").lower()
    if h and h not in ("auto", "grey", "gray"):
        return h
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return "rgb"
    if a.dtype == np.uint8 or a.dtype == np.bool_ or a.size == 0:
        return "grey"
    if not (np.issubdtype(a.dtype, np.signedinteger) or np.issubdtype(a.dtype, np.floating)):
        return "grey"  # unsigned 16-bit without a DICOM/DeepLesion tag: not HU
    v = _sample(a).astype(np.float32, copy=False)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "grey"
    air = float(np.mean(v <= _AIR_HU))
    top = float(np.percentile(v, 99.0))
    return "ct" if air >= _AIR_FRACTION and top <= _MAX_CT_HU else "grey"


def resolve_window(window: Any = None) -> tuple[float, float]:
    """A CT window ``(level, width)`` from a preset name, ``"L,W"`` text or numbers.

    Raises
    ------
    ValueError
        Unknown preset, malformed text or a width that is not positive.
    """
    if window is None or (isinstance(window, str) and window.strip().lower() in ("", "auto")):
        return WINDOW_PRESETS[DEFAULT_WINDOW]
    if isinstance(window, str):
        key = window.strip().lower().replace("-", "_").replace(" ", "_")
        if key in WINDOW_PRESETS:
            return WINDOW_PRESETS[key]
        parts = window.replace("/", ",").split(",")
        try:
            level, width = (float(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"window {window!r}: use a preset ({', '.join(WINDOW_PRESETS)}) or "
                "LEVEL,WIDTH in HU (e.g. 40,400)"
            ) from None
    else:
        level, width = (float(v) for v in window)
    if not (np.isfinite(level) and np.isfinite(width) and width > 0):
        raise ValueError(f"window width must be a positive number of HU, got {width}")
    return float(level), float(width)


def percentile_normalize(x: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile of ``x`` (NaN ignored) to 0..1, clipped; float32.

    A flat crop (both percentiles equal) becomes all zeros.
    """
    x = np.asarray(x, dtype=np.float32)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.zeros_like(x)
    lo, hi = np.percentile(finite, [_LOW_PCT, _HIGH_PCT])
    if not hi > lo:
        return np.zeros_like(x)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)


def normalize_grey(x: np.ndarray, modality: str | None, window: Any = None) -> np.ndarray:
    """A non-8-bit grey crop to [0, 1] by the module's rule (NaN stays NaN).

    CT -> the window (``window``: preset name, ``"L,W"`` or a pair; default soft
    tissue); anything else -> :func:`percentile_normalize` (``window`` is ignored).
    """
    x = np.asarray(x, dtype=np.float32)
    if not is_ct(modality):
        return percentile_normalize(x)
    level, width = resolve_window(window)
    return np.clip((x - (level - width / 2.0)) / width, 0.0, 1.0)


def display_range(arr: np.ndarray, modality: str | None, window: Any = None) -> tuple[float, float]:
    """napari ``contrast_limits`` by the same rule: the CT window, else 1-99 percentiles."""
    if is_ct(modality):
        level, width = resolve_window(window)
        return (level - width / 2.0, level + width / 2.0)
    v = _sample(np.asarray(arr)).astype(np.float32, copy=False)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(p) for p in np.percentile(v, [_LOW_PCT, _HIGH_PCT]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)

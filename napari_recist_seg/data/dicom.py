"""DICOM files and series folders through pydicom: HU after rescaling, the slice order
and spacing from the patient positions, and the NIfTI affine of a series."""

from __future__ import annotations

import importlib.util
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_recist_seg.data.imagedata import (
    ImageData,
    _check_size,
    _fail,
    _finish,
    _is_dicom_file,
    _reason,
    image_suffix,
)

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


# -- DICOM -------------------------------------------------------------------------------


def _dicom_bytes(ds: Any) -> int:
    """Bytes per pixel we end up holding: the stored size, float32 once rescaled."""
    stored = max(1, int(ds.get("BitsAllocated", 16) or 16) // 8)
    rescaled = ds.get("RescaleSlope", None) is not None or ds.get("RescaleIntercept", None) is not None
    return max(stored, 4) if rescaled else stored


def _dicom_pixels(ds: Any, path: Path) -> np.ndarray:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    _check_size(path, (frames, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), samples),
                _dicom_bytes(ds))
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise _fail(path, _decode_failure(ds, exc), exc) from exc
    return np.asarray(arr)


def _decode_failure(ds: Any, exc: Exception) -> str:
    """One line for pixel data pydicom could not decode; for a compressed transfer
    syntax (JPEG lossless / JPEG-LS / JPEG 2000, common in PACS exports) without
    python-gdcm, how to get the decoder."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = getattr(ts, "name", str(ts)) if ts is not None else "unknown"
    # pydicom lists each decoder's reason on its own line: keep them on one
    head, *rest = [part.strip() for part in str(exc).splitlines() if part.strip()] or [type(exc).__name__]
    reason = head if not rest else head + (" " if head.endswith(":") else "; ") + "; ".join(rest)
    if getattr(ts, "is_compressed", False) and importlib.util.find_spec("gdcm") is None:
        return (f"cannot decode DICOM pixel data: transfer syntax {name} needs a decoder: "
                "pip install python-gdcm (or \"napari-recist-seg[dicom]\")")
    return f"cannot decode DICOM pixel data (transfer syntax {name}: {reason})"


def _rescale(ds: Any, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    if slope is None and intercept is None:
        return arr, False
    s = float(slope) if slope is not None else 1.0
    b = float(intercept) if intercept is not None else 0.0
    out = arr.astype(np.float32)
    if s != 1.0:
        out *= np.float32(s)
    if b != 0.0:
        out += np.float32(b)
    return out, True


def _dicom_plane_spacing(ds: Any) -> tuple[float, float] | None:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = ds.get(tag, None)
        if ps is not None and len(ps) >= 2:
            # DICOM order: distance between rows, then between columns.
            sp = (float(ps[0]), float(ps[1]))
            if sp[0] > 0 and sp[1] > 0:
                return sp
    return None


def _dicom_modality(ds: Any, rescaled: bool) -> str:
    mod = str(ds.get("Modality", "") or "").lower()
    if mod == "ct" or str(ds.get("RescaleType", "")).upper() == "HU":
        return "ct"
    return mod or "grey"


def _read_dicom_file(path: Path) -> ImageData:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise _fail(path, f"not a readable DICOM file ({_reason(exc)})", exc) from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise _fail(path, "DICOM file holds no pixel data")
    arr = _dicom_pixels(ds, path)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    is_rgb = samples > 1
    if is_rgb:
        arr = arr[..., :3]
        if frames > 1:
            raise _fail(path, "multi-frame colour DICOM is not supported")
        return _finish(np.ascontiguousarray(arr), path=path, is_rgb=True, modality="rgb",
                       spacing=_dicom_plane_spacing(ds))
    arr, rescaled = _rescale(ds, arr)
    plane = _dicom_plane_spacing(ds)
    is_volume = frames > 1 and arr.ndim == 3
    spacing: tuple[float, ...] | None = plane
    if is_volume and plane is not None:
        dz = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0
        spacing = (float(dz),) + plane
    affine = dicom_affine(ds, ds, 1) if not is_volume else None
    return _finish(arr, path=path, spacing=spacing, is_volume=is_volume,
                   modality=_dicom_modality(ds, rescaled),
                   metadata={} if affine is None else {"affine": affine})


def _slice_normal(ds: Any) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient", None)
    if iop is None or len(iop) != 6:
        return None
    r = np.asarray([float(v) for v in iop[:3]])
    c = np.asarray([float(v) for v in iop[3:]])
    n = np.cross(r, c)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _scan_series(root: Path) -> tuple[list[tuple[Path, Any]], float]:
    """Headers of one series folder (no pixels), sorted along the slice axis, and the
    slice spacing in mm."""
    import pydicom

    if not root.is_dir():
        raise _fail(root, "not a folder")
    headers = []
    for f in sorted(root.iterdir()):
        if not f.is_file() or f.stat().st_size == 0:
            continue
        if not (_is_dicom_file(f) or image_suffix(f) in _DICOM_SUFFIXES):
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue  # DICOMDIR, structured reports, ...
        headers.append((f, ds))
    if not headers:
        raise _fail(root, "no DICOM images in the folder" + _subfolder_hint(root))
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise _fail(root, f"the folder holds {len(series)} DICOM series "
                    f"({_series_summary(headers)}); put each series in its own folder")
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in headers}
    if len(sizes) > 1:
        raise _fail(root, f"slices have different sizes {sorted(sizes)}")
    if len(headers) == 1:
        return headers, 1.0

    normal = _slice_normal(headers[0][1])
    positions = []
    for _, ds in headers:
        ipp = ds.get("ImagePositionPatient", None)
        positions.append(None if ipp is None or len(ipp) != 3 or normal is None
                         else float(np.dot([float(v) for v in ipp], normal)))
    dz: float | None = None
    if all(p is not None for p in positions):
        order = np.argsort(np.asarray(positions, dtype=float), kind="stable")
        steps = np.diff(np.asarray(positions, dtype=float)[order])
        if np.any(np.abs(steps) < 1e-6):
            raise _fail(root, "two slices share one position (duplicate files?)")
        dz = float(np.median(steps))
        if np.max(np.abs(steps - dz)) > max(0.01 * dz, 0.05):
            raise _fail(root, f"uneven slice spacing ({steps.min():.3g} to {steps.max():.3g} mm): "
                        "slices are missing or the folder mixes acquisitions")
    else:
        inst = [int(ds.get("InstanceNumber", 0) or 0) for _, ds in headers]
        order = np.argsort(np.asarray(inst), kind="stable")
    ordered = [headers[int(i)] for i in order]
    if dz is None:
        first = ordered[0][1]
        raw = first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None)
        dz = float(raw) if raw else 1.0
    return ordered, dz


def _series_summary(headers: list[tuple[Path, Any]], at_most: int = 4) -> str:
    """``"T2 AX: 24 slices; FLAIR: 24 slices; ..."`` in the order first seen, so the user
    can tell which files belong to which series."""
    count: dict[str, int] = {}
    label: dict[str, str] = {}
    for _, ds in headers:
        uid = str(ds.get("SeriesInstanceUID", ""))
        count[uid] = count.get(uid, 0) + 1
        if uid not in label:
            desc = str(ds.get("SeriesDescription", "") or "").strip()
            number = ds.get("SeriesNumber", None)
            label[uid] = desc or (f"series {number}" if number is not None else f"UID {uid or '?'}")
    parts = [f"{label[u]}: {n} slice{'s' if n != 1 else ''}" for u, n in list(count.items())[:at_most]]
    more = len(count) - at_most
    return "; ".join(parts) + (f"; {more} more" if more > 0 else "")


def _subfolder_hint(root: Path) -> str:
    """For a study folder whose series sit in subfolders: where they are."""
    with_dicom = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        try:  # a look at the first files only: the hint must stay cheap
            first = itertools.islice(sub.iterdir(), 50)
            if any(f.is_file() and (image_suffix(f) in _DICOM_SUFFIXES or _is_dicom_file(f))
                   for f in first):
                with_dicom.append(sub.name)
        except OSError:  # an unreadable subfolder is not worth a traceback here
            continue
    if not with_dicom:
        return ""
    shown = ", ".join(with_dicom[:4]) + (", ..." if len(with_dicom) > 4 else "")
    return f"; its subfolders {shown} hold DICOM files: open one of them"


def _series_shape_spacing(root: Path) -> tuple[tuple[int, ...], tuple[float, ...] | None]:
    headers, dz = _scan_series(root)
    first = headers[0][1]
    plane = _dicom_plane_spacing(first)
    if len(headers) == 1:
        return _dicom_shape(headers[0][0]), _dicom_spacing(headers[0][0])
    shape = (len(headers), int(first.Rows), int(first.Columns))
    return shape, ((dz,) + plane if plane is not None else None)


def read_dicom_series(folder: str | os.PathLike[str]) -> ImageData:
    """Read a folder holding one DICOM series as a ``(Z, H, W)`` float32 volume.

    Files are recognised by content (``.dcm`` or no extension); other files are
    ignored. Slices are sorted along the slice normal by ``ImagePositionPatient``
    (falling back to ``InstanceNumber``, then the file name); the slice spacing is
    the median distance between neighbouring positions (else ``SpacingBetweenSlices``
    or ``SliceThickness``, else 1 mm). Each slice's own slope / intercept is applied.
    A folder with a single image gives what that file gives (usually a 2D image).

    Raises
    ------
    ImageReadError
        No DICOM images, several series, or slices of different sizes.
    """
    import pydicom

    root = Path(folder)
    headers, dz = _scan_series(root)
    if len(headers) == 1:
        return _read_dicom_file(headers[0][0])
    first = headers[0][1]
    _check_size(root, (len(headers), int(first.Rows), int(first.Columns)), 4)
    vol = np.empty((len(headers), int(first.Rows), int(first.Columns)), dtype=np.float32)
    rescaled_any = False
    for z, (f, _) in enumerate(headers):
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as exc:
            raise _fail(f, f"not a readable DICOM file ({_reason(exc)})", exc) from exc
        px = _dicom_pixels(ds, f)
        if px.ndim != 2:
            raise _fail(f, f"expected one grey image per file, got shape {px.shape}")
        px, rescaled = _rescale(ds, px)
        rescaled_any |= rescaled
        vol[z] = px
    plane = _dicom_plane_spacing(first)
    spacing = (dz,) + plane if plane is not None else None
    meta: dict[str, Any] = {"files": [f for f, _ in headers]}
    affine = dicom_affine(first, headers[-1][1], len(headers))
    if affine is not None:
        meta["affine"] = affine
    return _finish(vol, path=root, spacing=spacing, is_volume=True,
                   modality=_dicom_modality(first, rescaled_any), metadata=meta)


def dicom_affine(first: Any, last: Any, n_slices: int) -> np.ndarray | None:
    """The NIfTI (RAS) affine of a DICOM series, for our ``d[col, row, z]`` NIfTI order.

    Column ``i`` runs along the first ``ImageOrientationPatient`` vector (spaced by
    ``PixelSpacing[1]``), row ``j`` along the second (``PixelSpacing[0]``), slice ``k``
    from the first slice's ``ImagePositionPatient`` to the last one's. DICOM patient
    coordinates are LPS; NIfTI's are RAS (x and y negated). ``None`` without the
    orientation, position or spacing tags.
    """
    iop, ipp = first.get("ImageOrientationPatient", None), first.get("ImagePositionPatient", None)
    plane = _dicom_plane_spacing(first)
    if iop is None or len(iop) != 6 or ipp is None or len(ipp) != 3 or plane is None:
        return None
    r = np.asarray([float(v) for v in iop[:3]])
    c = np.asarray([float(v) for v in iop[3:]])
    p0 = np.asarray([float(v) for v in ipp])
    last_ipp = last.get("ImagePositionPatient", None)
    if n_slices > 1 and last_ipp is not None and len(last_ipp) == 3:
        step = (np.asarray([float(v) for v in last_ipp]) - p0) / (n_slices - 1)
    else:
        thick = first.get("SpacingBetweenSlices", None) or first.get("SliceThickness", None) or 1.0
        step = np.cross(r, c) * float(thick)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = r * plane[1], c * plane[0], step, p0
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _dicom_shape(path: Path) -> tuple[int, ...]:
    """``(H, W)``, or ``(frames, H, W)`` for a multi-frame file, from the header."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rc = (int(ds.Rows), int(ds.Columns))
    return (frames,) + rc if frames > 1 else rc


def _dicom_spacing(path: Path) -> tuple[float, ...] | None:
    """``PixelSpacing`` (and the slice spacing of a multi-frame file) from the header."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    plane = _dicom_plane_spacing(ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1 and plane is not None:
        dz = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0
        return (float(dz),) + plane
    return plane

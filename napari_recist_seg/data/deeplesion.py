"""DeepLesion's ``DL_info.csv``, read as is.

Each row is one lesion on one key slice. The columns used:

- ``File_name``: ``000001_01_01_109.png`` = slice ``109.png`` of the series folder
  ``Images_png/000001_01_01/`` (patient, study, series).
- ``Measurement_coordinates``: 8 numbers ``x1, y1, x2, y2`` (long axis) then
  ``x3, y3, x4, y4`` (short axis), pixels.
- ``Spacing_mm_px_``: ``"x, y, z"`` mm (x = columns, y = rows, z = slice interval).
- ``Key_slice_index``, ``Slice_range``, ``Image_size``, ``DICOM_windows``,
  ``Coarse_lesion_type``, ``Possibly_noisy``, ``Train_Val_Test`` are kept on
  :class:`DeepLesionRow`.

The key-slice PNG is a 2D image (16-bit, HU = value - 32768; read it with
:func:`napari_recist_seg.data.images.read_image` or ``read_deeplesion_png``), so the
records carry ``slice_index=None``; the key slice number is on :class:`DeepLesionRow`.
Lesion ids are the row order within each image, from 1.

Examples
--------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "DL_info.csv").write_text(
...     "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,"
...     "Measurement_coordinates,Bounding_boxes,Lesion_diameters_Pixel_,"
...     "Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
...     "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,"
...     "Train_Val_Test\\n"
...     '000001_01_01_109.png,1,1,1,109,"233.5, 95.2, 234.6, 125.8, 216.9, 110.6, 246.6, 109.4",'
...     '"211.7, 90.2, 251.6, 130.8","30.6, 29.7","0.44, 0.26, 0.71",3,0,"103, 115",'
...     '"0.66, 0.66, 5","512, 512","-175, 275",F,51,3\\n')
>>> rec = read_deeplesion_csv(d / "DL_info.csv")[0]
>>> rec.image.relative_to(d).as_posix(), rec.lesion, rec.recist.spacing
('Images_png/000001_01_01/109.png', 1, (0.66, 0.66))
>>> rec.recist.long_axis.tolist()
[[95.2, 233.5], [125.8, 234.6]]
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from napari_recist_seg.data.recist_csv import CsvRow, RecistCsvError, RecistRecord, csv_rows
from napari_recist_seg.recist import Recist

__all__ = [
    "DL_INFO_COLUMNS",
    "DeepLesionRow",
    "deeplesion_image_path",
    "read_deeplesion_csv",
    "read_deeplesion_rows",
]

#: The header of the published ``DL_info.csv``.
DL_INFO_COLUMNS: tuple[str, ...] = (
    "File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
    "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
    "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
    "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age",
    "Train_Val_Test",
)
_REQUIRED = ("File_name", "Measurement_coordinates", "Spacing_mm_px_")


@dataclass(eq=False)
class DeepLesionRow:
    """One parsed ``DL_info.csv`` row (plus its line number in the file)."""

    line: int
    file_name: str
    image: Path
    lesion: int
    recist: Recist
    key_slice: int | None
    slice_range: tuple[int, int] | None
    spacing_xyz: tuple[float, float, float]
    image_size: tuple[int, int] | None
    window: tuple[float, float] | None
    lesion_type: int | None
    possibly_noisy: bool
    split: int | None

    def record(self) -> RecistRecord:
        return RecistRecord(image=self.image, lesion=self.lesion, recist=self.recist)


def deeplesion_image_path(file_name: str, image_root: str | os.PathLike[str]) -> Path:
    """Where a ``File_name`` lives under ``image_root``.

    ``image_root`` may be the folder holding ``Images_png/`` or ``Images_png`` itself.

    >>> deeplesion_image_path("000001_01_01_109.png", "/data/Images_png").as_posix()
    '/data/Images_png/000001_01_01/109.png'
    """
    name = file_name.strip()
    series, sep, slice_name = name.rpartition("_")
    if not sep or not series or not slice_name:
        raise ValueError(
            f"{file_name!r} is not a DeepLesion file name like 000001_01_01_109.png"
        )
    root = Path(image_root)
    if root.name != "Images_png" and (root / "Images_png").is_dir():
        root = root / "Images_png"
    elif root.name != "Images_png" and not (root / series).is_dir():
        root = root / "Images_png"  # the published layout, even if not unpacked yet
    return root / series / slice_name


def _numbers(text: str, n: int | None, where: str) -> list[float]:
    parts = [t for t in text.replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    try:
        values = [float(t) for t in parts]
    except ValueError:
        raise RecistCsvError(f"{where}: {text!r} is not a list of numbers") from None
    if n is not None and len(values) != n:
        raise RecistCsvError(f"{where}: expected {n} numbers, got {len(values)} in {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise RecistCsvError(f"{where}: {text!r} holds non-finite numbers")
    return values


def _opt_int(text: str, where: str) -> int | None:
    t = text.strip()
    if not t:
        return None
    try:
        return int(float(t))
    except ValueError:
        raise RecistCsvError(f"{where}: {t!r} is not an integer") from None


def read_deeplesion_rows(
    dl_info: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    split: int | None = None,
) -> list[DeepLesionRow]:
    """Parse ``DL_info.csv`` into :class:`DeepLesionRow` s (all fields kept).

    Parameters
    ----------
    dl_info : path-like
        The CSV as published.
    image_root : path-like, optional
        Folder holding ``Images_png/`` (or ``Images_png`` itself); default: the CSV's
        folder. Image files need not exist yet.
    split : {1, 2, 3}, optional
        Keep only rows of this ``Train_Val_Test`` split (1 train, 2 val, 3 test).

    Raises
    ------
    RecistCsvError
        Missing file or columns, or a bad row (line number and column named).
    """
    p = Path(dl_info)
    if not p.is_file():
        raise RecistCsvError(f"{p}: DL_info.csv not found")
    root = Path(image_root) if image_root is not None else p.parent.absolute()
    reader = csv.reader(io.StringIO(p.read_text(encoding="utf-8-sig"), newline=""))
    header = next(reader, None)
    if header is None:
        raise RecistCsvError(f"{p}: empty file (no header row)")
    cols: dict[str, int] = {}
    for i, h in enumerate(header):
        cols.setdefault(h.strip(), i)
    missing = [c for c in _REQUIRED if c not in cols]
    if missing:
        raise RecistCsvError(
            f"{p}: not a DeepLesion DL_info.csv; missing column(s): {', '.join(missing)}"
        )
    rows: list[DeepLesionRow] = []
    counts: dict[str, int] = {}
    for row in csv_rows(p, reader, cols):
        row_split = _opt_int(row.cell("Train_Val_Test"), row.where("Train_Val_Test"))
        if split is not None and row_split != split:
            continue
        parsed = _parse_row(row, root, row_split)
        # Lesion ids: the row order within each image, from 1.
        parsed.lesion = counts.get(str(parsed.image), 0) + 1
        counts[str(parsed.image)] = parsed.lesion
        rows.append(parsed)
    return rows


def _pair(row: CsvRow, name: str) -> tuple[float, float] | None:
    """Two numbers of column ``name`` ("a, b"), or None when the cell is empty."""
    text = row.cell(name)
    if not text:
        return None
    a, b = _numbers(text, 2, row.where(name))
    return a, b


def _parse_row(row: CsvRow, root: Path, row_split: int | None) -> DeepLesionRow:
    """One ``DL_info.csv`` row (``lesion`` 0: the caller numbers lesions per image)."""
    cell, where = row.cell, row.where
    file_name = cell("File_name")
    try:
        image = deeplesion_image_path(file_name, root)
    except ValueError as exc:
        raise RecistCsvError(f"{where('File_name')}: {exc}") from None
    coords = _numbers(cell("Measurement_coordinates"), 8, where("Measurement_coordinates"))
    sp = _numbers(cell("Spacing_mm_px_"), None, where("Spacing_mm_px_"))
    if len(sp) < 2 or sp[0] <= 0 or sp[1] <= 0:
        raise RecistCsvError(
            f"{where('Spacing_mm_px_')}: expected positive 'x, y, z' mm, got {cell('Spacing_mm_px_')!r}"
        )
    spacing_xyz = (sp[0], sp[1], sp[2] if len(sp) > 2 else float("nan"))
    slice_range = _pair(row, "Slice_range")
    size = _pair(row, "Image_size")
    window = _pair(row, "DICOM_windows")
    recist = Recist.from_deeplesion(coords, spacing=(sp[1], sp[0]))
    return DeepLesionRow(
        line=row.line,
        file_name=file_name,
        image=image,
        lesion=0,
        recist=recist,
        key_slice=_opt_int(cell("Key_slice_index"), where("Key_slice_index")),
        slice_range=None if slice_range is None else (int(slice_range[0]), int(slice_range[1])),
        spacing_xyz=spacing_xyz,
        # assumed "width, height" (mostly 512, 512)
        image_size=None if size is None else (int(size[1]), int(size[0])),
        window=window,
        lesion_type=_opt_int(cell("Coarse_lesion_type"), where("Coarse_lesion_type")),
        possibly_noisy=cell("Possibly_noisy") not in ("", "0"),
        split=row_split,
    )


def read_deeplesion_csv(
    dl_info: str | os.PathLike[str],
    image_root: str | os.PathLike[str] | None = None,
    *,
    split: int | None = None,
) -> list[RecistRecord]:
    """Read ``DL_info.csv`` as :class:`RecistRecord` s with spacing (see
    :func:`read_deeplesion_rows` for the parameters)."""
    return [r.record() for r in read_deeplesion_rows(dl_info, image_root, split=split)]

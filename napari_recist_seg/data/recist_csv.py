"""The RECIST CSV: the interchange format for RECIST measurements (DESIGN.md section 3).

Columns::

    image, lesion, slice, long_x1, long_y1, long_x2, long_y2,
    short_x1, short_y1, short_x2, short_y2[, spacing_x, spacing_y]

``image`` is a path relative to the CSV's folder (absolute paths are accepted),
``lesion`` an integer id unique per image, ``slice`` the axial slice index of a volume
(empty for 2D images), coordinates are pixels with ``x = col``, ``y = row``, and
``spacing_x`` / ``spacing_y`` are mm per pixel along x (columns) and y (rows), empty
when unknown. Note :attr:`Recist.spacing` is ``(row_mm, col_mm) = (spacing_y, spacing_x)``.

An optional ``status`` column keeps the annotator's state of each lesion: ``draft``
(valid, not yet committed) or ``committed``, either followed by ``+edited`` when its
mask was corrected by hand (``committed+edited``); case-insensitive, empty = unknown.
It is written only when some record has a status, so files without it (and the bulk
job's) are unchanged; reading a file without it gives ``status = None`` (old behaviour:
every imported lesion is a draft).

Extra columns are ignored on reading; ``slice``, the spacing columns and ``status``
may be absent.

Examples
--------
>>> import tempfile, pathlib
>>> from napari_recist_seg.recist import Recist
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> rec = RecistRecord(d / "images" / "a.png", 1,
...                    Recist([[10, 10], [10, 50.25]], [[0, 30], [20, 30]], spacing=(0.5, 0.7)))
>>> write_recist_csv(d / "recist.csv", [rec])
>>> print((d / "recist.csv").read_text().splitlines()[1])
images/a.png,1,,10,10,50.25,10,30,0,30,20,0.7,0.5
>>> back = read_recist_csv(d / "recist.csv")[0]
>>> back.image == rec.image, back.recist.long_axis.tolist(), back.recist.spacing
(True, [[10.0, 10.0], [10.0, 50.25]], (0.5, 0.7))
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from napari_recist_seg.data.atomic import atomic_write_text
from napari_recist_seg.recist import Recist

__all__ = [
    "COORD_COLUMNS",
    "OPTIONAL_COLUMNS",
    "RECIST_COLUMNS",
    "REQUIRED_COLUMNS",
    "RecistCsvError",
    "RecistRecord",
    "STATUS_VALUES",
    "format_number",
    "parse_status",
    "read_recist_csv",
    "write_recist_csv",
]

COORD_COLUMNS: tuple[str, ...] = (
    "long_x1", "long_y1", "long_x2", "long_y2",
    "short_x1", "short_y1", "short_x2", "short_y2",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("image", "lesion") + COORD_COLUMNS
OPTIONAL_COLUMNS: tuple[str, ...] = ("slice", "spacing_x", "spacing_y", "status")
#: The values of the optional ``status`` column (the annotator's lesion states).
STATUS_VALUES: tuple[str, ...] = ("draft", "committed", "draft+edited", "committed+edited")
#: Column order written by :func:`write_recist_csv`.
RECIST_COLUMNS: tuple[str, ...] = (
    ("image", "lesion", "slice") + COORD_COLUMNS + ("spacing_x", "spacing_y")
)


class RecistCsvError(ValueError):
    """A RECIST CSV (or DeepLesion ``DL_info.csv``) that cannot be used as is.

    The message names the file, and for a bad row its line number and column.
    """


@dataclass(eq=False)
class RecistRecord:
    """One RECIST measurement of one lesion in one image file.

    Attributes
    ----------
    image : Path
        The image file (absolute once read from a CSV).
    lesion : int
        Lesion id, unique per image.
    recist : Recist
        The measurement; ``recist.slice_index`` is the slice for volumes, and
        ``recist.spacing`` the pixel size ``(row_mm, col_mm)`` when known.
    status : str or None
        The annotator's state (one of :data:`STATUS_VALUES`), ``None`` when unknown.
    """

    image: Path
    lesion: int
    recist: Recist
    status: str | None = None

    def __post_init__(self) -> None:
        self.image = Path(self.image)
        self.lesion = int(self.lesion)
        if self.status is not None:
            self.status = parse_status(self.status)

    @property
    def slice_index(self) -> int | None:
        return self.recist.slice_index


def format_number(value: float) -> str:
    """Shortest text that reads back as exactly ``value`` (``repr``; whole numbers bare).

    >>> format_number(100.0), format_number(0.1), format_number(1234.5678901234)
    ('100', '0.1', '1234.5678901234')
    """
    v = float(value)
    if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def parse_status(text: str, where: str = "status") -> str | None:
    """A ``status`` cell normalised (lower case, no spaces); ``None`` for an empty one.

    >>> parse_status(" Committed + Edited "), parse_status("")
    ('committed+edited', None)
    """
    t = "".join(str(text).split()).lower()
    if not t:
        return None
    if t not in STATUS_VALUES:
        raise RecistCsvError(f"{where}: status {text!r} is not one of {', '.join(STATUS_VALUES)}")
    return t


def _norm_header(name: str) -> str:
    return name.strip().lower()


def _parse_float(text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise RecistCsvError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise RecistCsvError(f"{where}: {text!r} is not a finite number")
    return v


def _parse_int(text: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise RecistCsvError(f"{where}: {text!r} is not an integer") from None
    if not math.isfinite(v) or v != int(v):
        raise RecistCsvError(f"{where}: {text!r} is not an integer")
    return int(v)


def _image_path(text: str, base: Path) -> Path:
    if os.sep == "/" and "\\" in text:
        text = text.replace("\\", "/")  # a CSV written on Windows
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = base / p
    return Path(os.path.normpath(p))


def read_recist_csv(path: str | os.PathLike[str]) -> list[RecistRecord]:
    """Read a RECIST CSV.

    Parameters
    ----------
    path : path-like
        The CSV (UTF-8, a byte-order mark is accepted). Header names are matched
        case-insensitively, surrounding spaces ignored.

    Returns
    -------
    list of RecistRecord
        In file order; ``image`` resolved against the CSV's folder (absolute).

    Raises
    ------
    RecistCsvError
        Missing file, missing required columns (all listed), a bad value (line number
        and column named), a half-given spacing, or a duplicate ``(image, lesion)``.
    """
    p = Path(path)
    if not p.is_file():
        raise RecistCsvError(f"{p}: RECIST CSV not found")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RecistCsvError(f"{p}: not a UTF-8 text file ({exc.reason})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or not any(h.strip() for h in header):
        raise RecistCsvError(f"{p}: empty file (no header row)")
    cols = {}
    for i, h in enumerate(header):
        cols.setdefault(_norm_header(h), i)
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        # A typo is the usual cause: name the columns the file has that we do not know.
        unknown = [h.strip() for h in header if h.strip() and _norm_header(h) not in RECIST_COLUMNS + OPTIONAL_COLUMNS]
        found = f"; found instead: {', '.join(unknown)}" if unknown else ""
        raise RecistCsvError(
            f"{p}: missing required column(s): {', '.join(missing)}{found} "
            f"(expected {', '.join(REQUIRED_COLUMNS)}; optional: {', '.join(OPTIONAL_COLUMNS)})"
        )
    base = p.parent.absolute()
    records: list[RecistRecord] = []
    seen: dict[tuple[str, int], int] = {}
    for row in csv_rows(p, reader, cols):
        record = _record(row, base)
        key = (str(record.image), record.lesion)
        if key in seen:
            raise RecistCsvError(
                f"{p}, line {row.line}: lesion {record.lesion} of {row.cell('image')!r} "
                f"already given on line {seen[key]} (lesion ids must be unique per image)"
            )
        seen[key] = row.line
        records.append(record)
    return records


@dataclass(frozen=True)
class CsvRow:
    """One non-blank CSV row: its cells by column name, and where an error lies."""

    path: Path
    line: int
    cells: list[str]
    cols: Mapping[str, int]

    def cell(self, name: str) -> str:
        """The stripped cell of column ``name`` ("" when the column or cell is absent)."""
        i = self.cols.get(name)
        return self.cells[i].strip() if i is not None and i < len(self.cells) else ""

    def where(self, name: str) -> str:
        """``"<file>, line <n>, column '<name>'"`` for an error message."""
        return f"{self.path}, line {self.line}, column {name!r}"


def csv_rows(path: Path, reader: Iterator[list[str]], cols: Mapping[str, int]) -> Iterator[CsvRow]:
    """The rows of a ``csv.reader`` after its header, blank rows skipped."""
    for row in reader:
        line = reader.line_num  # type: ignore[attr-defined]
        if any(cell.strip() for cell in row):
            yield CsvRow(path, line, row, cols)


def _record(row: CsvRow, base: Path) -> RecistRecord:
    """One row's record (image resolved against ``base``); the duplicate check is the caller's."""
    where = row.where
    image_text = row.cell("image")
    if not image_text:
        raise RecistCsvError(f"{where('image')}: empty image path")
    lesion_text = row.cell("lesion")
    if not lesion_text:
        raise RecistCsvError(f"{where('lesion')}: empty lesion id")
    lesion = _parse_int(lesion_text, where("lesion"))
    slice_text = row.cell("slice")
    slice_index = None
    if slice_text:
        slice_index = _parse_int(slice_text, where("slice"))
        if slice_index < 0:
            raise RecistCsvError(f"{where('slice')}: slice index {slice_index} is negative")
    coords = []
    for name in COORD_COLUMNS:
        t = row.cell(name)
        if not t:
            raise RecistCsvError(f"{where(name)}: empty coordinate")
        coords.append(_parse_float(t, where(name)))
    spacing = _spacing(row)
    recist = Recist.from_deeplesion(coords, slice_index=slice_index, spacing=spacing)
    status = parse_status(row.cell("status"), where("status"))
    return RecistRecord(image=_image_path(image_text, base), lesion=lesion, recist=recist, status=status)


def _spacing(row: CsvRow) -> tuple[float, float] | None:
    """``(row_mm, col_mm)`` from ``spacing_y`` / ``spacing_x``; both or neither."""
    where = row.where
    sx_text, sy_text = row.cell("spacing_x"), row.cell("spacing_y")
    if not (sx_text or sy_text):
        return None
    if not (sx_text and sy_text):
        name = "spacing_y" if sx_text else "spacing_x"
        raise RecistCsvError(
            f"{where(name)}: give both spacing_x and spacing_y, or neither"
        )
    sx = _parse_float(sx_text, where("spacing_x"))
    sy = _parse_float(sy_text, where("spacing_y"))
    for name, v in (("spacing_x", sx), ("spacing_y", sy)):
        if v <= 0:
            raise RecistCsvError(f"{where(name)}: spacing must be positive, got {v}")
    return (sy, sx)


def _relative_image(image: Path, base: Path) -> str:
    img = Path(os.path.normpath(image if image.is_absolute() else Path.cwd() / image))
    try:
        rel = os.path.relpath(img, base)
    except ValueError:  # another drive (Windows): no relative path exists
        return img.as_posix()
    return Path(rel).as_posix()


def write_recist_csv(path: str | os.PathLike[str], records: Iterable[RecistRecord]) -> None:
    """Write records as a RECIST CSV, atomically.

    Image paths are written relative to the CSV's folder (``../`` if needed; absolute
    only when no relative path exists). Numbers are written in their shortest exact
    form, so reading the file back gives the same floats.

    Raises
    ------
    ValueError
        For a duplicate ``(image, lesion)`` or non-finite coordinates, before anything
        is written.
    """
    p = Path(path)
    base = Path(os.path.normpath(p.parent.absolute()))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    records = list(records)
    # The status column only when there is a status to keep: old readers and files unchanged.
    with_status = any(rec.status is not None for rec in records)
    writer.writerow(RECIST_COLUMNS + (("status",) if with_status else ()))
    seen: set[tuple[str, int]] = set()
    for rec in records:
        image = _relative_image(Path(rec.image), base)
        key = (image, int(rec.lesion))
        if key in seen:
            raise ValueError(f"lesion {rec.lesion} of {image} appears twice")
        seen.add(key)
        r = rec.recist
        values = r.to_deeplesion()
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"lesion {rec.lesion} of {image}: coordinates are not finite")
        if r.spacing is not None:
            sx, sy = format_number(r.spacing[1]), format_number(r.spacing[0])
        else:
            sx = sy = ""
        writer.writerow(
            [image, int(rec.lesion), "" if r.slice_index is None else int(r.slice_index)]
            + [format_number(v) for v in values]
            + [sx, sy]
            + ([rec.status or ""] if with_status else [])
        )
    atomic_write_text(p, buf.getvalue())

"""napari reader: open a RECIST CSV onto its images.

``File > Open`` on a RECIST CSV (DESIGN.md: ``image, lesion, slice, long_x1 ...``) gives,
for every image it refers to, an Image layer and a ``"<image> RECIST"`` Shapes layer
with the two axes of every lesion (3D lines on their slice for volumes). The RECIST
annotator adopts these layers: select the image and the masks appear.

Only CSVs whose header has the RECIST columns are claimed; any other CSV is left to
other readers (``get_reader`` returns ``None``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from napari_recist_seg.annotation import format_length
from napari_recist_seg.data.dataset import image_stem
from napari_recist_seg.data.images import read_image
from napari_recist_seg.data.recist_csv import REQUIRED_COLUMNS, read_recist_csv

__all__ = ["get_reader", "is_recist_csv", "read_recist_layers", "recist_shapes_layer"]

LayerData = tuple[Any, dict[str, Any], str]

#: Soft-tissue CT window (HU) for images that hold Hounsfield units.
CT_CONTRAST_LIMITS = (-160.0, 240.0)

_LINE_COLOURS = {"long": "#ffd60a", "short": "#64d2ff"}


def is_recist_csv(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a CSV whose header holds the RECIST CSV's required columns."""
    p = Path(path)
    if p.suffix.lower() != ".csv" or not p.is_file():
        return False
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    names = {h.strip().lower() for h in header}
    return all(c in names for c in REQUIRED_COLUMNS)


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader contribution: a reader for RECIST CSVs, ``None`` for anything else."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)) or not is_recist_csv(path):
        return None
    return read_recist_layers


def _length_label(seg: np.ndarray, spacing: tuple[float, float] | None) -> str:
    d = seg[1] - seg[0]
    px = float(np.hypot(d[0], d[1]))
    mm = None if spacing is None else float(np.hypot(*(d * np.asarray(spacing))))
    return format_length(px, spacing, mm)


def recist_shapes_layer(
    items: Sequence[tuple[int, Any]],
    *,
    name: str,
    ndim: int,
    spacing: tuple[float, float] | None = None,
    layer_kwargs: dict[str, Any] | None = None,
    statuses: Sequence[str | None] | None = None,
) -> LayerData:
    """A Shapes layer tuple with the two axes of each ``(lesion id, Recist)``.

    Its features ``lesion`` / ``axis`` tell the annotator which lines pair up;
    ``status`` (``statuses``: the CSV's ``status`` per lesion, ``""`` = unknown) tells
    it which lesions come in committed.
    """
    lines, lesions, axes, labels, colours, states = [], [], [], [], [], []
    statuses = list(statuses) if statuses is not None else [""] * len(items)
    for (lesion, r), status in zip(items, statuses):
        long_line, short_line = r.to_lines(ndim)
        lengths = (_length_label(r.long_axis, spacing), _length_label(r.short_axis, spacing))
        text = f"#{lesion} L {lengths[0].split()[0]} × W {lengths[1]}"
        for axis, line in (("long", long_line), ("short", short_line)):
            lines.append(np.asarray(line, float))
            lesions.append(int(lesion))
            axes.append(axis)
            labels.append(text if axis == "long" else "")
            colours.append(_LINE_COLOURS[axis])
            states.append(status or "")
    kwargs: dict[str, Any] = {
        "name": name,
        "ndim": ndim,
        "shape_type": "line",
        "edge_width": 1.5,
        "features": {
            "lesion": np.asarray(lesions, int),
            "axis": np.asarray(axes, object),
            "label": np.asarray(labels, object),
            "status": np.asarray(states, object),
        },
        "feature_defaults": {"lesion": -1, "axis": "", "label": "", "status": ""},
        "text": {"string": "{label}", "size": 10, "color": "white", "anchor": "upper_left"},
    }
    if colours:
        kwargs["edge_color"] = colours
    kwargs.update(layer_kwargs or {})
    return (lines, kwargs, "shapes")


def _stem(path: Path) -> str:
    return image_stem(path)


def _side_by_side(img: Any, ndim: int, spacing: Any, start: float) -> tuple[tuple, float]:
    """``(translate, next start)``: an image placed at world x ``start``, then a gap."""
    col_size = 1.0 if spacing is None else float(spacing[-1])
    width = float(img.array.shape[-2 if img.is_rgb else -1]) * col_size
    return (0.0,) * (ndim - 1) + (start,), start + width + max(width * 0.05, 8 * col_size)


def _lesion_items(
    image_path: Path, recs: Sequence[Any], ndim: int, problems: list[str]
) -> tuple[list[tuple[int, Any]], list[str]]:
    """``(lesion id, Recist)`` and CSV ``status`` of the records that fit the image."""
    items, statuses = [], []
    for rec in recs:
        if (rec.recist.slice_index is None) == (ndim == 3):
            problems.append(
                f"{image_path.name} lesion {rec.lesion}: "
                + ("no slice given for a volume" if ndim == 3 else "a slice given for a 2D image")
            )
            continue
        items.append((rec.lesion, rec.recist))
        statuses.append(rec.status or "")
    return items, statuses


def read_recist_layers(path: str | os.PathLike[str] | Sequence[str]) -> list[LayerData]:
    """Read a RECIST CSV into image + RECIST shapes layer tuples, one pair per image.

    Raises
    ------
    ValueError
        If the CSV is malformed, or none of its images can be read (the message names
        each failing image and why). Images that fail while others work are skipped
        with a warning.
    """
    if isinstance(path, (list, tuple)):
        path = path[0]
    csv_path = Path(path)
    records = read_recist_csv(csv_path)
    by_image: dict[Path, list[Any]] = {}
    for rec in records:
        by_image.setdefault(Path(rec.image), []).append(rec)
    layers: list[LayerData] = []
    problems: list[str] = []
    next_col = 0.0  # world x where the next image starts: images side by side, not stacked
    for image_path, recs in by_image.items():
        try:
            img = read_image(image_path)
        except (OSError, ValueError) as exc:
            problems.append(f"{image_path.name}: {exc}")
            continue
        ndim = 3 if img.is_volume else 2
        items, statuses = _lesion_items(image_path, recs, ndim, problems)
        spacing = None
        if img.spacing is not None and not all(abs(s - 1.0) < 1e-12 for s in img.spacing):
            spacing = tuple(float(s) for s in img.spacing)
        elif recs and recs[0].recist.spacing is not None:
            plane = tuple(float(s) for s in recs[0].recist.spacing)
            spacing = plane if ndim == 2 else (1.0,) + plane
        common: dict[str, Any] = {}
        if spacing is not None:
            common["scale"] = spacing
        if len(by_image) > 1:
            common["translate"], next_col = _side_by_side(img, ndim, spacing, next_col)
        stem = _stem(image_path)
        image_kwargs: dict[str, Any] = {
            "name": stem,
            "rgb": bool(img.is_rgb),
            "metadata": {"image_path": str(image_path), "recist_csv": str(csv_path)},
            **common,
        }
        if img.hu:
            image_kwargs["contrast_limits"] = CT_CONTRAST_LIMITS
        layers.append((img.array, image_kwargs, "image"))
        plane_spacing = None if spacing is None else (spacing[-2], spacing[-1])
        layers.append(
            recist_shapes_layer(
                items, name=f"{stem} RECIST", ndim=ndim, spacing=plane_spacing,
                layer_kwargs=common, statuses=statuses,
            )
        )
    if not layers:
        raise ValueError(f"{csv_path}: none of its images could be opened: " + "; ".join(problems))
    if problems:
        from napari.utils.notifications import show_warning

        show_warning(f"{csv_path.name}: skipped " + "; ".join(problems))
    return layers

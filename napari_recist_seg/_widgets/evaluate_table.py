"""The Evaluate dock's table: its columns and number cells (no job, no viewer)."""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QTableWidgetItem

from napari_recist_seg.jobs.compare import finite as _finite

__all__ = ["ALL_KEYS", "COLUMNS", "DISTANCE_KEYS", "EXTRA_KEYS", "HIGHER_IS_BETTER", "NumberItem", "fmt"]

#: Table columns: (key in the evaluation case, header, number format); Dice to AVD use
#: the formats of ``recist-seg evaluate``'s table.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("dice", "Dice", ".4f"),
    ("iou", "IoU", ".4f"),
    ("hd", "HD", ".2f"),
    ("hd95", "HD95", ".2f"),
    ("avd", "AVD", ".3f"),
    ("long_error", "L err", ".2f"),
    ("short_error", "W err", ".2f"),
)
#: Columns that are distances (px, or mm when a spacing is given; metrics module notes).
DISTANCE_KEYS = ("hd", "hd95", "avd")


#: Further per-case numbers: in the exports and the B - A rows, not in the table.
EXTRA_KEYS: tuple[str, ...] = ("vs", "centre_error", "perimeter_error", "perimeter_pred",
                               "perimeter_gt")
ALL_KEYS: tuple[str, ...] = tuple(k for k, _, _ in COLUMNS) + EXTRA_KEYS
#: Higher is better for these, lower for the others (colours of the B - A difference).
HIGHER_IS_BETTER = {"dice", "iou", "vs"}


def fmt(v: Any, spec: str) -> str:
    """``v`` formatted by ``spec``; ``-`` for a missing or non-finite value."""
    return format(float(v), spec) if _finite(v) else "-"


class NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (NaN last), shows it formatted."""

    def __init__(self, value: Any, spec: str) -> None:
        super().__init__(fmt(value, spec))
        self.value = float(value) if _finite(value) else math.inf
        self.setData(Qt.UserRole, float(value) if _finite(value) else math.nan)
        self.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, NumberItem):
            return self.value < other.value
        return super().__lt__(other)

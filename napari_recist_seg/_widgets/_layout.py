"""Layout helpers that keep the docks usable on small screens (1366 x 768).

- :func:`scroll_layout`: a dock's contents in a vertical scroll area, so that its
  minimum height is small and napari can stack docks on a laptop screen (the contents
  keep their natural size and scroll when the dock is shorter);
- :func:`set_row_visible`: a form row shown or hidden with its label;
- :func:`elide`: a long message cut to one readable line (the full text goes in the
  tooltip), so that a table column or a label cannot push the rest out of view.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFormLayout, QFrame, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

__all__ = ["elide", "scroll_layout", "set_row_visible"]


def set_row_visible(form: QFormLayout, field: QWidget, visible: bool) -> None:
    """Show or hide a form row: its field and its label (a label alone looks broken)."""
    field.setVisible(visible)
    label = form.labelForField(field)
    if label is not None:
        label.setVisible(visible)


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a scroll area; return the layout to fill (inside it).

    Use in place of ``QVBoxLayout(widget)`` when building a dock.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)
    area.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Expanding)
    content = QWidget()
    area.setWidget(content)
    outer.addWidget(area)
    widget.scroll_area = area  # for tests and for scrolling a control into view
    return QVBoxLayout(content)


def elide(text: str, limit: int = 48) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (unchanged when shorter).

    >>> elide("invalid: the short axis does not cross the long axis", 24)
    'invalid: the short axis…'
    >>> elide("done")
    'done'
    """
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"

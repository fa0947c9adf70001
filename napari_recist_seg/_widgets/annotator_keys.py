"""Keyboard shortcuts of the RECIST annotator (bound on the viewer while the dock is open).

All are Shift + a letter, chosen not to clash with napari 0.9's own bindings on the
layers the annotator uses (napari has Shift+A on Points, Shift+L / Shift+P on Shapes,
Shift+V on the viewer; plain letters select layer modes, e.g. D / X / Z / B on Shapes
and Labels). They are bound on the viewer, so they work whichever layer is active, and
unbound when the dock closes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

__all__ = ["KEYS", "bind_keys", "help_text", "unbind_keys"]

#: action -> (key, what it does). Method names of :class:`AnnotatorWidget`.
KEYS: dict[str, tuple[str, str]] = {
    "activate_drawing": ("Shift-D", "draw RECIST"),
    "activate_click_tool": ("Shift-C", "click a lesion"),
    "activate_correct_tool": ("Shift-R", "correct a mask (click adds, Shift/Alt-click removes)"),
    "commit": ("Shift-Enter", "commit the selected lesions (all if none selected)"),
    "delete_selected": ("Shift-X", "delete the selected lesions"),
    "undo": ("Shift-Z", "undo the last lesion action"),
    "next_lesion": ("Shift-N", "next lesion"),
    "previous_lesion": ("Shift-B", "previous lesion"),
}


def shown(key: str) -> str:
    """A key as people write it: ``Shift-D`` -> ``Shift+D``."""
    return key.replace("-", "+")


def help_text() -> str:
    """One line per shortcut, for the dock's help label."""
    return "Keys: " + " · ".join(f"{shown(k)} {what.split(' (')[0]}" for k, what in KEYS.values())


def _call(widget: Any, action: str) -> Callable[[Any], None]:
    def handler(_viewer: Any) -> None:
        getattr(widget, action)()

    handler.__name__ = f"recist_{action}"
    handler.__doc__ = KEYS[action][1]
    return handler


def bind_keys(widget: Any, viewer: Any) -> list[str]:
    """Bind :data:`KEYS` on ``viewer`` to ``widget``'s actions; the keys bound."""
    bound = []
    for action, (key, _) in KEYS.items():
        viewer.bind_key(key, _call(widget, action), overwrite=True)
        bound.append(key)
    return bound


def unbind_keys(viewer: Any, keys: list[str]) -> None:
    """Remove the annotator's bindings (the dock closed)."""
    for key in keys:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            viewer.bind_key(key, None)

"""The RECIST annotator's segmenter: choosing and loading a model (in a worker).

:class:`SegmenterMixin` is part of :class:`~._widgets.annotator.AnnotatorWidget`; it
uses the dock's ``segmenter_combo``, ``device_combo``, ``device_label``, ``bindings``
and ``_say``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from qtpy.QtWidgets import QFileDialog

import napari_recist_seg
from napari_recist_seg import annotation as ann
from napari_recist_seg._widgets.annotator_ui import SEGMENTER_LABELS


def default_model_available() -> bool:
    """Whether the default model ships with this installation (no torch import)."""
    return (Path(napari_recist_seg.__file__).parent / "models" / "default" / "config.json").is_file()


class SegmenterMixin:
    """Segmenter choice and loading of the annotator dock (the last request wins)."""

    def _device_text(self) -> str:
        if self.segmenter is None:
            return "no segmenter loaded"
        return f"{ann.segmenter_name(self.segmenter)} on {ann.segmenter_device(self.segmenter)}"

    def set_segmenter(self, segmenter: Any, *, choice: str = "custom") -> None:
        """Use ``segmenter`` from now on and re-segment the uncommitted lesions with it."""
        self.segmenter = segmenter
        self._segmenter_choice = choice
        idx = self.segmenter_combo.findData(choice)
        if idx >= 0:
            self.segmenter_combo.setCurrentIndex(idx)
        self.device_label.setText(self._device_text())
        for binding in self.bindings.values():
            binding.resegment()
            binding.kick()

    def _on_segmenter_combo(self, index: int) -> None:
        choice = self.segmenter_combo.itemData(index)
        path = None
        if choice == "checkpoint":
            path, _ = QFileDialog.getOpenFileName(
                self, "Choose a checkpoint (config.json in a model folder, or a weights file)",
                str(self._checkpoint or Path.home()),
                "Checkpoints (config.json *.safetensors *.pt *.pth);;All files (*)",
            )
            if not path:
                self._restore_combo()
                return
            if Path(path).name == "config.json":
                path = str(Path(path).parent)
        self.load_segmenter(choice, path)

    def _restore_combo(self) -> None:
        idx = self.segmenter_combo.findData(self._segmenter_choice)
        self.segmenter_combo.setCurrentIndex(max(idx, 0))

    def _reload_model(self) -> None:
        if self._segmenter_choice in ("default", "checkpoint"):
            self.load_segmenter(self._segmenter_choice, self._checkpoint)

    def load_segmenter(
        self, choice: str, path: str | Path | None = None, *,
        on_done: Callable[[bool], None] | None = None,
    ) -> Any:
        """Load a segmenter in a worker (``default``, ``checkpoint``, ``ellipse``, ``grabcut``).

        The drawn lesions are kept whatever happens; if loading fails the previous
        segmenter stays and the error is shown. When calls overlap, the last one wins
        (an earlier load finishing later is ignored). Returns the worker (or ``None``).
        ``on_done(loaded)``, if given, is called once the load ends: ``True`` when the
        segmenter is now in use, ``False`` when it failed or a later request won.
        """
        tell = on_done or (lambda loaded: None)
        # The last request wins, whatever order the loads finish in.
        self._load_generation += 1
        generation = self._load_generation
        if choice in ("ellipse", "grabcut"):
            self._loader = None
            self.set_segmenter(ann.ShapeSegmenter(choice), choice=choice)
            tell(True)
            return None
        from napari.qt.threading import create_worker

        device = self.device_combo.currentText()
        self.device_label.setText(f"loading {SEGMENTER_LABELS.get(choice, choice)} on {device}…")
        # Errors go to `failed` (a message), not re-raised in the Qt event loop.
        worker = create_worker(
            ann.load_segmenter, choice, path, device, _start_thread=False, _ignore_errors=True
        )

        def done(seg: Any) -> None:
            if generation != self._load_generation or not self._qt_alive():
                tell(False)
                return  # a later choice superseded this one, or the dock is gone
            self._loader = None
            if choice == "checkpoint":
                self._checkpoint = Path(path) if path else None
            self.set_segmenter(seg, choice=choice)
            self._say(f"segmenter: {self._device_text()}")
            tell(True)

        def failed(exc: BaseException) -> None:
            tell(False)
            if generation != self._load_generation or not self._qt_alive():
                return
            self._loader = None
            self._restore_combo()
            self.device_label.setText(self._device_text())
            self._say(f"could not load the model ({exc}); keeping {self._device_text()}", warn=True)

        worker.returned.connect(done)
        worker.errored.connect(failed)
        self._loader = worker
        worker.start()
        return worker

    @property
    def loading(self) -> bool:
        """Whether a model is being loaded (the last ``load_segmenter`` call wins)."""
        return self._loader is not None

    def _qt_alive(self) -> bool:
        """Whether the dock's Qt widgets still exist (a model load may end after the
        viewer closed)."""
        try:
            self.segmenter_combo.objectName()
        except RuntimeError:
            return False
        return True

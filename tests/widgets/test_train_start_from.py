"""Train dock: the "Start from" field tells where fine-tuning really starts."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # before Qt/OpenGL (see test_annotator.py)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_fine_tuning_from_scratch_setting_shows_the_active_model(make_napari_viewer, qtbot):
    from napari_recist_seg._widgets import train as train_module
    from napari_recist_seg._widgets.train import TrainWidget

    widget = TrainWidget(make_napari_viewer())
    qtbot.waitUntil(train_module.warmed_up, timeout=120000)  # its background import
    widget.init_model.set_choice("scratch")
    assert widget.init_checkpoint(required=False) is None  # training: from scratch
    assert widget.init_model.choice() == "scratch"
    start = widget.init_checkpoint(required=True)  # fine-tuning: from a model
    assert start is not None
    assert widget.init_model.choice() == "active"

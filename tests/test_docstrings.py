"""The examples in the core modules' docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

CORE_MODULES = [
    "napari_recist_seg.recist",
    "napari_recist_seg.recist_geometry",
    "napari_recist_seg.targets",
    "napari_recist_seg.ellipse",
    "napari_recist_seg.grabcut",
    "napari_recist_seg.metrics",
    "napari_recist_seg.clusters",
    "napari_recist_seg.preprocess",
    "napari_recist_seg.model",
    "napari_recist_seg.predict",
    "napari_recist_seg.runtime",
    "napari_recist_seg.annotation",
    "napari_recist_seg.annotation.units",
    "napari_recist_seg.annotation.export",
    "napari_recist_seg.training",
    "napari_recist_seg.curation",
    # split out of predict, training and data.images (#15): their examples moved along
    "napari_recist_seg.postprocess",
    "napari_recist_seg.click",
    "napari_recist_seg.training.samples",
    "napari_recist_seg.data.images",
    "napari_recist_seg.data.imagedata",
    "napari_recist_seg.data.raster",
    "napari_recist_seg.curation_images",
    "napari_recist_seg.measurements",
    "napari_recist_seg.upsample",  # issue 10fr: the guided filter of the probability
]


@pytest.mark.parametrize("name", CORE_MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"

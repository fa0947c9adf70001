"""progress.py: the bottom-layer progress / cancel primitives, shared by data, core and jobs."""

from __future__ import annotations

import doctest

import pytest

from napari_recist_seg import progress
from napari_recist_seg.data.dataset import scan_dataset
from napari_recist_seg.jobs import common


def test_docstring_examples_run():
    result = doctest.testmod(progress, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_jobs_common_re_exports_the_same_objects():
    # ``except jobs.common.Cancelled`` must catch what a data-layer function raises.
    names = ["CancelToken", "Cancelled", "InputError", "ProgressCallback", "ProgressEvent",
             "ProgressTracker"]
    for name in names:
        assert getattr(common, name) is getattr(progress, name), name


def test_data_layer_raises_the_shared_input_error(tmp_path):
    with pytest.raises(common.InputError, match="dataset folder not found"):
        scan_dataset(tmp_path / "missing")

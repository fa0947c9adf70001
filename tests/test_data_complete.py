"""``file_complete``: an output cut short anywhere is told apart from a whole one, for
the formats the jobs write (PNG masks, gzipped NIfTI label volumes)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_recist_seg.data.complete import file_complete
from napari_recist_seg.data.masks import read_labels, write_labels, write_mask


def _lesions() -> np.ndarray:
    lab = np.zeros((12, 40, 30), np.uint16)
    lab[3:7, 5:25, 4:20] = 2
    lab[8:10, 30:38, 2:9] = 300  # > 255: stored as uint16
    return lab


@pytest.mark.parametrize("name", ["mask.png", "labels.png", "labels.nii.gz", "labels.nii"])
def test_every_prefix_of_a_written_output_is_incomplete(tmp_path, name):
    path = tmp_path / name
    if name == "mask.png":
        write_mask(path, _lesions()[4] > 0)
    elif name == "labels.png":
        write_labels(path, _lesions()[8])
    else:
        write_labels(path, _lesions(), spacing=(5.0, 0.7, 0.7))
    whole = path.read_bytes()
    assert file_complete(path)
    cut = tmp_path / ("cut-" + name)
    whole_prefixes = []
    for k in range(len(whole)):
        cut.write_bytes(whole[:k])
        if file_complete(cut):
            whole_prefixes.append(k)
    if name.endswith(".nii"):
        # an uncompressed NIfTI carries no end marker: only an empty one is caught
        assert whole_prefixes == list(range(1, len(whole)))
    else:
        assert whole_prefixes == []
    if name == "labels.nii.gz":
        assert read_labels(path).max() == 300  # the checked file is the real thing


def test_missing_folders_fifos_and_other_files(tmp_path):
    assert not file_complete(tmp_path / "missing.png")
    assert not file_complete(tmp_path)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert not file_complete(fifo)  # and it does not block on open
    (tmp_path / "notes.txt").write_text("x")
    assert file_complete(tmp_path / "notes.txt")
    (tmp_path / "fake.png").write_bytes(b"not a png at all, but long enough")
    assert not file_complete(tmp_path / "fake.png")

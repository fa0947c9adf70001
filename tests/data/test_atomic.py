"""Atomic writes: complete file or nothing, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from napari_recist_seg.data.atomic import atomic_path, atomic_write_text


def test_new_file_gets_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.csv", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.csv").stat().st_mode) == 0o644


def test_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "b.csv"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_failure_leaves_target_and_no_temp_file(tmp_path):
    target = tmp_path / "c.png"
    target.write_bytes(b"original")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]


def _tmpfs(folder, options: str):
    """Mount a 1 MB tmpfs (``options``: "size=1m" or "ro,size=1m") or skip."""
    import shutil
    import subprocess

    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    return folder


@pytest.mark.parametrize("name", ["m.tif", "m.png", "v.nii.gz"])
def test_a_full_or_read_only_disk_names_the_users_file_not_the_temporary_one(tmp_path, name):
    # The message the annotator shows ("export failed: ...") named the hidden temporary
    # file, or only "1440000 requested and 65280 written" (tifffile) on a full disk.
    import subprocess

    import numpy as np

    from napari_recist_seg.data import write_labels

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (40, 512, 512) if name.endswith(".nii.gz") else (3000, 3000)).astype(np.uint8)
    for options, words in (("size=1m", "No space left on device"), ("ro,size=1m", "Read-only file system")):
        mnt = _tmpfs(tmp_path / options.replace(",", "_").replace("=", ""), options)
        try:
            with pytest.raises(OSError) as info:
                write_labels(mnt / name, labels)
            assert info.value.filename == str(mnt / name) and words in str(info.value), str(info.value)
            assert list(mnt.iterdir()) == []  # no temporary file left
        finally:
            subprocess.run(["umount", str(mnt)], check=False)

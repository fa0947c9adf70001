"""Whether an output file holds all of its data, read from its last bytes.

A job's outputs are written to a temporary name and renamed into place, but the data
are not fsync'd (that would cost a disk flush per image in bulk runs). After a power
cut a renamed file can be empty or cut short; a re-run must redo it rather than take it
as done. These checks read a few bytes, not the whole file, so a resume over thousands
of outputs stays cheap:

- PNG: the file ends with the ``IEND`` chunk (a PNG cut short anywhere does not);
- gzip (``.nii.gz``): the gzip trailer's uncompressed length matches the length the
  NIfTI header promises (header + voxels), read from the first decompressed bytes;
- anything else: non-empty.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib

__all__ = ["file_complete"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # zero-length IEND chunk and its CRC
_GZIP_MAGIC = b"\x1f\x8b"


def file_complete(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a regular, non-empty file whose end is where its format
    says (PNG, gzipped NIfTI); other formats only need to be non-empty.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from napari_recist_seg.data.masks import write_mask
    >>> d = Path(tempfile.mkdtemp())
    >>> write_mask(d / "m.png", np.eye(8, dtype=bool))
    >>> file_complete(d / "m.png")
    True
    >>> data = (d / "m.png").read_bytes()
    >>> _ = (d / "m.png").write_bytes(data[:-5])  # a power cut left it short
    >>> file_complete(d / "m.png")
    False
    """
    try:
        # stat first: opening a FIFO someone put there would block
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return False
            head = fh.read(16)
            name = os.fspath(path).lower()
            if name.endswith(".png") or head.startswith(_PNG_SIGNATURE):
                return head.startswith(_PNG_SIGNATURE) and _png_complete(fh, size)
            if name.endswith(".gz") or head.startswith(_GZIP_MAGIC):
                return head.startswith(_GZIP_MAGIC) and _gzip_complete(
                    fh, size, nifti=name.endswith(".nii.gz"))
            return True
    except OSError:  # missing, a folder, unreadable: not a committed output
        return False


def _png_complete(fh, size: int) -> bool:
    if size < len(_PNG_SIGNATURE) + len(_PNG_END):
        return False
    fh.seek(size - len(_PNG_END))
    return fh.read(len(_PNG_END)) == _PNG_END


def _gzip_complete(fh, size: int, nifti: bool) -> bool:
    """The gzip trailer (ISIZE, the uncompressed length mod 2**32) against the length
    of the NIfTI it holds (a ``.nii.gz`` whose header cannot be read is cut short);
    another gzip only needs its 18-byte minimum."""
    if size < 18:
        return False
    fh.seek(0)
    expected = _nifti_length(fh.read(64 * 1024))
    if expected is None:
        return not nifti
    fh.seek(size - 4)
    (isize,) = struct.unpack("<I", fh.read(4))
    return isize == expected % 2**32


def _nifti_length(compressed_head: bytes) -> int | None:
    """Header + voxel bytes of the NIfTI-1/2 whose gzip stream starts with
    ``compressed_head``; None when it cannot be told (not a NIfTI, a header too short)."""
    try:
        raw = zlib.decompressobj(wbits=31).decompress(compressed_head, 544)
    except zlib.error:
        return None
    for order in "<>":
        if len(raw) >= 348 and struct.unpack(order + "i", raw[:4])[0] == 348:
            dim = struct.unpack(order + "8h", raw[40:56])
            bitpix = struct.unpack(order + "h", raw[72:74])[0]
            offset = int(struct.unpack(order + "f", raw[108:112])[0])
            return _voxel_end(dim, bitpix, offset)
        if len(raw) >= 540 and struct.unpack(order + "i", raw[:4])[0] == 540:
            dim = struct.unpack(order + "8q", raw[16:80])
            bitpix = struct.unpack(order + "h", raw[14:16])[0]
            offset = struct.unpack(order + "q", raw[168:176])[0]
            return _voxel_end(dim, bitpix, offset)
    return None


def _voxel_end(dim, bitpix: int, offset: int) -> int | None:
    ndim = dim[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or offset < 0:
        return None
    voxels = 1
    for n in dim[1:ndim + 1]:
        voxels *= max(int(n), 1)
    return offset + voxels * bitpix // 8
